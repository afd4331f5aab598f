"""read_body_with_deadline on its own: the body in parts, the 408 for a stalled or trickling upload,
the event loop's own lag not blamed on the client, and a cancel from outside left as it is."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from litestar.types import ReceiveMessage

from services.ingest.admission import (
    LOOP_LAG_TOLERANCE_S,
    AdmissionLimits,
    _BodyRefused,
    _ClientGone,
    read_body_with_deadline,
)

LIMITS = AdmissionLimits(max_concurrent=4, body_grace_s=0.2, min_upload_bytes_per_s=1000.0)


def messages(*parts: tuple[float, ReceiveMessage]) -> Callable[[], Awaitable[ReceiveMessage]]:
    """A receive() answering each message after its delay (seconds), then waiting for ever."""
    queue = list(parts)

    async def receive() -> ReceiveMessage:
        if not queue:
            await asyncio.Event().wait()
        delay, message = queue.pop(0)
        await asyncio.sleep(delay)
        return message

    return receive


def body(data: bytes, more: bool = False) -> ReceiveMessage:
    return {"type": "http.request", "body": data, "more_body": more}


async def test_a_body_in_parts_is_joined() -> None:
    parts = [(0.0, body(b"ab", more=True)), (0.01, body(b"", more=True)), (0.0, body(b"cd", more=True))]
    receive = messages(*parts, (0, body(b"e")))
    assert await read_body_with_deadline(receive, 100, LIMITS) == b"abcde"


async def test_a_body_over_the_limit_is_413() -> None:
    receive = messages((0, body(b"x" * 60, more=True)), (0, body(b"x" * 60)))
    with pytest.raises(_BodyRefused) as refused:
        await read_body_with_deadline(receive, 100, LIMITS)
    assert refused.value.status == 413


async def test_a_stalled_upload_is_408_at_the_end_of_its_grace() -> None:
    started = time.monotonic()
    with pytest.raises(_BodyRefused) as refused:
        await read_body_with_deadline(messages((0, body(b"x", more=True))), 100, LIMITS)
    assert refused.value.status == 408
    # Its deadline: the grace plus what its one byte bought (1 ms), not sooner.
    assert time.monotonic() - started >= 0.2


async def test_bytes_sent_push_the_deadline_back() -> None:
    # 500 bytes at 1000 bytes/s buy 0.5 s past the grace: the last part at 0.4 s is in time.
    receive = messages((0, body(b"x" * 500, more=True)), (0.4, body(b"y")))
    assert await read_body_with_deadline(receive, 1000, LIMITS) == b"x" * 500 + b"y"


async def test_a_disconnect_is_client_gone() -> None:
    with pytest.raises(_ClientGone):
        await read_body_with_deadline(messages((0, {"type": "http.disconnect"})), 100, LIMITS)


async def test_a_lagging_event_loop_is_not_blamed_on_the_upload() -> None:
    async def block_the_loop() -> None:
        await asyncio.sleep(0.05)
        time.sleep(0.2 + LOOP_LAG_TOLERANCE_S + 0.2)  # past the deadline, by more than the tolerance

    blocker = asyncio.create_task(block_the_loop())
    # The body came while the loop was blocked, after the deadline the timer could not keep.
    receive = messages((0.5, body(b"late but honest")))
    assert await read_body_with_deadline(receive, 100, LIMITS) == b"late but honest"
    await blocker


async def test_a_cancel_from_outside_is_a_cancel_not_a_408() -> None:
    reader = asyncio.create_task(read_body_with_deadline(messages(), 100, LIMITS))
    await asyncio.sleep(0.05)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader


async def test_the_task_reads_on_after_a_408_without_a_cancel_left_over() -> None:
    with pytest.raises(_BodyRefused):
        await read_body_with_deadline(messages((0, body(b"x", more=True))), 100, LIMITS)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0.01)  # a pending cancel would raise here
