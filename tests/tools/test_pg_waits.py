"""tools.bench.pg_waits: samples a busy backend's wait and summarises per statement kind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from tests.harness import DatabaseHarness
from tools.bench.pg_waits import sample, statement_kind, summary


def test_the_writer_functions_are_named_whatever_the_literal() -> None:
    assert statement_kind("SELECT ingest_store_replay_chunks(CAST($rows$[{") == "ingest_store_replay_chunks"
    assert statement_kind("SELECT ingest_store_events(CAST($rows$[{") == "ingest_store_events"
    assert statement_kind("SELECT pg_sleep(0.8)") == "SELECT pg_sleep(0.8)"


async def test_a_sleeping_backend_is_seen_waiting(db: DatabaseHarness, tmp_path: Path) -> None:
    url = db.admin.url.replace("postgresql+asyncpg://", "postgresql://")
    sleeper = await asyncpg.connect(url)
    out = tmp_path / "samples.jsonl"
    try:
        sleeping = asyncio.create_task(sleeper.execute("SELECT pg_sleep(0.8)"))
        await asyncio.sleep(0.1)
        count = await sample(url, out, None, seconds=0.5, interval_s=0.1)
        await sleeping
    finally:
        await sleeper.close()
    assert 3 <= count <= 6
    lines = summary(out)
    assert lines[0] == f"{count} samples"
    # One backend in every sample, waiting on its timeout: 1.000 backends per sample.
    assert any(line.startswith(" 1.000") and "Timeout:PgSleep" in line and "pg_sleep" in line for line in lines), lines
