"""A tiny real run: Locust against Granian-served ingest, a report folder, and acknowledged == stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import DatabaseHarness
from tools.loadtest.runner import LoadOptions, run_load


@pytest.fixture(scope="module")
def ingest_url(db: DatabaseHarness) -> Iterator[str]:
    with db.serve("ingest", "ingest-loadtest", INGEST_BENCHMARK_NOOP="1") as ingest:
        yield ingest.url


@pytest.mark.slow
def test_a_small_run_writes_the_report_and_every_acknowledged_row_is_stored(
    db: DatabaseHarness, ingest_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIGHTLINE_ADMIN_DATABASE_URL", db.admin.url)
    monkeypatch.setenv("SIGHTLINE_PGBOUNCER_ADMIN_URL", db.pgbouncer_admin_url)
    monkeypatch.setenv("SIGHTLINE_DATA_DIR", str(tmp_path / "no-local-stack"))
    options = LoadOptions(
        users=20,
        ramp_up_s=4,
        hold_s=8,
        ramp_down_s=3,
        ingest_url=ingest_url,
        # Ingest also serves /health/ready and an OpenAPI document (with no readable /v1 GETs),
        # so the readers have something real to poll without starting two more services.
        query_url=ingest_url,
        replay_url=ingest_url,
        shape="linear",
        steps=1,
        processes=1,
        reports_dir=tmp_path / "reports",
        progress_s=2,
        payload_variants=2,
    )
    progress: list[str] = []
    result = run_load(options, "sightline load --users 20 (test)", progress.append)

    assert result.folder.parent == tmp_path / "reports"
    assert result.folder.name.startswith("load-")
    for name in ("report.md", "requests.png", "latency.png", "pgbouncer.png", "cpu.png", "final.json"):
        assert (result.folder / name).stat().st_size > 0, name
    report = result.report.read_text()
    assert "## Acknowledged vs stored" in report
    assert "No server spans were found" in report  # this harness runs without tracing
    assert not (set(json.loads((result.folder / "plan.json").read_text())) & {"secret_key", "secretKey"})

    events, chunks = result.checks
    # 20 visitors each sent their first chunk; every 202 is in the database, nothing more.
    assert chunks.acknowledged >= 20
    assert events.acknowledged > 0
    assert (events.stored, chunks.stored) == (events.acknowledged, chunks.acknowledged)
    assert result.figures["failures"] == 0
    assert result.figures["peak_users"] == 20 + 1 + 1  # visitors, one reader, one no-op user
    final = json.loads((result.folder / "final.json").read_text())
    assert final["endpoints"]["POST /v1/replay (first chunk)"]["requests"] >= 20
    assert final["endpoints"]["POST /v1/noop"]["requests"] > 0
    assert final["endpoints"]["GET query /health/ready"]["requests"] > 0
    assert 0 < result.figures["server_connections_max"] <= 20 + 5
    assert any("users" in line for line in progress)
    # The headline is the probe's: it ran beside the generator, as a project of its own (so the
    # counts above are untouched), and every one of its requests got a 202.
    assert "**Headline, from the probe**" in report
    assert result.figures["probe_requests"] > 0
    assert result.figures["probe_failures"] == 0
    assert 0 < result.figures["probe_ingest_p50"] <= result.figures["probe_ingest_p95"]
    # The generator's own figures: its CPU and how late its requests left.
    assert "schedule_delay_p95" in result.figures
    assert result.figures["generator_cpu_ms_per_request"] > 0
    assert "scheduling delay p50 / p95 / p99" in report
