"""What turning the writer's JSON document into rows costs Postgres, per 64-event document, and
what the alternative, one array per column sent as binary parameters, costs Postgres and the
client.

The events statement (services/ingest/repository.py, `_INSERT_EVENTS`) starts from one JSON
document per batch: the call's literal is lexed, cast to json (which validates it: one full
parse) and read by json_to_recordset (a second parse, a hash table of each object's keys, and
each value through its column type's input function, `properties` through jsonb_in). This runs
each step alone on one connection, 1,000 times, and reads the backend's CPU from /proc: the
literal alone, the cast to json, the cast to jsonb, json_to_recordset and jsonb_to_recordset
into the writer's record; then the same 64 events as 25 column arrays, binary parameters of an
unnamed statement (as every statement with parameters is through PgBouncer: parsed each time)
unnested, and of a statement prepared once; and the 20 text columns as one two-dimensional
text[][] (asyncpg checks every element of a one-dimensional array for being a sub-array, an
isinstance against collections.abc's Iterable and Sized, but only the first row of a
two-dimensional one). For each step it also reads this process's own CPU per call (the client:
asyncpg encoding the parameters or sending the text), and the CPU to build each form from the
writer's rows. Read-only: any database of the stack will do.

    flock /work/bench.lock .venv/bin/python -m tools.bench.ingest_json \\
        --database-url postgresql://sightline:...@127.0.0.1:PORT/sightline

Postgres must run on this machine (its backend's /proc entry is read).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

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


def columnar_document(rows: list[repository.EventRow]) -> str:
    """The rows as one JSON array per column under the column's key, NULLs kept (positions align)."""
    columns = {
        repository._EVENT_KEYS[column]: [getattr(row, column) for row in rows] for column in repository._EVENT_COLUMNS
    }
    return repository._dollar_quoted(encode_json(columns).decode())


def columnar_statement(document: str) -> str:
    """The columnar document cast to jsonb once, each column's array unnested side by side (ROWS
    FROM), each value cast to its column's type; count(t) builds every row, so every cast runs."""
    keys = [repository._EVENT_KEYS[column] for column in repository._EVENT_COLUMNS]
    functions = ", ".join(
        f"jsonb_array_elements(doc.d -> '{key}')"
        if type_ == "jsonb"
        else f"jsonb_array_elements_text(doc.d -> '{key}')"
        for key, type_ in zip(keys, repository._EVENT_TYPES, strict=True)
    )
    casts = ", ".join(
        f"c.{key}" if type_ in ("text", "jsonb") else f"c.{key}::{type_}"
        for key, type_ in zip(keys, repository._EVENT_TYPES, strict=True)
    )
    return (
        f"SELECT count(t) FROM (SELECT {casts} FROM (SELECT CAST({document} AS jsonb) AS d) AS doc,"
        f" ROWS FROM ({functions}) AS c({', '.join(keys)}) OFFSET 0) AS t"
    )


TEXT_COLUMNS = [
    column for column, type_ in zip(repository._EVENT_COLUMNS, repository._EVENT_TYPES, strict=True) if type_ == "text"
]
OTHER_COLUMNS = [column for column in repository._EVENT_COLUMNS if column not in TEXT_COLUMNS]
_TYPES = dict(zip(repository._EVENT_COLUMNS, repository._EVENT_TYPES, strict=True))
# One parameter per column, unnested side by side into rows.
ARRAYS_STATEMENT = "SELECT count(*) FROM unnest({})".format(
    ", ".join(f"${index}::{type_}[]" for index, type_ in enumerate(repository._EVENT_TYPES, start=1))
)
# The non-text columns one parameter each, the text columns one text[][] whose rows are sliced.
TEXT_MATRIX = len(OTHER_COLUMNS) + 1
MATRIX_STATEMENT = "SELECT count(*) FROM unnest({}, {})".format(
    ", ".join(f"${index}::{_TYPES[column]}[]" for index, column in enumerate(OTHER_COLUMNS, start=1)),
    ", ".join(f"(${TEXT_MATRIX}::text[])[{row}:{row}]" for row in range(1, len(TEXT_COLUMNS) + 1)),
)


def column_arrays(rows: list[repository.EventRow]) -> list[list[Any]]:
    """The rows as one list per column, `properties` as JSON text (asyncpg takes jsonb as text)."""
    return [
        [encode_json(row.properties).decode() for row in rows]
        if column == "properties"
        else [getattr(row, column) for row in rows]
        for column in repository._EVENT_COLUMNS
    ]


def matrix_arguments(rows: list[repository.EventRow]) -> list[Any]:
    by_column = dict(zip(repository._EVENT_COLUMNS, column_arrays(rows), strict=True))
    return [by_column[column] for column in OTHER_COLUMNS] + [[by_column[column] for column in TEXT_COLUMNS]]


encode_json = msgspec.json.Encoder().encode


def writer_document(rows: list[repository.EventRow]) -> str:
    """What the writer builds for a batch: the JSON document as a dollar-quoted literal."""
    return repository._dollar_quoted(encode_json(rows).decode())


def _build_cost_us(build: Callable[[], object], repeats: int) -> float:
    started = time.process_time()
    for _ in range(repeats):
        build()
    return (time.process_time() - started) * 1e6 / repeats


async def run(database_url: str, repeats: int) -> str:
    connection = await asyncpg.connect(database_url)
    # As the services' connections: no statement cache, every statement with parameters parsed
    # each time as the unnamed statement, in the same message as its Bind and Execute.
    unnamed = await asyncpg.connect(database_url, statement_cache_size=0)
    try:
        backend = int(await connection.fetchval("SELECT pg_backend_pid()"))
        unnamed_backend = int(await unnamed.fetchval("SELECT pg_backend_pid()"))
        rows = request_rows(REQUESTS, "json", True)
        document = writer_document(rows)
        arrays, matrix = column_arrays(rows), matrix_arguments(rows)
        arrays_unnamed = await unnamed.prepare(ARRAYS_STATEMENT)
        matrix_unnamed = await unnamed.prepare(MATRIX_STATEMENT)
        arrays_prepared = await connection.prepare(ARRAYS_STATEMENT)
        calls: dict[str, tuple[int, Callable[[], Awaitable[object]]]] = {
            name: (backend, partial(connection.execute, sql)) for name, sql in steps(document).items()
        }
        calls["one JSON array per column, cast to jsonb once, unnested side by side"] = (
            backend,
            partial(connection.execute, columnar_statement(columnar_document(rows))),
        )
        calls["25 binary column arrays unnested, an unnamed statement"] = (
            unnamed_backend,
            partial(arrays_unnamed.fetchval, *arrays),
        )
        calls["the same, the 20 text columns as one text[][]"] = (
            unnamed_backend,
            partial(matrix_unnamed.fetchval, *matrix),
        )
        calls["25 binary column arrays unnested, prepared once"] = (
            backend,
            partial(arrays_prepared.fetchval, *arrays),
        )
        lines = [
            f"load average {load_average()} at start; a {len(document):,}-byte document of"
            f" {REQUESTS * 8} events, each step {repeats} times, twice in turns",
            "",
            "| step | backend CPU ms per 64 events (1st / 2nd turn) | client CPU ms per call (1st / 2nd) |",
            "| --- | --- | --- |",
        ]
        figures: dict[str, list[tuple[float, float]]] = {}
        for _ in range(2):
            for name, (pid, call) in calls.items():
                for _ in range(30):
                    await call()
                before, client_before = read_tree(pid).own, time.process_time()
                for _ in range(repeats):
                    await call()
                figures.setdefault(name, []).append(
                    (
                        (read_tree(pid).own - before) * 1000 / repeats,
                        (time.process_time() - client_before) * 1000 / repeats,
                    )
                )
        lines += [
            f"| {name} | {' / '.join(f'{server:.3f}' for server, _ in values)} |"
            f" {' / '.join(f'{client:.3f}' for _, client in values)} |"
            for name, values in figures.items()
        ]
        lines += [
            "",
            "Building each form from the 64 rows, CPU of this process per batch:"
            f" the writer's JSON literal {_build_cost_us(partial(writer_document, rows), repeats):.0f} us,"
            f" the JSON array per column {_build_cost_us(partial(columnar_document, rows), repeats):.0f} us,"
            f" the column lists {_build_cost_us(partial(column_arrays, rows), repeats):.0f} us,"
            f" with the text matrix {_build_cost_us(partial(matrix_arguments, rows), repeats):.0f} us.",
            "",
            f"load average {load_average()} at end",
        ]
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
