"""Named hostile inputs across ingest, query and replay.

Each answer is a documented status with the JSON error body and a code naming the problem
(or, where hostile-looking data is legitimate, a success that stores it verbatim), and a
refused write stores nothing. Ingest's own refusals are in tests/ingest/test_bad_input.py.
"""

from __future__ import annotations

import base64
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Services
from tests.hostile.conftest import assert_error, bearer
from tests.ingest.conftest import JSON, count_rows, json_body, pageview

NOTHING_STORED = {"events": 0, "ingested_events": 0, "replay_chunks": 0, "replay_sessions": 0}
SQL_LOOKING = "x' OR '1'='1'; DROP TABLE events; --"
TRAVERSAL = "../../../etc/passwd"


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def _chunk(project: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    now = _now_ms()
    body = {
        "projectKey": project["publicKey"],
        "sessionId": "hostile-session",
        "distinctId": "hostile-visitor",
        "seq": 0,
        "events": [
            {"type": 4, "timestamp": now - 1000, "data": {"href": "https://example.com/"}},
            {"type": 2, "timestamp": now - 1000, "data": {"node": {"type": 0, "childNodes": []}}},
        ],
    }
    body.update(overrides)
    return body


async def _ingest_events(services: Services, project: dict[str, Any], *events: dict[str, Any]) -> Any:
    return await services.ingest.post(
        "/v1/events", content=json_body({"projectKey": project["publicKey"], "events": list(events)}), headers=JSON
    )


async def _the_stored_event(admin_engine: AsyncEngine, project: dict[str, Any], columns: str) -> tuple[Any, ...]:
    """These columns of the project's one stored event (written here, never from input)."""
    async with admin_engine.connect() as connection:
        sql = f"SELECT {columns} FROM events WHERE project_id = :p"
        result = await connection.execute(text(sql), {"p": project["id"]})
        return tuple(result.one())


async def _nothing_stored(admin_engine: AsyncEngine, project: dict[str, Any]) -> None:
    assert await count_rows(admin_engine, project["id"]) == NOTHING_STORED


# --- gzip bombs ------------------------------------------------------------------------------


def _gzip_of_zeros(mebibytes: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    return b"".join([*(compressor.compress(zeros) for _ in range(mebibytes)), compressor.flush()])


async def test_a_gzip_bomb_to_events_is_413_and_stores_nothing(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    bomb = _gzip_of_zeros(64)
    response = await services.ingest.post("/v1/events", content=bomb, headers={**JSON, "content-encoding": "gzip"})
    assert_error(response, 413, "payload_too_large")
    await _nothing_stored(admin_engine, project)


@pytest.mark.parametrize("path", ["/v1/query", "/v1/funnel", "/v1/retention"])
async def test_the_read_apis_do_not_inflate_a_gzip_bomb(services: Services, project: dict[str, Any], path: str) -> None:
    # The query service takes plain JSON only: a gzip body is not JSON, whatever it expands to.
    response = await services.query.post(
        path,
        content=_gzip_of_zeros(64),
        headers={**bearer(project), "content-type": "application/json", "content-encoding": "gzip"},
    )
    assert_error(response, 400, "malformed_json")


# --- deeply nested JSON, huge arrays -----------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


async def test_deeply_nested_properties_are_refused(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    body = json_body({"projectKey": project["publicKey"], "events": [pageview(properties={"k": "PLACEHOLDER"})]})
    body = body.replace(b'"PLACEHOLDER"', _nested(50_000))
    response = await services.ingest.post("/v1/events", content=body, headers=JSON)
    assert response.status_code in (400, 422), response.text
    assert_error(response, response.status_code, "malformed_json" if response.status_code == 400 else "invalid_field")
    await _nothing_stored(admin_engine, project)


async def test_deeply_nested_rrweb_data_is_refused(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    body = json_body(_chunk(project)).replace(b'{"type":0,"childNodes":[]}', _nested(50_000))
    response = await services.ingest.post("/v1/replay", content=body, headers=JSON)
    assert_error(response, 400, "malformed_json")
    await _nothing_stored(admin_engine, project)


async def test_a_deeply_nested_query_spec_is_refused(services: Services, project: dict[str, Any]) -> None:
    body = b'{"metrics": ["visitors"], "filters": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    response = await services.query.post(
        "/v1/query", content=body, headers={**bearer(project), "content-type": "application/json"}
    )
    assert response.status_code in (400, 422), response.text
    assert_error(response, response.status_code, "malformed_json" if response.status_code == 400 else "invalid_request")


async def test_more_rrweb_events_than_a_chunk_may_hold_is_422(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    now = _now_ms()
    events = [{"type": 3, "timestamp": now - 1000, "data": {"source": 1}}] * 50_001
    response = await services.ingest.post("/v1/replay", content=json_body(_chunk(project, events=events)), headers=JSON)
    assert_error(response, 422, "too_many_events", "events")
    await _nothing_stored(admin_engine, project)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"metrics": ["visitors"] * 100_000}, "metrics[1]"),
        ({"metrics": ["visitors"], "filters": [{"dimension": "page", "operator": "is", "values": ["/"] * 101}]}, None),
        ({"metrics": ["visitors"], "dimensions": ["page"] * 10_000}, "dimensions[1]"),
    ],
    ids=["metrics", "filter-values", "dimensions"],
)
async def test_huge_arrays_in_a_query_spec_are_422(
    services: Services, project: dict[str, Any], spec: dict[str, Any], field: str | None
) -> None:
    response = await services.query.post("/v1/query", json=spec, headers=bearer(project))
    assert response.status_code == 422, response.text
    code = response.json()["error"]["code"]
    assert code in ("invalid_query", "invalid_request")
    assert_error(response, 422, code, field)


# --- invalid UTF-8 ---------------------------------------------------------------------------


async def test_invalid_utf8_in_a_replay_chunk_is_400(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    body = json_body(_chunk(project)).replace(b"hostile-visitor", b"hostile-\xc3\x28")
    response = await services.ingest.post("/v1/replay", content=body, headers=JSON)
    assert_error(response, 400, "malformed_json")
    await _nothing_stored(admin_engine, project)


async def test_invalid_utf8_in_a_query_spec_is_400(services: Services, project: dict[str, Any]) -> None:
    body = b'{"metrics": ["visitors"], "filters": [{"dimension": "page", "operator": "is", "values": ["\xff"]}]}'
    response = await services.query.post(
        "/v1/query", content=body, headers={**bearer(project), "content-type": "application/json"}
    )
    assert_error(response, 400, "malformed_json")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/sessions?distinctId=%FF%FE", 200, None),  # decoded with replacement characters: no such person
        ("/v1/sessions/%FF%FE", 404, "session_not_found"),
        ("/v1/sessions/%FF%FE/recording", 404, "session_not_found"),
    ],
)
async def test_invalid_utf8_in_replay_urls(
    services: Services, project: dict[str, Any], path: str, status: int, code: str | None
) -> None:
    response = await services.replay.get(path, headers=bearer(project))
    if code is None:
        assert response.status_code == status, response.text
        assert response.json() == {"sessions": [], "nextCursor": None}
    else:
        assert_error(response, status, code)


# --- NUL in strings and keys -----------------------------------------------------------------


async def test_nul_in_a_replay_chunks_ids_is_422(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    for field in ("sessionId", "distinctId"):
        body = json_body(_chunk(project, **{field: "a\u0000b"}))
        response = await services.ingest.post("/v1/replay", content=body, headers=JSON)
        assert_error(response, 422, "nul_character", field)
    await _nothing_stored(admin_engine, project)


@pytest.mark.parametrize(
    ("path", "spec", "field"),
    [
        (
            "/v1/query",
            {"metrics": ["visitors"], "filters": [{"dimension": "page", "operator": "is", "values": ["/a\u0000"]}]},
            "filters[0].values",
        ),
        (
            "/v1/query",
            {"metrics": ["visitors"], "filters": [{"dimension": "page", "operator": "contains", "values": ["\u0000"]}]},
            "filters[0].values",
        ),
        (
            "/v1/query",
            {"metrics": ["visitors"], "filters": [{"dimension": "page", "operator": "matches", "values": ["\u0000"]}]},
            "filters[0].values",
        ),
        (
            "/v1/funnel",
            {"steps": [{"type": "page", "value": "/\u0000"}, {"type": "event", "value": "signup"}]},
            "steps[0].value",
        ),
        (
            "/v1/funnel",
            {"steps": [{"type": "page", "value": "/"}, {"type": "event", "value": "sign\u0000up"}]},
            "steps[1].value",
        ),
    ],
)
async def test_nul_in_query_text_is_422(
    services: Services, project: dict[str, Any], path: str, spec: dict[str, Any], field: str
) -> None:
    response = await services.query.post(path, json=spec, headers=bearer(project))
    assert_error(response, 422, "invalid_query", field)


async def test_nul_in_an_order_by_field_is_422(services: Services, project: dict[str, Any]) -> None:
    spec = {"metrics": ["visitors"], "order_by": [{"field": "visitors\u0000"}]}
    response = await services.query.post("/v1/query", json=spec, headers=bearer(project))
    assert_error(response, 422, "invalid_query", "order_by[0].field")


@pytest.mark.parametrize("parameter", ["distinctId", "urlContains", "browser", "device", "dateFrom", "cursor"])
async def test_nul_in_replay_filters_is_422(services: Services, project: dict[str, Any], parameter: str) -> None:
    response = await services.replay.get("/v1/sessions", params={parameter: "a\u0000b"}, headers=bearer(project))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == parameter
    assert_error(response, 422, response.json()["error"]["code"], parameter)


# --- SQL-looking strings and path traversal: data, never code ----------------------------------


async def test_sql_looking_and_traversal_ids_are_stored_verbatim_and_found_by_exactly_that_value(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    response = await _ingest_events(
        services, project, pageview(distinctId=TRAVERSAL, sessionId=TRAVERSAL, url="https://example.com/a'--")
    )
    assert response.status_code == 202, response.text
    chunk = _chunk(project, sessionId=SQL_LOOKING, distinctId=TRAVERSAL)
    response = await services.ingest.post("/v1/replay", content=json_body(chunk), headers=JSON)
    assert response.status_code == 202, response.text
    stored = await _the_stored_event(admin_engine, project, "distinct_id, session_id, path")
    assert tuple(stored) == (TRAVERSAL, TRAVERSAL, "/a'--")

    listed = await services.replay.get("/v1/sessions", params={"distinctId": TRAVERSAL}, headers=bearer(project))
    assert [session["id"] for session in listed.json()["sessions"]] == [SQL_LOOKING]
    detail = await services.replay.get(f"/v1/sessions/{quote(SQL_LOOKING, safe='')}", headers=bearer(project))
    assert detail.status_code == 200, detail.text
    assert detail.json()["session"]["distinctId"] == TRAVERSAL

    spec = {"metrics": ["pageviews"], "period": "today", "dimensions": ["page"]}
    for operator, value in (("is", "/a'--"), ("contains", "'--"), ("is", SQL_LOOKING)):
        filtered = {**spec, "filters": [{"dimension": "page", "operator": operator, "values": [value]}]}
        response = await services.query.post("/v1/query", json=filtered, headers=bearer(project))
        assert response.status_code == 200, response.text
        expected = [] if value == SQL_LOOKING else [{"dimensions": ["/a'--"], "metrics": [1]}]
        assert response.json()["results"] == expected

    # Erasure names the person exactly, slashes and all.
    erased = await services.replay.delete(f"/v1/persons/{quote(TRAVERSAL, safe='')}", headers=bearer(project))
    assert _counts(erased.json()) == (TRAVERSAL, 1, 1, 1)
    assert await count_rows(admin_engine, project["id"]) == NOTHING_STORED


async def test_a_replay_session_id_with_a_slash_is_refused_at_ingest(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    # /v1/sessions/{id} could never name it: the server decodes %2F before routing.
    response = await services.ingest.post(
        "/v1/replay", content=json_body(_chunk(project, sessionId=TRAVERSAL)), headers=JSON
    )
    assert_error(response, 422, "invalid_field", "sessionId")
    await _nothing_stored(admin_engine, project)


@pytest.mark.parametrize("distinct_id", ["a//b/", "/leading", "trailing/", "./.", "a%2Fb"])
async def test_erasure_deletes_exactly_the_distinct_id_named(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine, distinct_id: str
) -> None:
    for stored_id in (distinct_id, "a/b", "leading", "trailing", "a"):
        response = await _ingest_events(services, project, pageview(distinctId=stored_id))
        assert response.status_code == 202, response.text
    erased = await services.replay.delete(
        f"/v1/persons/{quote(distinct_id, safe='')}?unused=1", headers=bearer(project)
    )
    assert erased.status_code == 200, erased.text
    assert erased.json()["distinctId"] == distinct_id
    assert erased.json()["deletedEvents"] == 1
    assert (await count_rows(admin_engine, project["id"]))["events"] == 4


@pytest.mark.parametrize(
    ("session_id", "code"),
    [
        (SQL_LOOKING, "session_not_found"),
        ("1' OR '1'='1", "session_not_found"),
        ("*", "session_not_found"),
        ("%", "session_not_found"),
        # Decoded before routing, these are paths that no route serves.
        (TRAVERSAL, "not_found"),
        ("..%2F..%2Fschema", "not_found"),
    ],
)
async def test_hostile_session_ids_that_name_nothing_are_404(
    services: Services, project: dict[str, Any], session_id: str, code: str
) -> None:
    for suffix in ("", "/recording"):
        response = await services.replay.get(
            f"/v1/sessions/{quote(session_id, safe='')}{suffix}", headers=bearer(project)
        )
        assert_error(response, 404, code)


async def test_a_nul_in_a_session_id_is_422(services: Services, project: dict[str, Any]) -> None:
    for suffix in ("", "/recording"):
        response = await services.replay.get(f"/v1/sessions/a%00b{suffix}", headers=bearer(project))
        assert_error(response, 422, "invalid_session_id", "id")


async def test_a_wildcard_distinct_id_deletes_nobody_else(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    response = await _ingest_events(services, project, pageview(distinctId="alice"))
    assert response.status_code == 202
    for distinct_id in ("%", "*", SQL_LOOKING, TRAVERSAL):
        response = await services.replay.delete(f"/v1/persons/{quote(distinct_id, safe='')}", headers=bearer(project))
        assert response.status_code == 200, response.text
        assert response.json()["deletedEvents"] == 0
    assert (await count_rows(admin_engine, project["id"]))["events"] == 1


# --- oversized headers -----------------------------------------------------------------------


async def test_an_oversized_bearer_token_is_401(services: Services) -> None:
    huge = {"Authorization": "Bearer sk_" + "a" * 100_000}
    assert_error(await services.query.get("/v1/realtime", headers=huge), 401, "invalid_key")
    assert_error(await services.replay.get("/v1/sessions", headers=huge), 401, "invalid_key")


async def test_oversized_tracker_headers_are_survived(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    headers = {**JSON, "user-agent": "Mozilla/5.0 " + "(X" * 30_000, "origin": "https://" + "a" * 60_000 + ".com"}
    response = await services.ingest.post(
        "/v1/events", content=json_body({"projectKey": project["publicKey"], "events": [pageview()]}), headers=headers
    )
    assert response.status_code == 202, response.text
    assert (await count_rows(admin_engine, project["id"]))["events"] == 1


# --- absurd dates and time windows -------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"date_from": "9999-12-31", "date_to": "9999-12-31"}, "date_to"),
        ({"date_from": "0001-01-01", "date_to": "0001-01-01"}, "date_from"),
        ({"date_from": "0001-01-01", "date_to": "9999-12-31"}, "date_from"),
        ({"date_from": "0001-01-02", "date_to": "0001-01-03", "comparison": "previous_period"}, "date_from"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/query", "/v1/funnel", "/v1/retention"])
async def test_absurd_date_ranges_are_422(
    services: Services, project: dict[str, Any], path: str, extra: dict[str, Any], field: str
) -> None:
    spec: dict[str, Any] = {"period": "custom", **extra}
    if path == "/v1/query":
        spec["metrics"] = ["visitors"]
    else:
        spec.pop("comparison", None)
    if path == "/v1/funnel":
        spec["steps"] = [{"type": "page", "value": "/"}, {"type": "page", "value": "/b"}]
    response = await services.query.post(path, json=spec, headers=bearer(project))
    assert_error(response, 422, "invalid_query", field)


async def test_a_sent_at_near_the_end_of_time_is_422(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    # The clock correction would move the event before year 1.
    body = {"projectKey": project["publicKey"], "sentAt": "9999-12-31T23:59:59Z", "events": [pageview()]}
    response = await services.ingest.post("/v1/events", content=json_body(body), headers=JSON)
    assert_error(response, 422, "timestamp_out_of_range", "sentAt")
    await _nothing_stored(admin_engine, project)


async def test_an_event_from_the_distant_past_is_422(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    response = await _ingest_events(services, project, pageview(timestamp="0001-01-01T00:00:00+14:00"))
    assert_error(response, 422, "timestamp_too_old", "events[0].timestamp")
    await _nothing_stored(admin_engine, project)


@pytest.mark.parametrize(
    "body_fields",
    [{"sentAt": "0001-01-01T00:00:00Z"}, {"timestamp": "9999-12-31T23:59:59-14:00"}],
    ids=["sent-at-year-1", "timestamp-year-9999"],
)
async def test_times_in_the_future_are_stored_at_the_receive_time(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine, body_fields: dict[str, str]
) -> None:
    # As documented: a timestamp after the receive time (here after clock correction) is set to it.
    event = pageview(**{key: value for key, value in body_fields.items() if key == "timestamp"})
    body: dict[str, Any] = {"projectKey": project["publicKey"], "events": [event]}
    body.update({key: value for key, value in body_fields.items() if key == "sentAt"})
    before = datetime.now(UTC)
    response = await services.ingest.post("/v1/events", content=json_body(body), headers=JSON)
    assert response.status_code == 202, response.text
    [stored] = await _the_stored_event(admin_engine, project, "occurred_at")
    assert before <= stored <= datetime.now(UTC)


@pytest.mark.parametrize(
    "params",
    [
        {"dateFrom": "9999-12-31T23:59:59-14:00"},
        {"dateTo": "0001-01-01T00:00:00+14:00"},
        {"dateFrom": "99999-01-01"},
        {"dateFrom": "2026-02-30"},
    ],
)
async def test_absurd_replay_dates_are_422(services: Services, project: dict[str, Any], params: dict[str, str]) -> None:
    response = await services.replay.get("/v1/sessions", params=params, headers=bearer(project))
    assert_error(response, 422, "invalid_date", next(iter(params)))


async def test_extreme_but_valid_replay_dates_answer_empty(services: Services, project: dict[str, Any]) -> None:
    params = {"dateFrom": "0001-01-01T00:00:00Z", "dateTo": "9999-12-31T23:59:59Z"}
    response = await services.replay.get("/v1/sessions", params=params, headers=bearer(project))
    assert response.status_code == 200, response.text
    assert response.json() == {"sessions": [], "nextCursor": None}


async def test_rrweb_timestamps_from_another_era_are_422(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    for timestamp in (0, _now_ms() + int(timedelta(days=400).total_seconds() * 1000)):
        events = [{"type": 2, "timestamp": timestamp, "data": {}}]
        response = await services.ingest.post(
            "/v1/replay", content=json_body(_chunk(project, events=events)), headers=JSON
        )
        assert_error(response, 422, "timestamp_out_of_range", "events")
    await _nothing_stored(admin_engine, project)


# --- negative or huge seq numbers ------------------------------------------------------------


@pytest.mark.parametrize("seq", [-1, 2**31, 2**63, 2**64, 10**30, 1.5, "1"])
async def test_out_of_range_seq_numbers_are_422(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine, seq: Any
) -> None:
    body = json_body(_chunk(project)).replace(b'"seq":0', b'"seq":' + json_body(seq))
    response = await services.ingest.post("/v1/replay", content=body, headers=JSON)
    assert_error(response, 422, "invalid_field", "seq")
    await _nothing_stored(admin_engine, project)


@pytest.mark.parametrize("window", ["from=-1", "to=-1", "from=99999999999999999999", "to=1.5", "from=0x10", "from=1e3"])
async def test_out_of_range_recording_windows_are_422(services: Services, project: dict[str, Any], window: str) -> None:
    response = await services.replay.get(f"/v1/sessions/any/recording?{window}", headers=bearer(project))
    assert response.status_code == 422, response.text
    assert_error(response, 422, response.json()["error"]["code"], window.split("=")[0])


# --- another project's keys ------------------------------------------------------------------


async def test_another_projects_keys_reach_none_of_this_projects_data(
    services: Services, project: dict[str, Any], other_project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    response = await _ingest_events(services, project, pageview(distinctId="alice", sessionId="s-alice"))
    assert response.status_code == 202
    chunk = _chunk(project, sessionId="s-alice", distinctId="alice")
    assert (await services.ingest.post("/v1/replay", content=json_body(chunk), headers=JSON)).status_code == 202
    before = await count_rows(admin_engine, project["id"])
    theirs = bearer(other_project)

    # Ingest: their public key cannot write for this project's domain.
    body = json_body({"projectKey": other_project["publicKey"], "events": [pageview()]})
    assert_error(await services.ingest.post("/v1/events", content=body, headers=JSON), 403, "domain_not_allowed")
    chunk = _chunk(other_project, sessionId="s-alice", distinctId="alice")
    assert_error(
        await services.ingest.post("/v1/replay", content=json_body(chunk), headers=JSON), 403, "domain_not_allowed"
    )
    # A secret key is not a public key, and the other way round.
    body = json_body({"projectKey": project["secretKey"], "events": [pageview()]})
    assert_error(await services.ingest.post("/v1/events", content=body, headers=JSON), 401, "unknown_project_key")
    public_as_bearer = {"Authorization": f"Bearer {project['publicKey']}"}
    assert_error(await services.query.get("/v1/realtime", headers=public_as_bearer), 401, "invalid_key")
    assert_error(await services.replay.get("/v1/sessions", headers=public_as_bearer), 401, "invalid_key")

    # Query: their figures only (none).
    realtime = await services.query.get("/v1/realtime", headers=theirs)
    assert realtime.json()["visitors"] == 0
    spec = {"metrics": ["visitors", "pageviews"], "period": "today"}
    assert (await services.query.post("/v1/query", json=spec, headers=theirs)).json()["results"] == [
        {"dimensions": [], "metrics": [0, 0]}
    ]
    # Replay: nothing listed, nothing found, nothing deleted.
    assert (await services.replay.get("/v1/sessions", headers=theirs)).json()["sessions"] == []
    assert_error(await services.replay.get("/v1/sessions/s-alice", headers=theirs), 404, "session_not_found")
    assert_error(await services.replay.get("/v1/sessions/s-alice/recording", headers=theirs), 404, "session_not_found")
    deleted = await services.replay.delete("/v1/persons/alice", headers=theirs)
    assert _counts(deleted.json()) == ("alice", 0, 0, 0)
    assert set(deleted.json()["deletedRows"].values()) == {0}

    assert await count_rows(admin_engine, project["id"]) == before
    assert await count_rows(admin_engine, other_project["id"]) == NOTHING_STORED
    # And this project's own key still sees it all.
    assert (await services.query.get("/v1/realtime", headers=bearer(project))).json()["visitors"] == 1


@pytest.mark.parametrize("offset", [2**31, 2**63 - 1, 2**63, 2**64 - 1, 10**30])
async def test_a_huge_offset_answers_an_empty_page_or_a_422(
    services: Services, project: dict[str, Any], offset: int
) -> None:
    spec = {"metrics": ["pageviews"], "period": "today", "offset": offset}
    response = await services.query.post("/v1/query", json=spec, headers=bearer(project))
    if response.status_code == 200:
        assert response.json()["results"] == []
    else:
        assert_error(response, 422, response.json()["error"]["code"], "offset")


async def test_huge_numbers_in_properties_are_stored_exactly(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    properties = {"big": 10**30, "small": -(10**30), "float": 1.5e308, "tiny": 5e-324}
    response = await _ingest_events(services, project, pageview(properties=properties))
    assert response.status_code == 202, response.text
    [stored] = await _the_stored_event(admin_engine, project, "properties::text")
    decoded = msgspec.json.decode(stored)
    # jsonb keeps numbers as numeric: 1.5e308 comes back written out in digits, the same number.
    assert {key: float(value) for key, value in decoded.items()} == {
        key: float(value) for key, value in properties.items()
    }
    assert decoded["big"] == 10**30


def _cursor(started_at: str, session_id: str) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode([started_at, session_id])).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor("2026-01-01T00:00:00Z", "a\u0000b"),
        _cursor("9999-12-31T23:59:59-14:00", "s"),
        _cursor("2026-01-01T00:00:00Z", "x' OR '1'='1"),
    ],
    ids=["nul", "beyond-9999", "sql-looking"],
)
async def test_a_forged_cursor_is_422_or_an_empty_page(
    services: Services, project: dict[str, Any], cursor: str
) -> None:
    response = await services.replay.get("/v1/sessions", params={"cursor": cursor}, headers=bearer(project))
    if response.status_code == 200:
        assert response.json() == {"sessions": [], "nextCursor": None}
    else:
        assert_error(response, 422, "invalid_cursor", "cursor")


@pytest.mark.parametrize(
    "overrides",
    [
        {"url": "https://[::1/"},
        {"url": "https://example.com:99999/"},
        {"url": "https://example.com:-1/"},
        {"url": "https://exa mple.com/"},
        {"url": "https://example.com/%ZZ?utm_source=%FF%FE"},
        {"url": "https://EXAMPLE.com./x"},
        {"url": "https://user:pass@example.com/"},
        {"referrer": "https://[::1/"},
        {"referrer": "javascript:alert(1)"},
        {"referrer": "https://example.com:99999/"},
    ],
)
async def test_malformed_urls_are_422_or_stored(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine, overrides: dict[str, str]
) -> None:
    response = await _ingest_events(services, project, pageview(**overrides))
    if response.status_code == 202:
        assert (await count_rows(admin_engine, project["id"]))["events"] == 1
        return
    assert response.status_code in (403, 422), response.text
    assert_error(response, response.status_code, response.json()["error"]["code"])
    await _nothing_stored(admin_engine, project)


async def test_a_lone_surrogate_escape_is_refused(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    body = json_body({"projectKey": project["publicKey"], "events": [pageview(title="PLACEHOLDER")]})
    response = await services.ingest.post("/v1/events", content=body.replace(b"PLACEHOLDER", b"\\ud800"), headers=JSON)
    assert_error(response, 400, "malformed_json")
    await _nothing_stored(admin_engine, project)
    spec = b'{"metrics": ["visitors"], "filters": [{"dimension": "page", "operator": "is", "values": ["\\ud800"]}]}'
    response = await services.query.post(
        "/v1/query", content=spec, headers={**bearer(project), "content-type": "application/json"}
    )
    assert_error(response, 400, "malformed_json")


def _counts(erasure: dict[str, Any]) -> tuple[Any, ...]:
    """(distinctId, deletedEvents, deletedSessions, deletedChunks) of an erasure's answer."""
    return tuple(erasure[key] for key in ("distinctId", "deletedEvents", "deletedSessions", "deletedChunks"))
