"""Work budgets at the public edge: per project (events decoded a second) and per client address
(refusals a second), against ingest served by Granian, plus their sizing against the seed.

The rate limit counts requests, not what they cost; `make attack` found three attacks bounded
per request but not in sum (docs/reliability.md). These tests show the budgets refuse the
over-budget project or address with a clear 429 while another one is answered, that honest
seed-rate traffic stays inside the defaults, and that the tables stay bounded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest

from services.common.rate_limit import CostBuckets
from services.ingest.admission import AddressRefusals
from services.ingest.settings import IngestSettings
from tests.harness import DatabaseHarness
from tests.hostile.conftest import assert_error
from tools.loadtest.payloads import EVENTS_PER_BATCH, incremental_chunk_events

ATTACKER_ADDRESS = "127.0.0.2"  # honest requests come from 127.0.0.1; loopback answers both


def chunk(key: str, seq: int, events: int) -> bytes:
    base_ms = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000)
    clicks = [{"type": 3, "timestamp": base_ms + n, "data": {"source": 2, "type": 2}} for n in range(events - 1)]
    rrweb = [{"type": 4, "timestamp": base_ms, "data": {"href": "https://example.com/"}}, *clicks]
    return msgspec.json.encode(
        {"projectKey": key, "sessionId": "budget", "distinctId": "d", "seq": seq, "events": rrweb}
    )


def batch(key: str, visitor: str) -> bytes:
    pageview = {
        "event": "pageview",
        "distinctId": visitor,
        "sessionId": visitor,
        "timestamp": datetime.now(UTC).isoformat(),
        "url": "https://example.com/",
    }
    return msgspec.json.encode({"projectKey": key, "events": [pageview]})


JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def address_budget_url(db: DatabaseHarness) -> Iterator[str]:
    # 100 events a second per address, 2,000 saved; the project's budget and the refusals' off:
    # the address's is the subject.
    settings = {
        "ADDRESS_EVENT_BUDGET_PER_S": "100",
        "ADDRESS_EVENT_BUDGET_BURST": "2000",
        "EVENT_BUDGET_PER_S": "0",
        "ADDRESS_REFUSALS_PER_S": "0",
    }
    with db.serve("ingest", "hostile-address-event-budget", INGEST_WORKERS="1", **settings) as ingest:
        yield ingest.url


async def test_an_address_over_its_event_budget_gets_429_while_the_same_project_elsewhere_is_answered(
    address_budget_url: str, project: dict[str, Any]
) -> None:
    key = str(project["publicKey"])
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.5")  # no other test's address
    async with (
        httpx.AsyncClient(base_url=address_budget_url, timeout=30, transport=transport) as spender,
        httpx.AsyncClient(base_url=address_budget_url, timeout=30) as honest,
    ):
        first = await spender.post("/v1/replay", content=chunk(key, 0, 1500), headers=JSON)
        second = await spender.post("/v1/replay", content=chunk(key, 1, 1500), headers=JSON)
        # 2,000 - 1,500 - 1,500 = -1,000 (plus the seconds' refill): refused until repaid, before
        # the key is looked up or the body inflated (this one is not even gzip).
        third = await spender.post("/v1/replay", content=chunk(key, 2, 10), headers=JSON)
        early = await spender.post(
            f"/v1/replay?key={key}", content=b"not gzip", headers={**JSON, "Content-Encoding": "gzip"}
        )
        # The same project from another address: its own budget, answered.
        others = await asyncio.gather(
            *(honest.post("/v1/events", content=batch(key, f"visitor-{n}"), headers=JSON) for n in range(10))
        )
    assert (first.status_code, second.status_code) == (202, 202), second.text
    for refused in (third, early):
        error = assert_error(refused, 429, "address_over_budget")
        assert "budget" in error["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 10
    assert [response.status_code for response in others] == [202] * 10


@pytest.fixture(scope="module")
def budget_url(db: DatabaseHarness) -> Iterator[str]:
    # 100 events a second, 2,000 saved: two 1,500-event chunks spend it (the refill over a
    # test's seconds is small next to it). No address budget here: the project's is the subject.
    settings = {"EVENT_BUDGET_PER_S": "100", "EVENT_BUDGET_BURST": "2000", "ADDRESS_REFUSALS_PER_S": "0"}
    with db.serve("ingest", "hostile-event-budget", INGEST_WORKERS="1", **settings) as ingest:
        yield ingest.url


async def test_a_project_over_its_event_budget_gets_429_while_another_is_answered(
    budget_url: str, project: dict[str, Any], other_project: dict[str, Any]
) -> None:
    spender = str(project["publicKey"])
    async with httpx.AsyncClient(base_url=budget_url, timeout=30) as client:
        first = await client.post("/v1/replay", content=chunk(spender, 0, 1500), headers=JSON)
        second = await client.post("/v1/replay", content=chunk(spender, 1, 1500), headers=JSON)
        # 2,000 - 1,500 - 1,500 = -1,000 (plus the refill of the seconds since): refused until repaid.
        third = await client.post("/v1/replay", content=chunk(spender, 2, 10), headers=JSON)
        # With ?key= the budget is checked before the body is inflated: this is not even gzip.
        early = await client.post(
            f"/v1/replay?key={spender}", content=b"not gzip", headers={**JSON, "Content-Encoding": "gzip"}
        )
        other = str(other_project["publicKey"])
        others = await asyncio.gather(
            *(
                client.post(
                    "/v1/events",
                    content=batch(other, f"visitor-{n}").replace(b"example.com", b"other.example"),
                    headers=JSON,
                )
                for n in range(10)
            )
        )
    assert (first.status_code, second.status_code) == (202, 202), second.text
    assert first.json() == {"accepted": 1500}
    for refused in (third, early):
        error = assert_error(refused, 429, "over_budget")
        assert "budget" in error["message"]
        # -1,000 units at 100 a second: at most 10 s, at least 1.
        assert 1 <= int(refused.headers["retry-after"]) <= 10
    assert [response.status_code for response in others] == [202] * 10


@pytest.fixture(scope="module")
def door_url(db: DatabaseHarness) -> Iterator[str]:
    # 5 refusals saved, one more a second: the sixth made-up key in a row meets the door. Not
    # held before the 429 (a hold of 1 s would refill one refusal each time).
    settings = {"ADDRESS_REFUSALS_PER_S": "1", "ADDRESS_REFUSALS_BURST": "5", "ADDRESS_REFUSAL_HOLD_S": "0"}
    with db.serve("ingest", "hostile-address-budget", INGEST_WORKERS="1", **settings) as ingest:
        yield ingest.url


async def test_an_address_refused_too_often_meets_the_door_while_another_is_answered(
    door_url: str, project: dict[str, Any]
) -> None:
    transport = httpx.AsyncHTTPTransport(local_address=ATTACKER_ADDRESS)
    async with (
        httpx.AsyncClient(base_url=door_url, timeout=30, transport=transport) as attacker,
        httpx.AsyncClient(base_url=door_url, timeout=30) as honest,
    ):
        flood = []
        for _ in range(8):
            key = "pk_" + secrets.token_urlsafe(16)
            flood.append(await attacker.post("/v1/events", content=batch(key, "attacker"), headers=JSON))
        # The door answers before reading the body: a valid key from that address waits too.
        valid_from_attacker = await attacker.post("/v1/events", content=batch(project["publicKey"], "a"), headers=JSON)
        answered = [
            await honest.post("/v1/events", content=batch(project["publicKey"], f"visitor-{n}"), headers=JSON)
            for n in range(10)
        ]
    statuses = [response.status_code for response in flood]
    assert statuses[:5] == [401] * 5
    # The refill between requests may let one more through to its 401; never more than that.
    assert statuses[5:].count(429) >= 2, statuses
    for refused in [*(response for response in flood if response.status_code == 429), valid_from_attacker]:
        error = assert_error(refused, 429, "too_many_refusals")
        assert "address" in error["message"]
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["connection"] == "close"
    assert [response.status_code for response in answered] == [202] * 10


async def test_user_agents_longer_than_any_browser_count_like_refusals(door_url: str, project: dict[str, Any]) -> None:
    """Answered, but counted: an address sending them meets the door once its budget is spent."""
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.3")  # not the other test's attacker
    key = str(project["publicKey"])
    async with (
        httpx.AsyncClient(base_url=door_url, timeout=30, transport=transport) as attacker,
        httpx.AsyncClient(base_url=door_url, timeout=30) as honest,
    ):
        sent = []
        for n in range(8):
            agent = "Mozilla/5.0 " + secrets.token_hex(5_000)  # 10 kB, unique
            sent.append(
                await attacker.post("/v1/events", content=batch(key, f"a-{n}"), headers={**JSON, "User-Agent": agent})
            )
        long_but_under = "Mozilla/5.0 " + "x" * 400  # 412 characters: a browser's at most
        answered = [
            await honest.post(
                "/v1/events", content=batch(key, f"visitor-{n}"), headers={**JSON, "User-Agent": long_but_under}
            )
            for n in range(10)
        ]
    statuses = [response.status_code for response in sent]
    assert statuses[:5] == [202] * 5
    assert statuses[5:].count(429) >= 2, statuses
    for refused in (response for response in sent if response.status_code == 429):
        assert_error(refused, 429, "too_many_refusals")
    assert [response.status_code for response in answered] == [202] * 10


@pytest.fixture(scope="module")
def holding_url(db: DatabaseHarness) -> Iterator[str]:
    # One refusal saved, next to no refill: every request after the first is refused, held first.
    settings = {"ADDRESS_REFUSALS_PER_S": "0.001", "ADDRESS_REFUSALS_BURST": "1", "ADDRESS_REFUSAL_HOLD_S": "0.5"}
    with db.serve("ingest", "hostile-address-hold", INGEST_WORKERS="1", **settings) as ingest:
        yield ingest.url


async def test_a_refused_address_is_held_before_its_429(holding_url: str, project: dict[str, Any]) -> None:
    """Sending again at once gains an attacker nothing: each refusal waits the hold first."""
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.4")
    async with httpx.AsyncClient(base_url=holding_url, timeout=30, transport=transport) as client:
        unknown = "pk_" + secrets.token_urlsafe(16)
        first = await client.post("/v1/events", content=batch(unknown, "a"), headers=JSON)
        loop = asyncio.get_running_loop()
        started = loop.time()
        held = await asyncio.gather(
            *(client.post("/v1/events", content=batch(project["publicKey"], "a"), headers=JSON) for _ in range(3))
        )
        waited_s = loop.time() - started
    assert first.status_code == 401
    for refused in held:
        assert_error(refused, 429, "too_many_refusals")
    # asyncio.sleep never ends early: the three were held (together) at least the hold.
    assert waited_s >= 0.5


def scope(peer: str, forwarded_for: str | None = None) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", forwarded_for.encode())] if forwarded_for else []
    return {"client": (peer, 50000), "headers": headers}


def test_the_address_is_the_peer_unless_a_trusted_proxy_forwards_it() -> None:
    direct = AddressRefusals(5, 20, 100)
    assert direct.address(scope("203.0.113.7", "198.51.100.1")) == "203.0.113.7"  # nobody trusted
    behind = AddressRefusals(5, 20, 100, [ipaddress.ip_network("10.0.0.0/8")])
    assert behind.address(scope("10.1.2.3", "198.51.100.1, 10.9.9.9")) == "198.51.100.1"
    assert behind.address(scope("203.0.113.7", "198.51.100.1")) == "203.0.113.7"  # not a trusted peer
    # IPv6 by its /64: addresses made up within one subscriber's block count together.
    assert direct.address(scope("2001:db8:1:2::5")) == "2001:db8:1:2::/64"
    assert direct.address(scope("2001:db8:1:2:ffff::9")) == "2001:db8:1:2::/64"


def test_the_tables_stay_bounded() -> None:
    now = [0.0]
    buckets = CostBuckets(rate_per_s=1, burst=2, max_keys=3, clock=lambda: now[0])
    for key in range(10_000):
        buckets.charge(f"address-{key}", 5)
    assert len(buckets) == 3
    # The three kept are the last charged, in debt; one pushed out starts again with its burst.
    assert buckets.wait_s("address-9999") == 4.0  # -3: four units to a whole one
    assert buckets.wait_s("address-0") is None
    refusals = AddressRefusals(1, 1, max_addresses=100)
    for n in range(1_000):
        refusals.refused(f"198.51.{n // 256}.{n % 256}")
    assert refusals.addresses == 100


def test_debt_is_repaid_at_the_rate() -> None:
    now = [0.0]
    buckets = CostBuckets(rate_per_s=100, burst=200, clock=lambda: now[0])
    assert buckets.wait_s("p") is None
    buckets.charge("p", 150)  # 50 left
    assert buckets.wait_s("p") is None
    buckets.charge("p", 250)  # -200: let in while a unit was left, charged what it cost
    assert buckets.wait_s("p") == 2.01  # until one whole unit again
    now[0] = 1.5
    assert buckets.wait_s("p") == 0.51
    now[0] = 2.02
    assert buckets.wait_s("p") is None


def seed_events_per_s(visitors: int = 5000, interval_s: float = 5.0) -> float:
    """The seed's events a second: a request per visitor every 5 s, event batches and incremental
    replay chunks alternately (tools/loadtest/locustfile.py)."""
    rng = random.Random(7)
    # The largest of 20 chunks (their size is checked every 8 events against a gzip target).
    chunk_events = max(len(incremental_chunk_events(rng, 1_700_000_000_000)) for _ in range(20))
    requests_per_s = visitors / interval_s
    return requests_per_s / 2 * EVENTS_PER_BATCH + requests_per_s / 2 * chunk_events


@pytest.mark.parametrize("margin", [1, 2.5])
def test_seed_rate_traffic_stays_inside_the_default_budget(margin: float) -> None:
    """The whole seed load, and 2.5 times it, through one worker for two minutes: never refused.

    (`sightline up` runs two ingest workers, each taking about half: five times the seed's rate.)
    """
    defaults = IngestSettings()
    now = [0.0]
    budget = CostBuckets(defaults.event_budget_per_s, defaults.event_budget_burst, clock=lambda: now[0])
    events_per_s = seed_events_per_s() * margin
    # 500 batches of 8 events and 500 chunks of up to 64 rrweb events a second: 36,000.
    assert events_per_s / margin == 36_000
    for tick in range(120 * 100):  # every 10 ms
        now[0] = tick / 100
        assert budget.wait_s(1) is None, f"refused after {now[0]} s"
        budget.charge(1, events_per_s / 100)


def test_the_seed_from_one_address_stays_inside_the_default_address_budget() -> None:
    """The load test's 5,000 visitors all send from 127.0.0.1: their 36,000 events a second through
    one worker for two minutes, never refused; an office of a thousand visitors is a fifth of that."""
    defaults = IngestSettings()
    now = [0.0]
    budget = CostBuckets(defaults.address_event_budget_per_s, defaults.address_event_budget_burst, clock=lambda: now[0])
    events_per_s = seed_events_per_s()
    for tick in range(120 * 100):  # every 10 ms
        now[0] = tick / 100
        assert budget.wait_s("127.0.0.1") is None, f"refused after {now[0]} s"
        budget.charge("127.0.0.1", events_per_s / 100)


def test_the_counter_overflow_attack_from_one_address_is_held_to_its_budget() -> None:
    """`make attack`'s chunks of the most rrweb events a chunk may hold (5,000), 26 a second from
    one address: held to the address's budget, under half of what the project's allows."""
    defaults = IngestSettings()
    size = defaults.max_rrweb_events_per_chunk
    now = [0.0]
    project = CostBuckets(defaults.event_budget_per_s, defaults.event_budget_burst, clock=lambda: now[0])
    address = CostBuckets(
        defaults.address_event_budget_per_s, defaults.address_event_budget_burst, clock=lambda: now[0]
    )
    admitted = 0
    for tick in range(60 * 26):
        now[0] = tick / 26
        if project.wait_s(1) is None and address.wait_s("127.0.0.2") is None:
            project.charge(1, size)
            address.charge("127.0.0.2", size)
            admitted += 1
    # 200,000 saved + 40,000 a second for 60 s = 2,600,000 events: 520 chunks of 5,000, not 1,560
    # (the project's budget alone: 200,000 + 100,000 x 60 = 1,240 chunks).
    assert size == 5_000
    assert admitted == 520


def test_the_counter_overflow_attack_exceeds_the_default_budget() -> None:
    """`make attack`'s 50,000-event chunks, 6 a second: refused within two seconds, then held to the rate."""
    defaults = IngestSettings()
    now = [0.0]
    budget = CostBuckets(defaults.event_budget_per_s, defaults.event_budget_burst, clock=lambda: now[0])
    admitted = 0
    for tick in range(60 * 6):
        now[0] = tick / 6
        if budget.wait_s(1) is None:
            budget.charge(1, 50_000)
            admitted += 1
    # 200,000 saved + 100,000 a second for 60 s = 6,200,000 events: 124 chunks, not 360.
    assert admitted == 124
