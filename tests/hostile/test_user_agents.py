"""Huge User-Agents: only a bounded prefix is parsed, and the parse cache is keyed by that prefix."""

from __future__ import annotations

from services.ingest import enrichment
from services.ingest.enrichment import MAX_USER_AGENT_CHARS, Client, describe_client
from tests.ingest.conftest import CHROME_WINDOWS

CHROME_120 = Client(
    browser="Chrome", browser_version="120", os="Windows", os_version="10", device_type="desktop", is_bot=False
)


def test_a_huge_user_agent_is_described_by_its_prefix_and_cached_once() -> None:
    padded = CHROME_WINDOWS + " " + "x" * (MAX_USER_AGENT_CHARS - len(CHROME_WINDOWS) - 1)
    before = enrichment._describe_client.cache_info().currsize
    # Twenty unique 60 kB headers that differ only after the first 512 characters.
    described = {describe_client(padded + f"{number:05d}" + "y" * 60_000) for number in range(20)}
    after = enrichment._describe_client.cache_info().currsize
    assert described == {CHROME_120}
    assert after - before == 1  # one entry, for the shared prefix
    assert describe_client(CHROME_WINDOWS) == CHROME_120
