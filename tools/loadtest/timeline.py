"""The fault run's raw record: every request the generator sent, and every row a 202 acknowledged.

Each Locust process writes its own files into the run folder (with `record_timeline` in the
plan): `requests-<pid>.jsonl`, one JSON array per request
``[started (epoch s), duration ms, endpoint, status (0: no answer), outcome, error, delivery]``,
and `rows-<pid>.txt`, one line per row: ``ack event <uuid>``, ``ack chunk <session> <seq>``, or
``doubt ...`` for the rows of a delivery that finally failed (it may have been committed anyway).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

Outcome = Literal["ok", "retried", "failed"]
REQUESTS_GLOB = "requests-*.jsonl"
ROWS_GLOB = "rows-*.txt"


@dataclass(frozen=True)
class RequestRecord:
    started: float
    duration_ms: float
    endpoint: str
    status: int
    # ok: the answer the request wanted; retried: refused (503, no answer) and sent again with
    # the same body; failed: a final failure (a delivery given up, or a reader's error).
    outcome: Outcome
    error: str = ""
    # Tracker deliveries only: the same id on every attempt of one body.
    delivery: str | None = None

    @property
    def ended(self) -> float:
        return self.started + self.duration_ms / 1000

    @property
    def answered_2xx(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class RowLedger:
    """Keys of the rows 202s acknowledged, and of rows whose delivery finally failed (in doubt)."""

    acknowledged_events: set[str] = field(default_factory=set)
    acknowledged_chunks: set[tuple[str, int]] = field(default_factory=set)
    doubtful_events: set[str] = field(default_factory=set)
    doubtful_chunks: set[tuple[str, int]] = field(default_factory=set)


class TimelineWriter:
    """One per Locust process; files are opened on first use (after any fork) and buffered."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._requests: IO[str] | None = None
        self._rows: IO[str] | None = None

    def request(self, record: RequestRecord) -> None:
        if self._requests is None:
            self._requests = (self._folder / f"requests-{os.getpid()}.jsonl").open("a", buffering=1 << 16)
        self._requests.write(
            json.dumps(
                [
                    round(record.started, 4),
                    round(record.duration_ms, 1),
                    record.endpoint,
                    record.status,
                    record.outcome,
                    record.error,
                    record.delivery,
                ]
            )
            + "\n"
        )

    def rows(self, verdict: Literal["ack", "doubt"], event_uuids: Iterable[str], chunk: tuple[str, int] | None) -> None:
        if self._rows is None:
            self._rows = (self._folder / f"rows-{os.getpid()}.txt").open("a", buffering=1 << 16)
        lines = [f"{verdict} event {uuid}\n" for uuid in event_uuids]
        if chunk is not None:
            lines.append(f"{verdict} chunk {chunk[0]} {chunk[1]}\n")
        self._rows.writelines(lines)

    def flush(self) -> None:
        for file in (self._requests, self._rows):
            if file is not None:
                file.flush()


def read_requests(folder: Path) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    for path in sorted(folder.glob(REQUESTS_GLOB)):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            started, duration_ms, endpoint, status, outcome, error, delivery = json.loads(line)
            records.append(RequestRecord(started, duration_ms, endpoint, status, outcome, error, delivery))
    records.sort(key=lambda record: record.started)
    return records


def read_rows(folder: Path) -> RowLedger:
    ledger = RowLedger()
    for path in sorted(folder.glob(ROWS_GLOB)):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            verdict, kind = parts[0], parts[1]
            if kind == "event":
                (ledger.acknowledged_events if verdict == "ack" else ledger.doubtful_events).add(parts[2])
            elif kind == "chunk" and len(parts) == 4:
                key = (parts[2], int(parts[3]))
                (ledger.acknowledged_chunks if verdict == "ack" else ledger.doubtful_chunks).add(key)
    return ledger
