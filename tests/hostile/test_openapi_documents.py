"""Every error a service documents has the one error body, and every read API documents 429."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar

from services.common.settings import DatabaseSettings
from services.ingest.app import create_app as create_ingest_app
from services.query.app import create_app as create_query_app
from services.replay.app import create_app as create_replay_app

ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}


def _document(app: Litestar) -> dict[str, Any]:
    return app.openapi_schema.to_schema()


def _operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if not path.startswith("/health/")
    ]


# No database is reached: an app makes its engine in its lifespan, which these never start.
APPS = {
    "ingest": lambda: create_ingest_app(DatabaseSettings()),
    "query": lambda: create_query_app(DatabaseSettings()),
    "replay": lambda: create_replay_app(DatabaseSettings()),
}


@pytest.mark.parametrize("service", sorted(APPS))
def test_every_documented_error_has_the_error_body(service: str) -> None:
    document = _document(APPS[service]())
    checked = 0
    for label, operation in _operations(document):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == ERROR_BODY, (label, status)
                checked += 1
    assert checked > 0


@pytest.mark.parametrize("service", ["query", "replay"])
def test_every_read_operation_documents_the_rate_limit(service: str) -> None:
    document = _document(APPS[service]())
    labels = [label for label, operation in _operations(document) if "429" not in operation["responses"]]
    assert labels == []


def test_the_recording_documents_both_stream_formats() -> None:
    document = _document(APPS["replay"]())
    ok = document["paths"]["/v1/sessions/{session_id}/recording"]["get"]["responses"]["200"]
    assert sorted(ok["content"]) == ["application/vnd.sightline.replay-chunks", "application/x-ndjson"]
