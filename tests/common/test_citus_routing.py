"""On Citus, every statement of a request is routed to one shard (runs with SIGHTLINE_TEST_CITUS_WORKERS).

Each request touches one project, and every per-project table is distributed by project_id
(alembic 0700), so each statement a request runs should be planned as one task on one worker.
The test drives the main request paths of ingest, query and replay through the real apps,
records every statement they send (SQLAlchemy's cursor events), and reads the plan of each
with EXPLAIN on the coordinator: a statement planned as more than one task fans out to every
shard and fails the test, unless FANS_OUT_WITH_REASON names it with the reason. So does one whose
plan pulls rows to the coordinator (distributed subplans, "pull to coordinator", repartition):
each of its subplans may be one task, but the rows travel through the coordinator.

The rollup refresher's statements (merge, day rebuild, exit pages, weeks, retention weeks) are
recorded the same way, in a test of their own that drives each path.

Ingest's batch write goes through asyncpg directly (services/ingest/repository.py); its two
statements are EXPLAINed on their own below.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import create_engine
from services.ingest import repository as ingest_repository
from services.query import repository as query_repository
from services.query import rollup_repository
from services.query.app import create_app as create_query_app
from services.query.settings import QuerySettings
from services.query.tasks import rebuild_changed_days, refresh_until_current
from services.query.vocabulary import CUBES
from tests.conftest import NO_RATE_LIMIT, Services, serve_all_three
from tests.harness import TEST_CITUS_SHARD_COUNT, DatabaseHarness
from tests.ingest.conftest import JSON, json_body, pageview
from tests.ingest.test_store_events_function import stored_events_statement
from tests.query.conftest import Event, berlin, insert_events, main_events, new_project
from tests.rows import event_row

# Statements (by a fragment of their text) allowed to run on every shard, and why.
FANS_OUT_WITH_REASON: dict[str, str] = {}

TASK_COUNT = re.compile(r"Task Count: (\d+)")
# Plan shapes in which rows travel through the coordinator: a CTE or subquery run first as a
# distributed subplan of its own, an INSERT ... SELECT pulled to the coordinator or repartitioned.
THROUGH_COORDINATOR = re.compile(r"Distributed Subplan|pull to coordinator|repartition", re.IGNORECASE)
# Statements that touch no table: transaction settings, health probes.
NO_TABLE = re.compile(r"^\s*(SELECT set_config|SELECT 1\b|SHOW |SET )", re.IGNORECASE)


@pytest.fixture(autouse=True)
def _only_on_citus(db: DatabaseHarness) -> None:
    if db.citus is None:
        pytest.skip("plans are read on Citus only: SIGHTLINE_TEST_CITUS_WORKERS=2")


@pytest.fixture
async def apps(db: DatabaseHarness) -> AsyncIterator[Services]:
    if db.citus is None:
        pytest.skip("plans are read on Citus only")
    # No background refresher (serve_all_three): only the requests' own statements are recorded.
    async with serve_all_three(db.database) as services:
        yield services


@dataclass
class Recorded:
    statements: list[tuple[str, tuple[Any, ...]]]


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    """Every statement sent through SQLAlchemy while the test runs, with its parameters."""
    with recording() as seen:
        yield seen


@contextmanager
def recording() -> Iterator[Recorded]:
    """Every statement sent through SQLAlchemy inside the block, with its parameters."""
    seen = Recorded([])

    def record(connection: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if not NO_TABLE.match(statement):
            seen.statements.append((statement, tuple(parameters or ())))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


PARAMETER = re.compile(r"\$(\d+)")


def literal(value: Any) -> str:
    """value as SQL text: the services' statements run with custom plans (their values known),
    and Citus cannot plan some of them with bare parameters (a generic plan), so each is
    EXPLAINed with its values in place."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        elements = ",".join('"' + text_form(item).replace("\\", "\\\\").replace('"', '\\"') + '"' for item in value)
        return literal("{" + elements + "}")
    if isinstance(value, datetime):
        return literal(value.isoformat()) + "::timestamptz"
    return "'" + text_form(value).replace("'", "''") + "'"


def text_form(value: Any) -> str:
    """value as Postgres reads it from text: bytes (an event's key) in bytea's hex form."""
    return "\\x" + value.hex() if isinstance(value, bytes) else str(value)


async def plan_lines(admin_engine: AsyncEngine, statement: str, parameters: tuple[Any, ...]) -> list[str]:
    inlined = PARAMETER.sub(lambda match: literal(parameters[int(match.group(1)) - 1]), statement)
    async with admin_engine.connect() as connection:
        plan = await connection.exec_driver_sql(f"EXPLAIN {inlined}")
        lines = [row[0] for row in plan]
        await connection.rollback()
    return lines


async def task_counts(admin_engine: AsyncEngine, statement: str, parameters: tuple[Any, ...]) -> list[int]:
    lines = await plan_lines(admin_engine, statement, parameters)
    return [int(count) for line in lines for count in TASK_COUNT.findall(line)]


async def not_routed(admin_engine: AsyncEngine, statements: list[tuple[str, tuple[Any, ...]]]) -> list[str]:
    """The statements (shortened, with what is wrong) not planned as one task on one shard."""
    found = []
    for statement, parameters in statements:
        if fan_out_reason(statement) is not None:
            continue
        lines = await plan_lines(admin_engine, statement, parameters)
        counts = [int(count) for line in lines for count in TASK_COUNT.findall(line)]
        shapes = sorted({match.group(0).lower() for line in lines for match in THROUGH_COORDINATOR.finditer(line)})
        if any(count > 1 for count in counts) or shapes:
            found.append(f"tasks {counts} {shapes}: {' '.join(statement.split())[:300]}")
    return found


def fan_out_reason(statement: str) -> str | None:
    return next((reason for fragment, reason in FANS_OUT_WITH_REASON.items() if fragment in statement), None)


def chunk(project: dict[str, Any], session_id: str, distinct_id: str) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp() * 1000)
    return {
        "projectKey": project["publicKey"],
        "sessionId": session_id,
        "distinctId": distinct_id,
        "seq": 0,
        "events": [
            {"type": 4, "timestamp": now - 1000, "data": {"href": "https://example.com/"}},
            {"type": 2, "timestamp": now - 1000, "data": {"node": {"type": 0, "childNodes": []}}},
        ],
    }


async def test_every_request_statement_is_routed_to_one_shard(
    db: DatabaseHarness, apps: Services, project: dict[str, Any], recorded: Recorded, admin_engine: AsyncEngine
) -> None:
    secret = {"Authorization": f"Bearer {project['secretKey']}"}
    events = [pageview(distinctId="alice", sessionId="s-alice"), pageview(distinctId="bob", sessionId="s-bob")]
    body = json_body({"projectKey": project["publicKey"], "events": events})
    assert (await apps.ingest.post("/v1/events", content=body, headers=JSON)).status_code == 202
    replay_body = json_body(chunk(project, "s-alice", "alice"))
    assert (await apps.ingest.post("/v1/replay", content=replay_body, headers=JSON)).status_code == 202

    # The refresher's work for one project (the rollups the next queries read), then raw events,
    # a breakdown from the cubes, realtime, a funnel and a retention table.
    assert await rebuild_changed_days(db.database, int(project["id"])) >= 1
    for spec in (
        {"metrics": ["visitors", "pageviews"], "period": "7d"},
        {
            "metrics": ["visitors"],
            "dimensions": ["page"],
            "period": "30d",
            "filters": [{"dimension": "country", "operator": "is", "values": ["DE"]}],
        },
        # From the session days' pages and event names (migration 0850): under an exit-page chip,
        # and under two visit chips.
        {
            "metrics": ["visitors", "events"],
            "dimensions": ["event_name"],
            "period": "30d",
            "filters": [{"dimension": "exit_page", "operator": "is", "values": ["/"]}],
        },
        {
            "metrics": ["visitors"],
            "dimensions": ["page"],
            "period": "30d",
            "filters": [
                {"dimension": "country", "operator": "is", "values": ["DE"]},
                {"dimension": "device", "operator": "is", "values": ["desktop"]},
            ],
        },
    ):
        response = await apps.query.post("/v1/query", json=spec, headers=secret)
        assert response.status_code == 200, response.text
    assert (await apps.query.get("/v1/realtime", headers=secret)).status_code == 200
    funnel = {"period": "7d", "steps": [{"type": "page", "value": "/"}, {"type": "event", "value": "signup"}]}
    response = await apps.query.post("/v1/funnel", json=funnel, headers=secret)
    assert response.status_code == 200, response.text
    retention = {"period": "30d", "weeks": 4}
    response = await apps.query.post("/v1/retention", json=retention, headers=secret)
    assert response.status_code == 200, response.text
    # Read from the retention rollup the refresher built above (its statements are recorded too).
    assert response.json()["meta"] == {"source": "rollups"}

    # Goals: save one, list them, their conversions, delete it.
    goal = await apps.query.post("/v1/goals", json={"type": "page", "value": "/"}, headers=secret)
    assert goal.status_code == 201, goal.text
    assert (await apps.query.get("/v1/goals", headers=secret)).status_code == 200
    response = await apps.query.post("/v1/goals/conversions", json={"period": "7d"}, headers=secret)
    assert response.status_code == 200, response.text
    assert (await apps.query.delete(f"/v1/goals/{goal.json()['id']}", headers=secret)).status_code == 204

    # Replay: list (also by the dashboard's page and source filters), one session, its
    # recording, then erase a person.
    assert (await apps.replay.get("/v1/sessions", headers=secret)).status_code == 200
    sources = {"page": "/", "referrer": "google.com", "utmSource": "newsletter"}
    assert (await apps.replay.get("/v1/sessions", params=sources, headers=secret)).status_code == 200
    assert (await apps.replay.get("/v1/sessions/s-alice", headers=secret)).status_code == 200
    assert (await apps.replay.get("/v1/sessions/s-alice/recording", headers=secret)).status_code == 200
    assert (await apps.replay.delete("/v1/persons/alice", headers=secret)).status_code == 200

    statements = list(recorded.statements)  # not the EXPLAINs below
    assert len(statements) > 10
    # The reading of plans can fail: a statement over every project runs on every shard.
    assert await task_counts(admin_engine, "SELECT count(*) FROM events", ()) >= [TEST_CITUS_SHARD_COUNT]
    # ... and a statement whose CTE runs first as a subplan is seen as one.
    pulled = "WITH p AS MATERIALIZED (SELECT project_id FROM events LIMIT 1) SELECT count(*) FROM events, p"
    assert await not_routed(admin_engine, [(pulled, ())]) != []
    problems = await not_routed(admin_engine, statements)
    assert problems == [], "\n".join(problems)


async def test_funnel_sampling_statements_are_routed_to_one_shard(
    db: DatabaseHarness, project: dict[str, Any], engine: AsyncEngine, admin_engine: AsyncEngine
) -> None:
    """A funnel's volume estimates (rollups; the 1/64 sample for days not rolled up) and its sampled
    reads (1/8, 1/512) run on the project's shard, like the exact one."""
    secret = {"Authorization": f"Bearer {project['secretKey']}"}
    day = datetime.now(UTC) - timedelta(days=1)
    await insert_events(
        engine,
        int(project["id"]),
        [Event(f"v{n}", f"s{n}", day + timedelta(minutes=n), path) for n in range(200) for path in ("/", "/pricing")],
    )
    funnel = {"period": "7d", "steps": [{"type": "page", "value": "/"}, {"type": "page", "value": "/pricing"}]}
    every = QuerySettings(rollup_interval_s=0, funnel_exact_max_events=0)
    sparsest = QuerySettings(rollup_interval_s=0, funnel_exact_max_events=0, funnel_sample_max_step_events=0)
    sources = []
    with recording() as recorded:
        for settings in (every, sparsest):
            app = create_query_app(db.database, query_settings=settings, rate_limit=NO_RATE_LIMIT)
            async with AsyncTestClient(app) as client:
                # No rollups yet: the volume is estimated from the 1/64 sample.
                response = await client.post("/v1/funnel", json=funnel, headers=secret)
                assert response.status_code == 200, response.text
                if settings is every:
                    assert await rebuild_changed_days(db.database, int(project["id"])) >= 1
                response = await client.post("/v1/funnel", json=funnel, headers=secret)
                assert response.status_code == 200, response.text
                sources.append(response.json()["meta"]["sampling_rate"])
                exact = await client.post("/v1/funnel", json={**funnel, "sampling": "exact"}, headers=secret)
                assert exact.status_code == 200, exact.text
    assert sources == [1 / 8, 1 / 512]
    statements = [statement for statement, _ in recorded.statements]
    assert any("(hashtext(distinct_id) & 511) = ANY('{0}'::int[])" in statement for statement in statements)
    assert any("query_rollup_event_names" in statement for statement in statements)
    problems = await not_routed(admin_engine, list(recorded.statements))
    assert problems == [], "\n".join(problems)


async def test_ingest_writes_reach_only_their_projects_shards(
    db: DatabaseHarness, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    """The batch statements are INSERT ... SELECT from a JSON document: Citus evaluates the
    document on the coordinator and sends each row to its project's shard; no statement of the
    plan runs on every shard. The events statement is ingest_store_events' (0870), explained on
    its own (EXPLAIN of the call would show only the call)."""
    yesterday = datetime.now(UTC) - timedelta(days=1)
    row = event_row(int(project["id"]), occurred_at=yesterday, distinct_id="alice", session_id="s-alice")
    document = ingest_repository._dollar_quoted(msgspec.json.encode([row]).decode())
    async with admin_engine.connect() as connection:
        statement = await stored_events_statement(connection, document)
        plan = "\n".join(row[0] for row in await connection.exec_driver_sql(f"EXPLAIN {statement}"))
    assert "pull to coordinator" in plan, plan
    assert all(int(count) == 1 for count in TASK_COUNT.findall(plan)), plan


async def test_every_refresh_statement_is_routed_to_one_shard(
    db: DatabaseHarness, recorded: Recorded, admin_engine: AsyncEngine
) -> None:
    """Each statement of the rollup refresher, on every path: days rebuilt from their events,
    complete weeks and retention weeks built, then a batch merged (with its exit pages)."""
    project = await new_project(db)
    project_id = int(project["id"])
    engine = create_engine("query-rollup-test", db.database)
    try:
        await insert_events(engine, project_id, main_events())
        assert await refresh_until_current(engine, 10, project_id) >= 4
        # Later events of a session already folded and a new session: merged, not rebuilt.
        await insert_events(
            engine,
            project_id,
            [
                Event("v3", "s4", berlin("2026-01-13T12:05:00"), "/thanks"),
                Event("v6", "s8", berlin("2026-01-13T15:00:00"), "/docs"),
            ],
        )
        async with engine.begin() as connection:
            project_row = await connection.execute(
                text("SELECT project_id, timezone FROM projects WHERE project_id = :p"), {"p": project_id}
            )
            outcome = await rollup_repository.refresh_project(
                connection, rollup_repository.ProjectToRefresh(*project_row.one()), 10
            )
        assert outcome == rollup_repository.RefreshOutcome(merged_days=1, rebuilt_days=0, merged_events=2)
    finally:
        await engine.dispose()

    statements = [
        (statement, parameters)
        for statement, parameters in recorded.statements
        if "INSERT INTO events" not in statement
    ]
    written = " ".join(statement for statement, _ in statements)
    # Every path ran: day rebuilds, merges into each cube, exit pages, weeks, retention weeks.
    for table in (*(cube.table for cube in CUBES), "query_rollup_page_weeks", "query_rollup_retention"):
        assert f"INSERT INTO {table} " in written, table
    assert "hll_union(c.visitors, excluded.visitors)" in written
    # The merge kept the retention cohorts: the new session's visitor probed, their rows moved.
    assert "LEFT JOIN LATERAL (SELECT true AS folded FROM query_rollup_sessions_folded g" in written
    assert "INSERT INTO query_rollup_retention AS r " in written
    problems = await not_routed(admin_engine, statements)
    assert problems == [], "\n".join(problems)


async def test_every_statement_of_a_day_built_in_pieces_is_routed_to_one_shard(
    db: DatabaseHarness, admin_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A day too large for one rebuild (bounds made small) built in pieces: the pieces, the last
    one with the events after the day of the sessions begun on it, and the final count."""
    from tests.query.test_rollup_pieces import big_day, rounds_until_built, small_pieces

    project = await new_project(db)
    project_id = int(project["id"])
    engine = create_engine("query-rollup-test", db.database)
    try:
        await insert_events(engine, project_id, [*main_events(), *big_day()])
        small_pieces(monkeypatch)
        with recording() as recorded:
            pieces = await rounds_until_built(engine, project_id)
        assert len(pieces) > 2
        assert pieces[-1].done
    finally:
        await engine.dispose()
    written = " ".join(statement for statement, _ in recorded.statements)
    assert "JOIN query_sessions q ON q.project_id = e.project_id" in written  # the last piece's later events
    assert "SELECT coalesce(sum(d.events), 0) FROM query_rollup_session_days d" in written  # the final count
    problems = await not_routed(admin_engine, recorded.statements)
    assert problems == [], "\n".join(problems)


async def test_the_query_transactions_planner_settings_reach_the_worker(
    engine: AsyncEngine, project: dict[str, Any]
) -> None:
    # Pushed down, a statement is planned with the worker's settings unless Citus sends the
    # transaction's SET LOCAL along (query_repository.configure_transaction). Without it a worker
    # with fresh statistics joined a 6,000-event range with a nested loop past the 10 s statement
    # timeout. On plain Postgres the statement runs where the settings are.
    async with engine.begin() as connection:
        await query_repository.configure_transaction(connection)
        result = await connection.execute(
            text("SELECT current_setting('enable_nestloop'), count(*) FROM events WHERE project_id = :project_id"),
            {"project_id": int(project["id"])},
        )
        assert result.one()[0] == "off"
