"""The end of every run: did every event and replay chunk that a 202 acknowledged get stored?"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from services.common.db import admin_transaction
from services.common.settings import AdminDatabaseSettings
from tools.loadtest import repository


@dataclass
class Acknowledged:
    """What one load-generator process's 202s acknowledged, and what its final failures left in doubt.

    A delivery that finally failed (a timeout, say) may still have been committed, so its rows
    may or may not be stored; they are "in doubt", not lost. So are the rows of a delivery that
    the end of the run interrupted (Locust stops a user mid-request or mid-retry): the server
    may have committed what the client never heard back about.
    """

    events: int = 0
    replay_chunks: int = 0
    deliveries: int = 0
    retried_attempts: int = 0
    failed_deliveries: int = 0
    events_in_failed_deliveries: int = 0
    replay_chunks_in_failed_deliveries: int = 0
    interrupted_deliveries: int = 0
    events_in_interrupted_deliveries: int = 0
    replay_chunks_in_interrupted_deliveries: int = 0

    def __add__(self, other: Acknowledged) -> Acknowledged:
        return Acknowledged(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


def read_acknowledged(run_dir: Path) -> tuple[Acknowledged, int]:
    """The sum over every process's file, and how many process files there were."""
    total = Acknowledged()
    files = sorted(run_dir.glob("acknowledged-*.json"))
    for path in files:
        total = total + Acknowledged(**json.loads(path.read_text()))
    return total, len(files)


def write_acknowledged(path: Path, acknowledged: Acknowledged) -> None:
    path.write_text(json.dumps(asdict(acknowledged)))


@dataclass(frozen=True)
class DeliveryCheck:
    kind: str
    acknowledged: int
    stored: int
    in_doubt: int

    @property
    def verdict(self) -> str:
        if self.stored == self.acknowledged:
            return "equal"
        if self.stored < self.acknowledged:
            return "MISSING: acknowledged but not stored"
        if self.stored <= self.acknowledged + self.in_doubt:
            return "more stored than acknowledged, all from deliveries whose answer was lost"
        return "UNEXPECTED: more stored than sent"

    @property
    def passed(self) -> bool:
        return self.acknowledged <= self.stored <= self.acknowledged + self.in_doubt


def compare(acknowledged: Acknowledged, stored: dict[str, int]) -> list[DeliveryCheck]:
    return [
        DeliveryCheck(
            "events",
            acknowledged.events,
            stored["events"],
            acknowledged.events_in_failed_deliveries + acknowledged.events_in_interrupted_deliveries,
        ),
        DeliveryCheck(
            "replay chunks",
            acknowledged.replay_chunks,
            stored["replay_chunks"],
            acknowledged.replay_chunks_in_failed_deliveries + acknowledged.replay_chunks_in_interrupted_deliveries,
        ),
    ]


async def stored_rows(settings: AdminDatabaseSettings, project_id: int) -> dict[str, int]:
    async with admin_transaction(settings) as connection:
        return await repository.stored_rows(connection, project_id)
