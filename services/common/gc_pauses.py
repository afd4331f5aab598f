"""Garbage-collection pauses, logged: a collection stops the whole process, so every request in
flight waits for it and it shows as a stall of the process (docs/reliability.md, fault run).

Only the standard library here: the load generator imports it too, and must not carry the app.
"""

from __future__ import annotations

import logging
import time

# A collection that holds the event loop at least this long is logged: every request in flight
# waits for it, so it shows as a stall of the whole process (docs/reliability.md, fault run).
GC_PAUSE_LOG_MS = 50.0

logger = logging.getLogger(__name__)


class GcPauseLog:
    """A gc callback that logs each collection pausing the process at least threshold_ms."""

    def __init__(self, threshold_ms: float = GC_PAUSE_LOG_MS) -> None:
        self._threshold_s = threshold_ms / 1000
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        paused_s = time.perf_counter() - self._started
        if paused_s >= self._threshold_s:
            logger.warning(
                "garbage collection of generation %d paused the process for %.0f ms (%d objects freed)",
                info["generation"],
                paused_s * 1000,
                info["collected"],
            )
