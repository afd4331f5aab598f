"""Gzip inflated in bounded steps: one loop for ingest's request bodies and replay's stored chunks.

A body may hold several gzip members one after another (RFC 1952 allows it, and a tracker's
retry or a proxy can produce it); all are read. Output comes in pieces of at most
``step_bytes``, so a caller can stop early (a gzip bomb) or pass pieces on (a stream) without
ever holding a whole inflated body.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

STEP_BYTES = 256 * 1024
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class TruncatedGzip(ValueError):
    """The data ends inside a gzip member."""


def inflate_gzip(data: bytes, step_bytes: int = STEP_BYTES) -> Iterator[bytes]:
    """The inflated bytes of every member, in pieces of at most step_bytes.

    Raises zlib.error for bytes that are not gzip and TruncatedGzip for a member cut short.
    """
    for piece, _ in inflate_gzip_counted(data, step_bytes):
        yield piece


def inflate_gzip_counted(data: bytes, step_bytes: int = STEP_BYTES) -> Iterator[tuple[bytes, int]]:
    """inflate_gzip's pieces, each with how many bytes of data were read to produce it and all before it.

    The count lets a caller judge the ratio while inflating (output so far against input read so
    far), so a bomb is stopped after its first steps rather than at the end of a budget.
    """
    remaining = data
    while remaining:
        inflater = zlib.decompressobj(_GZIP_WBITS)
        pending = remaining
        # Stop at the member's end: once eof is set, zlib appends whatever it is given to
        # unused_data, so passing the tail again would read the next member twice.
        while not inflater.eof:
            piece = inflater.decompress(pending, step_bytes)
            pending = inflater.unconsumed_tail
            if piece:
                # Before the member's end the input not yet taken is the unconsumed tail, after it
                # unused_data (the next members). What zlib holds of the input it took is at most
                # its window, and counts as read.
                not_read = inflater.unused_data if inflater.eof else pending
                yield piece, len(data) - len(not_read)
            if not piece and not pending:
                break
        if not inflater.eof:
            raise TruncatedGzip("the gzip data is truncated")
        remaining = inflater.unused_data
