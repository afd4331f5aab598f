"""`make attack`: honest tracker traffic next to one attack at a time, on a throwaway stack.

The attacker runs in a process of its own, so the honest visitors' timings carry only the
server's delay, not the attacking client's CPU (both still share the machine with the stack).

Honest visitors post event batches (with uuids, retried like the tracker) for the whole run.
The run is cut in phases of --phase seconds: a baseline with no attack, then each attack
alone. Per phase it reports the honest requests' p50/p95 (first attempts), their refusals,
the attack's requests and ingest's CPU per attack request (over the baseline's CPU rate), and
ingest's RSS; at the end, events acknowledged (202) == events stored. Figures go to
docs/reliability.md (or only to stdout with --no-write).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import multiprocessing
import os
import platform
import random
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
from sqlalchemy import text

from services.cli import admin
from services.cli.processes import read_pid
from services.cli.stack import LocalStack
from services.common.db import create_admin_engine, create_engine
from services.common.settings import AdminDatabaseSettings, DatabaseSettings, ServerSettings
from services.ingest.tasks import create_missing_partitions
from tools.benchmarks_file import write_section
from tools.loadtest.chaos import throwaway_stack

RELIABILITY = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
MARKERS = ("<!-- attack:start -->", "<!-- attack:end -->", "## Hostile traffic, measured (`make attack`)")
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"


@dataclass
class PhaseFigures:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    attack_requests: int = 0
    cpu_s: float = 0.0
    rss_mb: float = 0.0
    seconds: float = 0.0


class Run:
    def __init__(self, ingest_url: str, honest_key: str, attacker_key: str, ingest_pid: int) -> None:
        self.ingest_url = ingest_url
        self.honest_key = honest_key
        self.attacker_key = attacker_key
        self.ingest = psutil.Process(ingest_pid)
        self.phase = PhaseFigures("warm-up")
        self.acknowledged_events = 0
        self.stopping = False

    def ingest_processes(self) -> list[psutil.Process]:
        return [self.ingest, *self.ingest.children(recursive=True)]

    def cpu_s(self) -> float:
        total = 0.0
        for process in self.ingest_processes():
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return total

    def rss_mb(self) -> float:
        total = 0
        for process in self.ingest_processes():
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total / 1024 / 1024


def honest_batch(key: str, visitor: int) -> tuple[bytes, int]:
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "event": "pageview",
            "distinctId": f"visitor-{visitor}",
            "sessionId": f"session-{visitor}",
            "timestamp": now,
            "url": f"https://example.com/page-{random.randrange(50)}",
            "title": "A page",
            "uuid": str(uuid.uuid4()),
        }
        for _ in range(3)
    ]
    return msgspec.json.encode({"projectKey": key, "sentAt": now, "events": events}), len(events)


async def honest_visitor(run: Run, client: httpx.AsyncClient, visitor: int) -> None:
    await asyncio.sleep(random.uniform(0, 1))
    while not run.stopping:
        body, events = honest_batch(run.honest_key, visitor)
        for attempt in range(8):
            phase = run.phase
            started = time.perf_counter()
            try:
                response = await client.post(
                    f"/v1/events?key={run.honest_key}",
                    content=body,
                    headers={"Content-Type": "text/plain", "User-Agent": CHROME},
                )
            except httpx.TransportError as exc:
                phase.refusals[type(exc).__name__] = phase.refusals.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(1 + random.random())
                continue
            if attempt == 0:
                phase.latencies_ms.append((time.perf_counter() - started) * 1000)
            if response.status_code == 202:
                run.acknowledged_events += events
                break
            phase.refusals[str(response.status_code)] = phase.refusals.get(str(response.status_code), 0) + 1
            retry_after = float(response.headers.get("retry-after", "1"))
            await asyncio.sleep(retry_after * (1 + random.random() / 2))
        await asyncio.sleep(random.uniform(0.5, 1.5))


# Attacks: each runs in a process of its own (so the honest visitors' timings do not include the
# attacker's CPU) until the phase ends, counting its requests in attacker.sent.


@dataclass
class Attacker:
    ingest_url: str
    attacker_key: str
    sent: Any  # a multiprocessing Value shared with the parent

    def count(self) -> None:
        with self.sent.get_lock():
            self.sent.value += 1


async def stalled_uploads(attacker: Attacker, sockets: int = 1000) -> None:
    host, port = attacker.ingest_url.removeprefix("http://").split(":")
    while True:
        writers = []
        for _ in range(sockets):
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.write(
                b"POST /v1/events HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"
                b"Content-Length: 500000\r\n\r\n{"
            )
            writers.append(writer)
            attacker.count()
        try:
            await asyncio.sleep(15)  # each is answered 408 and closed after its grace; open new ones
        finally:
            for writer in writers:
                writer.close()


def rrweb_bomb(key: str | None) -> bytes:
    # ~80 KiB of gzip that inflates to ~30 MiB of tiny rrweb events.
    events = b",".join([b'{"type":3,"timestamp":1}'] * 1_250_000)
    key_part = b'"projectKey":"' + key.encode() + b'",' if key else b""
    return gzip.compress(b"{" + key_part + b'"sessionId":"s","distinctId":"d","seq":0,"events":[' + events + b"]}", 9)


async def bombs(attacker: Attacker, client: httpx.AsyncClient, valid_key: bool) -> None:
    key = attacker.attacker_key if valid_key else "pk_" + secrets.token_urlsafe(16)
    body = rrweb_bomb(key)
    # With a valid key: the body-only contract (no ?key=), the most the server must read.
    url = "/v1/replay" if valid_key else f"/v1/replay?key={key}"
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}

    async def one_stream() -> None:
        while True:
            await client.post(url, content=body, headers=headers)
            attacker.count()

    await asyncio.gather(*(one_stream() for _ in range(4)))


async def random_keys(attacker: Attacker, client: httpx.AsyncClient) -> None:
    async def one_stream() -> None:
        while True:
            key = "pk_" + secrets.token_urlsafe(16)
            body = msgspec.json.encode({"projectKey": key, "events": [{"event": "x"}]})
            await client.post("/v1/events", content=body, headers={"Content-Type": "text/plain"})
            attacker.count()

    await asyncio.gather(*(one_stream() for _ in range(50)))


async def huge_user_agents(attacker: Attacker, client: httpx.AsyncClient) -> None:
    async def one_stream() -> None:
        while True:
            body, _ = honest_batch(attacker.attacker_key, 0)
            agent = CHROME + " " + secrets.token_hex(30_000)  # 60 kB, unique
            await client.post("/v1/events", content=body, headers={"Content-Type": "text/plain", "User-Agent": agent})
            attacker.count()

    await asyncio.gather(*(one_stream() for _ in range(10)))


async def counter_overflow(attacker: Attacker, client: httpx.AsyncClient) -> None:
    base_ms = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000)
    clicks = [{"type": 3, "timestamp": base_ms + n, "data": {"source": 2, "type": 2}} for n in range(49_999)]
    events = [{"type": 4, "timestamp": base_ms, "data": {"href": "https://example.com/"}}, *clicks]
    seq = 0

    async def one_stream() -> None:
        nonlocal seq
        while True:
            seq += 1
            chunk = {"projectKey": attacker.attacker_key, "sessionId": "overflow", "distinctId": "d", "seq": seq}
            body = gzip.compress(msgspec.json.encode({**chunk, "events": events}))
            await client.post(
                "/v1/replay", content=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
            )
            attacker.count()

    await asyncio.gather(*(one_stream() for _ in range(2)))


async def partition_ddl_behind_a_long_read(attacker: Attacker) -> None:
    """A long dashboard read holds events while partitions for far-future days are created."""
    admin_engine = create_admin_engine(AdminDatabaseSettings.from_env())
    engine = create_engine("attack", DatabaseSettings.from_env("ingest"))
    future = datetime.now(UTC).date() + timedelta(days=1000)
    try:
        async with admin_engine.connect() as dashboard:
            await dashboard.execute(text("LOCK TABLE events IN ACCESS SHARE MODE"))
            try:
                while True:
                    await create_missing_partitions(engine, future, attempts=1)
                    attacker.count()
                    await asyncio.sleep(1)
            finally:
                await dashboard.rollback()
    finally:
        await engine.dispose()
        await admin_engine.dispose()


ATTACKS: dict[str, Callable[[Attacker, httpx.AsyncClient], Coroutine[Any, Any, None]]] = {
    "1,000 stalled uploads": lambda attacker, _: stalled_uploads(attacker),
    "gzip bombs, unknown key in URL": lambda attacker, client: bombs(attacker, client, valid_key=False),
    "gzip bombs, valid key in body": lambda attacker, client: bombs(attacker, client, valid_key=True),
    "random-key flood": random_keys,
    "unique 60 kB User-Agents": huge_user_agents,
    "counter-overflow chunks": counter_overflow,
    "partition DDL behind a long read": lambda attacker, _: partition_ddl_behind_a_long_read(attacker),
}


def attack_process(name: str, ingest_url: str, attacker_key: str, sent: Any) -> None:
    """Runs one attack until the parent ends this process."""

    async def attack() -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(base_url=ingest_url, timeout=60, limits=limits) as client:
            await ATTACKS[name](Attacker(ingest_url, attacker_key, sent), client)

    asyncio.run(attack())


async def run_attacks(args: argparse.Namespace, stack: LocalStack) -> tuple[list[PhaseFigures], int, int]:
    admin_settings = AdminDatabaseSettings.from_env()
    honest = await admin.create_project(admin_settings, name="attack honest", domains=["example.com"], timezone="UTC")
    attacker = await admin.create_project(
        admin_settings, name="attack attacker", domains=["example.com"], timezone="UTC"
    )
    server = ServerSettings.from_env("ingest")
    ingest_url = f"http://127.0.0.1:{server.port}"
    pid = read_pid(stack.paths.service_pid("ingest"))
    assert pid is not None
    run = Run(ingest_url, str(honest["publicKey"]), str(attacker["publicKey"]), pid)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    spawn = multiprocessing.get_context("spawn")
    async with httpx.AsyncClient(base_url=ingest_url, timeout=60, limits=limits) as honest_client:
        visitors = [asyncio.create_task(honest_visitor(run, honest_client, n)) for n in range(args.visitors)]
        await asyncio.sleep(args.warmup)
        phases: list[PhaseFigures] = []
        for name in ["baseline (no attack)", *ATTACKS]:
            print(f"phase: {name}", flush=True)
            run.phase = figures = PhaseFigures(name)
            cpu_before, started = run.cpu_s(), time.monotonic()
            sent = spawn.Value("q", 0)
            process = None
            if name in ATTACKS:
                process = spawn.Process(target=attack_process, args=(name, ingest_url, run.attacker_key, sent))
                process.start()
            await asyncio.sleep(args.phase)
            if process is not None:
                process.terminate()
                await asyncio.to_thread(process.join)
            figures.seconds = time.monotonic() - started
            figures.cpu_s = run.cpu_s() - cpu_before
            figures.rss_mb = run.rss_mb()
            figures.attack_requests = int(sent.value)
            phases.append(figures)
            run.phase = PhaseFigures("settle")
            await asyncio.sleep(args.settle)
        run.stopping = True
        await asyncio.gather(*visitors)
    engine = create_admin_engine(admin_settings)
    try:
        async with engine.connect() as connection:
            stored = (
                await connection.execute(text("SELECT count(*) FROM events WHERE project_id = :p"), {"p": honest["id"]})
            ).scalar_one()
    finally:
        await engine.dispose()
    return phases, run.acknowledged_events, int(stored)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(phases: list[PhaseFigures], acknowledged: int, stored: int, args: argparse.Namespace, command: str) -> str:
    baseline = phases[0]
    baseline_p95 = percentile(baseline.latencies_ms, 0.95)
    baseline_cpu_rate = baseline.cpu_s / baseline.seconds if baseline.seconds else 0.0
    rows = []
    for phase in phases:
        p95 = percentile(phase.latencies_ms, 0.95)
        extra_cpu = max(phase.cpu_s - baseline_cpu_rate * phase.seconds, 0.0)
        cpu_per_attack = f"{extra_cpu / phase.attack_requests * 1000:.1f} ms" if phase.attack_requests else "-"
        refusals = ", ".join(f"{code}: {count}" for code, count in sorted(phase.refusals.items())) or "0"
        rows.append(
            f"| {phase.name} | {len(phase.latencies_ms)} | {statistics.median(phase.latencies_ms or [0]):.0f} | "
            f"{p95:.0f} ({p95 / baseline_p95:.1f}×) | {refusals} | {phase.attack_requests} | {cpu_per_attack} | "
            f"{phase.rss_mb:.0f} |"
        )
    rss_growth = max(phase.rss_mb for phase in phases) - baseline.rss_mb
    return "\n".join(
        [
            MARKERS[0],
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores), "
            f"one ingest worker, attacker, visitors, Postgres and PgBouncer on the same machine. Command: `{command}`.",
            f"{args.visitors} honest visitors (a 3-event batch every ~1 s each, retried like the tracker), "
            f"{args.phase:.0f} s per phase, {args.settle:.0f} s to settle between phases.",
            "",
            "| phase | honest requests | p50 ms | p95 ms (× baseline) | honest refusals (first attempts) "
            "| attack requests | ingest CPU per attack request | ingest RSS MB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"Honest events acknowledged: {acknowledged}; stored: {stored} "
            f"({'equal' if acknowledged == stored else 'DIFFERENT'}). Ingest RSS growth over the baseline: "
            f"{rss_growth:.0f} MB.",
            MARKERS[1],
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--visitors", type=int, default=200)
    parser.add_argument("--phase", type=float, default=45, help="seconds per phase")
    parser.add_argument("--settle", type=float, default=10, help="seconds between phases")
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    command = "make attack" + (f' ATTACK_ARGS="{" ".join(sys.argv[1:])}"' if len(sys.argv) > 1 else "")
    with throwaway_stack(lambda: None, ingest_workers=1) as stack:
        phases, acknowledged, stored = asyncio.run(run_attacks(args, stack))
    section = report(phases, acknowledged, stored, args, command)
    print(section)
    if not args.no_write:
        write_section(section, MARKERS, RELIABILITY)


if __name__ == "__main__":
    main()
