"""Oversized headers against a service served by Granian, as `sightline up` runs it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import DatabaseHarness


@pytest.fixture(scope="module")
def query_url(db: DatabaseHarness) -> Iterator[str]:
    with db.serve("query", "hostile-query", QUERY_ROLLUP_INTERVAL_S="0", LOG_LEVEL="INFO") as query:
        yield query.url


def test_oversized_headers_are_refused_by_the_server_or_answered_by_the_app(
    query_url: str, project: dict[str, Any]
) -> None:
    auth = {"Authorization": f"Bearer {project['secretKey']}"}
    with httpx.Client(base_url=query_url, timeout=30) as client:
        # Large but within Granian's limits: the app answers as usual.
        assert client.get("/v1/realtime", headers={**auth, "X-Junk": "a" * 64_000}).status_code == 200
        too_long_key = client.get("/v1/realtime", headers={"Authorization": "Bearer sk_" + "a" * 64_000})
        assert too_long_key.status_code == 401
        assert too_long_key.json()["error"]["code"] == "invalid_key"
        # Past them (a 1 MB header, or hundreds of headers) Granian answers 431 itself, with no
        # body: the request never reaches the app.
        assert client.get("/v1/realtime", headers={**auth, "X-Junk": "a" * 1_000_000}).status_code == 431
        many = {f"X-Header-{number}": "v" for number in range(500)}
        assert client.get("/v1/realtime", headers={**auth, **many}).status_code == 431
        # And the service goes on serving.
        after = client.get("/v1/realtime", headers=auth)
    assert after.status_code == 200
    assert after.json() == {"visitors": 0, "pageviews": 0, "window_seconds": 300}
