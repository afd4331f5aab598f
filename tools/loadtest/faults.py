"""The faults of the fault run (`sightline chaos`), injected into a stack that `sightline up` started.

Each fault is done the way an operator or a failure would do it, and ends with the fault lifted
(the part is back); whether the services noticed and recovered by themselves is measured around it.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from services.cli.stack import DATABASE_NAME, LocalStack
from services.common.settings import SERVICES, ServerSettings

# The order of a run: each fault is lifted and the stack has recovered before the next.
FAULTS = ("pgbouncer-restart", "postgres-restart", "ingest-sigterm", "reject-connections")

DESCRIPTIONS = {
    "pgbouncer-restart": "PgBouncer stopped (SIGTERM: every client and server connection closed at once), then started",
    "postgres-restart": "`pg_ctl restart -m fast` as postgres: sessions rolled back, server stopped and started",
    "ingest-sigterm": "SIGTERM to ingest's Granian master, waited for its exit, started again (same port)",
    "reject-connections": (
        "`ALTER DATABASE sightline ALLOW_CONNECTIONS false`, then the database's existing backends terminated "
        "(PgBouncer's server connections), held {reject_s:.0f} s, then `ALLOW_CONNECTIONS true`"
    ),
}

READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FaultRecord:
    name: str
    description: str
    injected_at: float  # epoch seconds: the fault began
    lifted_at: float  # the part is back (restart returned, connections allowed again)
    # Every service's /health/ready answered 200 again; None: not within READY_TIMEOUT_S.
    ready_at: float | None
    notes: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRecord:
        return cls(**data)


def describe(name: str, reject_s: float) -> str:
    return DESCRIPTIONS[name].format(reject_s=reject_s)


def inject(stack: LocalStack, name: str, *, reject_s: float) -> FaultRecord:
    """Injects one fault, lifts it, and waits (up to READY_TIMEOUT_S) until every service is ready."""
    notes = ""
    injected_at = time.time()
    if name == "pgbouncer-restart":
        bouncer = stack.pgbouncer()
        bouncer.stop()
        bouncer.start()
    elif name == "postgres-restart":
        stack.postgres.restart(mode="fast")
    elif name == "ingest-sigterm":
        stack.stop_service("ingest")
        notes = f"ingest exited {time.time() - injected_at:.1f} s after SIGTERM"
        restart_at = time.time()
        stack.start_service("ingest")
        notes += f"; ready {time.time() - restart_at:.1f} s after it was started again"
    elif name == "reject-connections":
        stack.postgres.psql(f"ALTER DATABASE {DATABASE_NAME} ALLOW_CONNECTIONS false")
        # Only new connections are refused; PgBouncer's open server connections would carry on
        # for an hour (server_lifetime), so they are cut as a failover or a restart would cut them.
        terminated = stack.postgres.psql(
            f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{DATABASE_NAME}'"
        )
        notes = f"{terminated} backends terminated"
        time.sleep(reject_s)
        stack.postgres.psql(f"ALTER DATABASE {DATABASE_NAME} ALLOW_CONNECTIONS true")
    else:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
    lifted_at = time.time()
    ready_at = wait_all_ready(_ready_urls())
    return FaultRecord(name, describe(name, reject_s), injected_at, lifted_at, ready_at, notes)


def _ready_urls() -> list[str]:
    urls = []
    for service in SERVICES:
        server = ServerSettings.from_env(service)
        urls.append(f"http://127.0.0.1:{server.port}/health/ready")
    return urls


def wait_all_ready(
    urls: list[str], timeout_s: float = READY_TIMEOUT_S, clock: Callable[[], float] = time.time
) -> float | None:
    """When every URL answered 200 (each polled until it does), or None after timeout_s."""
    deadline = clock() + timeout_s
    pending = list(urls)
    while pending:
        if clock() > deadline:
            return None
        try:
            with urllib.request.urlopen(pending[0], timeout=3) as response:
                if response.status == 200:
                    pending.pop(0)
                    continue
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return clock()
