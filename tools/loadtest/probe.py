"""Ingest latency seen by a client that is not the load generator: `python -m tools.loadtest.probe`.

A load generator's own clock includes its own queueing: a response that waits in a busy
generator's event loop is timed late. This probe, a separate process at a low rate, posts one
events batch and then the same body to the no-op endpoint, on a fresh connection each, every
`--interval` seconds, and times them: what a browser would see from the same machine.

`sightline load` runs it beside every run (`--output`: one JSON line per request,
``[epoch s, path, status, ms]``, as a project of its own) and takes the report's headline from
it. Run by hand next to a load test against the stack `make up` started, it posts as the demo
project and prints p50 / p95 / max of both.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from services.cli.stack import load_local_env
from services.common.settings import ServerSettings, StackSettings
from tools.bench.ingest import batch_body
from tools.loadtest.hosts import LOOPBACK
from tools.noop import require_noop_endpoint


@dataclass
class Timings:
    milliseconds: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    def add(self, status: int, milliseconds: float) -> None:
        self.milliseconds.append(milliseconds)
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def summary(self) -> dict[str, object]:
        ordered = sorted(self.milliseconds)
        if not ordered:
            return {"requests": 0}
        return {
            "requests": len(ordered),
            "p50_ms": round(ordered[len(ordered) // 2]),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]),
            "max_ms": round(ordered[-1]),
            "statuses": self.statuses,
        }


def post_once(port: int, path: str, body: bytes) -> tuple[int, float]:
    """One POST on a new connection, as a tracker's first request of a page; (status, ms)."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json", "Origin": "https://example.com"})
        response = connection.getresponse()
        response.read()
        return response.status, (time.perf_counter() - started) * 1000
    finally:
        connection.close()


def probe(port: int, public_key: str, seconds: float, interval_s: float) -> dict[str, Timings]:
    body = batch_body(public_key, 8)
    timings = {"/v1/events": Timings(), "/v1/noop": Timings()}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path, collected in timings.items():
            collected.add(*post_once(port, path, body))
        time.sleep(interval_s)
    return timings


def probe_to_file(port: int, public_key: str, seconds: float, interval_s: float, output: Path) -> None:
    """Until `seconds` pass or SIGTERM: one events POST and one no-op POST per interval, a line each."""
    body = batch_body(public_key, 8)
    stopping = False

    def stop(_: int, __: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    with output.open("a", buffering=1) as file:
        while not stopping and time.monotonic() < deadline:
            for path in ("/v1/events", "/v1/noop"):
                started = time.time()
                try:
                    status, milliseconds = post_once(port, path, body)
                except OSError:
                    status, milliseconds = 0, (time.time() - started) * 1000
                file.write(json.dumps([round(started, 3), path, status, round(milliseconds, 2)]) + "\n")
            # A fixed pace, not a pause after each pair: a slow answer does not lower the rate much.
            next_at = max(next_at + interval_s, time.monotonic())
            time.sleep(max(0.0, next_at - time.monotonic()))


def read_probe(path: Path) -> list[tuple[float, str, int, float]]:
    """The lines probe_to_file wrote: (epoch s, path, status, ms)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            started, endpoint, status, milliseconds = json.loads(line)
        except ValueError:
            continue  # the last line of a probe stopped mid-write
        rows.append((float(started), str(endpoint), int(status), float(milliseconds)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=0.3, help="pause between two pairs of requests")
    parser.add_argument("--port", type=int, help="ingest port on 127.0.0.1 (default: the local stack's)")
    parser.add_argument("--key", help="the project's public key (default: the local stack's demo project)")
    parser.add_argument("--output", type=Path, help="append one JSON line per request here instead of a summary")
    args = parser.parse_args()
    if args.output is not None and args.port and args.key:
        probe_to_file(args.port, args.key, args.seconds, args.interval, args.output)
        return
    load_local_env()
    demo_file = StackSettings.from_env().data_dir / "demo-project.json"
    if not demo_file.exists():
        raise SystemExit("run `make up` first: the probe posts to the running stack as its demo project")
    public_key = str(json.loads(demo_file.read_text())["publicKey"])
    port = ServerSettings.from_env("ingest").port
    require_noop_endpoint(f"http://{LOOPBACK}:{port}")
    results = probe(port, public_key, args.seconds, args.interval)
    print(json.dumps({path: collected.summary() for path, collected in results.items()}, indent=2))


if __name__ == "__main__":
    main()
