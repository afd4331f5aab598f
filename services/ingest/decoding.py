"""Turning a tracker's request body into typed data, with every refusal a clear client error.

Gzip is decompressed in bounded steps: a small body that expands without end (a gzip bomb)
is refused as soon as the output passes the limit, so memory stays flat whatever the ratio.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, TypeVar

import msgspec

from services.common.errors import ApiError
from services.common.gzip_stream import TruncatedGzip, inflate_gzip

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


def gunzip_bounded(body: bytes, max_output_bytes: int) -> bytes:
    """Decompresses gzip (one or more members), refusing output beyond max_output_bytes."""
    output = bytearray()
    try:
        for piece in inflate_gzip(body):
            output += piece
            if len(output) > max_output_bytes:
                raise ApiError(
                    413,
                    "payload_too_large",
                    f"The body decompresses to more than {max_output_bytes} bytes.",
                )
    except zlib.error as exc:
        raise ApiError(400, "malformed_gzip", f"The body is not valid gzip: {exc}.") from exc
    except TruncatedGzip as exc:
        raise ApiError(400, "malformed_gzip", "The gzip stream is truncated.") from exc
    return bytes(output)


def decode_json(body: bytes, target: type[T]) -> T:
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
    if b"\\u0000" in body:
        field = _find_nul(msgspec.to_builtins(decoded), "")
        if field is not None:
            raise ApiError(422, "nul_character", "Text must not contain the NUL character (\\u0000).", field=field)
    return decoded


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
