"""CORS for browser trackers on the projects' allowed domains."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.ingest.conftest import JSON, json_body, pageview

PREFLIGHT = {"access-control-request-method": "POST", "access-control-request-headers": "content-type,content-encoding"}


@pytest.mark.parametrize(
    ("path", "origin"),
    [
        ("/v1/events", "https://shop.example.org"),
        ("/v1/replay", "https://blog.example.com:8443"),  # a subdomain of an allowed domain, any port
    ],
)
async def test_preflight_from_an_allowed_origin(
    client: AsyncTestClient[Litestar], project: dict[str, Any], path: str, origin: str
) -> None:
    response = await client.options(path, headers={**PREFLIGHT, "origin": origin})
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == origin
    assert response.headers["access-control-allow-methods"] == "POST"
    assert "Content-Encoding" in response.headers["access-control-allow-headers"]
    assert response.headers["access-control-max-age"] == "86400"


async def test_preflight_from_an_unknown_origin_is_refused(
    client: AsyncTestClient[Litestar], project: dict[str, Any]
) -> None:
    response = await client.options("/v1/events", headers={**PREFLIGHT, "origin": "https://unknown-site.invalid"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in response.headers


async def test_responses_and_errors_carry_cors_headers_for_allowed_origins(
    client: AsyncTestClient[Litestar], project: dict[str, Any]
) -> None:
    origin = {"origin": "https://example.com"}
    stored = await client.post(
        "/v1/events",
        content=json_body({"projectKey": project["publicKey"], "events": [pageview()]}),
        headers={**JSON, **origin},
    )
    refused = await client.post("/v1/events", content=b"{", headers={**JSON, **origin})
    assert (stored.status_code, refused.status_code) == (202, 400)
    for response in (stored, refused):
        assert response.headers["access-control-allow-origin"] == "https://example.com"
        assert response.headers["access-control-expose-headers"] == "Retry-After"
