"""What ingest adds to each event: domains, path, UTM tags, browser/OS/device, bot flag, country.

User agents and IP addresses repeat heavily (a visitor sends a batch every few seconds),
so each lookup is cached per process.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

import crawleruseragents
from ua_parser import parse as parse_user_agent

logger = logging.getLogger(__name__)

UTM_PARAMETERS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class PageLocation:
    domain: str
    path: str
    utm: Mapping[str, str]


class UrlError(ValueError):
    pass


def normalise_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    return host.removeprefix("www.")


@lru_cache(maxsize=16_384)
def parse_page_url(url: str) -> PageLocation:
    """Cached: a visitor's batches repeat the same few URLs. PageLocation is read-only."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise UrlError(f"not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise UrlError("must be an absolute http(s) URL")
    utm: dict[str, str] = {}
    if parts.query:
        for key, value in parse_qsl(parts.query, keep_blank_values=False):
            lowered = key.lower()
            if lowered in UTM_PARAMETERS and lowered not in utm:
                utm[lowered] = value[:200]
    return PageLocation(domain=normalise_host(host), path=parts.path or "/", utm=MappingProxyType(utm))


def origin_host(origin: str) -> str | None:
    """The host of an Origin header ("https://www.example.com:8443" -> "example.com")."""
    if "://" not in origin:
        return None  # absent, or "null" from a sandboxed page
    host = origin.split("://", 1)[1].split("/", 1)[0]
    if host.startswith("["):  # IPv6 literal
        return host.split("]", 1)[0].lstrip("[").lower()
    return normalise_host(host.split(":", 1)[0]) or None


@lru_cache(maxsize=16_384)
def referrer_domain(referrer: str | None, page_domain: str) -> str | None:
    """The referring site, or None for direct visits and navigation within the site."""
    if not referrer:
        return None
    try:
        host = urlsplit(referrer).hostname
    except ValueError:
        return None
    if not host:
        return None
    domain = normalise_host(host)
    return None if domain == page_domain else domain


@lru_cache(maxsize=16_384)
def host_is_allowed(host: str, allowed_domains: tuple[str, ...]) -> bool:
    """The host or any of its parents is an allowed domain (shop.example.com under example.com)."""
    if not allowed_domains:
        return True
    return any(host == domain or host.endswith("." + domain) for domain in allowed_domains)


@dataclass(frozen=True, slots=True)
class Client:
    browser: str | None
    browser_version: str | None
    os: str | None
    os_version: str | None
    device_type: str
    is_bot: bool


_TABLET_DEVICES = ("iPad", "Kindle", "Tablet", "Nexus 7", "Nexus 9", "Nexus 10")


# Real User-Agents are 100-300 characters; everything a parser needs is in the first few hundred.
# A header is limited only by Granian (tens of kB), and parsing a unique 60 kB one cost ~0.3 s
# and kept it in the parsers' caches, so only this prefix is ever parsed or cached.
MAX_USER_AGENT_CHARS = 512


def describe_client(user_agent: str) -> Client:
    return _describe_client(user_agent[:MAX_USER_AGENT_CHARS])


@lru_cache(maxsize=4096)
def _describe_client(user_agent: str) -> Client:
    if not user_agent:
        # Real browsers always send a User-Agent; scripts often do not.
        return Client(None, None, None, None, "bot", True)
    parsed = parse_user_agent(user_agent)
    agent, os_info, device = parsed.user_agent, parsed.os, parsed.device
    device_family = device.family if device else "Other"
    is_bot = device_family == "Spider" or crawleruseragents.is_crawler(user_agent)
    browser = agent.family if agent and agent.family != "Other" else None
    os_name = os_info.family if os_info and os_info.family != "Other" else None
    return Client(
        browser=browser,
        browser_version=agent.major if agent and browser else None,
        os=os_name,
        os_version=os_info.major if os_info and os_name else None,
        device_type="bot" if is_bot else _device_type(user_agent, os_name, device_family),
        is_bot=is_bot,
    )


def _device_type(user_agent: str, os_name: str | None, device_family: str) -> str:
    if any(marker in device_family for marker in _TABLET_DEVICES):
        return "tablet"
    if os_name == "Android":
        # Android phones say "Mobile"; Android tablets do not.
        return "mobile" if "Mobile" in user_agent else "tablet"
    if os_name in ("iOS", "Windows Phone", "BlackBerry OS", "KaiOS") or "Mobi" in user_agent:
        return "mobile"
    if os_name in ("Windows", "Mac OS X", "Linux", "Ubuntu", "Fedora", "Chrome OS", "FreeBSD"):
        return "desktop"
    return "other"


class CountryLookup(Protocol):
    def __call__(self, ip: str) -> str | None: ...


def open_country_lookup(mmdb_path: str) -> CountryLookup:
    """An operator's MaxMind file when configured, else the database geoip2fast ships."""
    if mmdb_path:
        import maxminddb

        reader = maxminddb.open_database(mmdb_path)

        @lru_cache(maxsize=65_536)
        def from_mmdb(ip: str) -> str | None:
            try:
                record = reader.get(ip)
            except ValueError:
                return None
            if not isinstance(record, dict):
                return None
            country = record.get("country") or record.get("registered_country")
            code = country.get("iso_code") if isinstance(country, dict) else None
            return str(code) if code else None

        return from_mmdb

    from geoip2fast import GeoIP2Fast

    bundled = GeoIP2Fast(verbose=False)

    @lru_cache(maxsize=65_536)
    def from_bundled(ip: str) -> str | None:
        code = bundled.lookup(ip).country_code
        # "--" means private, reserved or unknown ranges; "" a malformed address.
        return code if code and len(code) == 2 and code.isalpha() else None

    return from_bundled


def client_ip(peer: str | None, forwarded_for: str | None, trusted_proxies: Sequence[IpNetwork]) -> str | None:
    """The visitor's address: X-Forwarded-For is believed only from a trusted proxy.

    Walks the header from the right (nearest hop) and stops at the first address that is not
    a trusted proxy: anything left of it could have been written by the client.
    """
    if not peer:
        return None
    if not forwarded_for or not _is_trusted(peer, trusted_proxies):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted_proxies):
            return hop if _is_ip(hop) else peer
    return hops[0] if hops and _is_ip(hops[0]) else peer


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_trusted(address: str, trusted_proxies: Sequence[IpNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted_proxies)


def warm_up(country_lookup: CountryLookup) -> None:
    """Loads the parsers' rule sets now: the first request would otherwise pay ~0.6 s."""
    describe_client("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36")
    country_lookup("8.8.8.8")
