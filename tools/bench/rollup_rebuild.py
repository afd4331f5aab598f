"""Rebuild one project's days on a bench-rollups stack and print the Postgres CPU it took.

For comparing two checkouts on the same data: run it from each (``PYTHONPATH=<checkout>``, the
stack's environment as for `make bench-rollups`), alternating, under the bench lock. Nothing is
written; the figures are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from sqlalchemy import text

from services.cli.stack import read_env_file
from services.common.db import create_admin_engine
from services.common.settings import AdminDatabaseSettings, DatabaseSettings, StackSettings
from services.query.tasks import refresh_until_current, rollup_engine
from tools.bench.rollups import postgres_cpu_s


async def main(arguments: argparse.Namespace) -> None:
    stack = StackSettings.from_env()
    for key, value in read_env_file(stack.data_dir / "sightline.env").items():
        os.environ.setdefault(key, value)
    postmaster_pid = int((stack.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    admin_engine = create_admin_engine(AdminDatabaseSettings.from_env())
    engine = rollup_engine(DatabaseSettings.from_env("query"))
    try:
        for _ in range(arguments.runs):
            async with admin_engine.begin() as connection:
                await connection.execute(
                    text("UPDATE query_rollup_days SET built_changes = NULL WHERE project_id = :project_id"),
                    {"project_id": arguments.project},
                )
            cpu_before, started = postgres_cpu_s(postmaster_pid), time.monotonic()
            await refresh_until_current(engine, 10, arguments.project)
            wall, cpu = time.monotonic() - started, postgres_cpu_s(postmaster_pid) - cpu_before
            print(f"{arguments.label}: rebuild {wall:.2f} s wall, {cpu:.2f} s Postgres CPU", flush=True)
    finally:
        await engine.dispose()
        await admin_engine.dispose()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--project", type=int, required=True, help="the project whose days are rebuilt")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--label", default="rebuild", help="printed before each figure")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
