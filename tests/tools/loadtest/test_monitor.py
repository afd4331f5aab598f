"""PgBouncer's console and CPU sampling, against the test run's real PgBouncer and real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from services.common import pgbouncer_console
from tests.harness import TEST_POOL_SIZE, DatabaseHarness
from tools.loadtest.monitor import CpuSampler, ProcessGroups, pool_limits, server_connections
from tools.loadtest.readers import readable_endpoints
from tools.loadtest.stats import difference, merge, percentile, summary


def test_server_connections_add_every_server_state_for_the_database_only() -> None:
    pools = [
        {"database": "sightline", "user": "sightline", "cl_active": 40, "cl_waiting": 7, "sv_active": 20,
         "sv_idle": 3, "sv_used": 2, "sv_tested": 1, "sv_login": 1, "maxwait": 1, "maxwait_us": 250_000},
        {"database": "sightline", "user": "other", "cl_active": 1, "cl_waiting": 0, "sv_active": 1, "sv_idle": 0,
         "sv_used": 0, "sv_tested": 0, "sv_login": 0, "maxwait": 0, "maxwait_us": 0},
        {"database": "pgbouncer", "user": "pgbouncer", "cl_active": 1, "sv_active": 0, "sv_idle": 9},
    ]  # fmt: skip
    assert server_connections(pools, "sightline") == {
        "server_connections": 28,
        "sv_active": 21,
        "cl_active": 41,
        "cl_waiting": 7,
        "maxwait_ms": 1250,
    }


def test_the_real_console_gives_the_pool_size_and_a_count_within_it(db: DatabaseHarness) -> None:
    assert pool_limits(db.pgbouncer_admin_url, "sightline")["pool_size"] == TEST_POOL_SIZE
    in_use = server_connections(pgbouncer_console.show(db.pgbouncer_admin_url, "POOLS"), "sightline")
    assert 0 <= in_use["server_connections"] <= TEST_POOL_SIZE


def test_cpu_of_a_busy_child_is_counted_in_its_group(tmp_path: Path) -> None:
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"]
    )
    try:
        groups = ProcessGroups(roots={"busy": [busy.pid]}, solo={"self": os.getpid()})
        sampler = CpuSampler(groups)
        sampler.sample()
        time.sleep(1.0)
        used = sampler.sample()
    finally:
        busy.wait()
    assert set(used) == {"busy", "self"}
    assert used["busy"] > 0.3  # CPU seconds in about one second of a spinning process


def test_latency_histograms() -> None:
    histogram = {10: 90, 200: 9, 1000: 1}
    assert summary(histogram) == {"p50": 10.0, "p95": 200.0, "p99": 200.0}
    assert percentile(histogram, 1.0) == 1000.0
    assert percentile({}, 0.95) == 0.0
    assert difference({10: 95, 200: 9, 1000: 2}, histogram) == {10: 5, 1000: 1}
    assert merge([{10: 1}, {10: 2, 20: 1}]) == {10: 3, 20: 1}


def test_readers_call_only_what_the_openapi_document_lists() -> None:
    document = {
        "paths": {
            "/health/ready": {"get": {}},
            "/v1/sessions": {"get": {"parameters": [{"name": "limit", "in": "query", "required": False}]}},
            "/v1/sessions/{session_id}": {"get": {}},
            "/v1/funnel": {"get": {"parameters": [{"name": "steps", "in": "query", "required": True}]}},
            "/v1/query": {
                "post": {"requestBody": {"content": {"application/json": {"example": {"metric": "pageviews"}}}}}
            },
            "/v1/export": {"post": {"requestBody": {"content": {"application/json": {}}}}},
        }
    }
    assert readable_endpoints("query", "http://127.0.0.1:9302", document) == [
        ("POST", "http://127.0.0.1:9302/v1/query", "POST query /v1/query", b'{"metric": "pageviews"}'),
        ("GET", "http://127.0.0.1:9302/v1/sessions", "GET query /v1/sessions", None),
    ]
