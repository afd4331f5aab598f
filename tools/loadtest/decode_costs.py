"""CPU of each decoding step of a replay chunk: `python -m tools.loadtest.decode_costs`.

For `make attack`'s counter-overflow chunk (5,000 rrweb events, the most a chunk may hold), a
recorded first chunk (full snapshot) and a load-test incremental chunk: CPU per call of
inflating, skimming, the typed decode and the summary, as ingest runs them
(services/ingest/routes.py, service.py). The typed decode is also timed with structs the
garbage collector tracks (the schemas before `gc=False`), to show what that flag saves.
Prints a Markdown table; figures go to docs by hand with this command line.
"""

from __future__ import annotations

import argparse
import gzip
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated

import msgspec
from msgspec import Meta

from services.ingest.decoding import decode_json, gunzip_bounded, skim
from services.ingest.schemas import ReplayChunkBody
from services.ingest.service import summarise_rrweb
from tools.loadtest.payloads import counter_overflow_events, incremental_chunk_events, load_recordings

REPLAY_LIMIT = 32 * 1024 * 1024


class TrackedData(msgspec.Struct, frozen=True):
    source: int | None = None
    type: int | None = None
    href: str | None = None


class TrackedRrwebEvent(msgspec.Struct):
    type: Annotated[int, Meta(ge=0, le=6)]
    timestamp: Annotated[int, Meta(ge=0, le=253_402_300_799_000)]
    data: TrackedData = TrackedData()


class TrackedChunk(msgspec.Struct, rename="camel"):
    project_key: str
    session_id: str
    distinct_id: str
    seq: int
    events: list[TrackedRrwebEvent]


def cpu_ms(call: Callable[[], object], repeat: int) -> float:
    started = time.process_time()
    for _ in range(repeat):
        call()
    return (time.process_time() - started) / repeat * 1000


def chunk_body(events: list[dict[str, object]]) -> bytes:
    envelope = {"projectKey": "pk_bench", "sessionId": "s", "distinctId": "d", "seq": 0, "events": events}
    return gzip.compress(msgspec.json.encode(envelope), 6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    base_ms = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000)
    bodies = {"counter-overflow chunk (make attack)": chunk_body(counter_overflow_events(base_ms))}
    recordings = load_recordings()
    if recordings:
        bodies["recorded first chunk"] = chunk_body(recordings[0].chunks[0])
    bodies["incremental chunk (load test)"] = chunk_body(incremental_chunk_events(random.Random(1), base_ms))
    print(
        "| chunk | rrweb events | gzip bytes | inflate ms | skim ms | decode ms | decode ms, GC-tracked structs "
        "| summary ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, body in bodies.items():
        inflated = gunzip_bounded(body, REPLAY_LIMIT)
        envelope = skim(inflated)
        chunk = decode_json(inflated, ReplayChunkBody, envelope)
        steps: list[Callable[[], object]] = [
            partial(gunzip_bounded, body, REPLAY_LIMIT),
            partial(skim, inflated),
            partial(decode_json, inflated, ReplayChunkBody, envelope),
            partial(msgspec.json.decode, inflated, type=TrackedChunk),
            partial(summarise_rrweb, chunk.events),
        ]
        figures = [cpu_ms(step, args.repeat) for step in steps]
        print(f"| {name} | {len(chunk.events)} | {len(body)} | " + " | ".join(f"{ms:.2f}" for ms in figures) + " |")


if __name__ == "__main__":
    main()
