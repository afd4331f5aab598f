"""Turning a tracker's request body into typed data, with every refusal a clear client error.

Gzip is decompressed in bounded steps: a small body that expands without end (a gzip bomb)
is refused as soon as the output passes the limit or runs too far ahead of the compressed bytes
read (a ratio no honest body reaches), so memory and work stay flat whatever the ratio.

What decoding may cost is bounded before it starts: ``skim`` reads only the envelope (the
project key, and each event as raw bytes, which msgspec skips at memory speed), so the events
are counted and the key checked before any event is decoded. A body of a million tiny events
is refused after the skim, not after a million objects were built. The NUL check looks only
at the events whose raw bytes hold an escaped NUL, never at the whole decoded body.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, TypeVar

import msgspec

from services.common.errors import ApiError
from services.common.gzip_stream import TruncatedGzip, inflate_gzip_counted

T = TypeVar("T")

_MISSING_FIELD = re.compile(r"Object missing required field `([^`]+)`")

ACCEPTED_CONTENT_TYPES = ("application/json", "text/plain")


def check_content_headers(content_type: str | None, content_encoding: str | None) -> bool:
    """Validates the headers; returns True when the body is gzip."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    # text/plain is what navigator.sendBeacon sends without a CORS preflight.
    if media_type not in ACCEPTED_CONTENT_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json or text/plain, not {media_type or 'missing'!r}.",
        )
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return True
    if encoding == "identity":
        return False
    raise ApiError(415, "unsupported_encoding", f"Content-Encoding must be gzip or absent, not {encoding!r}.")


# Honest bodies inflate at most ~10x: the tracker's recorded replay chunks (tools/loadtest/
# recordings) 3.4-9.5x, the load test's generated chunks and event batches 4.5-9.5x (measured
# 2026-11-30 with gzip level 6, the tracker's CompressionStream default). A bomb of tiny rrweb
# events inflates ~400x, zeros ~1000x. So the output may run at most MAX_GZIP_RATIO times ahead
# of the compressed bytes read so far, past the first RATIO_FREE_BYTES: the ratio is judged while
# inflating, in RATIO_STEP_BYTES steps, so a bomb is refused after about RATIO_FREE_BYTES of work
# (less than an honest 30 kB first chunk costs to inflate and decode), however large it is.
MAX_GZIP_RATIO = 32
RATIO_FREE_BYTES = 256 * 1024
RATIO_STEP_BYTES = 64 * 1024


def gunzip_bounded(
    body: bytes,
    max_output_bytes: int,
    max_ratio: int = MAX_GZIP_RATIO,
    ratio_free_bytes: int = RATIO_FREE_BYTES,
) -> bytes:
    """Decompresses gzip (one or more members), refusing output beyond max_output_bytes.

    Also refused (413) as soon as the output passes ratio_free_bytes plus max_ratio times the
    compressed bytes read so far: a bomb costs a bounded amount of inflating, not its budget.
    """
    output = bytearray()
    try:
        for piece, consumed in inflate_gzip_counted(body, RATIO_STEP_BYTES):
            output += piece
            if len(output) > max_output_bytes:
                raise ApiError(
                    413,
                    "payload_too_large",
                    f"The body decompresses to more than {max_output_bytes} bytes.",
                )
            if len(output) > ratio_free_bytes + max_ratio * consumed:
                raise ApiError(
                    413,
                    "payload_too_large",
                    f"The body inflates more than {max_ratio} times its compressed size past the first "
                    f"{ratio_free_bytes} bytes: {len(output)} bytes from its first {consumed} bytes.",
                )
    except zlib.error as exc:
        raise ApiError(400, "malformed_gzip", f"The body is not valid gzip: {exc}.") from exc
    except TruncatedGzip as exc:
        raise ApiError(400, "malformed_gzip", "The gzip stream is truncated.") from exc
    return bytes(output)


class Envelope(msgspec.Struct, rename="camel"):
    """What a tracker body says before its events are decoded."""

    project_key: Any = None
    events: list[msgspec.Raw] = []


def skim(body: bytes) -> Envelope | None:
    """The body's key and its events as raw bytes, or None when it is not that shape (decode_json says why)."""
    try:
        return msgspec.json.decode(body, type=Envelope)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None


def check_event_count(envelope: Envelope | None, max_events: int) -> None:
    if envelope is not None and len(envelope.events) > max_events:
        raise ApiError(422, "too_many_events", f"A body may hold at most {max_events} events.", field="events")


def decode_json(body: bytes, target: type[T], envelope: Envelope | None = None) -> T:
    """The typed body; envelope: skim(body), when the caller already has it."""
    try:
        decoded = msgspec.json.decode(body, type=target)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `")
        field = _json_path_to_field(path.rstrip("`")) if path else None
        missing = _MISSING_FIELD.match(message)
        if missing:
            # Name the missing field itself, not the object that lacks it.
            field = f"{field}.{missing.group(1)}" if field else missing.group(1)
        raise ApiError(422, "invalid_field", message, field=field) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"The body is not valid UTF-8 JSON: {exc}.") from exc
    except RecursionError as exc:
        # msgspec follows nesting only so deep (rrweb data it skips included); past that, it raises this.
        raise ApiError(400, "malformed_json", "The body's JSON is nested too deeply.") from exc
    # Postgres refuses U+0000 in text and jsonb; JSON can only carry it escaped.
    if _NUL in body:
        field = _find_nul_field(decoded, body, envelope)
        if field is not None:
            raise ApiError(422, "nul_character", "Text must not contain the NUL character (\\u0000).", field=field)
    return decoded


_NUL = b"\\u0000"


def _find_nul_field(decoded: Any, body: bytes, envelope: Envelope | None) -> str | None:
    """The first field of decoded holding NUL, looking only at events whose raw bytes may hold one.

    Only fields the contract reads count (a NUL in a field msgspec ignored is not stored as text).
    """
    events = getattr(decoded, "events", None)
    if envelope is None:
        envelope = skim(body)
    if events is None or envelope is None or len(envelope.events) != len(events):
        return _find_nul(msgspec.to_builtins(decoded), "")
    rest = msgspec.to_builtins(msgspec.structs.replace(decoded, events=[]))
    found = _find_nul(rest, "")
    if found is not None:
        return found
    for index, raw in enumerate(envelope.events):
        if _NUL in bytes(raw):
            found = _find_nul(msgspec.to_builtins(events[index]), f"events[{index}]")
            if found is not None:
                return found
    return None


def _json_path_to_field(path: str) -> str:
    # "$.events[3].url" -> "events[3].url"; msgspec writes a map's value as "[...]", which
    # names no key, so the map itself is named.
    field = path.removeprefix("$").removeprefix(".")
    return field.split("[...]", 1)[0]


def _find_nul(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return child
            found = _find_nul(item, child)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_nul(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None
