"""What turning the writer's JSON document into rows costs Postgres, per 64-event document.

The events statement (services/ingest/repository.py, `_INSERT_EVENTS`) starts from one JSON
document per batch: the call's literal is lexed, cast to json (which validates it: one full
parse) and read by json_to_recordset (a second parse, a hash table of each object's keys, and
each value through its column type's input function, `properties` through jsonb_in). This runs
each step alone on one connection, 1,000 times, and reads the backend's CPU from /proc: the
literal alone, the cast to json, the cast to jsonb, json_to_recordset and jsonb_to_recordset
into the writer's record. Read-only: any database of the stack will do.

    flock /work/bench.lock .venv/bin/python -m tools.bench.ingest_json \\
        --database-url postgresql://sightline:...@127.0.0.1:PORT/sightline

Postgres must run on this machine (its backend's /proc entry is read).
"""

from __future__ import annotations

import argparse
import asyncio

import asyncpg
import msgspec

from services.ingest import repository
from tools.bench.ingest_postgres import request_rows
from tools.bench.proc_cpu import load_average, read_tree

REQUESTS = 8  # 8 requests of 8 events: one 64-event document, as ingest_postgres's batches


def steps(document: str) -> dict[str, str]:
    record = repository._EVENT_KEYED_RECORD
    return {
        "the literal alone (lexed, returned as text)": f"SELECT {document}::text IS NULL",
        "cast to json (one parse, validation)": f"SELECT CAST({document} AS json) IS NULL",
        "cast to jsonb (one parse, built as jsonb)": f"SELECT CAST({document} AS jsonb) IS NULL",
        "json_to_recordset into the writer's record (as the writer)": (
            f"SELECT count(*) FROM json_to_recordset(CAST({document} AS json)) AS batch({record})"
        ),
        "jsonb_to_recordset into the same record": (
            f"SELECT count(*) FROM jsonb_to_recordset(CAST({document} AS jsonb)) AS batch({record})"
        ),
    }


async def run(database_url: str, repeats: int) -> str:
    connection = await asyncpg.connect(database_url)
    try:
        backend = int(await connection.fetchval("SELECT pg_backend_pid()"))
        document = repository._dollar_quoted(msgspec.json.encode(request_rows(REQUESTS, "json", True)).decode())
        lines = [
            f"load average {load_average()} at start; a {len(document):,}-byte document of"
            f" {REQUESTS * 8} events, each step {repeats} times, twice in turns",
            "",
            "| step | backend CPU ms per 64-event document (1st / 2nd turn) |",
            "| --- | --- |",
        ]
        figures: dict[str, list[float]] = {}
        for _ in range(2):
            for name, sql in steps(document).items():
                for _ in range(30):
                    await connection.execute(sql)
                before = read_tree(backend).own
                for _ in range(repeats):
                    await connection.execute(sql)
                figures.setdefault(name, []).append((read_tree(backend).own - before) * 1000 / repeats)
        lines += [f"| {name} | {' / '.join(f'{value:.3f}' for value in values)} |" for name, values in figures.items()]
        lines += ["", f"load average {load_average()} at end"]
        return "\n".join(lines)
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--repeats", type=int, default=1000)
    args = parser.parse_args()
    print(asyncio.run(run(args.database_url, args.repeats)))


if __name__ == "__main__":
    main()
