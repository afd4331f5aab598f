"""The asyncio load generator against a tiny HTTP server: what it records, retries and acknowledges."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tools.loadtest import payloads
from tools.loadtest.check import read_acknowledged
from tools.loadtest.engine import Engine, next_planned, visitor_start_s, visitor_stop_s
from tools.loadtest.plan import PAYLOADS_FILE, LoadPlan
from tools.loadtest.timeline import read_requests, read_rows


def plan_for(port: int, run_dir: Path, **changes: object) -> LoadPlan:
    values: dict[str, object] = {
        "users": 4,
        "ramp_up_s": 0.4,
        "hold_s": 1.0,
        "ramp_down_s": 0.2,
        "ingest_url": f"http://127.0.0.1:{port}",
        "query_url": f"http://127.0.0.1:{port}",
        "replay_url": f"http://127.0.0.1:{port}",
        "project_key": "pk_test",
        "secret_key": "sk_test",
        "run_dir": str(run_dir),
        "pacing_s": 0.5,
        **changes,
    }
    return LoadPlan(**values)  # type: ignore[arg-type]


class FakeIngest:
    """Answers 202 to tracker posts (503 with Retry-After: 0 to the first events post), 200 to GETs."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int]] = []
        self.refused_once = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode().split("\r\n")
                method, path, _ = request_line.split(" ")
                headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((method, path, len(body)))
                status, extra, answer = 202, "", b'{"accepted":true}'
                if method == "GET":
                    status, answer = 200, b'{"paths":{}}' if path == "/schema/openapi.json" else b"{}"
                elif path == "/v1/events" and not self.refused_once:
                    self.refused_once = True
                    status, extra, answer = 503, "Retry-After: 0\r\n", b'{"error":{"code":"overloaded"}}'
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: {len(answer)}\r\n{extra}\r\n".encode() + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def run_engine(tmp_path: Path, **changes: object) -> tuple[FakeIngest, LoadPlan]:
    fake = FakeIngest()
    pools = payloads.build_pools("pk_test", first_chunks=2, incremental_chunks=4, event_batches=2)
    payloads.save_pools(tmp_path / PAYLOADS_FILE, pools)

    async def main() -> LoadPlan:
        server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        plan = plan_for(port, tmp_path, **changes)
        await Engine(plan).run()
        server.close()
        return plan

    return fake, asyncio.run(main())


def test_visitors_join_over_the_ramp_and_the_last_to_join_leave_first() -> None:
    plan = plan_for(1, Path("."), users=4, ramp_up_s=8, hold_s=10, ramp_down_s=4)
    assert [visitor_start_s(plan, i) for i in range(4)] == [0, 2, 4, 6]
    assert [visitor_stop_s(plan, i) for i in range(4)] == [22, 21, 20, 19]
    steps = plan_for(1, Path("."), users=4, ramp_up_s=10, hold_s=10, ramp_down_s=4, shape="steps", steps=2)
    # Two steps of 5 s, each reached within a fifth of its time.
    assert [visitor_start_s(steps, i) for i in range(4)] == [0, 0.5, 5, 5.5]


def test_a_run_records_every_request_its_schedule_and_what_202s_acknowledged(tmp_path: Path) -> None:
    fake, plan = run_engine(tmp_path, record_timeline=True)
    final = json.loads((tmp_path / "final.json").read_text())
    posts = [path for method, path, _ in fake.requests if method == "POST"]
    endpoints = final["endpoints"]
    tracker = sum(endpoints.get(name, {}).get("requests", 0) for name in ("POST /v1/events", "POST /v1/replay"))
    first = endpoints["POST /v1/replay (first chunk)"]["requests"]
    assert first == plan.users  # every visitor's first request is its full snapshot
    noop = endpoints["POST /v1/noop"]["requests"]
    retried = endpoints["POST /v1/events (retried)"]["requests"]
    assert retried == 1  # the one 503, sent again with the same body
    assert len(posts) == tracker + first + noop + retried
    assert final["tracker"]["failures"] == 0
    # One scheduling delay per planned send (a retry is not a planned send).
    assert sum(final["schedule_delay"]["histogram"].values()) == tracker + first + noop

    acknowledged, files = read_acknowledged(tmp_path)
    assert files == 1
    events_posts = posts.count("/v1/events") - 1  # the refused attempt acknowledged nothing
    assert acknowledged.events == 8 * events_posts
    assert acknowledged.replay_chunks == posts.count("/v1/replay")
    assert acknowledged.retried_attempts == 1
    assert acknowledged.failed_deliveries == 0

    series = [json.loads(line) for line in (tmp_path / "timeseries.jsonl").read_text().splitlines()]
    assert max(record["users"] for record in series) == plan.users + plan.noop_users + plan.readers
    assert all("schedule_delay" in record["histograms"] for record in series)
    assert sum(record.get("generator_cpu_s", 0) for record in series) > 0
    # The fault run's record: every request and every acknowledged row, by key.
    records = read_requests(tmp_path)
    assert len([r for r in records if r.endpoint.startswith("POST")]) == len(posts)
    assert [r.status for r in records if r.outcome == "retried"] == [503]
    assert len(read_rows(tmp_path).acknowledged_events) == acknowledged.events


def test_noop_only_sends_every_visitor_to_the_no_op_endpoint(tmp_path: Path) -> None:
    fake, _ = run_engine(tmp_path, noop_only=True)
    posts = {path for method, path, _ in fake.requests if method == "POST"}
    assert posts == {"/v1/noop"}
    acknowledged, _ = read_acknowledged(tmp_path)
    assert acknowledged.events == acknowledged.replay_chunks == 0


def test_a_visitor_keeps_its_own_phase_and_catches_up_at_most_six_missed_intervals() -> None:
    # On time: the next is one period after the previous plan, whenever the delivery ended.
    assert next_planned(10.0, 11.2, 5.0) == 15.0
    # A 12-s retried delivery: the missed interval (15) is sent at once, then 20, 25 ... on phase.
    assert next_planned(10.0, 22.0, 5.0) == 15.0
    # An outage of a minute: only the last six intervals are caught up, still on the old phase.
    assert next_planned(10.0, 72.0, 5.0) == 45.0
