"""A garbage collection that holds the process past the threshold is logged; shorter ones are not."""

from __future__ import annotations

import gc
import logging

import pytest

from services.common.gc_pauses import GcPauseLog


def test_a_long_collection_is_logged_with_its_generation(caplog: pytest.LogCaptureFixture) -> None:
    garbage = []
    for _ in range(50_000):
        cycle: list[object] = []
        cycle.append(cycle)
        garbage.append(cycle)
    del garbage, cycle
    caplog.set_level(logging.WARNING, logger="services.common.gc_pauses")
    quiet, loud = GcPauseLog(threshold_ms=60_000), GcPauseLog(threshold_ms=0)
    gc.callbacks.extend([quiet, loud])
    try:
        gc.collect(2)
    finally:
        gc.callbacks.remove(quiet)
        gc.callbacks.remove(loud)
    messages = [record.getMessage() for record in caplog.records]
    # Only the zero-threshold callback logs, once, for the full collection and its 50,000 cycles.
    assert len(messages) == 1, messages
    assert messages[0].startswith("garbage collection of generation 2 paused the process for ")
    assert messages[0].endswith("objects freed)")
    freed = int(messages[0].rpartition("(")[2].split()[0])
    assert freed >= 50_000
