"""The enrichment helpers on their own: URLs, hosts, user agents, client IPs, countries."""

from __future__ import annotations

import ipaddress

import pytest

from services.ingest import enrichment
from tests.ingest.conftest import CHROME_WINDOWS, GOOGLEBOT, SAFARI_IPHONE

IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Mobile/15E148 Safari/604.1"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36"
)
FIREFOX_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.1; rv:121.0) Gecko/20100101 Firefox/121.0"


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (CHROME_WINDOWS, ("Chrome", "Windows", "desktop", False)),
        (FIREFOX_MAC, ("Firefox", "Mac OS X", "desktop", False)),
        (SAFARI_IPHONE, ("Mobile Safari", "iOS", "mobile", False)),
        (IPAD, ("Mobile Safari", "iOS", "tablet", False)),
        (ANDROID_PHONE, ("Chrome Mobile", "Android", "mobile", False)),
        (ANDROID_TABLET, ("Chrome", "Android", "tablet", False)),
        (GOOGLEBOT, ("Googlebot", None, "bot", True)),
        ("curl/8.5.0", ("curl", None, "bot", True)),
        ("python-requests/2.32.3", ("Python Requests", None, "bot", True)),
    ],
)
def test_describe_client(user_agent: str, expected: tuple[str | None, str | None, str, bool]) -> None:
    client = enrichment.describe_client(user_agent)
    assert (client.browser, client.os, client.device_type, client.is_bot) == expected


def test_page_url_parts() -> None:
    location = enrichment.parse_page_url("HTTPS://WWW.Example.COM:8080/a/b?utm_source=x&UTM_MEDIUM=y&utm_source=z#top")
    assert location.domain == "example.com"
    assert location.path == "/a/b"
    assert location.utm == {"utm_source": "x", "utm_medium": "y"}
    assert enrichment.parse_page_url("https://example.com").path == "/"


@pytest.mark.parametrize("url", ["ftp://example.com/", "example.com/path", "https://", "http://[::1/"])
def test_bad_page_urls(url: str) -> None:
    with pytest.raises(enrichment.UrlError):
        enrichment.parse_page_url(url)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [("example.com", True), ("shop.example.com", True), ("notexample.com", False), ("example.com.evil.net", False)],
)
def test_host_is_allowed(host: str, allowed: bool) -> None:
    assert enrichment.host_is_allowed(host, ("example.com",)) is allowed


PROXY = [ipaddress.ip_network("10.0.0.0/8")]


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        ("203.0.113.9", "81.2.69.142", "203.0.113.9"),  # an untrusted peer cannot claim another address
        ("10.0.0.5", "81.2.69.142", "81.2.69.142"),
        ("10.0.0.5", "1.2.3.4, 81.2.69.142, 10.0.0.7", "81.2.69.142"),  # rightmost untrusted hop
        ("10.0.0.5", "garbage", "10.0.0.5"),
        ("10.0.0.5", None, "10.0.0.5"),
    ],
)
def test_client_ip_believes_forwarded_for_only_from_trusted_proxies(
    peer: str, forwarded_for: str | None, expected: str
) -> None:
    assert enrichment.client_ip(peer, forwarded_for, PROXY) == expected


def test_bundled_country_database() -> None:
    lookup = enrichment.open_country_lookup("")
    assert lookup("8.8.8.8") == "US"
    assert lookup("81.2.69.142") == "GB"
    assert lookup("127.0.0.1") is None
    assert lookup("not an address") is None
