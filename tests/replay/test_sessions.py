"""GET /v1/sessions and /v1/sessions/{id}: listing, every filter, cursor pagination, isolation."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.replay.app import create_app
from tests.harness import DatabaseHarness
from tests.replay.conftest import T0, Chunk, StoreSession, auth, insert_event, insert_session, project_rows


async def test_list_answers_every_field_of_a_session(client: AsyncTestClient[Any], store: StoreSession) -> None:
    session = await store(
        [Chunk(0, [0, 1_000], full_snapshot=True), Chunk(1, [5_000, 12_250])],
        session_id="sess-a",
        distinct_id="alice",
        first_url="https://example.com/pricing",
        country="FR",
        browser="Chrome",
        os="Windows",
        device_type="desktop",
        page_count=3,
        click_count=7,
        active_ms=9_000,
    )
    response = await client.get("/v1/sessions")
    assert response.status_code == 200
    total_bytes = sum(len(chunk.data) for chunk in session.chunks.values())
    assert response.json() == {
        "sessions": [
            {
                "id": "sess-a",
                "distinctId": "alice",
                "startedAt": "2026-11-20T10:00:00Z",
                "endedAt": "2026-11-20T10:00:12.250000Z",
                "durationMs": 12_250,
                "activeMs": 9_000,
                "pageCount": 3,
                "clickCount": 7,
                "firstUrl": "https://example.com/pricing",
                "country": "FR",
                "browser": "Chrome",
                "os": "Windows",
                "deviceType": "desktop",
                "chunkCount": 2,
                "totalBytes": total_bytes,
            }
        ],
        "nextCursor": None,
    }


async def test_a_single_batch_session_is_listed_with_its_real_duration(
    client: AsyncTestClient[Any], store: StoreSession
) -> None:
    await store([Chunk(0, [0, 800, 4_500], full_snapshot=True)], session_id="one-batch")
    sessions = (await client.get("/v1/sessions")).json()["sessions"]
    assert [(s["id"], s["durationMs"], s["chunkCount"]) for s in sessions] == [("one-batch", 4_500, 1)]


async def test_list_is_newest_first(client: AsyncTestClient[Any], store: StoreSession) -> None:
    for session_id, minutes in [("middle", 10), ("oldest", 0), ("newest", 20)]:
        await store(
            [Chunk(0, [0], full_snapshot=True)], session_id=session_id, started_at=T0 + timedelta(minutes=minutes)
        )
    sessions = (await client.get("/v1/sessions")).json()["sessions"]
    assert [s["id"] for s in sessions] == ["newest", "middle", "oldest"]


async def _three_kinds_of_session(store: StoreSession) -> None:
    kinds = [
        # id, person, start (hours after T0), duration (ms), first path, country, browser, device
        ("long-de-firefox", "alice", 0, 60_000, "/checkout?step=1", "DE", "Firefox", "desktop"),
        ("short-us-safari", "bob", 2, 5_000, "/", "US", "Mobile Safari", "mobile"),
        ("mid-fr-chrome", "carol", 24, 30_000, "/blog/100%_real", "FR", "Chrome", "tablet"),
    ]
    for session_id, distinct_id, start_hours, duration_ms, first_path, country, browser, device_type in kinds:
        await store(
            [Chunk(0, [0, duration_ms], full_snapshot=True)],
            session_id=session_id,
            distinct_id=distinct_id,
            started_at=T0 + timedelta(hours=start_hours),
            first_url=f"https://example.com{first_path}",
            country=country,
            browser=browser,
            os="iOS" if device_type == "mobile" else "Linux",
            device_type=device_type,
        )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ["mid-fr-chrome", "short-us-safari", "long-de-firefox"]),
        ({"dateFrom": "2026-11-20T11:00:00Z"}, ["mid-fr-chrome", "short-us-safari"]),
        ({"dateTo": "2026-11-20T12:00:00Z"}, ["long-de-firefox"]),  # the end is exclusive
        ({"dateFrom": "2026-11-20T12:00:00", "dateTo": "2026-11-21T00:00:00"}, ["short-us-safari"]),  # naive = UTC
        ({"minDurationMs": 30_000}, ["mid-fr-chrome", "long-de-firefox"]),
        ({"minDurationMs": 30_001}, ["long-de-firefox"]),
        ({"distinctId": "bob"}, ["short-us-safari"]),
        ({"urlContains": "CHECKOUT"}, ["long-de-firefox"]),
        ({"urlContains": "100%_"}, ["mid-fr-chrome"]),  # % and _ are literal, not LIKE wildcards
        ({"urlContains": "0%_x"}, []),
        ({"country": "fr"}, ["mid-fr-chrome"]),
        ({"browser": "mobile safari"}, ["short-us-safari"]),
        ({"os": "ios"}, ["short-us-safari"]),
        ({"device": "desktop"}, ["long-de-firefox"]),
        ({"device": "tablet", "country": "FR", "minDurationMs": 1}, ["mid-fr-chrome"]),
        ({"device": "tablet", "country": "DE"}, []),
    ],
)
async def test_every_filter(
    client: AsyncTestClient[Any], store: StoreSession, query: dict[str, Any], expected: list[str]
) -> None:
    await _three_kinds_of_session(store)
    response = await client.get("/v1/sessions", params=query)
    assert response.status_code == 200, response.text
    assert [s["id"] for s in response.json()["sessions"]] == expected


async def test_bot_sessions_are_left_out_unless_asked_for(client: AsyncTestClient[Any], store: StoreSession) -> None:
    await _three_kinds_of_session(store)
    await store(
        [Chunk(0, [0, 1_000], full_snapshot=True)],
        session_id="crawler",
        started_at=T0 + timedelta(hours=30),
        browser=None,
        device_type="bot",
    )
    everyone = ["crawler", "mid-fr-chrome", "short-us-safari", "long-de-firefox"]
    for query, expected in [
        ({}, everyone[1:]),
        ({"bots": "exclude"}, everyone[1:]),
        ({"bots": "include"}, everyone),
        # Asking for bots by their device type finds them without the switch.
        ({"device": "bot"}, ["crawler"]),
        ({"bots": "include", "device": "mobile"}, ["short-us-safari"]),
    ]:
        response = await client.get("/v1/sessions", params=query)
        assert response.status_code == 200, response.text
        assert [s["id"] for s in response.json()["sessions"]] == expected, query


async def test_url_contains_also_matches_pages_visited_later_in_the_session(
    client: AsyncTestClient[Any], store: StoreSession, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    await _three_kinds_of_session(store)
    # bob's session starts on the home page and reaches the checkout a minute later.
    await insert_event(
        admin_engine,
        project["id"],
        distinct_id="bob",
        session_id="short-us-safari",
        occurred_at=T0 + timedelta(hours=2, minutes=1),
        url="https://example.com/checkout?step=2",
    )
    # The same path in another session of bob's, much later, must not match this one.
    await insert_event(
        admin_engine,
        project["id"],
        distinct_id="bob",
        session_id="some-other-session",
        occurred_at=T0 + timedelta(days=1),
        url="https://example.com/checkout",
    )
    response = await client.get("/v1/sessions", params={"urlContains": "checkout"})
    assert [s["id"] for s in response.json()["sessions"]] == ["short-us-safari", "long-de-firefox"]


async def _sources_of_two_sessions(admin_engine: AsyncEngine, project_id: int) -> None:
    """alice's long session came from Hacker News and reached /pricing; bob's came from a newsletter."""
    events: list[dict[str, Any]] = [
        {
            "distinct_id": "alice",
            "session_id": "long-de-firefox",
            "occurred_at": T0,
            "url": "https://example.com/checkout?step=1",
            "path": "/checkout",
            "referrer": "https://news.ycombinator.com/item?id=1",
            "referrer_domain": "news.ycombinator.com",
            "utm": {"source": "hn"},
        },
        {
            "distinct_id": "alice",
            "session_id": "long-de-firefox",
            "occurred_at": T0 + timedelta(seconds=30),
            "url": "https://example.com/pricing",
            "path": "/pricing",
        },
        {
            "distinct_id": "bob",
            "session_id": "short-us-safari",
            "occurred_at": T0 + timedelta(hours=2),
            "url": "https://example.com/?utm_source=newsletter",
            "path": "/",
            "referrer": "https://mail.google.com/",
            "referrer_domain": "mail.google.com",
            "utm": {"source": "newsletter", "medium": "email", "campaign": "launch"},
        },
        # A later event's referrer is not the visit's source.
        {
            "distinct_id": "bob",
            "session_id": "short-us-safari",
            "occurred_at": T0 + timedelta(hours=2, seconds=3),
            "url": "https://example.com/blog",
            "path": "/blog",
            "referrer": "https://other.example/",
            "referrer_domain": "other.example",
        },
    ]
    for event in events:
        await insert_event(admin_engine, project_id, **event)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"page": "/pricing"}, ["long-de-firefox"]),
        ({"page": "/blog"}, ["short-us-safari"]),
        ({"page": "/"}, ["short-us-safari"]),
        ({"page": "/pric"}, []),  # a path, matched exactly (urlContains is the substring search)
        ({"page": "/PRICING"}, []),
        ({"referrer": "news.ycombinator.com"}, ["long-de-firefox"]),
        ({"referrer": "News.YCombinator.com"}, ["long-de-firefox"]),  # domains are stored in lower case
        ({"referrer": "other.example"}, []),  # only the first event's referrer is the visit's
        ({"utmSource": "newsletter"}, ["short-us-safari"]),
        ({"utmSource": "hn"}, ["long-de-firefox"]),
        ({"utmMedium": "email", "utmCampaign": "launch"}, ["short-us-safari"]),
        ({"utmCampaign": "other"}, []),
        ({"page": "/pricing", "country": "DE"}, ["long-de-firefox"]),
        ({"page": "/pricing", "referrer": "mail.google.com"}, []),
        ({"page": "/blog", "utmSource": "newsletter", "urlContains": "blog"}, ["short-us-safari"]),
    ],
)
async def test_the_dashboards_page_and_source_filters(
    client: AsyncTestClient[Any],
    store: StoreSession,
    admin_engine: AsyncEngine,
    project: dict[str, Any],
    query: dict[str, Any],
    expected: list[str],
) -> None:
    await _three_kinds_of_session(store)
    await _sources_of_two_sessions(admin_engine, project["id"])
    response = await client.get("/v1/sessions", params=query)
    assert response.status_code == 200, response.text
    assert [s["id"] for s in response.json()["sessions"]] == expected


async def test_session_detail_has_the_visits_referrer_and_utm_tags(
    client: AsyncTestClient[Any], store: StoreSession, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    await _three_kinds_of_session(store)
    await _sources_of_two_sessions(admin_engine, project["id"])
    visits = {
        session_id: (await client.get(f"/v1/sessions/{session_id}")).json()["visit"]
        for session_id in ("long-de-firefox", "short-us-safari", "mid-fr-chrome")
    }
    assert visits == {
        "long-de-firefox": {
            "referrer": "https://news.ycombinator.com/item?id=1",
            "referrerDomain": "news.ycombinator.com",
            "utmSource": "hn",
            "utmMedium": None,
            "utmCampaign": None,
        },
        "short-us-safari": {
            "referrer": "https://mail.google.com/",
            "referrerDomain": "mail.google.com",
            "utmSource": "newsletter",
            "utmMedium": "email",
            "utmCampaign": "launch",
        },
        "mid-fr-chrome": None,  # recorded, but without any stored event
    }


async def test_erasing_a_person_erases_the_referrer_the_player_shows(
    client: AsyncTestClient[Any], store: StoreSession, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    await _three_kinds_of_session(store)
    await _sources_of_two_sessions(admin_engine, project["id"])
    response = await client.delete("/v1/persons/bob")
    assert response.status_code == 200, response.text
    assert (await client.get("/v1/sessions/short-us-safari")).status_code == 404
    # Nothing of bob's visit is left to find his session's source by.
    rows = await project_rows(
        admin_engine,
        project["id"],
        {
            "events": "SELECT referrer FROM events WHERE project_id = :p AND distinct_id = 'bob'",
            "visits": "SELECT utm_source FROM query_sessions WHERE project_id = :p AND distinct_id = 'bob'",
        },
    )
    assert rows == {"events": [], "visits": []}
    listed = await client.get("/v1/sessions", params={"utmSource": "newsletter"})
    assert listed.json()["sessions"] == []


async def test_cursor_pages_stay_stable_while_new_sessions_arrive(
    client: AsyncTestClient[Any], store: StoreSession
) -> None:
    # Two sessions share a start time: the session id breaks the tie, so neither is lost.
    starts = {"s1": 0, "s2": 10, "s3": 20, "s4a": 30, "s4b": 30, "s5": 40}
    for session_id, minutes in starts.items():
        await store(
            [Chunk(0, [0], full_snapshot=True)], session_id=session_id, started_at=T0 + timedelta(minutes=minutes)
        )

    first = (await client.get("/v1/sessions", params={"limit": 2})).json()
    assert [s["id"] for s in first["sessions"]] == ["s5", "s4b"]

    # New sessions arrive between pages: one newer than everything, one with a start
    # between pages already served (a late upload).
    await store([Chunk(0, [0], full_snapshot=True)], session_id="new-newest", started_at=T0 + timedelta(hours=5))
    await store([Chunk(0, [0], full_snapshot=True)], session_id="late-upload", started_at=T0 + timedelta(minutes=35))

    second = (await client.get("/v1/sessions", params={"limit": 2, "cursor": first["nextCursor"]})).json()
    assert [s["id"] for s in second["sessions"]] == ["s4a", "s3"]
    await store([Chunk(0, [0], full_snapshot=True)], session_id="newer-still", started_at=T0 + timedelta(hours=6))
    third = (await client.get("/v1/sessions", params={"limit": 2, "cursor": second["nextCursor"]})).json()
    assert [s["id"] for s in third["sessions"]] == ["s2", "s1"]
    assert third["nextCursor"] is None


async def test_last_page_has_no_cursor_when_it_is_exactly_full(
    client: AsyncTestClient[Any], store: StoreSession
) -> None:
    for minutes in (0, 1):
        await store([Chunk(0, [0], full_snapshot=True)], started_at=T0 + timedelta(minutes=minutes))
    page = (await client.get("/v1/sessions", params={"limit": 2})).json()
    assert len(page["sessions"]) == 2
    assert page["nextCursor"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WyJ4Il0"}, "cursor"),  # base64 of ["x"]: valid JSON, wrong shape
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"dateFrom": "yesterday"}, "dateFrom"),
        ({"minDurationMs": -1}, "minDurationMs"),
        ({"country": "DEU"}, "country"),
        ({"dateFrom": "0001-01-01T00:00:00+14:00"}, "dateFrom"),
        ({"dateTo": "2026-13-01"}, "dateTo"),
        ({"urlContains": "a\x00b"}, "urlContains"),
        ({"distinctId": "\x00"}, "distinctId"),
        ({"browser": "x\x00"}, "browser"),
        ({"os": "x\x00"}, "os"),
        ({"device": "\x00"}, "device"),
        ({"bots": "yes"}, "bots"),
        # base64 of ["0001-01-01T00:00:00+14:00","s"]: well-formed, but outside what UTC can hold
        ({"cursor": "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzE0OjAwIiwicyJd"}, "cursor"),
        ({"cursor": "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwicyJd"}, "cursor"),  # a date-time without offset
    ],
)
async def test_malformed_list_parameters_answer_422(
    client: AsyncTestClient[Any], query: dict[str, Any], field: str
) -> None:
    response = await client.get("/v1/sessions", params=query)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


async def test_session_detail_has_the_chunk_index_in_seq_order(
    client: AsyncTestClient[Any], store: StoreSession
) -> None:
    session = await store(
        [
            Chunk(0, [0, 4_000], full_snapshot=True),
            Chunk(1, [5_000, 9_000]),
            Chunk(2, [10_000, 14_000], content_encoding="identity"),
        ],
        session_id="detail",
        insert_order=[2, 0, 1],
    )
    response = await client.get("/v1/sessions/detail")
    assert response.status_code == 200
    body = response.json()
    assert body["session"]["id"] == "detail"
    assert body["session"]["durationMs"] == 14_000
    assert body["chunks"] == [
        {
            "seq": 0,
            "firstTimestamp": "2026-11-20T10:00:00Z",
            "lastTimestamp": "2026-11-20T10:00:04Z",
            "eventCount": 3,
            "fullSnapshot": True,
            "contentEncoding": "gzip",
            "byteSize": len(session.chunks[0].data),
        },
        {
            "seq": 1,
            "firstTimestamp": "2026-11-20T10:00:05Z",
            "lastTimestamp": "2026-11-20T10:00:09Z",
            "eventCount": 2,
            "fullSnapshot": False,
            "contentEncoding": "gzip",
            "byteSize": len(session.chunks[1].data),
        },
        {
            "seq": 2,
            "firstTimestamp": "2026-11-20T10:00:10Z",
            "lastTimestamp": "2026-11-20T10:00:14Z",
            "eventCount": 2,
            "fullSnapshot": False,
            "contentEncoding": "identity",
            "byteSize": len(session.chunks[2].data),
        },
    ]


async def test_unknown_session_is_404_and_malformed_id_is_422(client: AsyncTestClient[Any]) -> None:
    # Any id ingest could have stored is looked up, so these are unknown, not malformed.
    for unknown_id in ("no-such-session", "has space", "semi;colon", "x" * 200):
        unknown = await client.get(f"/v1/sessions/{unknown_id}")
        assert unknown.status_code == 404, unknown_id
        assert unknown.json()["error"]["code"] == "session_not_found"
    for malformed in ("x" * 201, "nul%00byte"):
        response = await client.get(f"/v1/sessions/{malformed}")
        assert response.status_code == 422, malformed
        assert response.json()["error"] == {
            "code": "invalid_session_id",
            "message": "A session id is 1 to 200 characters without NUL.",
            "field": "id",
        }


async def test_a_session_id_with_unusual_characters_is_found(client: AsyncTestClient[Any], store: StoreSession) -> None:
    await store([Chunk(0, [0, 1_000], full_snapshot=True)], session_id="tab 1;ü%")
    response = await client.get("/v1/sessions/tab%201%3B%C3%BC%25")
    assert response.status_code == 200, response.text
    assert response.json()["session"]["id"] == "tab 1;ü%"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk_wrong"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer pk_x"}],
)
async def test_missing_or_wrong_key_is_401(db: DatabaseHarness, headers: dict[str, str]) -> None:
    async with AsyncTestClient(create_app(db.database)) as anonymous:
        for path in ("/v1/sessions", "/v1/sessions/abc", "/v1/sessions/abc/recording"):
            response = await anonymous.get(path, headers=headers)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
        deletion = await anonymous.delete("/v1/persons/alice", headers=headers)
        assert deletion.status_code == 401


async def test_a_key_never_reads_another_projects_sessions(
    client: AsyncTestClient[Any],
    store: StoreSession,
    admin_engine: AsyncEngine,
    other_project: dict[str, Any],
) -> None:
    await store([Chunk(0, [0, 1_000], full_snapshot=True)], session_id="mine")
    # The other project has a session with the same id, and one of its own.
    await insert_session(admin_engine, other_project, [Chunk(0, [0, 9_000], full_snapshot=True)], session_id="mine")
    await insert_session(admin_engine, other_project, [Chunk(0, [0], full_snapshot=True)], session_id="theirs")

    mine = (await client.get("/v1/sessions")).json()["sessions"]
    assert [(s["id"], s["durationMs"]) for s in mine] == [("mine", 1_000)]
    assert (await client.get("/v1/sessions/theirs")).status_code == 404
    assert (await client.get("/v1/sessions/theirs/recording")).status_code == 404
    assert (await client.get("/v1/sessions/mine")).json()["session"]["durationMs"] == 1_000

    theirs = (await client.get("/v1/sessions", headers=auth(other_project))).json()["sessions"]
    assert sorted(s["id"] for s in theirs) == ["mine", "theirs"]
