"""Ingest latency seen by a client that is not the load generator: `python -m tools.loadtest.probe`.

During `sightline load` the generator (one Locust process, ~1.2 ms of CPU per request here)
saturates its core at 5000 visitors, and a response then waits in its event loop before
Locust stops the clock. This probe, a separate process, posts one events batch and then the
same body to the no-op endpoint, on a fresh connection each, a few times a second, and times
them: what a browser would see from the same machine. Run it next to a load test against the
stack `make up` started (its demo project); it prints p50 / p95 / max of both.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
from dataclasses import dataclass, field

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=0.3, help="pause between two pairs of requests")
    args = parser.parse_args()
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
