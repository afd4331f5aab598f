"""`make attack`: honest tracker traffic next to one attack at a time, on a throwaway stack.

The attacker runs in a process of its own, so the honest visitors' timings carry only the
server's delay, not the attacking client's CPU (both still share the machine with the stack).

Honest visitors post event batches (with uuids, retried like the tracker) for the whole run.
Each attack runs alone for --phase seconds, between two baseline windows with no attack
(--baseline seconds; one before every attack, one after the last). Per attack it reports the
honest requests' p50/p95 (first attempts) next to those of the two windows around it, and their
ratio: on a shared machine the honest path drifts by itself over a run (other work comes and
goes), and a single baseline at the start compared late attacks with a different machine. Also
their refusals, the attack's requests and ingest's CPU per attack request (over the windows'
CPU rate), and ingest's RSS; at the end, events acknowledged (202) == events stored, and the
issue's targets met or missed. Figures go to docs/reliability.md (or only to stdout with
--no-write).

On a small machine the attacker's own CPU slows the server as much as anything the server does,
so each phase also reports the CPU the attacker, ingest, and the whole machine used, and a
control phase burns a core without sending anything. --attacker-cpus, --visitor-cpus and
--server-cpus pin the attacker, the honest visitors and the stack (Postgres, PgBouncer, the
services) to cores (sched_setaffinity, as taskset does), so that the attacker's CPU can be kept
off the cores the honest path runs on; --attack-rate caps the attack's requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import multiprocessing
import os
import platform
import random
import secrets
import signal
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
from services.common.db import create_admin_engine
from services.common.settings import AdminDatabaseSettings, ServerSettings
from services.ingest.settings import IngestSettings
from services.ingest.tasks import PARTITION_RETRY_INTERVAL_S, create_missing_partitions
from tools.benchmarks_file import write_section
from tools.loadtest.chaos import throwaway_stack
from tools.loadtest.payloads import counter_overflow_events, rrweb_bomb

# The attacker's requests come from this address, the honest visitors' from 127.0.0.1: on the
# internet they are different clients, and ingest's budget of refusals is kept per client
# address (services/ingest/admission.py). Any 127/8 address reaches the stack on loopback.
ATTACKER_ADDRESS = "127.0.0.2"
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
    # CPU seconds of the attacker's process, of this process (the honest visitors), and of the
    # whole machine (all cores) during the phase.
    attacker_cpu_s: float = 0.0
    visitors_cpu_s: float = 0.0
    machine_busy_s: float = 0.0
    # A window with no attack; each attack is judged against the two around it.
    is_baseline: bool = False
    # Within an attack phase the attacker runs and pauses in turns (--slice): honest first
    # attempts that started while it ran, and while it was paused (those just after a switch
    # are in neither).
    latencies_on_ms: list[float] = field(default_factory=list)
    latencies_off_ms: list[float] = field(default_factory=list)

    def share(self, cpu_s: float) -> float:
        """CPU seconds as a share of one core over the phase."""
        return cpu_s / self.seconds if self.seconds else 0.0


class Run:
    def __init__(self, ingest_url: str, honest_key: str, attacker_key: str, ingest_pid: int) -> None:
        self.ingest_url = ingest_url
        self.honest_key = honest_key
        self.attacker_key = attacker_key
        self.ingest = psutil.Process(ingest_pid)
        self.phase = PhaseFigures("warm-up")
        self.acknowledged_events = 0
        self.stopping = False
        # "on" / "off" while an attacker runs / is paused, "edge" just after a switch, None otherwise.
        self.attacker_state: str | None = None

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
            attacker_state = run.attacker_state
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
                latency_ms = (time.perf_counter() - started) * 1000
                phase.latencies_ms.append(latency_ms)
                if attacker_state == "on":
                    phase.latencies_on_ms.append(latency_ms)
                elif attacker_state == "off":
                    phase.latencies_off_ms.append(latency_ms)
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
    # Attack requests per second at most (all streams together); 0: as fast as they go.
    rate: float = 0.0
    _next_at: float = 0.0

    async def count(self) -> None:
        """Counts one attack request and, under --attack-rate, waits for the next one's turn."""
        with self.sent.get_lock():
            self.sent.value += 1
        if self.rate > 0:
            now = time.monotonic()
            self._next_at = max(self._next_at + 1 / self.rate, now)
            await asyncio.sleep(self._next_at - now)


async def stalled_uploads(attacker: Attacker, sockets: int = 1000) -> None:
    host, port = attacker.ingest_url.removeprefix("http://").split(":")
    while True:
        writers = []
        for _ in range(sockets):
            try:
                _, writer = await asyncio.open_connection(host, int(port), local_addr=(ATTACKER_ADDRESS, 0))
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.write(
                b"POST /v1/events HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"
                b"Content-Length: 500000\r\n\r\n{"
            )
            writers.append(writer)
            await attacker.count()
        try:
            await asyncio.sleep(15)  # each is answered 408 and closed after its grace; open new ones
        finally:
            for writer in writers:
                writer.close()


async def bombs(attacker: Attacker, client: httpx.AsyncClient, valid_key: bool) -> None:
    key = attacker.attacker_key if valid_key else "pk_" + secrets.token_urlsafe(16)
    body = rrweb_bomb(key)
    # With a valid key: the body-only contract (no ?key=), the most the server must read.
    url = "/v1/replay" if valid_key else f"/v1/replay?key={key}"
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}

    async def one_stream() -> None:
        while True:
            await client.post(url, content=body, headers=headers)
            await attacker.count()

    await asyncio.gather(*(one_stream() for _ in range(4)))


async def random_keys(attacker: Attacker, client: httpx.AsyncClient) -> None:
    async def one_stream() -> None:
        while True:
            key = "pk_" + secrets.token_urlsafe(16)
            body = msgspec.json.encode({"projectKey": key, "events": [{"event": "x"}]})
            await client.post("/v1/events", content=body, headers={"Content-Type": "text/plain"})
            await attacker.count()

    await asyncio.gather(*(one_stream() for _ in range(50)))


async def huge_user_agents(attacker: Attacker, client: httpx.AsyncClient) -> None:
    async def one_stream() -> None:
        while True:
            body, _ = honest_batch(attacker.attacker_key, 0)
            agent = CHROME + " " + secrets.token_hex(30_000)  # 60 kB, unique
            await client.post("/v1/events", content=body, headers={"Content-Type": "text/plain", "User-Agent": agent})
            await attacker.count()

    await asyncio.gather(*(one_stream() for _ in range(10)))


async def counter_overflow(attacker: Attacker, client: httpx.AsyncClient) -> None:
    base_ms = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000)
    # The most rrweb events a chunk may hold (ingest's MAX_RRWEB_EVENTS_PER_CHUNK, as the stack runs it).
    events = counter_overflow_events(base_ms, IngestSettings.from_env().max_rrweb_events_per_chunk)
    seq = 0

    async def one_stream() -> None:
        nonlocal seq
        while True:
            seq += 1
            chunk = {"projectKey": attacker.attacker_key, "sessionId": "overflow", "distinctId": "d", "seq": seq}
            # Level 1: the default 9 cost the attacker ~50 ms of its own CPU per chunk (15 ms at 1,
            # for a body 6 % larger), CPU taken from the box rather than from ingest.
            body = gzip.compress(msgspec.json.encode({**chunk, "events": events}), compresslevel=1)
            await client.post(
                "/v1/replay", content=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
            )
            await attacker.count()

    await asyncio.gather(*(one_stream() for _ in range(2)))


async def partition_ddl_behind_a_long_read(attacker: Attacker) -> None:
    """A long dashboard read holds events while ingest's upkeep creates partitions (far-future days).

    At the upkeep's own pace (tasks.keep_partitions_ahead): a pass of up to PARTITION_ATTEMPTS
    tries with its backoff, then PARTITION_RETRY_INTERVAL_S before the next. The read locks every
    partition, events_default too, so each try's ATTACH waits PARTITION_LOCK_TIMEOUT_MS for it and
    gives up; INSERTs routed to today's partition do not wait behind it (they did behind
    CREATE TABLE ... PARTITION OF, which locked events itself). (This attack used to try once a
    second, 60 times the upkeep's pace, which measured the harness rather than ingest.)
    """
    admin_engine = create_admin_engine(AdminDatabaseSettings.from_env())
    # The upkeep's DDL runs as the owner (the services' role may not create tables), on its own engine.
    engine = create_admin_engine(AdminDatabaseSettings.from_env())
    future = datetime.now(UTC).date() + timedelta(days=1000)
    try:
        async with admin_engine.connect() as dashboard:
            await dashboard.execute(text("LOCK TABLE events IN ACCESS SHARE MODE"))
            try:
                while True:
                    await create_missing_partitions(engine, future)
                    await attacker.count()
                    await asyncio.sleep(PARTITION_RETRY_INTERVAL_S)
            finally:
                await dashboard.rollback()
    finally:
        await engine.dispose()
        await admin_engine.dispose()


async def cpu_burn(attacker: Attacker) -> None:
    """The control: the attacker's process spins on its core and sends nothing.

    Whatever this does to the honest p95 is the machine's, not ingest's: an attack whose ratio is
    no worse than this one's (at a similar attacker CPU) costs the server nothing the CPU does not
    explain.
    """
    while True:
        deadline = time.monotonic() + 0.1
        while time.monotonic() < deadline:
            pass
        await asyncio.sleep(0)


AttackFunction = Callable[[Attacker, httpx.AsyncClient], Coroutine[Any, Any, None]]
# name for --attacks -> (label in the report, the attack)
ATTACKS: dict[str, tuple[str, AttackFunction]] = {
    "cpu-burn": ("control: attacker spins a core, sends nothing", lambda attacker, _: cpu_burn(attacker)),
    "stalled": ("1,000 stalled uploads", lambda attacker, _: stalled_uploads(attacker)),
    "bomb-url": (
        "gzip bombs, unknown key in URL",
        lambda attacker, client: bombs(attacker, client, valid_key=False),
    ),
    "bomb-body": ("gzip bombs, valid key in body", lambda attacker, client: bombs(attacker, client, valid_key=True)),
    "keys": ("random-key flood", random_keys),
    "user-agents": ("unique 60 kB User-Agents", huge_user_agents),
    "overflow": ("counter-overflow chunks", counter_overflow),
    "partitions": (
        "partition DDL behind a long read",
        lambda attacker, _: partition_ddl_behind_a_long_read(attacker),
    ),
}


def attack_process(
    name: str, ingest_url: str, attacker_key: str, sent: Any, rate: float, cpus: list[int], ready: Any
) -> None:
    """Runs one attack until the parent ends this process; sets ready (a multiprocessing Event) first."""
    if cpus:
        os.sched_setaffinity(0, cpus)

    async def attack() -> None:
        ready.set()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        transport = httpx.AsyncHTTPTransport(limits=limits, local_address=ATTACKER_ADDRESS)
        async with httpx.AsyncClient(base_url=ingest_url, timeout=60, transport=transport) as client:
            await ATTACKS[name][1](Attacker(ingest_url, attacker_key, sent, rate), client)

    asyncio.run(attack())


async def alternate(run: Run, pid: int, seconds: float, slice_s: float, edge_s: float) -> None:
    """Runs the attacker and pauses it (SIGSTOP / SIGCONT) in turns of slice_s for seconds.

    The honest requests of both turns share the machine's state of that moment, so their ratio
    holds even while other work on the box comes and goes (it does, by tens of times, on the
    shared 2-core machine). Requests that start within edge_s after a switch count for neither:
    the server is still finishing the attack's requests, or the attacker restarting. What an
    attack leaves open across a pause (stalled sockets, the long read's lock) is not paused: for
    those the ratio against the windows around the attack is the one to read.
    """
    if slice_s <= 0:
        run.attacker_state = "on"
        await asyncio.sleep(seconds)
        run.attacker_state = None
        return
    ends = time.monotonic() + seconds
    running = True
    try:
        while time.monotonic() < ends:
            run.attacker_state = "edge"
            os.kill(pid, signal.SIGCONT if running else signal.SIGSTOP)
            turn_ends = min(time.monotonic() + slice_s, ends)
            await asyncio.sleep(max(min(edge_s, turn_ends - time.monotonic()), 0))
            run.attacker_state = "on" if running else "off"
            await asyncio.sleep(max(turn_ends - time.monotonic(), 0))
            running = not running
    finally:
        run.attacker_state = None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # a stopped process would not act on the SIGTERM that follows


def pin_stack(stack: LocalStack, cpus: list[int]) -> list[int]:
    """Pins Postgres, PgBouncer and the services (and their children, now and later) to cpus."""
    roots = [stack.postgres.pid(), stack.pgbouncer().pid()]
    roots += [read_pid(stack.paths.service_pid(service)) for service in ("ingest", "query", "replay")]
    pinned = []
    for pid in roots:
        if pid is None:
            continue
        try:
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                process.cpu_affinity(cpus)
                pinned.append(process.pid)
        except psutil.NoSuchProcess:
            continue
    return pinned


def machine_busy_s() -> float:
    """CPU seconds the whole machine (all cores) has spent busy; guest time is inside user already."""
    times = psutil.cpu_times()
    busy = ("user", "nice", "system", "irq", "softirq", "steal")
    return float(sum(getattr(times, name, 0.0) for name in busy))


def own_cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


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
    if args.server_cpus:
        pinned = pin_stack(stack, args.server_cpus)
        print(f"stack pinned to CPUs {args.server_cpus}: {len(pinned)} processes", flush=True)
    if args.visitor_cpus:
        os.sched_setaffinity(0, args.visitor_cpus)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    spawn = multiprocessing.get_context("spawn")
    async with httpx.AsyncClient(base_url=ingest_url, timeout=60, limits=limits) as honest_client:
        visitors = [asyncio.create_task(honest_visitor(run, honest_client, n)) for n in range(args.visitors)]
        await asyncio.sleep(args.warmup)
        phases: list[PhaseFigures] = []
        # A baseline window before every attack and one after the last: the machine drifts (other
        # work on the box), so each attack is compared with the windows just around it.
        schedule = [name for attack in args.attacks for name in ("baseline", attack)] + ["baseline"]
        for name in schedule:
            label = ATTACKS[name][0] if name in ATTACKS else "baseline (no attack)"
            print(f"phase: {label}", flush=True)
            run.phase = figures = PhaseFigures(label, is_baseline=name not in ATTACKS)
            cpu_before, started = run.cpu_s(), time.monotonic()
            visitors_before, machine_before = own_cpu_s(), machine_busy_s()
            sent = spawn.Value("q", 0)
            process = None
            if name in ATTACKS:
                ready = spawn.Event()
                process = spawn.Process(
                    target=attack_process,
                    args=(name, ingest_url, run.attacker_key, sent, args.attack_rate, args.attacker_cpus, ready),
                )
                process.start()
                # The attacker's imports take a second or more on a busy machine: not a turn "on".
                await asyncio.to_thread(ready.wait, 30)
            if process is not None and process.pid is not None:
                await alternate(run, process.pid, args.phase, args.slice, args.edge)
                with contextlib.suppress(psutil.NoSuchProcess):
                    attacker_times = psutil.Process(process.pid).cpu_times()
                    figures.attacker_cpu_s = attacker_times.user + attacker_times.system
                process.terminate()
                await asyncio.to_thread(process.join)
            else:
                await asyncio.sleep(args.baseline)
            figures.seconds = time.monotonic() - started
            figures.cpu_s = run.cpu_s() - cpu_before
            figures.visitors_cpu_s = own_cpu_s() - visitors_before
            figures.machine_busy_s = machine_busy_s() - machine_before
            figures.rss_mb = run.rss_mb()
            figures.attack_requests = int(sent.value)
            phases.append(figures)
            run.phase = PhaseFigures("settle")
            if name in ATTACKS:
                # Only after an attack: what it left behind (queued work, closing sockets) is not
                # the next baseline's.
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


def placement(args: argparse.Namespace) -> str:
    if not (args.attacker_cpus or args.visitor_cpus or args.server_cpus):
        return "no CPU pinning"

    def cpus(values: list[int]) -> str:
        return ",".join(map(str, values)) if values else "any"

    return (
        f"pinned: attacker to CPU {cpus(args.attacker_cpus)}, honest visitors to CPU {cpus(args.visitor_cpus)}, "
        f"the stack to CPU {cpus(args.server_cpus)}"
    )


TARGET_P95_RATIO = 2.0
TARGET_RSS_GROWTH_MB = 100.0


@dataclass
class Judged:
    """An attack phase next to the baseline windows just before and after it."""

    attack: PhaseFigures
    around: list[PhaseFigures]

    @property
    def baseline_latencies_ms(self) -> list[float]:
        return [latency for window in self.around for latency in window.latencies_ms]

    @property
    def p95_ratio(self) -> float:
        return percentile(self.attack.latencies_ms, 0.95) / percentile(self.baseline_latencies_ms, 0.95)

    @property
    def interleaved_ratio(self) -> float | None:
        """Honest p95 while the attacker ran over while it was paused, turn by turn; None without turns."""
        if not self.attack.latencies_on_ms or not self.attack.latencies_off_ms:
            return None
        return percentile(self.attack.latencies_on_ms, 0.95) / percentile(self.attack.latencies_off_ms, 0.95)

    @property
    def ratio(self) -> float:
        """The ratio the target is judged by: the interleaved one where there are turns."""
        interleaved = self.interleaved_ratio
        return self.p95_ratio if interleaved is None else interleaved

    @property
    def cpu_per_attack_request_ms(self) -> float | None:
        """Ingest's CPU per attack request, over the rate of the windows around it."""
        if not self.attack.attack_requests:
            return None
        seconds = sum(window.seconds for window in self.around)
        rate = sum(window.cpu_s for window in self.around) / seconds if seconds else 0.0
        extra_cpu = max(self.attack.cpu_s - rate * self.attack.seconds, 0.0)
        return extra_cpu / self.attack.attack_requests * 1000


def judge(phases: list[PhaseFigures]) -> list[Judged]:
    """Each attack with the baseline windows adjacent to it (one before, one after)."""
    judged = []
    for index, phase in enumerate(phases):
        if phase.is_baseline:
            continue
        around = [phases[n] for n in (index - 1, index + 1) if 0 <= n < len(phases) and phases[n].is_baseline]
        judged.append(Judged(phase, around))
    return judged


def report(
    phases: list[PhaseFigures],
    acknowledged: int,
    stored: int,
    args: argparse.Namespace,
    command: str,
    load_before: str = "",
) -> str:
    cores = os.cpu_count() or 1
    baselines = [phase for phase in phases if phase.is_baseline]
    judged = judge(phases)
    rows = []
    for item in judged:
        phase = item.attack
        p95 = percentile(phase.latencies_ms, 0.95)
        around = item.baseline_latencies_ms
        cpu_per_attack = item.cpu_per_attack_request_ms
        refusals = ", ".join(f"{code}: {count}" for code, count in sorted(phase.refusals.items())) or "0"
        interleaved = item.interleaved_ratio
        turns = (
            "-"
            if interleaved is None
            else f"{percentile(phase.latencies_on_ms, 0.95):.0f} / {percentile(phase.latencies_off_ms, 0.95):.0f} "
            f"(n={len(phase.latencies_on_ms)}/{len(phase.latencies_off_ms)}) | **{interleaved:.1f}×**"
        )
        if interleaved is None:
            turns += " | -"
        rows.append(
            f"| {phase.name} | {turns} | {statistics.median(phase.latencies_ms or [0]):.0f} / "
            f"{p95:.0f} | {statistics.median(around or [0]):.0f} / {percentile(around, 0.95):.0f} | "
            f"{item.p95_ratio:.1f}× | {refusals} | {phase.attack_requests} | "
            f"{'-' if cpu_per_attack is None else f'{cpu_per_attack:.1f} ms'} | "
            f"{phase.share(phase.attacker_cpu_s):.0%} | {phase.share(phase.cpu_s):.0%} | "
            f"{phase.share(phase.visitors_cpu_s):.0%} | {phase.share(phase.machine_busy_s) / cores:.0%} | "
            f"{phase.rss_mb:.0f} |"
        )
    window_figures = ", ".join(
        f"{statistics.median(window.latencies_ms or [0]):.0f}/{percentile(window.latencies_ms, 0.95):.0f}"
        for window in baselines
    )
    rss_growth = max(phase.rss_mb for phase in phases) - phases[0].rss_mb
    honest_refusals = sum(sum(phase.refusals.values()) for phase in phases)
    control_name = ATTACKS["cpu-burn"][0]
    over = [
        f"{item.attack.name} ({item.ratio:.1f}×)"
        for item in judged
        if item.ratio > TARGET_P95_RATIO and item.attack.name != control_name
    ]
    controls = [f"{item.ratio:.1f}×" for item in judged if item.attack.name == control_name]
    verdict = [
        "honest p95 ≤ 2× without the attack under every attack (interleaved turns where there are): "
        + ("met" if not over else "**missed** by " + "; ".join(over)),
        *(
            [f"the control (CPU taken, nothing sent) {controls[0]}: a ratio up to it is what the CPU explains"]
            if controls
            else []
        ),
        f"honest refusals: {honest_refusals}",
        f"ingest RSS growth {rss_growth:.0f} MB (≤ {TARGET_RSS_GROWTH_MB:.0f} MB: "
        f"{'met' if rss_growth <= TARGET_RSS_GROWTH_MB else '**missed**'})",
        f"honest events acknowledged {acknowledged}, stored {stored} "
        f"({'equal' if acknowledged == stored else '**DIFFERENT**'})",
    ]
    return "\n".join(
        [
            MARKERS[0],
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({cores} cores), "
            f"one ingest worker, attacker (from {ATTACKER_ADDRESS}), visitors (from 127.0.0.1), Postgres and "
            "PgBouncer on the same machine "
            f"({placement(args)}). Command: `{command}`. Load average before: {load_before}, after: "
            f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}.",
            f"{args.visitors} honest visitors (a 3-event batch every ~1 s each, retried like the tracker), "
            f"{args.phase:.0f} s per attack, each between two {args.baseline:.0f}-s baseline windows with no "
            f"attack, {args.settle:.0f} s to settle after each attack"
            + (f", attacks capped at {args.attack_rate:g} requests/s" if args.attack_rate else "")
            + (
                f". Within each attack the attacker runs and is paused (SIGSTOP) in turns of {args.slice:g} s; "
                "honest first attempts are split by the turn they started in (not within "
                f"{args.edge:g} s after a switch): the interleaved ratio compares the same moments of the machine. "
                if args.slice > 0
                else ". "
            )
            + "The windows' ratio is over the honest requests of the two no-attack windows around the attack. "
            "CPU columns: "
            "share of one core over the phase (attacker, ingest, the honest visitors' process); machine: share "
            "of all cores busy (everything on the box, other work included).",
            "",
            "| attack | honest p95 ms, attacker running / paused (requests) | interleaved ratio "
            "| honest p50 / p95 ms, whole phase | windows around it p50 / p95 ms | windows' ratio "
            "| honest refusals (first attempts) | attack requests | ingest CPU per attack request | attacker CPU "
            "| ingest CPU | visitors CPU | machine busy | ingest RSS MB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"Baseline windows in run order, honest p50/p95 ms: {window_figures} (how far the machine alone "
            "moves the honest path during the run).",
            "",
            "Targets: " + "; ".join(verdict) + ".",
            MARKERS[1],
        ]
    )


def _names(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in ATTACKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown attacks {unknown}; known: {','.join(ATTACKS)}")
    return names


def _cpus(value: str) -> list[int]:
    return [int(cpu) for cpu in value.split(",") if cpu.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--visitors", type=int, default=200)
    parser.add_argument("--phase", type=float, default=20, help="seconds per attack")
    parser.add_argument("--baseline", type=float, default=10, help="seconds of each baseline window")
    parser.add_argument(
        "--slice", type=float, default=2, help="seconds the attacker runs, then is paused, in turns (0: no pauses)"
    )
    parser.add_argument("--edge", type=float, default=0.5, help="seconds after each switch that count for neither")
    parser.add_argument("--settle", type=float, default=5, help="seconds after each attack")
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--attacks",
        type=_names,
        default=list(ATTACKS),
        help=f"comma-separated, in order (default: all): {','.join(ATTACKS)}",
    )
    parser.add_argument("--attack-rate", type=float, default=0.0, help="attack requests/s at most (0: unlimited)")
    parser.add_argument("--attacker-cpus", type=_cpus, default=[], help="pin the attacker's process, e.g. 1")
    parser.add_argument("--visitor-cpus", type=_cpus, default=[], help="pin the honest visitors (this process), e.g. 0")
    parser.add_argument(
        "--server-cpus", type=_cpus, default=[], help="pin Postgres, PgBouncer and the services, e.g. 0"
    )
    args = parser.parse_args()
    command = "make attack" + (f' ATTACK_ARGS="{" ".join(sys.argv[1:])}"' if len(sys.argv) > 1 else "")
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with throwaway_stack(lambda: None, ingest_workers=1) as stack:
        phases, acknowledged, stored = asyncio.run(run_attacks(args, stack))
    section = report(phases, acknowledged, stored, args, command, load_before)
    print(section)
    if not args.no_write:
        write_section(section, MARKERS, RELIABILITY)


if __name__ == "__main__":
    main()
