"""A tiny real run: Locust against Granian-served ingest, a report folder, and acknowledged == stored."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.settings import AdminDatabaseSettings
from tests.harness import DatabaseHarness
from tools.loadtest import check, preload
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


@pytest.mark.slow
def test_a_run_on_preloaded_projects_counts_only_the_rows_it_stored(
    db: DatabaseHarness, ingest_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--project-file: the load and the probe post as projects that already hold today's events."""
    monkeypatch.setenv("SIGHTLINE_ADMIN_DATABASE_URL", db.admin.url)
    monkeypatch.setenv("SIGHTLINE_PGBOUNCER_ADMIN_URL", db.pgbouncer_admin_url)
    monkeypatch.setenv("SIGHTLINE_DATA_DIR", str(tmp_path / "no-local-stack"))
    project_file = tmp_path / "projects.json"
    asyncio.run(
        preload.main(argparse.Namespace(events=700, probe_events=70, per_statement=350, project_file=project_file))
    )
    projects = json.loads(project_file.read_text())
    assert project_file.stat().st_mode & 0o777 == 0o600
    before = asyncio.run(check.stored_rows(AdminDatabaseSettings.from_env(), int(projects["load"]["id"])))
    # 200 sessions of 1 + floor(exponential with mean 3) events, in two statements: ~700 events,
    # all of them in today's UTC partition.
    assert 400 < before["events"] < 1100
    assert before["replay_chunks"] == 0
    options = LoadOptions(
        users=5,
        ramp_up_s=2,
        hold_s=4,
        ramp_down_s=2,
        ingest_url=ingest_url,
        query_url=ingest_url,
        replay_url=ingest_url,
        shape="linear",
        steps=1,
        processes=1,
        reports_dir=tmp_path / "reports",
        progress_s=2,
        payload_variants=2,
        project_file=project_file,
    )
    progress: list[str] = []
    result = run_load(options, "sightline load --users 5 --project-file (test)", progress.append)

    assert result.project_id == int(projects["load"]["id"])
    assert f"project {result.project_id} already holds {before['events']:,} events" in progress[0]
    events, chunks = result.checks
    # Only this run's rows: after minus before equals what the 202s acknowledged.
    assert events.acknowledged > 0
    assert chunks.acknowledged >= 5
    assert (events.stored, chunks.stored) == (events.acknowledged, chunks.acknowledged)
    assert json.loads((result.folder / "plan.json").read_text())["stored_before"] == before
    assert result.figures["probe_requests"] > 0
    assert result.figures["probe_failures"] == 0


def test_preload_splits_the_sessions_into_statements_of_about_the_asked_events() -> None:
    # ~3.5 events a session: 700 events are 200 sessions, 100 a statement of 350 events.
    assert preload.statement_sessions(700, 350) == [100, 100]
    assert preload.statement_sessions(1000, 350) == [100, 100, 86]
    assert preload.statement_sessions(3, 500_000) == [1]
