"""The captured recordings keep the shape the load test relies on (see docs/tracker.md and docs/load-testing.md)."""

from __future__ import annotations

import gzip
import json

import pytest

from tools.loadtest.payloads import RECORDINGS_DIR

FULL_SNAPSHOT, META = 2, 4


@pytest.mark.parametrize("name", ["article", "catalogue", "dashboard"])
def test_a_recording_is_numbered_chunks_starting_with_a_full_snapshot_of_seed_size(name: str) -> None:
    recording = json.loads(gzip.decompress((RECORDINGS_DIR / f"{name}.json.gz").read_bytes()))
    chunks = recording["chunks"]
    assert [chunk["seq"] for chunk in chunks] == list(range(len(chunks)))
    assert len(chunks) >= 2
    first_types = [event["type"] for event in chunks[0]["events"]]
    assert first_types[:2] == [META, FULL_SNAPSHOT]
    timestamps = [event["timestamp"] for chunk in chunks for event in chunk["events"]]
    assert timestamps == sorted(timestamps)
    # The load test posts each chunk gzip-compressed, as the tracker does; the seed's first
    # chunks were 15-60 kB.
    first_body = json.dumps({"projectKey": "pk_x", "sessionId": "s", "distinctId": "d", "seq": 0, **chunks[0]})
    assert 15_000 <= len(gzip.compress(first_body.encode())) <= 60_000
