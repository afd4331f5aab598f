"""The one gzip loop (ingest bodies, stored replay chunks): every member, once, in bounded pieces."""

from __future__ import annotations

import gzip

import pytest

from services.common.gzip_stream import TruncatedGzip, inflate_gzip, inflate_gzip_counted


@pytest.mark.parametrize("step_bytes", [1, 3, 10, 11, 1024])
def test_concatenated_members_are_each_read_once(step_bytes: int) -> None:
    # A step of 10 ends the first call exactly at the first member's end, with the next
    # members still in zlib's unconsumed tail: the case that once read a member twice.
    parts = [b"a" * 10, b"{}", b"x"]
    data = b"".join(gzip.compress(part) for part in parts)
    pieces = list(inflate_gzip(data, step_bytes))
    assert b"".join(pieces) == b"".join(parts)
    assert max(len(piece) for piece in pieces) <= step_bytes


def test_a_member_cut_short_is_truncated() -> None:
    data = gzip.compress(b"hello world" * 100)
    with pytest.raises(TruncatedGzip):
        b"".join(inflate_gzip(data[:-6]))


def test_each_piece_counts_the_compressed_bytes_read_up_to_it() -> None:
    first, second = gzip.compress(b"a" * 1000), gzip.compress(b"b" * 1000)
    counted = list(inflate_gzip_counted(first + second, 100))
    assert b"".join(piece for piece, _ in counted) == b"a" * 1000 + b"b" * 1000
    reads = [read for _, read in counted]
    assert reads == sorted(reads)
    # The first member's last piece has read exactly that member; the second's, everything.
    assert reads[9] == len(first)
    assert reads[-1] == len(first) + len(second)
