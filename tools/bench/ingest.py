"""`make bench-ingest`: closed-loop throughput of POST /v1/events against the no-op endpoint.

Runs wrk (Debian's package) against the stack that `make up` started, alternating the
no-op endpoint and /v1/events with the same body, connections and duration, so the figure
is a ratio within one run on a shared machine. Checks that every 202 stored its events.
Writes the figures to docs/benchmarks.md between the ingest-wrk markers.

Around each wrk run it reads, from /proc, the CPU time of each process of the stack (the
ingest server with its workers, every Postgres process, PgBouncer) and of wrk itself, and
reports it per request: requests/s on a shared machine says little by itself, CPU per request
says what each request costs and where.

During each run it also samples `pg_stat_activity` every 50 ms (on a connection of the owner,
who is a member of the services' role and so sees their backends in full) and reports the
average number of the services' backends per state: on CPU, waiting (by wait event), idle.
Latency that is not CPU shows there (issue #18: a row lock that serialised batches).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import msgspec
from sqlalchemy import text

from services.cli.stack import load_local_env
from services.common.db import admin_transaction
from services.common.settings import AdminDatabaseSettings, ServerSettings, StackSettings
from tools.bench.proc_cpu import load_average, machine_busy_seconds, read_tree
from tools.benchmarks_file import write_section
from tools.noop import require_noop_endpoint

ROOT = Path(__file__).resolve().parents[2]
MARKERS = ("<!-- ingest-wrk:start -->", "<!-- ingest-wrk:end -->", "## Ingest: closed-loop throughput (wrk)")
START, END, _ = MARKERS

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"
local f = io.open(os.getenv("SIGHTLINE_BENCH_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
"""

# Like the tracker: every event has a fresh uuid (stored once, through ingested_events), and
# the batches come from many visitors, each with its own session, in turn. One body repeated
# (LUA) holds no uuids and one session, so every batch updates the same session row.
LUA_VARIED = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"
local f = io.open(os.getenv("SIGHTLINE_BENCH_BODY"), "rb")
local template = f:read("*a")
f:close()
local visitors = tonumber(os.getenv("SIGHTLINE_BENCH_VISITORS"))
local bodies = {}
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
local tag = string.format("%08x", math.random(0, 0x7fffffff))
for v = 1, visitors do
  local body = template:gsub("@SESSION@", string.format("%s-session-%04d", tag, v))
  bodies[v] = body:gsub("@VISITOR@", string.format("%s-visitor-%04d", tag, v))
end
local r = math.random
local function uuid()
  return string.format("%04x%04x-%04x-4%03x-%04x-%04x%04x%04x",
    r(0, 65535), r(0, 65535), r(0, 65535), r(0, 4095), r(32768, 49151), r(0, 65535), r(0, 65535), r(0, 65535))
end
local turn = 0
request = function()
  turn = turn % visitors + 1
  return wrk.format(nil, nil, nil, (bodies[turn]:gsub("@UUID@", uuid)))
end
"""


def batch_body(public_key: str, events: int) -> bytes:
    """About 3 kB: a batch of pageviews and custom events like a tracker's 5-second flush."""
    now = datetime.now(UTC).isoformat()
    session = str(uuid.uuid4())
    batch = [
        {
            "event": "pageview" if n % 3 == 0 else "click_cta",
            "distinctId": "bench-visitor-0001",
            "sessionId": session,
            "timestamp": now,
            "url": f"https://example.com/docs/getting-started/section-{n}?utm_source=bench&utm_medium=wrk",
            "referrer": "https://www.google.com/",
            "title": "Getting started with Sightline - documentation",
            "properties": {"plan": "pro", "position": n, "variant": "b", "label": "Start your free trial"},
        }
        for n in range(events)
    ]
    return msgspec.json.encode({"projectKey": public_key, "events": batch})


# What the CPU figures are split into: a name and how to find the root pids of its trees.
PROCESS_GROUPS = ("ingest", "postgres", "pgbouncer")


def _pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stack_pids(data_dir: Path) -> dict[str, list[int]]:
    """Root pids of the stack's process trees: ingest's Granian, each Postgres postmaster, PgBouncer."""
    postmasters = [data_dir / "postgres" / "postmaster.pid", *sorted((data_dir / "citus").glob("*/postmaster.pid"))]
    pids = {
        "ingest": [_pid_file(data_dir / "run" / "ingest.pid")],
        "postgres": [_pid_file(path) for path in postmasters],
        "pgbouncer": [_pid_file(data_dir / "run" / "pgbouncer.pid")],
    }
    return {group: [pid for pid in found if pid is not None] for group, found in pids.items()}


def cpu_reading(pids: dict[str, list[int]]) -> dict[str, float]:
    reading = {group: sum(read_tree(pid).total for pid in roots) for group, roots in pids.items()}
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has been waited for
    reading["wrk"] = usage.ru_utime + usage.ru_stime
    reading["machine"] = machine_busy_seconds()
    return reading


# Per sample, the services' backends (not the owner's, not background workers) by state: on CPU
# (active, no wait event), the wait event of an active one, or the state of an idle one.
_WAIT_SAMPLE = (
    "SELECT CASE WHEN state = 'active' THEN coalesce(wait_event_type || ':' || wait_event, 'CPU')"
    " ELSE coalesce(state, 'unknown') END AS state, count(*) AS backends FROM pg_stat_activity"
    " WHERE datname = current_database() AND backend_type = 'client backend' AND usename <> current_user"
    " GROUP BY 1"
)


class WaitSampler:
    """Samples _WAIT_SAMPLE every interval_s in a thread of its own while the `with` block runs;
    `averages` is then the mean number of backends per state over the samples."""

    def __init__(self, database_url: str, interval_s: float = 0.05) -> None:
        self._url = database_url.replace("postgresql+asyncpg://", "postgresql://")
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._totals: Counter[str] = Counter()
        self._samples = 0
        self._error: BaseException | None = None

    async def _run(self) -> None:
        try:
            connection = await asyncpg.connect(self._url, statement_cache_size=0)
        except (OSError, asyncpg.PostgresError) as error:
            self._error = error
            return
        try:
            while not self._stop.is_set():
                for row in await connection.fetch(_WAIT_SAMPLE):
                    self._totals[row["state"]] += row["backends"]
                self._samples += 1
                await asyncio.sleep(self._interval_s)
        finally:
            await connection.close()

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            print(f"pg_stat_activity not sampled: {self._error}", flush=True)

    @property
    def averages(self) -> dict[str, float]:
        return {state: total / self._samples for state, total in self._totals.items()} if self._samples else {}


def batch_template(public_key: str, events: int) -> bytes:
    """batch_body with placeholders that LUA_VARIED fills: visitor, session, a uuid per event."""
    document = msgspec.json.decode(batch_body(public_key, events))
    for event in document["events"]:
        event.update(distinctId="@VISITOR@", sessionId="@SESSION@", uuid="@UUID@")
    return msgspec.json.encode(document)


def run_wrk(
    url: str,
    body_file: Path,
    lua_file: Path,
    seconds: int,
    connections: int,
    threads: int,
    pids: dict[str, list[int]] | None = None,
    visitors: int = 1,
    database_url: str | None = None,
) -> dict[str, float]:
    """wrk's figures, the CPU per request of each process group (with pids) and the average
    backends per state (with database_url: a key `wait <state>` per state seen)."""
    before = cpu_reading(pids) if pids is not None else {}
    sampler = WaitSampler(database_url) if database_url is not None else None
    if sampler is not None:
        sampler.__enter__()
    try:
        output = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua_file), url],
            env={**os.environ, "SIGHTLINE_BENCH_BODY": str(body_file), "SIGHTLINE_BENCH_VISITORS": str(visitors)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        if sampler is not None:
            sampler.__exit__()
    after = cpu_reading(pids) if pids is not None else {}
    figures: dict[str, float] = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}  # type: ignore[union-attr]
    figures["requests"] = float(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    if sampler is not None:
        figures.update({f"wait {state}": backends for state, backends in sampler.averages.items()})
    # CPU per request, in ms, of each group (requests counted by wrk; in-flight ones at the end are few).
    for group in after:
        figures[f"cpu_ms_{group}"] = (after[group] - before[group]) * 1000 / max(figures["requests"], 1.0)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    figures["non_2xx"] = float(non_2xx.group(1)) if non_2xx else 0.0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    figures["socket_errors"] = float(sum(int(g) for g in errors.groups())) if errors else 0.0
    for percentile in ("50", "99"):
        match = re.search(rf"\s{percentile}%\s+([\d.]+)(us|ms|s)\b", output)
        if match:
            value, unit = float(match.group(1)), match.group(2)
            figures[f"p{percentile}_ms"] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return figures


async def count_events(settings: AdminDatabaseSettings, project_id: int) -> int:
    async with admin_transaction(settings) as connection:
        result = await connection.execute(text("SELECT count(*) FROM events WHERE project_id = :p"), {"p": project_id})
        return int(result.scalar_one())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--events", type=int, default=8, help="events per batch (8 is about 3 kB)")
    parser.add_argument(
        "--visitors",
        type=int,
        default=64,
        help="visitors (each one session) whose batches take turns, every event with a fresh uuid as the tracker"
        " sends; 0: one body repeated, no uuids, one session (the figures before 2026-11-30 07:30 UTC)",
    )
    parser.add_argument("--no-write", action="store_true", help="print figures without editing docs/benchmarks.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")

    load_local_env()
    stack = StackSettings.from_env()
    demo_file = stack.data_dir / "demo-project.json"
    if not demo_file.exists():
        raise SystemExit("run `make up` first: the benchmark uses the running stack and its demo project")
    demo = json.loads(demo_file.read_text())
    admin = AdminDatabaseSettings.from_env()
    server = ServerSettings.from_env("ingest")
    base = f"http://{server.host}:{server.port}"
    require_noop_endpoint(base)
    pids = stack_pids(stack.data_dir)
    load_before = load_average()

    with tempfile.TemporaryDirectory() as scratch:
        body_file, lua_file = Path(scratch) / "body.json", Path(scratch) / "post.lua"
        if args.visitors > 0:
            body = batch_template(str(demo["publicKey"]), args.events)
            lua_file.write_text(LUA_VARIED)
        else:
            body = batch_body(str(demo["publicKey"]), args.events)
            lua_file.write_text(LUA)
        body_file.write_bytes(body)
        stored_before = asyncio.run(count_events(admin, int(demo["id"])))
        results: dict[str, list[dict[str, float]]] = {"noop": [], "events": []}
        for _ in range(args.rounds):
            for name, path in (("noop", "/v1/noop"), ("events", "/v1/events")):
                figures = run_wrk(
                    base + path,
                    body_file,
                    lua_file,
                    args.seconds,
                    args.connections,
                    args.threads,
                    pids,
                    visitors=max(args.visitors, 1),
                    database_url=admin.url,
                )
                results[name].append(figures)
                print(f"{name:>6}: {figures}", flush=True)
        stored_after = asyncio.run(count_events(admin, int(demo["id"])))

    acknowledged = sum(r["requests"] - r["non_2xx"] for r in results["events"]) * args.events
    load = f"load average {load_before} at start, {load_average()} at end"
    summary = summarise(results, len(body), args, stored_after - stored_before, int(acknowledged), load)
    print(summary)
    if not args.no_write:
        write_section(summary, MARKERS)


def _mean(runs: list[dict[str, float]], key: str) -> float:
    return sum(run.get(key, 0.0) for run in runs) / len(runs)


def _best(runs: list[dict[str, float]], key: str) -> float:
    return max(run.get(key, 0.0) for run in runs)


def summarise(
    results: dict[str, list[dict[str, float]]],
    body_bytes: int,
    args: argparse.Namespace,
    stored: int,
    acknowledged: int,
    load: str,
) -> str:
    noop_rps = sum(r["rps"] for r in results["noop"]) / len(results["noop"])
    events_rps = sum(r["rps"] for r in results["events"]) / len(results["events"])
    verdict = "Every 202 was stored" if stored >= acknowledged else "**ACKNOWLEDGED EVENTS ARE MISSING**"
    rows = "\n".join(
        f"| {name} | {run['rps']:.0f} | {run.get('p50_ms', 0):.1f} | {run.get('p99_ms', 0):.1f} | "
        f"{run['non_2xx']:.0f} | {run['socket_errors']:.0f} |"
        for name in ("noop", "events")
        for run in results[name]
    )
    cpu_rows = "\n".join(
        f"| {name} | "
        + " | ".join(f"{run.get(f'cpu_ms_{group}', 0):.3f}" for group in (*PROCESS_GROUPS, "wrk"))
        + f" | {run.get('cpu_ms_machine', 0):.3f} |"
        for name in ("noop", "events")
        for run in results[name]
    )
    shape = (
        f"{args.visitors} visitors' bodies in turn, each its own session, every event with a fresh uuid"
        if args.visitors > 0
        else "one body repeated: one session, no uuids"
    )
    states = sorted(
        {key for run in results["events"] for key in run if key.startswith("wait ")},
        key=lambda key: -_mean(results["events"], key),
    )
    waits = (
        ", ".join(f"{key.removeprefix('wait ')} {_mean(results['events'], key):.2f}" for key in states) or "not sampled"
    )
    noop_cpu = _mean(results["noop"], "cpu_ms_ingest")
    events_cpu = _mean(results["events"], "cpu_ms_ingest")
    return f"""{START}
Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores, {platform.machine()},
Python {platform.python_version()}); wrk, Postgres, PgBouncer and the services share the machine;
{load}.

Command: `SIGHTLINE_INGEST_BENCHMARK_NOOP=1 SIGHTLINE_INGEST_RATE_LIMIT_REQUESTS_PER_S=0 make up && make bench-ingest`
(wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, {args.rounds} rounds, alternating endpoints;
body about {body_bytes} bytes of JSON, {args.events} events per batch; {shape}).

| endpoint | requests/s | p50 ms | p99 ms | non-2xx | socket errors |
| --- | --- | --- | --- | --- | --- |
{rows}

CPU per request in ms, from /proc (user + system time of each process tree during the wrk run,
divided by the requests wrk counted; `machine` is every core's busy time, other work included):

| endpoint | ingest (server + workers) | postgres (all processes) | pgbouncer | wrk | machine |
| --- | --- | --- | --- | --- | --- |
{cpu_rows}

The services' Postgres backends during the events runs (`pg_stat_activity` every 50 ms, average
backends per state: `CPU` active and not waiting, `Type:event` active and waiting, else idle):
{waits}.

Ingest CPU per /v1/events request: {events_cpu:.3f} ms ({events_cpu / args.events * 1000:.0f} us per stored event),
{events_cpu - noop_cpu:.3f} ms more than the no-op's {noop_cpu:.3f} ms.

POST /v1/events reaches **{events_rps / noop_rps:.0%}** of the no-op endpoint's requests/s in the same run
({events_rps:.0f} vs {noop_rps:.0f} requests/s, {events_rps * args.events:.0f} events/s committed).
{verdict}: {acknowledged} events acknowledged by a 202 that wrk counted,
{stored} new rows in `events` (more rows than 202s: requests in flight when wrk stopped were committed
but not counted).
{END}"""


if __name__ == "__main__":
    main()
