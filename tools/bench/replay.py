"""`make bench-replay`: how fast a recording starts and streams, and the worker's memory.

Starts its own throwaway Postgres + PgBouncer (free ports, a temporary directory) and the
replay service under Granian, stores a 3-, a 30- and a 120-minute session the way ingest
does (a first chunk of 15-60 kB gzip with a full snapshot, then one ~3 kB gzip chunk every
5 s), then fetches the recordings in both formats and reports time to first byte,
throughput, and the Granian worker's peak RSS (psutil, sampled every 2 ms), one client
at a time and then 8 at once. Each session
length gets a fresh server, warmed up identically, so the two peaks compare like for like.
Everything it started is stopped and its directory removed, also on failure.

    python -m tools.bench.replay [--runs 20] [--output results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import http.client
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import text

from services.cli import admin
from services.cli.serving import running_service
from services.cli.throwaway import throwaway_database
from services.common.db import admin_transaction
from services.common.settings import AdminDatabaseSettings

CHUNK_INTERVAL_MS = 5_000
FIRST_CHUNK_GZIP_BYTES = 40_000  # inside the seed's 15-60 kB range for a first chunk
LATER_CHUNK_GZIP_BYTES = 3_000
FRAMES = "application/vnd.sightline.replay-chunks"
NDJSON = "application/x-ndjson"
CONCURRENT_CLIENTS = 8

WORDS = " ".join(
    [
        "account add basket billing blog browse buy cart checkout close contact continue copy create delivery details",
        " discount download edit email faq features free help home invoice learn login logout menu more news next",
        " open order orders page password payment plan plans pricing privacy product products profile read register",
        " remove reset return save search security send settings share shipping shop sign size sort start submit",
        " subscribe support team terms total update upgrade view welcome wishlist your",
    ]
).split()
TAGS = ["div", "span", "a", "li", "p", "button", "img", "section", "h2", "input", "label", "ul"]


# --- realistic-looking rrweb chunks -----------------------------------------------------------


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def _full_snapshot_events(rng: random.Random, timestamp: int, target_gzip_bytes: int) -> list[dict[str, Any]]:
    """Meta + full snapshot with as many DOM nodes as it takes to reach the target gzip size."""
    nodes: list[dict[str, Any]] = []
    node_id = 10
    while True:
        for _ in range(50):
            node_id += 2
            nodes.append(
                {
                    "type": 2,
                    "tagName": rng.choice(TAGS),
                    "attributes": {
                        "class": f"{rng.choice(WORDS)}-{rng.choice(WORDS)} c{rng.randrange(10_000):04x}",
                        "href": f"/{rng.choice(WORDS)}/{rng.randrange(100_000)}",
                    },
                    "childNodes": [{"type": 3, "textContent": _words(rng, rng.randrange(3, 15)), "id": node_id + 1}],
                    "id": node_id,
                }
            )
        events = [
            {
                "type": 4,
                "data": {"href": "https://shop.example/", "width": 1440, "height": 900},
                "timestamp": timestamp,
            },
            {
                "type": 2,
                "data": {"node": {"type": 0, "childNodes": nodes, "id": 1}, "initialOffset": {"left": 0, "top": 0}},
                "timestamp": timestamp,
            },
        ]
        if len(gzip.compress(json.dumps(events).encode())) >= target_gzip_bytes:
            return events


def _incremental_events(rng: random.Random, start: int, target_gzip_bytes: int) -> list[dict[str, Any]]:
    """Mouse moves, clicks, scrolls and small mutations over 5 s, up to the target gzip size."""
    events: list[dict[str, Any]] = []
    while True:
        for _ in range(5):
            timestamp = start + rng.randrange(CHUNK_INTERVAL_MS)
            kind = rng.random()
            if kind < 0.6:
                data: dict[str, Any] = {
                    "source": 1,
                    "positions": [
                        {
                            "x": rng.randrange(1440),
                            "y": rng.randrange(900),
                            "id": rng.randrange(2_000),
                            "timeOffset": -i,
                        }
                        for i in range(rng.randrange(3, 10))
                    ],
                }
            elif kind < 0.75:
                data = {"source": 2, "type": 2, "id": rng.randrange(2_000), "x": rng.randrange(1440), "y": 400}
            elif kind < 0.85:
                data = {"source": 3, "id": 1, "x": 0, "y": rng.randrange(5_000)}
            else:
                data = {
                    "source": 0,
                    "texts": [{"id": rng.randrange(2_000), "value": _words(rng, 4)}],
                    "attributes": [],
                    "removes": [],
                    "adds": [],
                }
            events.append({"type": 3, "data": data, "timestamp": timestamp})
        if len(gzip.compress(json.dumps(events).encode())) >= target_gzip_bytes:
            return sorted(events, key=lambda event: int(event["timestamp"]))


@dataclass(frozen=True)
class GeneratedChunk:
    seq: int
    first_ms: int
    last_ms: int
    event_count: int
    full_snapshot: bool
    data: bytes


def generate_session(rng: random.Random, session_id: str, minutes: int, public_key: str) -> list[GeneratedChunk]:
    chunks: list[GeneratedChunk] = []
    base = int(datetime(2026, 11, 26, 12, tzinfo=UTC).timestamp() * 1000)
    for seq in range(minutes * 60_000 // CHUNK_INTERVAL_MS):
        start = base + seq * CHUNK_INTERVAL_MS
        if seq == 0:
            events = _full_snapshot_events(rng, start, FIRST_CHUNK_GZIP_BYTES)
            events += _incremental_events(rng, start, LATER_CHUNK_GZIP_BYTES)
            events.sort(key=lambda event: int(event["timestamp"]))
        else:
            events = _incremental_events(rng, start, LATER_CHUNK_GZIP_BYTES)
        body = {"projectKey": public_key, "sessionId": session_id, "distinctId": "bench", "seq": seq, "events": events}
        chunks.append(
            GeneratedChunk(
                seq=seq,
                first_ms=events[0]["timestamp"],
                last_ms=events[-1]["timestamp"],
                event_count=len(events),
                full_snapshot=seq == 0,
                data=gzip.compress(json.dumps(body, separators=(",", ":")).encode()),
            )
        )
    return chunks


async def store_session(
    settings: AdminDatabaseSettings, project_id: int, session_id: str, chunks: list[GeneratedChunk]
) -> None:
    def at(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)

    async with admin_transaction(settings) as connection:
        await connection.execute(
            text(
                "INSERT INTO replay_sessions (project_id, session_id, distinct_id, started_at, ended_at,"
                " chunk_count, total_bytes) VALUES (:p, :s, 'bench', :start, :end, :count, :bytes)"
            ),
            {
                "p": project_id,
                "s": session_id,
                "start": at(chunks[0].first_ms),
                "end": at(chunks[-1].last_ms),
                "count": len(chunks),
                "bytes": sum(len(chunk.data) for chunk in chunks),
            },
        )
        await connection.execute(
            text(
                "INSERT INTO replay_chunks (project_id, session_id, seq, first_timestamp, last_timestamp,"
                " event_count, has_full_snapshot, content_encoding, byte_size, data)"
                " VALUES (:p, :s, :seq, :first, :last, :count, :snapshot, 'gzip', :size, :data)"
            ),
            [
                {
                    "p": project_id,
                    "s": session_id,
                    "seq": chunk.seq,
                    "first": at(chunk.first_ms),
                    "last": at(chunk.last_ms),
                    "count": chunk.event_count,
                    "snapshot": chunk.full_snapshot,
                    "size": len(chunk.data),
                    "data": chunk.data,
                }
                for chunk in chunks
            ],
        )
        await connection.execute(text("ANALYZE replay_chunks"))


# --- processes ------------------------------------------------------------------------------


@contextlib.contextmanager
def replay_server(database_url: str, log_file: Path) -> Iterator[tuple[int, psutil.Process]]:
    """The replay service under Granian with one worker, as `sightline up` runs it."""
    env = {
        **os.environ,
        "SIGHTLINE_DATABASE_URL": database_url,
        "SIGHTLINE_LOG_LEVEL": "WARNING",
        "SIGHTLINE_REPLAY_WORKERS": "1",
        # The benchmark measures streaming, not the per-project rate limit it would run into.
        "SIGHTLINE_REPLAY_RATE_LIMIT_REQUESTS_PER_S": "0",
    }
    with running_service("replay", env, log_file, ready_timeout_s=60) as replay:
        yield int(replay.url.rsplit(":", 1)[1]), _worker(psutil.Process(replay.process.pid))


def _worker(granian: psutil.Process) -> psutil.Process:
    # Granian's main process supervises; the app runs in a worker child process.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = granian.children(recursive=True)
        if children:
            return max(children, key=lambda child: child.memory_info().rss)
        time.sleep(0.05)
    return granian


class PeakRss:
    """Samples a process's RSS every 2 ms in a thread and keeps the highest."""

    def __init__(self, process: psutil.Process) -> None:
        self._process = process
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# --- measuring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetch:
    first_byte_s: float
    total_s: float
    body_bytes: int


def fetch(connection: http.client.HTTPConnection, path: str, secret_key: str, accept: str) -> Fetch:
    started = time.perf_counter()
    connection.request("GET", path, headers={"Authorization": f"Bearer {secret_key}", "Accept": accept})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status} {response.read()[:200]!r}")
    first = response.read1(65_536)
    first_byte = time.perf_counter()
    received = len(first)
    while piece := response.read1(262_144):
        received += len(piece)
    return Fetch(first_byte_s=first_byte - started, total_s=time.perf_counter() - started, body_bytes=received)


def measure(port: int, secret_key: str, session_id: str, accept: str, runs: int) -> dict[str, float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        fetches = [fetch(connection, f"/v1/sessions/{session_id}/recording", secret_key, accept) for _ in range(runs)]
    finally:
        connection.close()
    first_bytes_ms = sorted(f.first_byte_s * 1000 for f in fetches)
    totals_ms = sorted(f.total_s * 1000 for f in fetches)
    body_bytes = fetches[0].body_bytes
    return {
        "bodyBytes": body_bytes,
        "firstByteMsMedian": round(statistics.median(first_bytes_ms), 2),
        "firstByteMsMax": round(first_bytes_ms[-1], 2),
        "totalMsMedian": round(statistics.median(totals_ms), 2),
        "throughputMBps": round(body_bytes / 1e6 / (statistics.median(totals_ms) / 1000), 1),
    }


def measure_with_cpu(
    worker: psutil.Process, port: int, secret_key: str, session_id: str, accept: str, runs: int
) -> dict[str, float]:
    """``measure``, plus the worker's own CPU time per fetch.

    On a shared machine wall-clock figures mostly measure the neighbours; CPU seconds the
    worker spent per recording do not, and bytes per CPU second is what one dedicated core
    would stream (Postgres and PgBouncer, also on this machine, are not counted).
    """
    before = worker.cpu_times()
    figures = measure(port, secret_key, session_id, accept, runs)
    after = worker.cpu_times()
    cpu_s = (after.user - before.user + after.system - before.system) / runs
    figures["workerCpuMsPerFetch"] = round(cpu_s * 1000, 2)
    figures["MBPerWorkerCpuSecond"] = round(figures["bodyBytes"] / 1e6 / cpu_s, 1) if cpu_s > 0 else float("nan")
    return figures


def measure_concurrent(port: int, secret_key: str, session_id: str, clients: int, runs: int) -> dict[str, float]:
    """``clients`` connections fetching the recording (frames) at once: aggregate throughput."""
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: measure(port, secret_key, session_id, FRAMES, runs), range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "fetchesPerClient": runs,
        "aggregateMBps": round(sum(r["bodyBytes"] * runs for r in results) / 1e6 / elapsed, 1),
        "firstByteMsMedianOfMedians": round(statistics.median(r["firstByteMsMedian"] for r in results), 2),
    }


def health_latency_ms(port: int, runs: int) -> float:
    """Median round trip of GET /health/live: this machine's floor for any request, in the same run."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    timings: list[float] = []
    try:
        for _ in range(runs):
            started = time.perf_counter()
            connection.request("GET", "/health/live")
            connection.getresponse().read()
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        connection.close()
    return round(statistics.median(timings), 2)


def run(runs: int, seed: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="sightline-bench-replay-", dir="/tmp"))
    root.chmod(0o755)
    results: dict[str, Any] = {
        "machine": f"{platform.node()}: {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.1f} GiB,"
        f" Python {platform.python_version()}, {platform.platform()}",
        "runsPerFigure": runs,
        # Other work on the machine skews every figure; the load average says how much.
        "loadAverageAtStart": [round(value, 2) for value in os.getloadavg()],
        "sessions": {},
    }
    try:
        with throwaway_database(root) as db:
            project = asyncio.run(
                admin.create_project(db.admin, name="bench", domains=["shop.example"], timezone="UTC")
            )
            rng = random.Random(seed)
            # 120 minutes as well: beyond the read batch size, memory must stay flat.
            sessions = {"3min": 3, "30min": 30, "120min": 120}
            for name, minutes in sessions.items():
                chunks = generate_session(rng, f"bench-{name}", minutes, str(project["publicKey"]))
                asyncio.run(store_session(db.admin, int(str(project["id"])), f"bench-{name}", chunks))
                results["sessions"][name] = {
                    "chunks": len(chunks),
                    "firstChunkGzipBytes": len(chunks[0].data),
                    "laterChunkGzipBytesMedian": statistics.median(len(chunk.data) for chunk in chunks[1:]),
                    "storedBytes": sum(len(chunk.data) for chunk in chunks),
                }
            secret = str(project["secretKey"])
            for name in sessions:
                with replay_server(db.service_url, root / "log" / "replay.log") as (port, worker):
                    # The same warm-up for both lengths: code paths loaded, pools filled.
                    measure(port, secret, "bench-3min", FRAMES, 3)
                    measure(port, secret, "bench-3min", NDJSON, 3)
                    health_ms = health_latency_ms(port, runs)
                    baseline = worker.memory_info().rss
                    with PeakRss(worker) as peak:
                        frames = measure_with_cpu(worker, port, secret, f"bench-{name}", FRAMES, runs)
                        ndjson = measure_with_cpu(worker, port, secret, f"bench-{name}", NDJSON, runs)
                    with PeakRss(worker) as concurrent_peak:
                        concurrent = measure_concurrent(port, secret, f"bench-{name}", CONCURRENT_CLIENTS, 5)
                    results["sessions"][name].update(
                        {
                            "healthLiveMsMedian": health_ms,
                            "frames": frames,
                            "ndjson": ndjson,
                            "concurrentFrames": concurrent,
                            "workerRssBaselineMiB": round(baseline / 2**20, 1),
                            "workerRssPeakMiB": round(peak.peak / 2**20, 1),
                            "workerRssPeakConcurrentMiB": round(concurrent_peak.peak / 2**20, 1),
                        }
                    )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| session | chunks | stored (gzip) | format | body bytes | first byte median / max | total median"
        " | throughput | worker CPU per fetch | MB per worker CPU second | worker RSS baseline → peak"
        " | GET /health/live median |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, session in results["sessions"].items():
        for fmt in ("frames", "ndjson"):
            figures = session[fmt]
            lines.append(
                f"| {name} | {session['chunks']} | {session['storedBytes'] / 1e6:.2f} MB | {fmt}"
                f" | {figures['bodyBytes'] / 1e6:.2f} MB"
                f" | {figures['firstByteMsMedian']} / {figures['firstByteMsMax']} ms"
                f" | {figures['totalMsMedian']} ms | {figures['throughputMBps']} MB/s"
                f" | {figures['workerCpuMsPerFetch']} ms | {figures['MBPerWorkerCpuSecond']}"
                f" | {session['workerRssBaselineMiB']} → {session['workerRssPeakMiB']} MiB"
                f" | {session['healthLiveMsMedian']} ms |"
            )
    lines += [
        "",
        f"| session | {CONCURRENT_CLIENTS} clients at once (frames): aggregate throughput | their median first byte"
        " | worker RSS peak |",
        "| --- | --- | --- | --- |",
    ]
    for name, session in results["sessions"].items():
        concurrent = session["concurrentFrames"]
        lines.append(
            f"| {name} | {concurrent['aggregateMBps']} MB/s | {concurrent['firstByteMsMedianOfMedians']} ms"
            f" | {session['workerRssPeakConcurrentMiB']} MiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20, help="fetches per format and session (default 20)")
    parser.add_argument("--seed", type=int, default=5, help="random seed for the generated recordings")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    arguments = parser.parse_args()
    results = run(arguments.runs, arguments.seed)
    results["command"] = " ".join(["python -m tools.bench.replay", *sys.argv[1:]])
    results["finishedAt"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["loadAverageAtEnd"] = [round(value, 2) for value in os.getloadavg()]
    if arguments.output:
        arguments.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({key: value for key, value in results.items() if key != "sessions"}, indent=2))
    print(json.dumps(results["sessions"], indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
