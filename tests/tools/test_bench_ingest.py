"""bench-ingest's CPU accounting from /proc and its request bodies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from tools.bench.ingest import batch_template, stack_pids
from tools.bench.proc_cpu import read_tree

# /proc counts in clock ticks (10 ms), rounded down: a 0.3 s burn may read as 0.29.
AT_LEAST = 0.28
# A child that spends 0.3 s of CPU (its own clock, whatever else the machine does), then waits.
BURN = "import sys, time\nwhile time.process_time() < 0.3: pass\nprint('burnt', flush=True)\nsys.stdin.read()\n"


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_a_child_is_counted_alive_and_after_it_is_reaped() -> None:
    before = read_tree(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline() == "burnt\n"
    alive = read_tree(os.getpid())
    assert alive.live_children - before.live_children >= AT_LEAST
    child.communicate("")
    reaped = read_tree(os.getpid())
    # Its time moved from the live children to the parent's cutime+cstime, not lost, not doubled.
    assert reaped.reaped_children - before.reaped_children >= AT_LEAST
    assert reaped.live_children - before.live_children < AT_LEAST


def test_read_tree_of_a_missing_process_raises() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(ProcessLookupError):
        read_tree(child.pid)


def test_stack_pids_reads_the_pid_files(tmp_path: Path) -> None:
    root = tmp_path
    (root / "run").mkdir()
    (root / "postgres").mkdir()
    (root / "citus" / "worker-1").mkdir(parents=True)
    (root / "run" / "ingest.pid").write_text("101\n")
    (root / "run" / "pgbouncer.pid").write_text("103\n")
    (root / "postgres" / "postmaster.pid").write_text("102\n/data\n")
    (root / "citus" / "worker-1" / "postmaster.pid").write_text("104\n")
    assert stack_pids(root) == {"ingest": [101], "postgres": [102, 104], "pgbouncer": [103]}


def test_the_template_gives_every_event_a_uuid_and_the_visitors_session() -> None:
    document = msgspec.json.decode(batch_template("pk_test", 3))
    assert document["projectKey"] == "pk_test"
    assert [(e["uuid"], e["sessionId"], e["distinctId"]) for e in document["events"]] == [
        ("@UUID@", "@SESSION@", "@VISITOR@")
    ] * 3


def test_ingest_postgres_sends_the_call_or_the_repositorys_statement_as_text() -> None:
    from services.ingest import repository
    from tools.bench.ingest_postgres import request_rows, statement

    rows = request_rows(1, "t", uuids=True)
    call, as_text = statement(rows), statement(rows, as_text=True)
    assert call.startswith("SELECT ingest_store_events(CAST($")
    assert as_text.lstrip().startswith("WITH input AS (")
    document = call[len("SELECT ingest_store_events(CAST(") : -len(" AS json))")]
    assert as_text == repository._INSERT_EVENTS.replace(repository._ROWS, f"CAST({document} AS json)")


def test_ingest_json_steps_read_the_same_document_into_the_writers_record() -> None:
    from services.ingest import repository
    from tools.bench.ingest_json import steps

    sql = steps("$d$[]$d$")
    assert all("$d$[]$d$" in step for step in sql.values())
    assert sum(repository._EVENT_KEYED_RECORD in step for step in sql.values()) == 2


def test_ingest_json_arrays_are_the_rows_columns_one_parameter_each() -> None:
    from services.ingest import repository
    from tools.bench.ingest_json import (
        ARRAYS_STATEMENT,
        MATRIX_STATEMENT,
        OTHER_COLUMNS,
        TEXT_COLUMNS,
        column_arrays,
        matrix_arguments,
    )
    from tools.bench.ingest_postgres import request_rows

    rows = request_rows(1, "t", uuids=True)
    arrays = column_arrays(rows)
    assert len(arrays) == len(repository._EVENT_COLUMNS) == ARRAYS_STATEMENT.count("::")
    assert all(len(column) == len(rows) for column in arrays)
    by_column = dict(zip(repository._EVENT_COLUMNS, arrays, strict=True))
    assert by_column["event_uuid"] == [row.event_uuid for row in rows]
    assert [msgspec.json.decode(text) for text in by_column["properties"]] == [row.properties for row in rows]
    matrix = matrix_arguments(rows)
    assert len(TEXT_COLUMNS) == 20
    assert matrix[-1] == [by_column[column] for column in TEXT_COLUMNS]
    assert matrix[:-1] == [by_column[column] for column in OTHER_COLUMNS]
    assert MATRIX_STATEMENT.count("::text[])[") == len(TEXT_COLUMNS)


def test_ingest_json_columnar_document_keeps_each_columns_positions() -> None:
    from services.ingest import repository
    from tools.bench.ingest_json import columnar_document, columnar_statement
    from tools.bench.ingest_postgres import request_rows

    rows = request_rows(1, "t", uuids=False)
    document = columnar_document(rows)
    columns = msgspec.json.decode(document[document.index("{") : document.rindex("}") + 1])
    assert set(columns) == set(repository._EVENT_KEYS.values())
    assert all(len(values) == len(rows) for values in columns.values())
    assert columns[repository._EVENT_KEYS["event_uuid"]] == [None] * len(rows)
    statement = columnar_statement(document)
    assert statement.count("jsonb_array_elements") == len(repository._EVENT_COLUMNS)
