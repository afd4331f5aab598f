"""Tracker payloads for the load test, built before the run so the generator spends its CPU on HTTP.

A visitor's first replay chunk (meta event + full snapshot, 15-60 kB of gzip as in the seed's
test) comes from real sessions recorded by the tracker in Chromium
(``tools/loadtest/recordings/*.json.gz``, made by ``make capture-recordings``); only when
those files are missing is it a synthetic rrweb-shaped snapshot. Later replay chunks (~3 kB)
and event batches are generated.

Everything heavy (rrweb DOM snapshots, incremental chunks, JSON encoding, gzip of the large parts)
is done once per process into small pools. At send time only the per-user parts change:

- replay chunks are sent as concatenated gzip members (RFC 1952 allows it and ingest's decoder
  accepts it): a tiny per-request member with the envelope (projectKey, sessionId, seq, ...)
  followed by a pooled, pre-compressed member holding the rrweb events; compressing ~150 bytes
  costs microseconds, compressing a 300 kB snapshot costs milliseconds;
- event batches need fresh uuids and timestamps in every event, so their ~3 kB of JSON is a
  pre-encoded template whose placeholders are filled with ``bytes.replace`` and then gzipped.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import random
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec

# rrweb's EventType and IncrementalSource numbers (rrweb/packages/types).
DOM_CONTENT_LOADED, LOAD, FULL_SNAPSHOT, INCREMENTAL_SNAPSHOT, META = 0, 1, 2, 3, 4
MUTATION, MOUSE_MOVE, MOUSE_INTERACTION, SCROLL, VIEWPORT_RESIZE, INPUT = 0, 1, 2, 3, 4, 5
CLICK = 2
# rrweb's serialised NodeType numbers.
NODE_DOCUMENT, NODE_DOCTYPE, NODE_ELEMENT, NODE_TEXT = 0, 1, 2, 3

FIRST_CHUNK_MIN_BYTES, FIRST_CHUNK_MAX_BYTES = 15_000, 60_000
RECORDINGS_DIR = Path(__file__).parent / "recordings"
# The recorded pages were served on 127.0.0.1 by the capture; the load test's visitors are on
# the load project's site, so the recorded page URL keeps its path on this origin.
LOAD_SITE = "https://example.com"
INCREMENTAL_CHUNK_TARGET_BYTES = 3_000
EVENTS_PER_BATCH = 8  # about 3 kB of JSON, the same batch as `make bench-ingest`

_GZIP_WBITS = 16 + zlib.MAX_WBITS

USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 "
    "Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile "
    "Safari/537.36",
)

PAGES = ("/", "/pricing", "/docs/getting-started", "/blog/why-self-host-analytics", "/features/session-replay")
CUSTOM_EVENTS = ("click_cta", "signup_started", "video_played", "plan_selected", "newsletter_subscribed")

_WORDS = [
    "analytics",
    "privacy",
    "session",
    "replay",
    "dashboard",
    "visitors",
    "pageviews",
    "conversion",
    "funnel",
    "retention",
    "cohort",
    "pricing",
    "plan",
    "team",
    "enterprise",
    "starter",
    "growth",
    "self",
    "hosted",
    "open",
    "source",
    "postgres",
    "pipeline",
    "realtime",
    "event",
    "tracking",
    "referrer",
    "campaign",
    "source",
    "medium",
    "device",
    "browser",
    "country",
    "city",
    "bounce",
    "duration",
    "engagement",
    "heatmap",
    "click",
    "scroll",
    "form",
    "signup",
    "checkout",
    "revenue",
    "subscription",
    "invoice",
    "support",
    "docs",
    "guide",
    "tutorial",
    "install",
    "configure",
    "deploy",
    "docker",
    "kubernetes",
    "backup",
    "restore",
    "upgrade",
    "security",
    "compliance",
    "gdpr",
    "cookie",
    "consent",
    "banner",
    "integration",
    "webhook",
    "api",
    "key",
    "token",
    "export",
    "import",
    "report",
    "schedule",
    "alert",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "for",
    "with",
    "on",
    "by",
    "from",
    "at",
    "your",
    "our",
    "you",
    "we",
    "it",
    "is",
    "are",
    "be",
    "can",
    "will",
    "more",
    "about",
]
_TAGS = ("div", "section", "article", "p", "span", "a", "li", "ul", "h2", "h3", "button", "img", "label", "input")
_CLASSES = (
    "container",
    "row",
    "col-md-6",
    "card",
    "card-body",
    "btn btn-primary",
    "nav-link",
    "text-muted",
    "feature",
    "hero",
    "grid",
    "flex items-center justify-between",
    "mt-4 mb-2",
    "px-6 py-3",
    "rounded-lg shadow",
)


def gzip_member(data: bytes, level: int = 6) -> bytes:
    return zlib.compress(data, level, wbits=_GZIP_WBITS)


@dataclass
class _NodeIds:
    next_id: int = 1

    def take(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def _sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(_WORDS) for _ in range(words))
    return text[:1].upper() + text[1:] + "."


def _text_node(rng: random.Random, ids: _NodeIds, words: int) -> dict[str, object]:
    return {"type": NODE_TEXT, "textContent": _sentence(rng, words), "id": ids.take()}


def _element(
    rng: random.Random, ids: _NodeIds, tag: str, children: list[dict[str, object]], **attributes: str
) -> dict[str, object]:
    return {"type": NODE_ELEMENT, "tagName": tag, "attributes": attributes, "childNodes": children, "id": ids.take()}


def _section(rng: random.Random, ids: _NodeIds, depth: int = 0) -> dict[str, object]:
    """A plausible block of a marketing or docs page: nested elements with classes, links and text."""
    children: list[dict[str, object]] = []
    for _ in range(rng.randint(2, 5)):
        tag = rng.choice(_TAGS)
        attributes = {"class": rng.choice(_CLASSES)}
        if tag == "a":
            attributes["href"] = f"https://example.com{rng.choice(PAGES)}#{rng.choice(_WORDS)}"
        elif tag == "img":
            attributes["src"] = f"https://cdn.example.com/img/{rng.getrandbits(48):012x}.webp"
            attributes["alt"] = _sentence(rng, 4)
        elif tag == "input":
            attributes.update(type="email", name="email", placeholder="you@example.com")
        if depth < 3 and rng.random() < 0.45:
            children.append(_element(rng, ids, tag, [_section(rng, ids, depth + 1)], **attributes))
        else:
            children.append(_element(rng, ids, tag, [_text_node(rng, ids, rng.randint(3, 40))], **attributes))
    return _element(rng, ids, "div", children, **{"class": rng.choice(_CLASSES), "data-block": str(ids.next_id)})


def _stylesheet(rng: random.Random, ids: _NodeIds, rules: int) -> dict[str, object]:
    # rrweb inlines stylesheets as _cssText; they are a large part of real first snapshots.
    css = "".join(
        f".{rng.choice(_WORDS)}-{rng.randint(1, 999)}{{margin:{rng.randint(0, 32)}px;padding:{rng.randint(0, 24)}px;"
        f"color:#{rng.getrandbits(24):06x};font-size:{rng.randint(11, 28)}px}}"
        for _ in range(rules)
    )
    return _element(rng, ids, "style", [], _cssText=css)


def _full_snapshot_events(rng: random.Random, started_ms: int, sections: int, href: str) -> list[dict[str, object]]:
    ids = _NodeIds()
    document_id = ids.take()
    doctype = {"type": NODE_DOCTYPE, "name": "html", "publicId": "", "systemId": "", "id": ids.take()}
    head = _element(
        rng,
        ids,
        "head",
        [
            _element(rng, ids, "meta", [], charset="utf-8"),
            _element(rng, ids, "title", [_text_node(rng, ids, 6)]),
            _stylesheet(rng, ids, 20 + sections * 4),
        ],
    )
    body = _element(rng, ids, "body", [_section(rng, ids) for _ in range(sections)], **{"class": "page"})
    html = _element(rng, ids, "html", [head, body], lang="en")
    return [
        {"type": META, "data": {"href": href, "width": 1440, "height": 900}, "timestamp": started_ms},
        {
            "type": FULL_SNAPSHOT,
            "data": {
                "node": {"type": NODE_DOCUMENT, "childNodes": [doctype, html], "id": document_id},
                "initialOffset": {"left": 0, "top": 0},
            },
            "timestamp": started_ms + 12,
        },
    ]


def first_chunk_events(rng: random.Random, started_ms: int, target_gzip_bytes: int) -> list[dict[str, object]]:
    """Meta + full snapshot of a page, grown until its gzip is about target_gzip_bytes."""
    href = f"https://example.com{rng.choice(PAGES)}"
    seed = rng.getrandbits(64)
    sections = max(4, target_gzip_bytes // 900)
    for attempt in range(20):
        events = _full_snapshot_events(random.Random(seed), started_ms, sections, href)
        size = len(gzip_member(msgspec.json.encode(events)))
        in_range = FIRST_CHUNK_MIN_BYTES <= size <= FIRST_CHUNK_MAX_BYTES
        if in_range and (attempt >= 8 or abs(size - target_gzip_bytes) < target_gzip_bytes * 0.05):
            break
        # Nested sections make the size jumpy, so the correction is damped.
        sections = max(4, round(sections * (target_gzip_bytes / size) ** 0.7))
    return events


def incremental_chunk_events(
    rng: random.Random, started_ms: int, target_gzip_bytes: int = INCREMENTAL_CHUNK_TARGET_BYTES
) -> list[dict[str, object]]:
    """Five seconds of interaction: mouse moves, clicks, scrolls, inputs and DOM mutations."""
    events: list[dict[str, object]] = []
    now = started_ms
    while True:
        now += rng.randint(20, 400)
        kind = rng.random()
        if kind < 0.45:
            positions = [
                {"x": rng.randint(0, 1440), "y": rng.randint(0, 900), "id": rng.randint(5, 600), "timeOffset": -k * 16}
                for k in range(rng.randint(3, 10))
            ]
            data: dict[str, object] = {"source": MOUSE_MOVE, "positions": positions}
        elif kind < 0.6:
            data = {
                "source": MOUSE_INTERACTION,
                "type": rng.choice((0, 1, CLICK)),
                "id": rng.randint(5, 600),
                "x": rng.randint(0, 1440),
                "y": rng.randint(0, 900),
            }
        elif kind < 0.75:
            data = {"source": SCROLL, "id": 1, "x": 0, "y": rng.randint(0, 8000)}
        elif kind < 0.85:
            data = {"source": INPUT, "text": _sentence(rng, rng.randint(1, 4)), "isChecked": False, "id": 42}
        else:
            node_id = rng.randint(600, 9000)
            data = {
                "source": MUTATION,
                "texts": [{"id": rng.randint(5, 600), "value": _sentence(rng, rng.randint(2, 12))}],
                "attributes": [{"id": rng.randint(5, 600), "attributes": {"class": rng.choice(_CLASSES)}}],
                "removes": [],
                "adds": [
                    {
                        "parentId": rng.randint(5, 600),
                        "nextId": None,
                        "node": {
                            "type": NODE_ELEMENT,
                            "tagName": "span",
                            "attributes": {"class": rng.choice(_CLASSES)},
                            "childNodes": [],
                            "id": node_id,
                        },
                    },
                    {
                        "parentId": node_id,
                        "nextId": None,
                        "node": {"type": NODE_TEXT, "textContent": _sentence(rng, 5), "id": node_id + 1},
                    },
                ],
            }
        events.append({"type": INCREMENTAL_SNAPSHOT, "data": data, "timestamp": now})
        # Checking the compressed size every few events keeps generation quick.
        if len(events) % 8 == 0 and len(gzip_member(msgspec.json.encode(events))) >= target_gzip_bytes:
            return events


# Placeholders in an events template, in the order msgspec writes each event's keys.
_EVENT_PLACEHOLDERS = (b"@U@", b"@D@", b"@S@", b"@T@")


def events_batch_template(rng: random.Random, project_key: str, count: int = EVENTS_PER_BATCH) -> tuple[bytes, ...]:
    """About 3 kB of events JSON, split around each event's uuid, distinctId, sessionId and timestamp.

    Filling the gaps with ``b"".join`` costs a few microseconds; four ``bytes.replace`` passes
    over the body cost ten times more.
    """
    events = []
    page = rng.choice(PAGES)
    for n in range(count):
        name = "pageview" if n % 3 == 0 else rng.choice(CUSTOM_EVENTS)
        if name == "pageview":
            page = rng.choice(PAGES)
        events.append(
            {
                "uuid": "@U@",
                "event": name,
                "distinctId": "@D@",
                "sessionId": "@S@",
                "timestamp": "@T@",
                "url": f"https://example.com{page}?utm_source=newsletter&utm_medium=email&utm_campaign=load-{n}",
                "referrer": "https://www.google.com/" if n == 0 else f"https://example.com{rng.choice(PAGES)}",
                "title": _sentence(rng, 6),
                "properties": {
                    "plan": rng.choice(("free", "pro", "team")),
                    "position": n,
                    "variant": rng.choice("abc"),
                    "label": _sentence(rng, 4),
                },
            }
        )
    encoded = msgspec.json.encode({"projectKey": project_key, "events": events})
    segments = [encoded]
    for placeholder in _EVENT_PLACEHOLDERS:
        segments = [piece for segment in segments for piece in _split_keeping(segment, placeholder)]
    return tuple(segments)


def _split_keeping(segment: bytes, placeholder: bytes) -> list[bytes]:
    pieces = segment.split(placeholder)
    with_markers = [pieces[0]]
    for piece in pieces[1:]:
        with_markers += [placeholder, piece]
    return with_markers


@dataclass(frozen=True)
class ReplayMember:
    """rrweb events already encoded and gzipped, and how many there are."""

    gzip: bytes
    rrweb_events: int


@dataclass(frozen=True)
class PayloadPools:
    first_chunks: tuple[ReplayMember, ...]
    incremental_chunks: tuple[ReplayMember, ...]
    event_batches: tuple[tuple[bytes, ...], ...]
    # Where the first chunks came from: "recordings: article, ..." or "synthetic".
    first_chunk_source: str = "synthetic"


@dataclass(frozen=True)
class Recording:
    """A captured session: its name and each chunk's rrweb events, in seq order."""

    name: str
    chunks: list[list[dict[str, object]]]


def load_recordings(directory: Path = RECORDINGS_DIR) -> list[Recording]:
    """The captured recordings in directory, by name; none when it is missing or empty."""
    recordings = []
    for path in sorted(directory.glob("*.json.gz")):
        captured = json.loads(gzip.decompress(path.read_bytes()))
        chunks = sorted(captured["chunks"], key=lambda chunk: chunk["seq"])
        recordings.append(Recording(path.name.removesuffix(".json.gz"), [chunk["events"] for chunk in chunks]))
    return recordings


def _events_gzip_size(events: list[dict[str, object]]) -> int:
    return len(gzip_member(msgspec.json.encode(events)))


def recorded_first_chunk_events(
    recording: Recording,
    started_ms: int,
    min_bytes: int = FIRST_CHUNK_MIN_BYTES,
    max_bytes: int = FIRST_CHUNK_MAX_BYTES,
) -> list[dict[str, object]] | None:
    """The recording's first chunk as a visitor's seq 0, or None if it cannot be made to fit.

    Fitted to min_bytes..max_bytes of gzip: one too large loses its trailing events (never the
    meta event or the full snapshot, which come first); one too small takes the next events of
    the same recording, in order, as if the tracker had sent its first chunk later. The
    committed recordings' first chunks fit as they are (20-32 kB), so neither happens today.
    Timestamps are shifted so the first event is at started_ms (ingest refuses rrweb
    timestamps older than 7 days), and the meta event's page URL moves to LOAD_SITE.
    """
    events = list(recording.chunks[0])
    later = [event for chunk in recording.chunks[1:] for event in chunk]
    while _events_gzip_size(events) < min_bytes:
        if not later:
            return None
        events.append(later.pop(0))
    while _events_gzip_size(events) > max_bytes:
        if len(events) <= 2:
            return None
        events.pop()
    events = copy.deepcopy(events)
    shift_ms = started_ms - int(str(events[0]["timestamp"]))
    for event in events:
        event["timestamp"] = int(str(event["timestamp"])) + shift_ms
        data = event.get("data")
        if event["type"] == META and isinstance(data, dict) and isinstance(data.get("href"), str):
            _, _, rest = data["href"].partition("//")
            data["href"] = LOAD_SITE + "/" + rest.partition("/")[2]
    return events


_CLOSING_BRACE_MEMBER = gzip_member(b"}")


def build_pools(
    project_key: str,
    seed: int = 6,
    first_chunks: int = 24,
    incremental_chunks: int = 48,
    event_batches: int = 32,
    started_ms: int | None = None,
    recordings_dir: Path = RECORDINGS_DIR,
) -> PayloadPools:
    """The payload pools for one run; a few seconds of CPU before the first request.

    First chunks: one per captured recording in recordings_dir that fits the seed's sizes;
    only without any, first_chunks synthetic snapshots.
    """
    rng = random.Random(seed)
    # rrweb timestamps must be recent (ingest refuses ones older than 7 days), so they start now.
    base_ms = int(time.time() * 1000) if started_ms is None else started_ms
    firsts = []
    recorded = []
    for recording in load_recordings(recordings_dir):
        events = recorded_first_chunk_events(recording, base_ms)
        if events is not None:
            firsts.append(ReplayMember(gzip_member(msgspec.json.encode(events)), len(events)))
            recorded.append(recording.name)
    source = f"recordings: {', '.join(recorded)}" if recorded else "synthetic"
    for _ in range(0 if recorded else first_chunks):
        events = first_chunk_events(
            rng, base_ms, rng.randint(FIRST_CHUNK_MIN_BYTES + 1000, FIRST_CHUNK_MAX_BYTES - 3000)
        )
        firsts.append(ReplayMember(gzip_member(msgspec.json.encode(events)), len(events)))
    increments = []
    for number in range(incremental_chunks):
        events = incremental_chunk_events(rng, base_ms + 5_000 * (number + 1))
        increments.append(ReplayMember(gzip_member(msgspec.json.encode(events)), len(events)))
    batches = tuple(events_batch_template(rng, project_key) for _ in range(event_batches))
    return PayloadPools(tuple(firsts), tuple(increments), batches, source)


def save_pools(path: Path, pools: PayloadPools) -> None:
    path.write_bytes(msgspec.msgpack.encode(pools))


def load_pools(path: Path) -> PayloadPools:
    return msgspec.msgpack.decode(path.read_bytes(), type=PayloadPools)


@dataclass
class VisitorIdentity:
    """One simulated visitor: what its tracker keeps between batches."""

    project_key: str
    distinct_id: str = field(default_factory=lambda: f"load-{uuid.uuid4().hex[:16]}")
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(frozen=True)
class TrackerRequest:
    path: str
    body: bytes
    # What a 202 for this body acknowledges: events rows, or one replay chunk.
    events: int
    replay_chunks: int
    # Which rows exactly, for the fault run's check by uuid: the events' uuids, or the chunk's key.
    event_uuids: tuple[str, ...] = ()
    chunk_key: tuple[str, int] | None = None


class _UniqueUuids:
    """Event uuids without a syscall each: a random 80-bit prefix per process and a counter.

    uuid4() reads os.urandom for every id, which is most of an events body's cost at 8 per batch.
    """

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._counter = 0

    def next(self) -> bytes:
        if self._pid != os.getpid():  # a forked load-generator process must not repeat its parent's ids
            self._pid = os.getpid()
            random_hex = uuid.uuid4().hex
            self._prefix = f"{random_hex[:8]}-{random_hex[8:12]}-4{random_hex[13:16]}-8{random_hex[17:20]}-"
            self._counter = 0
        self._counter += 1
        return f"{self._prefix}{self._counter:012x}".encode()


_EVENT_UUIDS = _UniqueUuids()


def replay_body(visitor: VisitorIdentity, seq: int, member: ReplayMember) -> bytes:
    envelope = (
        f'{{"projectKey":"{visitor.project_key}","sessionId":"{visitor.session_id}",'
        f'"distinctId":"{visitor.distinct_id}","seq":{seq},"events":'
    ).encode()
    return gzip_member(envelope, 1) + member.gzip + _CLOSING_BRACE_MEMBER


def events_body(visitor: VisitorIdentity, template: tuple[bytes, ...], uuids: list[bytes] | None = None) -> bytes:
    """The template filled in; each fresh uuid is also appended to uuids when given."""
    values = {
        b"@D@": visitor.distinct_id.encode(),
        b"@S@": visitor.session_id.encode(),
        b"@T@": datetime.now(UTC).isoformat().encode(),
    }

    def fresh_uuid() -> bytes:
        made = _EVENT_UUIDS.next()
        if uuids is not None:
            uuids.append(made)
        return made

    filled = b"".join(fresh_uuid() if segment == b"@U@" else values.get(segment, segment) for segment in template)
    # Level 1: a few bytes larger than a browser's default level, at half the generator's CPU.
    return gzip_member(filled, 1)


def tracker_request(pools: PayloadPools, visitor: VisitorIdentity, seq: int, variant: int) -> TrackerRequest:
    """The seq-th request of a visitor: seq 0 the first snapshot, then events and replay alternately."""
    if seq == 0:
        member = pools.first_chunks[variant % len(pools.first_chunks)]
        return TrackerRequest("/v1/replay", replay_body(visitor, 0, member), 0, 1, chunk_key=(visitor.session_id, 0))
    if seq % 2 == 1:
        template = pools.event_batches[(variant + seq) % len(pools.event_batches)]
        uuids: list[bytes] = []
        body = events_body(visitor, template, uuids)
        return TrackerRequest(
            "/v1/events", body, EVENTS_PER_BATCH, 0, event_uuids=tuple(made.decode() for made in uuids)
        )
    member = pools.incremental_chunks[(variant + seq) % len(pools.incremental_chunks)]
    # Replay seq counts replay chunks only: 0, 1, 2, ... for requests 0, 2, 4, ...
    replay_seq = seq // 2
    return TrackerRequest(
        "/v1/replay", replay_body(visitor, replay_seq, member), 0, 1, chunk_key=(visitor.session_id, replay_seq)
    )


def noop_body(pools: PayloadPools, visitor: VisitorIdentity, variant: int) -> bytes:
    """Same shape and size as an events batch, for the no-op baseline."""
    return events_body(visitor, pools.event_batches[variant % len(pools.event_batches)])


def rrweb_bomb(key: str | None) -> bytes:
    """`make attack`'s decompression bomb: ~80 KiB of gzip that inflates to ~30 MiB of tiny rrweb events."""
    events = b",".join([b'{"type":3,"timestamp":1}'] * 1_250_000)
    key_part = b'"projectKey":"' + key.encode() + b'",' if key else b""
    return gzip.compress(b"{" + key_part + b'"sessionId":"s","distinctId":"d","seq":0,"events":[' + events + b"]}", 9)


def counter_overflow_events(base_ms: int, count: int = 5_000) -> list[dict[str, object]]:
    """`make attack`'s counter-overflow chunk: a meta event, then count - 1 clicks a millisecond apart.

    The most rrweb events a chunk may hold (MAX_RRWEB_EVENTS_PER_CHUNK), each one a click, so every
    event is decoded and counted: the most summarising work a valid chunk can ask for.
    """
    clicks = [{"type": 3, "timestamp": base_ms + n, "data": {"source": 2, "type": 2}} for n in range(count - 1)]
    return [{"type": 4, "timestamp": base_ms, "data": {"href": "https://example.com/"}}, *clicks]
