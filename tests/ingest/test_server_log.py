"""No visitor's data in the Postgres server log, even when a writer batch fails (issue 14).

The writer sends a batch's rows inside its statement text (one round trip); the cluster the
project writes (services/cli/postgres.py PRIVACY_SERVER_SETTINGS) logs a failing statement
without its text and without the DETAIL that would repeat the failing row.
"""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import asyncpg_connection
from services.ingest.repository import write_batch
from tests.harness import DatabaseHarness
from tests.rows import chunk_row, event_row


async def test_a_failing_batch_leaves_none_of_its_values_in_the_server_log(
    db: DatabaseHarness, engine: AsyncEngine, project: dict[str, object]
) -> None:
    marker = uuid.uuid4().hex
    email = f"someone.{marker}@example.com"
    distinct_id, session_id = f"visitor-{marker}", f"session-{marker}"
    project_id = int(str(project["id"]))
    event = event_row(
        project_id,
        name="signup",
        distinct_id=distinct_id,
        session_id=session_id,
        url=f"https://example.com/welcome?email={email}",
        path="/welcome",
        properties={"email": email},
    )
    # A content encoding the table's check constraint refuses fails the whole batch.
    chunk = chunk_row(
        project_id,
        session_id,
        0,
        content_encoding="brotli",
        data=f'{{"typed": "{email}"}}'.encode(),
        distinct_id=distinct_id,
        first_url=f"https://example.com/?u={marker}",
    )
    async with engine.connect() as connection:
        with pytest.raises(asyncpg.CheckViolationError):
            await write_batch(await asyncpg_connection(connection), [event], [chunk])
        await connection.invalidate()

    log = db.postgres.log_file.read_text(errors="replace")
    # The failure itself is logged, so the log is the right file and is being written...
    assert 'violates check constraint "ck_replay_chunks_content_encoding_known"' in log
    # ...but nothing the visitor sent: not in a STATEMENT line, not in the failing row's DETAIL.
    assert marker not in log
    assert "example.com/welcome" not in log
    assert "STATEMENT:" not in log
