"""`sightline chaos`: the seed scenario on a throwaway stack, with faults injected one after another.

The stack is the one `sightline up` builds (same code, same settings) but in its own data
directory under /tmp and on free ports, so it collides with neither `make up` nor another run.
While the load holds, a thread injects each fault (tools.loadtest.faults), waits until every
service is ready again, then leaves a recovery gap before the next. The generator records every
request and every acknowledged row's key (tools.loadtest.timeline); afterwards each fault's
window is measured (tools.loadtest.fault_windows) and every acknowledged uuid is looked up in
the database: lost (acknowledged, not stored) and duplicates (stored twice) must both be 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from services.cli.processes import free_port
from services.cli.stack import LocalStack
from services.common.db import admin_transaction
from services.common.settings import AdminDatabaseSettings, ServerSettings, StackSettings
from tools.loadtest import chaos_report, repository
from tools.loadtest.fault_windows import FaultWindow, fault_windows
from tools.loadtest.faults import FAULTS, FaultRecord, inject
from tools.loadtest.plan import LoadPlan
from tools.loadtest.runner import LoadOptions, RunResult, run_load
from tools.loadtest.timeline import read_requests, read_rows

Key = TypeVar("Key", bound=Hashable)
FAULTS_FILE = "faults.jsonl"
REPORT_FILE = "chaos.md"
# Seconds each fault takes before its recovery gap, for the default length of the hold.
FAULT_BUDGET_S = {"pgbouncer-restart": 10.0, "postgres-restart": 15.0, "ingest-sigterm": 20.0}


@dataclass(frozen=True)
class ChaosOptions:
    users: int = 1000
    ramp_up_s: float = 20.0
    # At full load; None: long enough for the faults (warm-up, then each fault and its gap).
    hold_s: float | None = None
    ramp_down_s: float = 5.0
    faults: tuple[str, ...] = FAULTS
    warmup_s: float = 15.0
    gap_s: float = 30.0
    reject_s: float = 10.0
    # The longest any request may take while the database is gone: ingest's commit timeout
    # (10 s, the longest a service waits for the database on a request's behalf) plus 2 s.
    deadline_s: float = 12.0
    reports_dir: Path = Path("reports")
    processes: int = 1
    progress_s: float = 10.0
    payload_variants: int = 24
    ingest_workers: int | None = None

    def planned_hold_s(self) -> float:
        if self.hold_s is not None:
            return self.hold_s
        return self.warmup_s + sum(self.gap_s + self.fault_budget_s(name) for name in self.faults)

    def fault_budget_s(self, name: str) -> float:
        return self.reject_s + 5 if name == "reject-connections" else FAULT_BUDGET_S[name]


@dataclass(frozen=True)
class RowCheck:
    """Acknowledged rows (by key) against what the database holds for the run's project."""

    kind: str
    acknowledged: int
    stored: int
    lost: int
    duplicates: int
    # Rows of deliveries that finally failed, stored anyway (the commit landed, the answer did not).
    stored_in_doubt: int
    # Stored but neither acknowledged nor sent in a failed delivery: should not exist.
    unexpected: int
    lost_examples: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.lost == 0 and self.duplicates == 0 and self.unexpected == 0


def compare_rows(kind: str, acknowledged: set[Key], doubtful: set[Key], stored: Mapping[Key, int]) -> RowCheck:
    lost = acknowledged - stored.keys()
    return RowCheck(
        kind=kind,
        acknowledged=len(acknowledged),
        stored=sum(stored.values()),
        lost=len(lost),
        duplicates=sum(count - 1 for count in stored.values() if count > 1),
        stored_in_doubt=len(doubtful & stored.keys()),
        unexpected=len(stored.keys() - acknowledged - doubtful),
        lost_examples=sorted(str(key) for key in lost)[:10],
    )


@dataclass(frozen=True)
class ChaosResult:
    run: RunResult
    faults: list[FaultRecord]
    windows: list[FaultWindow]
    rows: list[RowCheck]
    report: Path
    options: ChaosOptions
    fault_error: str | None = None

    @property
    def passed(self) -> bool:
        return (
            self.fault_error is None
            and all(check.passed for check in self.rows)
            and all(window.passed(self.options.deadline_s) for window in self.windows)
            and len(self.faults) == len(self.options.faults)
        )


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """os.environ with values set, restored afterwards (the stack's and load test's code read it)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# What a fault run's Postgres logs besides `sightline up`'s settings, to attribute a stall: every
# lock wait past 100 ms (with the waiting service's application_name; the privacy settings keep
# the statement and the rows out), and WAL write/sync times in pg_stat_wal. A ~200 ms stall of
# every ingest request, with nothing refused and the machine idle, was a commit's WAL sync on the
# shared disk while the other writers waited for its row lock (docs/reliability.md).
DIAGNOSTIC_SERVER_SETTINGS = {"log_lock_waits": "on", "deadlock_timeout": "100ms", "track_wal_io_timing": "on"}


@contextlib.contextmanager
def throwaway_stack(keep_logs_in: Callable[[], Path | None], ingest_workers: int | None) -> Iterator[LocalStack]:
    """`sightline up` in a fresh data directory on free ports; stopped and deleted afterwards."""
    data_dir = Path(tempfile.mkdtemp(prefix="sightline-chaos-", dir="/tmp"))
    data_dir.chmod(0o755)  # the postgres account must reach it
    ports = {
        "SIGHTLINE_DATA_DIR": str(data_dir),
        "SIGHTLINE_POSTGRES_PORT": str(free_port()),
        "SIGHTLINE_PGBOUNCER_PORT": str(free_port()),
        "SIGHTLINE_INGEST_PORT": str(free_port()),
        "SIGHTLINE_QUERY_PORT": str(free_port()),
        "SIGHTLINE_REPLAY_PORT": str(free_port()),
        # The load test's no-op users need POST /v1/noop, which exists only when this is on.
        "SIGHTLINE_INGEST_BENCHMARK_NOOP": "1",
    }
    if ingest_workers is not None:
        ports["SIGHTLINE_INGEST_WORKERS"] = str(ingest_workers)
    stack: LocalStack | None = None
    try:
        with _environment(ports):
            stack = LocalStack(StackSettings.from_env())
            stack.postgres.server_settings.update(DIAGNOSTIC_SERVER_SETTINGS)
            env_values = stack.up()
            # The stack's own URLs, over whatever `.data/sightline.env` put in the environment.
            with _environment(env_values):
                yield stack
    finally:
        if stack is not None:
            stack.down()
        logs = keep_logs_in()
        if logs is not None and (data_dir / "log").exists():
            shutil.copytree(data_dir / "log", logs / "logs", dirs_exist_ok=True)
        shutil.rmtree(data_dir, ignore_errors=True)


class FaultInjector(threading.Thread):
    """Waits for full load plus the warm-up, then injects each fault with a recovery gap after it."""

    def __init__(self, stack: LocalStack, options: ChaosOptions, folder: Path, echo: Callable[[str], None]) -> None:
        super().__init__(name="fault-injector", daemon=True)
        self.stack = stack
        self.options = options
        self.folder = folder
        self.echo = echo
        self.records: list[FaultRecord] = []
        self.error: str | None = None
        self.started_at = time.time()

    def run(self) -> None:
        time.sleep(self.options.ramp_up_s + self.options.warmup_s)
        for name in self.options.faults:
            self.echo(f"fault: {name}")
            try:
                record = inject(self.stack, name, reject_s=self.options.reject_s)
            except Exception as exc:  # recorded and reported; the run's stack is stopped by its owner
                self.error = f"{name}: {type(exc).__name__}: {exc}"
                self.echo(f"fault {name} could not be injected: {exc}")
                return
            self.records.append(record)
            with (self.folder / FAULTS_FILE).open("a") as file:
                file.write(json.dumps(record.as_json()) + "\n")
            ready = "never" if record.ready_at is None else f"{record.ready_at - record.lifted_at:.1f} s"
            self.echo(f"  lifted after {record.lifted_at - record.injected_at:.1f} s, all ready again after {ready}")
            time.sleep(self.options.gap_s)

    @property
    def hold_end(self) -> float:
        return self.started_at + self.options.ramp_up_s + self.options.planned_hold_s()


async def _stored_keys(
    settings: AdminDatabaseSettings, project_id: int
) -> tuple[dict[str, int], dict[tuple[str, int], int]]:
    async with admin_transaction(settings) as connection:
        return (
            await repository.stored_event_uuids(connection, project_id),
            await repository.stored_chunk_keys(connection, project_id),
        )


def run_chaos(options: ChaosOptions, command: str, echo: Callable[[str], None] = print) -> ChaosResult:
    unknown = set(options.faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults: {', '.join(sorted(unknown))}; known: {', '.join(FAULTS)}")
    folder_box: list[Path] = []
    with throwaway_stack(lambda: folder_box[0] if folder_box else None, options.ingest_workers) as stack:
        injector: list[FaultInjector] = []

        def start_faults(folder: Path, _: LoadPlan) -> None:
            folder_box.append(folder)
            thread = FaultInjector(stack, options, folder, echo)
            injector.append(thread)
            thread.start()

        load_options = LoadOptions(
            users=options.users,
            ramp_up_s=options.ramp_up_s,
            hold_s=options.planned_hold_s(),
            ramp_down_s=options.ramp_down_s,
            ingest_url=f"http://127.0.0.1:{ServerSettings.from_env('ingest').port}",
            query_url=f"http://127.0.0.1:{ServerSettings.from_env('query').port}",
            replay_url=f"http://127.0.0.1:{ServerSettings.from_env('replay').port}",
            shape="linear",
            steps=1,
            processes=options.processes,
            reports_dir=options.reports_dir,
            progress_s=options.progress_s,
            payload_variants=options.payload_variants,
            record_timeline=True,
        )
        echo(f"fault run: {options.users} visitors, faults {', '.join(options.faults)}")
        run = run_load(load_options, command, echo, folder_suffix="-chaos", on_started=start_faults)
        thread = injector[0]
        thread.join(timeout=120)
        if thread.is_alive():
            thread.error = "the fault injector was still running when the load ended"
        event_counts, chunk_counts = asyncio.run(_stored_keys(AdminDatabaseSettings.from_env(), run.project_id))

    ledger = read_rows(run.folder)
    rows = [
        compare_rows("events", set(ledger.acknowledged_events), set(ledger.doubtful_events), event_counts),
        compare_rows("replay chunks", set(ledger.acknowledged_chunks), set(ledger.doubtful_chunks), chunk_counts),
    ]
    windows = fault_windows(read_requests(run.folder), thread.records, run_end=thread.hold_end)
    result = ChaosResult(run, thread.records, windows, rows, run.folder / "chaos.md", options, thread.error)
    chaos_report.write(result, command)
    return result
