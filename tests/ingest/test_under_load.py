"""Ingest served by Granian for real: concurrent clients, retries, proxies, and a PgBouncer outage."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli.pgbouncer import LocalPgBouncer
from services.cli.processes import free_port
from services.cli.serving import running_service
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.harness import TEST_POOL_SIZE, DatabaseHarness
from tests.ingest.conftest import JSON, json_body, pageview, stored_events


@pytest.fixture(scope="module")
def ingest_server(db: DatabaseHarness) -> Iterator[str]:
    """The ingest service under Granian, trusting 127.0.0.1 as its proxy."""
    with db.serve("ingest", "ingest-under-load", INGEST_TRUSTED_PROXIES="127.0.0.1/32", INGEST_WORKERS="2") as ingest:
        yield ingest.url


async def test_hundreds_of_concurrent_clients_every_acknowledged_event_is_stored_once(
    ingest_server: str, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    clients, batches_per_client, events_per_batch = 300, 3, 4
    acknowledged: set[str] = set()
    retried: list[str] = []
    server_connections: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        async with admin_engine.connect() as connection:
            while not done.is_set():
                result = await connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'sightline'"
                        " AND backend_type = 'client backend' AND usename = 'sightline_service'"
                    )
                )
                server_connections.append(result.scalar_one())
                await connection.rollback()
                await asyncio.sleep(0.05)

    async def visitor(http: httpx.AsyncClient, number: int) -> None:
        for batch_number in range(batches_per_client):
            events = [
                pageview(uuid=str(uuid.uuid4()), distinctId=f"v{number}", sessionId=f"s{number}")
                for _ in range(events_per_batch)
            ]
            body = json_body({"projectKey": project["publicKey"], "events": events})
            # Every third batch is sent twice, as a tracker retrying after a lost answer would.
            for _ in range(2 if batch_number % 3 == 0 else 1):
                await post_until_acknowledged(http, body)
            acknowledged.update(event["uuid"] for event in events)

    async def post_until_acknowledged(http: httpx.AsyncClient, body: bytes) -> None:
        # As the tracker does: a 503 or a connection lost before the answer is retried with
        # the same body (the same uuids) after a pause.
        for _ in range(10):
            try:
                response = await http.post(f"{ingest_server}/v1/events", content=body, headers=JSON)
            except httpx.TransportError:
                retried.append("transport")
            else:
                if response.status_code == 202:
                    return
                # 408: this (test) client was so busy that its body came too late; the
                # tracker retries it like a 503.
                assert response.status_code in (408, 503), response.text
                retried.append(str(response.status_code))
            await asyncio.sleep(0.5)
        raise AssertionError("a batch was never acknowledged")

    watcher = asyncio.create_task(watch())
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        await asyncio.gather(*(visitor(http, n) for n in range(clients)))
    done.set()
    await watcher

    rows = await stored_events(admin_engine, project["id"])
    stored = [str(row.event_uuid) for row in rows]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert set(stored) == acknowledged, "stored events differ from acknowledged ones"
    assert len(acknowledged) == clients * batches_per_client * events_per_batch
    assert max(server_connections) <= TEST_POOL_SIZE + 5


async def test_forwarded_for_from_a_trusted_proxy_gives_the_country(
    ingest_server: str, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    body = json_body({"projectKey": project["publicKey"], "events": [pageview()]})
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{ingest_server}/v1/events", content=body, headers={**JSON, "x-forwarded-for": "81.2.69.142"}
        )
    assert response.status_code == 202
    [row] = await stored_events(admin_engine, project["id"])
    assert row.country == "GB"


@pytest.fixture
async def own_pgbouncer(db: DatabaseHarness) -> AsyncIterator[LocalPgBouncer]:
    """A second PgBouncer in front of the same Postgres, so stopping it disturbs no other test."""
    bouncer = LocalPgBouncer(
        conf_dir=db.root / "pgbouncer-outage",
        run_dir=db.root / "run-outage",
        log_file=db.root / "log" / "pgbouncer-outage.log",
        listen_port=free_port(),
        postgres_port=db.postgres.port,
        user=db.pgbouncer.user,
        password=db.pgbouncer.password,
        pool_size=5,
        max_client_conn=200,
    )
    bouncer.start()
    yield bouncer
    bouncer.stop()


async def test_with_pgbouncer_stopped_ingest_answers_503_fast_and_recovers_by_itself(
    db: DatabaseHarness, own_pgbouncer: LocalPgBouncer, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    url = db.database.url.replace(f":{db.pgbouncer.listen_port}/", f":{own_pgbouncer.listen_port}/")
    app: Litestar = create_app(db.database_for("ingest", url=url), settings=IngestSettings())

    def body() -> bytes:
        return json_body({"projectKey": project["publicKey"], "events": [pageview(uuid=str(uuid.uuid4()))]})

    async with AsyncTestClient(app) as client:
        assert (await client.post("/v1/events", content=body(), headers=JSON)).status_code == 202

        own_pgbouncer.stop()
        outage_answers = []
        for _ in range(3):
            started = time.monotonic()
            # A guard against hanging, not a speed measurement.
            async with asyncio.timeout(5):
                response = await client.post("/v1/events", content=body(), headers=JSON)
            outage_answers.append(
                (response.status_code, response.headers.get("retry-after"), time.monotonic() - started)
            )
            assert response.json()["error"]["code"] == "database_unavailable"
        assert [status for status, _, _ in outage_answers] == [503] * 3
        # 2 s plus jitter, widened by a second at most in an outage this young (test_retry_after.py).
        assert all(2 <= int(retry) <= 5 for _, retry, _ in outage_answers)
        ready = await client.get("/health/ready")
        assert ready.status_code == 503

        own_pgbouncer.start()
        recovered_after = None
        started = time.monotonic()
        while time.monotonic() - started < 15:
            response = await client.post("/v1/events", content=body(), headers=JSON)
            if response.status_code == 202:
                recovered_after = time.monotonic() - started
                break
            await asyncio.sleep(0.2)
        assert recovered_after is not None, "ingest did not recover after PgBouncer came back"
        assert (await client.get("/health/ready")).status_code == 200

    # Only the acknowledged events were stored: the first and the one after recovery.
    assert len(await stored_events(admin_engine, project["id"])) == 2


async def test_a_503_in_an_outage_keeps_its_cors_headers_so_a_browser_can_read_retry_after(
    db: DatabaseHarness, own_pgbouncer: LocalPgBouncer, project: dict[str, Any]
) -> None:
    """The allowed-domains list falls due during the outage (TTL 0 here): the old list is kept.

    Found by the fault run: the CORS middleware's reload raised, so the 503 left without
    Access-Control-Allow-Origin and a browser's tracker saw a network error, not Retry-After.
    """
    url = db.database.url.replace(f":{db.pgbouncer.listen_port}/", f":{own_pgbouncer.listen_port}/")
    app = create_app(db.database_for("ingest", url=url), settings=IngestSettings(project_cache_ttl_s=0.0))
    origin = {"origin": "https://shop.example.org"}

    def body() -> bytes:
        return json_body({"projectKey": project["publicKey"], "events": [pageview(uuid=str(uuid.uuid4()))]})

    async with AsyncTestClient(app) as client:
        stored = await client.post("/v1/events", content=body(), headers={**JSON, **origin})
        assert stored.status_code == 202
        assert stored.headers["access-control-allow-origin"] == origin["origin"]

        own_pgbouncer.stop()
        async with asyncio.timeout(10):
            refused = await client.post("/v1/events", content=body(), headers={**JSON, **origin})
        assert refused.status_code == 503
        assert 2 <= int(refused.headers["retry-after"]) <= 5  # 2 s plus jitter, a young outage
        assert refused.headers["access-control-allow-origin"] == origin["origin"]
        assert "retry-after" in refused.headers["access-control-expose-headers"].lower()

        own_pgbouncer.start()
        async with asyncio.timeout(15):
            while (await client.post("/v1/events", content=body(), headers={**JSON, **origin})).status_code != 202:
                await asyncio.sleep(0.2)


async def test_sigterm_loses_no_acknowledged_event_and_exits_cleanly(
    db: DatabaseHarness, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    """A deploy stops ingest while trackers post: whatever got a 202 is stored, the rest can retry.

    Granian stops accepting, the app's shutdown commits what the writer holds, and the
    process exits by itself. Requests Granian drops during the stop (on kept-alive
    connections) got no answer, so a tracker retries them with the same uuids.
    """
    env = {**os.environ, "SIGHTLINE_DATABASE_URL": db.database.url, "SIGHTLINE_INGEST_WORKERS": "1"}
    log_path = db.root / "log" / "ingest-sigterm.log"
    acknowledged: set[str] = set()
    outcomes: list[str] = []

    async def send(http: httpx.AsyncClient, url: str) -> None:
        events = [pageview(uuid=str(uuid.uuid4())) for _ in range(5)]
        body = json_body({"projectKey": project["publicKey"], "events": events})
        try:
            response = await http.post(f"{url}/v1/events", content=body, headers=JSON)
        except httpx.TransportError as exc:
            outcomes.append(type(exc).__name__)
            return
        outcomes.append(str(response.status_code))
        if response.status_code == 202:
            acknowledged.update(event["uuid"] for event in events)

    with running_service("ingest", env, log_path) as ingest:
        async with asyncio.timeout(120), httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=50)) as http:
            in_flight = [asyncio.create_task(send(http, ingest.url)) for _ in range(1000)]
            while outcomes.count("202") < 20:
                await asyncio.sleep(0.01)
            ingest.process.terminate()
            await asyncio.gather(*in_flight)
            exit_code = await asyncio.to_thread(ingest.process.wait, 60)

    assert exit_code == 0
    assert "batch writer stopped" in log_path.read_text()
    assert set(outcomes) <= {"202", "503", "ConnectError", "RemoteProtocolError", "ReadError"}
    stored = {str(row.event_uuid) for row in await stored_events(admin_engine, project["id"])}
    assert acknowledged <= stored, "an acknowledged event was lost in the shutdown"


async def test_a_commit_slower_than_the_deadline_is_503_and_the_retry_is_stored_once(
    db: DatabaseHarness, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    event_uuid = str(uuid.uuid4())
    body = json_body({"projectKey": project["publicKey"], "events": [pageview(uuid=event_uuid)]})
    app = create_app(db.database, settings=IngestSettings(writer_commit_timeout_s=1.0))
    async with AsyncTestClient(app) as client, admin_engine.connect() as blocker:
        # Another transaction holds the same uuid, uncommitted: the writer's insert waits on it.
        await blocker.execute(
            text("INSERT INTO ingested_events (project_id, event_uuid) VALUES (:p, :u)"),
            {"p": project["id"], "u": event_uuid},
        )
        async with asyncio.timeout(10):
            slow = await client.post("/v1/events", content=body, headers=JSON)
        assert slow.status_code == 503
        assert slow.json()["error"]["code"] == "commit_timeout"
        # The commit waited 1 s: an outage of 1 s, base 2.1 s plus up to as much (test_retry_after.py).
        assert 3 <= int(slow.headers["retry-after"]) <= 5
        await blocker.rollback()  # the holder gives up; the waiting insert goes through

        retried = await client.post("/v1/events", content=body, headers=JSON)
        assert retried.status_code == 202
    rows = await stored_events(admin_engine, project["id"])
    assert [str(row.event_uuid) for row in rows] == [event_uuid]
