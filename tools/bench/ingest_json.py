"""What turning a batch's values into rows costs Postgres, per 64-event batch: the JSON document
the writer sent until migration 1040, against the column arrays it sends since.

Until 1040 a batch's events were one JSON document (one- or two-letter keys, NULLs left out) in
a dollar-quoted literal: lexed, cast to json (which validates it: one full parse) and read by
json_to_recordset (a second parse, a hash table of each object's keys, and each value through
its column type's input function, `properties` through jsonb_in). Since 1040 they are one array
per column, sent as binary parameters and unnested (array_recv, each value through its type's
receive function; `properties` still through the jsonb parser). This runs each step alone on
one connection, 1,000 times, and reads the backend's CPU from /proc: the literal alone, the cast
to json, the cast to jsonb, json_to_recordset and jsonb_to_recordset into the old record, and
unnest of the binary arrays, as an unnamed statement each time (as through PgBouncer) and as a
statement prepared once. Read-only: any database of the stack will do.

    flock /work/bench.lock .venv/bin/python -m tools.bench.ingest_json \\
        --database-url postgresql://sightline:...@127.0.0.1:PORT/sightline

Postgres must run on this machine (its backend's /proc entry is read).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import asyncpg
import msgspec

from services.ingest import repository
from tools.bench.ingest_postgres import request_rows
from tools.bench.proc_cpu import load_average, read_tree

REQUESTS = 8  # 8 requests of 8 events: one 64-event document, as ingest_postgres's batches


def _short_key(index: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return letters[index]


# The document as the writer built it before 1040: each column a letter, NULLs left out.
KEYS = {column: _short_key(index) for index, column in enumerate(repository._EVENT_COLUMNS)}
JSON_RECORD = ", ".join(
    f"{KEYS[column]} {type_}" for column, type_ in zip(repository._EVENT_COLUMNS, repository._EVENT_TYPES, strict=True)
)
ARRAYS_STATEMENT = "SELECT count(*) FROM unnest({})".format(
    ", ".join(f"${index}::{type_}[]" for index, type_ in enumerate(repository._EVENT_TYPES, start=1))
)


def json_document(rows: list[repository.EventRow]) -> str:
    objects = [
        {KEYS[column]: value for column, value in msgspec.structs.asdict(row).items() if value is not None}
        for row in rows
    ]
    document = msgspec.json.encode(objects).decode()
    name = "rows"
    while f"${name}" in document:
        name += "_"
    return f"${name}${document}${name}$"


def steps(document: str) -> dict[str, str]:
    return {
        "the literal alone (lexed, returned as text)": f"SELECT {document}::text IS NULL",
        "cast to json (one parse, validation)": f"SELECT CAST({document} AS json) IS NULL",
        "cast to jsonb (one parse, built as jsonb)": f"SELECT CAST({document} AS jsonb) IS NULL",
        "json_to_recordset into the old record (the writer before 1040)": (
            f"SELECT count(*) FROM json_to_recordset(CAST({document} AS json)) AS batch({JSON_RECORD})"
        ),
        "jsonb_to_recordset into the same record": (
            f"SELECT count(*) FROM jsonb_to_recordset(CAST({document} AS jsonb)) AS batch({JSON_RECORD})"
        ),
    }


async def run(database_url: str, repeats: int) -> str:
    connection = await asyncpg.connect(database_url)
    # As the services' connections: no statement cache, an unnamed statement parsed each time.
    unnamed = await asyncpg.connect(database_url, statement_cache_size=0)
    try:
        backend = int(await connection.fetchval("SELECT pg_backend_pid()"))
        unnamed_backend = int(await unnamed.fetchval("SELECT pg_backend_pid()"))
        rows = request_rows(REQUESTS, "json", True)
        document = json_document(rows)
        arrays = repository.batch_arguments(rows, [])[len(repository._CHUNK_COLUMNS) :]
        prepared = await connection.prepare(ARRAYS_STATEMENT)
        unnamed_statement = await unnamed.prepare(ARRAYS_STATEMENT)
        calls: dict[str, tuple[int, Callable[[], Awaitable[Any]]]] = {
            name: (backend, partial(connection.execute, sql)) for name, sql in steps(document).items()
        }
        calls["unnest of binary column arrays, an unnamed statement (the writer since 1040)"] = (
            unnamed_backend,
            lambda: unnamed_statement.fetchval(*arrays),
        )
        calls["unnest of binary column arrays, prepared once"] = (backend, lambda: prepared.fetchval(*arrays))
        lines = [
            f"load average {load_average()} at start; a {len(document):,}-byte document of"
            f" {REQUESTS * 8} events, each step {repeats} times, twice in turns",
            "",
            "| step | backend CPU ms per 64 events (1st / 2nd turn) |",
            "| --- | --- |",
        ]
        figures: dict[str, list[float]] = {}
        for _ in range(2):
            for name, (pid, call) in calls.items():
                for _ in range(30):
                    await call()
                before = read_tree(pid).own
                for _ in range(repeats):
                    await call()
                figures.setdefault(name, []).append((read_tree(pid).own - before) * 1000 / repeats)
        lines += [f"| {name} | {' / '.join(f'{value:.3f}' for value in values)} |" for name, values in figures.items()]
        lines += ["", f"load average {load_average()} at end"]
        return "\n".join(lines)
    finally:
        await connection.close()
        await unnamed.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--repeats", type=int, default=1000)
    args = parser.parse_args()
    print(asyncio.run(run(args.database_url, args.repeats)))


if __name__ == "__main__":
    main()
