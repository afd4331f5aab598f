"""GET /tracker.js: the committed bundle, compressed when accepted, cacheable and revalidated by ETag."""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.ingest.tracker_route import TRACKER_BUNDLE


async def test_the_bundle_is_served_gzip_compressed_with_cache_headers(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/tracker.js", headers={"accept-encoding": "gzip, deflate, br"})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "public, max-age=3600"
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.headers["x-content-type-options"] == "nosniff"
    # httpx decompresses: the body is the committed bundle byte for byte.
    assert response.content == TRACKER_BUNDLE.read_bytes()
    assert int(response.headers["content-length"]) < len(response.content) / 2


async def test_without_gzip_the_plain_bundle_has_its_own_etag(client: AsyncTestClient[Litestar]) -> None:
    plain = await client.get("/tracker.js", headers={"accept-encoding": "identity"})
    compressed = await client.get("/tracker.js", headers={"accept-encoding": "gzip;q=1"})
    refused = await client.get("/tracker.js", headers={"accept-encoding": "gzip;q=0"})
    assert "content-encoding" not in plain.headers
    assert plain.content == TRACKER_BUNDLE.read_bytes()
    assert "content-encoding" not in refused.headers
    assert plain.headers["etag"] != compressed.headers["etag"]
    assert refused.headers["etag"] == plain.headers["etag"]


async def test_a_matching_if_none_match_gets_304_without_a_body(client: AsyncTestClient[Litestar]) -> None:
    first = await client.get("/tracker.js", headers={"accept-encoding": "gzip"})
    again = await client.get(
        "/tracker.js", headers={"accept-encoding": "gzip", "if-none-match": f'"stale", {first.headers["etag"]}'}
    )
    other_encoding = await client.get(
        "/tracker.js", headers={"accept-encoding": "identity", "if-none-match": first.headers["etag"]}
    )
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["cache-control"] == "public, max-age=3600"
    assert other_encoding.status_code == 200
