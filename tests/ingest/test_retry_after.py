"""Retry-After widens with the backlog: the queue at the door and how long the database has been away.

Issue 13, "recovery without a herd": with a fixed Retry-After every client refused during a
database outage came back in the same second after it. Every 503 of ingest now draws its
Retry-After from a window that grows with the outage (DatabaseOutage), so the clients refused
last, when the most are waiting, are spread the widest.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli.pgbouncer import LocalPgBouncer
from services.cli.processes import free_port
from services.common.errors import DATABASE_OUTAGE, OUTAGE_GAP_S, DatabaseOutage, ServiceUnavailable
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from services.ingest.writer import BatchWriter, WriterLimits
from tests.harness import DatabaseHarness
from tests.ingest.conftest import JSON, json_body, pageview
from tests.ingest.test_admission import counting_app, in_process


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def draws(outage: DatabaseOutage, backlog: float = 1.0, n: int = 400) -> set[int]:
    return {outage.retry_after_s(backlog) for _ in range(n)}


def test_an_outage_widens_retry_after_by_a_second_per_ten_seconds_away() -> None:
    clock = FakeClock()
    outage = DatabaseOutage(clock)
    # No outage: the base of 2 s plus up to 2 s.
    assert outage.seconds() == 0.0
    assert draws(outage) <= {2, 3, 4}
    # Refused every second for 20 s: base 2 + 20 / 10 = 4 s, plus up to 4 s.
    for _ in range(21):
        outage.failed()
        clock.now += 1.0
    clock.now -= 1.0
    assert outage.seconds() == 20.0
    answers = draws(outage)
    assert min(answers) >= 4
    assert max(answers) <= 8
    assert len(answers) >= 4  # spread, not one second for everyone
    # A backlog of its own (a full queue) adds to it: base 1 + 4 + 2.
    assert min(draws(outage, backlog=4.0)) >= 7


def test_an_outage_ends_with_a_success_or_a_pause_and_is_capped() -> None:
    clock = FakeClock()
    outage = DatabaseOutage(clock)
    outage.failed()
    clock.now += 3.0
    outage.recovered()
    assert outage.seconds() == 0.0

    outage.failed()
    clock.now += OUTAGE_GAP_S + 0.1  # nobody was refused for a while: over, even without a success
    assert outage.seconds() == 0.0
    outage.failed()
    assert outage.seconds() == 0.0  # a new outage starts from now, not from the old one

    # A request that waited 10 s for a commit that never came: away for at least those 10 s.
    clock.now += 1.0
    outage.failed(since=clock.now - 10.0)
    assert outage.seconds() == 10.0

    # A long outage stops widening at 15-30 s, or the last clients would stay away long after it.
    clock.now += 600.0
    outage.failed(since=clock.now - 600.0)
    assert draws(outage) <= set(range(15, 31))
    assert len(draws(outage)) >= 10  # still spread over the whole window


async def test_the_admission_503_widens_with_the_outage_as_well_as_with_the_queue() -> None:
    app, _, release = counting_app(max_concurrent=1, admission_wait_s=0.2)
    async with in_process(app) as client:
        holder = asyncio.create_task(client.post("/v1/events"))
        await asyncio.sleep(0.05)
        DATABASE_OUTAGE.failed(since=time.monotonic() - 40.0)
        refused = await client.post("/v1/events")
        release.set()
        await holder
    assert refused.status_code == 503
    # Backlog 1 (one waiter, one slot) plus 40 s / 10: base 6 s, plus up to 6 s.
    assert 6 <= int(refused.headers["retry-after"]) <= 12


@pytest.fixture
async def stoppable_pgbouncer(db: DatabaseHarness) -> AsyncIterator[LocalPgBouncer]:
    bouncer = LocalPgBouncer(
        conf_dir=db.root / "pgbouncer-retry-after",
        run_dir=db.root / "run-retry-after",
        log_file=db.root / "log" / "pgbouncer-retry-after.log",
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


async def test_ingest_503s_in_an_outage_widen_with_it_and_narrow_once_a_commit_works(
    db: DatabaseHarness, stoppable_pgbouncer: LocalPgBouncer, project: dict[str, Any]
) -> None:
    url = db.database.url.replace(f":{db.pgbouncer.listen_port}/", f":{stoppable_pgbouncer.listen_port}/")
    app = create_app(db.database_for("ingest", url=url), settings=IngestSettings())

    def body() -> bytes:
        return json_body({"projectKey": project["publicKey"], "events": [pageview(uuid=str(uuid.uuid4()))]})

    async with AsyncTestClient(app) as client:
        assert (await client.post("/v1/events", content=body(), headers=JSON)).status_code == 202
        stoppable_pgbouncer.stop()
        async with asyncio.timeout(10):
            first = await client.post("/v1/events", content=body(), headers=JSON)
        assert (first.status_code, first.json()["error"]["code"]) == (503, "database_unavailable")
        # Just begun (well under 5 s): the base 2 s, plus up to 2 s, plus at most one second.
        assert 2 <= int(first.headers["retry-after"]) <= 5
        assert DATABASE_OUTAGE.seconds() > 0.0

        # The same outage, 40 s on (the clock's start moved back): base 2 + 4 s, plus up to as much.
        DATABASE_OUTAGE.failed(since=time.monotonic() - 40.0)
        async with asyncio.timeout(10):
            later = await client.post("/v1/events", content=body(), headers=JSON)
            ready = await client.get("/health/ready")
        assert later.status_code == ready.status_code == 503
        assert 6 <= int(later.headers["retry-after"]) <= 13
        assert 6 <= int(ready.headers["retry-after"]) <= 13

        stoppable_pgbouncer.start()
        async with asyncio.timeout(15):
            while (await client.post("/v1/events", content=body(), headers=JSON)).status_code != 202:
                await asyncio.sleep(0.2)
        # A commit went through: the next refusal starts from the base again.
        assert DATABASE_OUTAGE.seconds() == 0.0


async def test_a_process_shutting_down_spreads_its_refusals_too() -> None:
    """Every tracker of the process hears it at once; not the database's fault, so 2-4 s."""
    limits = WriterLimits(
        linger_s=0, max_batch_rows=10, max_batch_chunk_bytes=1000, max_queue_rows=10, concurrency=1, commit_timeout_s=1
    )
    writer = BatchWriter(cast(AsyncEngine, None), limits)  # never started: not accepting
    DATABASE_OUTAGE.failed(since=time.monotonic() - 40.0)  # an outage does not widen it
    answers = set()
    for _ in range(200):
        with pytest.raises(ServiceUnavailable) as refused:
            await writer.submit([], [])
        assert refused.value.code == "shutting_down"
        answers.add(int(refused.value.headers["Retry-After"]))
    assert answers <= {2, 3, 4}
    assert len(answers) >= 2
