"""The measurement behind migration 0200: the replay list's queries with and without its indexes.

Starts a throwaway Postgres (like the benchmark), stores 3 projects x 200,000 sessions,
and prints EXPLAIN (ANALYZE, BUFFERS) of the session list's first page, a later keyset
page and a person's sessions, with the indexes of migration 0200 and after dropping them.

    python -m tools.probes.replay_indexes
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from sqlalchemy import text

from services.cli.throwaway import throwaway_database
from services.common.db import create_admin_engine
from services.common.settings import AdminDatabaseSettings

QUERIES = {
    "first page": "SELECT session_id, started_at FROM replay_sessions WHERE project_id = 2"
    " ORDER BY started_at DESC, session_id DESC LIMIT 51",
    "a later page": "SELECT session_id, started_at FROM replay_sessions WHERE project_id = 2"
    " AND (started_at, session_id) < (now() - interval '40 days', 's0')"
    " ORDER BY started_at DESC, session_id DESC LIMIT 51",
    "a person's sessions": "SELECT session_id FROM replay_sessions WHERE project_id = 2 AND distinct_id = 'd123'",
}


async def explain_all(settings: AdminDatabaseSettings) -> None:
    engine = create_admin_engine(settings)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO replay_sessions (project_id, session_id, distinct_id, started_at, ended_at,"
                    " chunk_count, total_bytes)"
                    " SELECT p, 's' || i, 'd' || (i % 50000), now() - i * interval '39 seconds',"
                    " now() - i * interval '39 seconds' + interval '3 minutes', 36, 100000"
                    " FROM generate_series(1, 3) p, generate_series(1, 200000) i"
                )
            )
            await connection.execute(text("ANALYZE replay_sessions"))
        for label in ("with the indexes of migration 0200", "without them"):
            print(f"==== {label}")
            async with engine.connect() as connection:
                for name, query in QUERIES.items():
                    plan = await connection.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + query))
                    print(f"--- {name}")
                    print("\n".join(str(row[0]) for row in plan))
            async with engine.begin() as connection:
                await connection.execute(text("DROP INDEX ix_replay_sessions_project_id_started_at_session_id"))
                await connection.execute(text("DROP INDEX ix_replay_sessions_project_id_distinct_id"))
                await connection.execute(text("ANALYZE replay_sessions"))
    finally:
        await engine.dispose()


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="sightline-explain-replay-", dir="/tmp"))
    root.chmod(0o755)
    try:
        with throwaway_database(root) as db:
            asyncio.run(explain_all(db.admin))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
