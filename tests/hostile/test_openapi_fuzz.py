"""Schemathesis against each service's own OpenAPI document, on the real apps and database.

For every operation, data that fits the document (positive) and data that does not
(negative) is sent through the ASGI transport; every answer must be a documented status,
with the documented body (errors: the JSON error body), never a 500. Schemathesis's pytest
plugin (``schema.parametrize``) does not run under pytest 9.2 (it reads ``node._nodeid``),
so each operation is a parametrised test that runs Hypothesis over the operation's strategy.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli import admin
from services.common.settings import RateLimitSettings
from services.ingest.app import create_app as create_ingest_app
from services.ingest.settings import IngestSettings
from services.query.app import create_app as create_query_app
from services.query.settings import QuerySettings
from services.replay.app import create_app as create_replay_app
from tests.harness import DatabaseHarness
from tests.query.conftest import Event, insert_events
from tests.replay.conftest import Chunk, insert_session

OFF = RateLimitSettings(requests_per_s=0, burst=0)

OPERATIONS = {
    "ingest": ["POST /v1/events", "POST /v1/replay"],
    "query": [
        "POST /v1/query",
        "GET /v1/realtime",
        "POST /v1/funnel",
        "POST /v1/retention",
        "GET /v1/goals",
        "POST /v1/goals",
        "DELETE /v1/goals/{goal_id}",
        "POST /v1/goals/conversions",
    ],
    "replay": [
        "GET /v1/sessions",
        "GET /v1/sessions/{session_id}",
        "GET /v1/sessions/{session_id}/recording",
        "DELETE /v1/persons/{distinct_id}",
    ],
}

# Nothing in these requests can be generated against their schema: no body, no query
# parameters, and a path parameter is any string (the service itself refuses over-long ones).
NOTHING_TO_NEGATE = {
    "GET /v1/realtime",
    "GET /v1/sessions/{session_id}",
    "DELETE /v1/persons/{distinct_id}",
    "GET /v1/goals",
    "DELETE /v1/goals/{goal_id}",
}

# The recording endpoint chooses its format by Accept; the others answer JSON whatever is asked.
ACCEPT = ["*/*", "application/json", "application/x-ndjson", "application/vnd.sightline.replay-chunks", "text/html"]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def schemas(db: DatabaseHarness) -> Iterator[dict[str, Any]]:
    apps = {
        "ingest": create_ingest_app(db.database, settings=IngestSettings()),
        "query": create_query_app(db.database, query_settings=QuerySettings(rollup_interval_s=0), rate_limit=OFF),
        "replay": create_replay_app(db.database, rate_limit=OFF),
    }
    yield {name: schemathesis.openapi.from_asgi("/schema/openapi.json", app) for name, app in apps.items()}
    asgi.shutdown_lifespans()


# A stored session and some events, so that generated requests also reach the paths that read
# and stream rows (a generated session id names nothing).
FUZZ_SESSION = "fuzz-session"


@pytest.fixture(scope="module")
async def keys(db: DatabaseHarness, admin_engine: AsyncEngine) -> dict[str, Any]:
    project = await admin.create_project(db.admin, name="fuzz", domains=["example.com"], timezone="Europe/Berlin")
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    await insert_session(
        admin_engine,
        project,
        [
            Chunk(0, [0, 500], full_snapshot=True),
            Chunk(1, [1_000, 4_000]),
            Chunk(2, [5_000, 9_000], full_snapshot=True, content_encoding="identity"),
        ],
        session_id=FUZZ_SESSION,
        started_at=an_hour_ago,
    )
    await insert_events(
        admin_engine,
        int(project["id"]),
        [
            Event("v1", "s1", an_hour_ago, "/"),
            Event("v1", "s1", an_hour_ago + timedelta(minutes=1), "/pricing", name="signup"),
            Event("v2", "s2", an_hour_ago, "/blog", referrer_domain="google.com", country="FR"),
        ],
    )
    return project


@pytest.mark.parametrize(
    ("service", "label", "mode"),
    [
        (service, label, mode)
        for service, labels in OPERATIONS.items()
        for label in labels
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if not (mode is GenerationMode.NEGATIVE and label in NOTHING_TO_NEGATE)
    ],
)
def test_every_answer_is_documented_and_never_a_500(
    schemas: dict[str, Any], keys: dict[str, Any], service: str, label: str, mode: GenerationMode
) -> None:
    operation = schemas[service].find_operation_by_label(label)
    assert operation is not None

    strategy = operation.as_strategy(generation_mode=mode)
    if "{session_id}" in label:
        strategy |= operation.as_strategy(generation_mode=mode, path_parameters={"session_id": FUZZ_SESSION})

    @hypothesis.given(case=strategy, accept=st.sampled_from(ACCEPT))
    @hypothesis.settings(
        max_examples=40, deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck)
    )
    def run(case: Any, accept: str) -> None:
        headers = {"Authorization": f"Bearer {keys['secretKey']}", "Accept": accept}
        # A random projectKey would stop every positive case at 401; a real one reaches the checks behind it.
        if isinstance(case.body, dict) and "projectKey" in case.body and mode is GenerationMode.POSITIVE:
            case.body["projectKey"] = keys["publicKey"]
        response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["code"]
            assert error["message"]
            assert "Traceback" not in response.text

    run()
