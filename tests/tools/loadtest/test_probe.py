"""The latency probe posts real batches to a running ingest service and times both endpoints."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from tests.harness import DatabaseHarness
from tools.loadtest.probe import probe


def test_the_probe_times_events_and_no_op_requests_that_were_accepted(
    db: DatabaseHarness, project: dict[str, Any]
) -> None:
    with db.serve("ingest", "probe-ingest", LOG_LEVEL="INFO", INGEST_BENCHMARK_NOOP="1") as ingest:
        port = urlsplit(ingest.url).port
        assert port is not None
        results = probe(port, str(project["publicKey"]), seconds=0.5, interval_s=0.05)
    for path in ("/v1/events", "/v1/noop"):
        summary = results[path].summary()
        assert summary["requests"] == sum(results[path].statuses.values()) > 0
        assert results[path].statuses == {202: summary["requests"]}, path
        assert 0 <= summary["p50_ms"] <= summary["p95_ms"] <= summary["max_ms"]  # type: ignore[operator]
        assert summary["max_ms"] > 0  # type: ignore[operator]
