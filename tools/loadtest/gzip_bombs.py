"""What a gzip bomb costs ingest's decoder, next to an honest replay chunk: `python -m tools.loadtest.gzip_bombs`.

CPU per call of ``gunzip_bounded`` (the step every gzip body takes before its key or events are
looked at) for `make attack`'s bomb of tiny rrweb events, a bomb of zeros, and the tracker's
recorded first chunks (inflated, then skimmed and decoded as ingest does), under the ratio
judged while inflating and under the rule it replaced (100x the whole body's size, past the
first MiB, judged only against the final budget). Prints a Markdown table; no timed assertion
anywhere, the figures go to docs by hand with this command line.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import time
import zlib
from collections.abc import Callable

import msgspec

from services.common.errors import ApiError
from services.ingest.decoding import decode_json, gunzip_bounded, skim
from services.ingest.schemas import ReplayChunkBody
from tools.loadtest.payloads import load_recordings, rrweb_bomb

REPLAY_LIMIT = 32 * 1024 * 1024


def old_rule(body: bytes) -> bytes:
    """The previous cap: min(limit, max(1 MiB, 100x the body)), checked against the output only."""
    budget = min(REPLAY_LIMIT, max(1024 * 1024, 100 * len(body)))
    return gunzip_bounded(body, budget, max_ratio=10**9, ratio_free_bytes=0)


def new_rule(body: bytes) -> bytes:
    return gunzip_bounded(body, REPLAY_LIMIT)


def cpu_ms(call: Callable[[bytes], object], body: bytes, repeat: int) -> float:
    started = time.process_time()
    for _ in range(repeat):
        with contextlib.suppress(ApiError):
            call(body)
    return (time.process_time() - started) / repeat * 1000


def zeros_bomb(megabytes: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join([*(compressor.compress(bytes(1 << 20)) for _ in range(megabytes)), compressor.flush()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    bodies = {
        "make attack's bomb (tiny rrweb events)": rrweb_bomb("pk_bench"),
        "zeros, 64 MiB": zeros_bomb(64),
    }
    honest = []
    for recording in load_recordings():
        chunk = {"projectKey": "pk_bench", "sessionId": "s", "distinctId": "d", "seq": 0}
        honest.append(gzip.compress(msgspec.json.encode({**chunk, "events": recording.chunks[0]}), 6))
    print("| body | gzip bytes | old rule: CPU ms per call | ratio while inflating: CPU ms per call |")
    print("| --- | --- | --- | --- |")
    for name, body in bodies.items():
        old = cpu_ms(old_rule, body, args.repeat)
        new = cpu_ms(new_rule, body, args.repeat)
        print(f"| {name} | {len(body)} | {old:.2f} | {new:.2f} |")

    def decode_all(_: bytes) -> None:
        for body in honest:
            inflated = gunzip_bounded(body, REPLAY_LIMIT)
            decode_json(inflated, ReplayChunkBody, skim(inflated))

    honest_ms = cpu_ms(decode_all, b"", args.repeat) / max(len(honest), 1)
    sizes = ", ".join(str(len(body)) for body in honest)
    print(
        f"| honest recorded first chunk, inflated + skimmed + decoded (mean of {len(honest)}) | {sizes} | "
        f"{honest_ms:.2f} | {honest_ms:.2f} |"
    )


if __name__ == "__main__":
    main()
