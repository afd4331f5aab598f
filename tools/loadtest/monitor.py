"""What the machine does during a load test: PgBouncer's server connections and CPU per process.

A thread samples both every few seconds and appends JSON lines to the run folder, so a run that
is interrupted still leaves its measurements behind.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg

from services.cli.processes import read_pid
from services.common import pgbouncer_console

# SHOW POOLS columns that are server connections; which exist depends on PgBouncer's version.
SERVER_COLUMNS = ("sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login")

# The stack's processes, each found from the pid file `sightline up` leaves under its data folder.
STACK_PID_FILES = {
    "ingest": Path("run/ingest.pid"),
    "query": Path("run/query.pid"),
    "replay": Path("run/replay.pid"),
    "pgbouncer": Path("run/pgbouncer.pid"),
    "postgres": Path("postgres/postmaster.pid"),
}


def server_connections(pools: list[dict[str, Any]], database: str) -> dict[str, int]:
    """Server connections PgBouncer holds to Postgres for `database`, summed over its users."""
    rows = [row for row in pools if row.get("database") == database]
    in_use = sum(int(row.get(column) or 0) for row in rows for column in SERVER_COLUMNS)
    return {
        "server_connections": in_use,
        "sv_active": sum(int(row.get("sv_active") or 0) for row in rows),
        "cl_active": sum(int(row.get("cl_active") or 0) for row in rows),
        "cl_waiting": sum(int(row.get("cl_waiting") or 0) for row in rows),
        "maxwait_ms": max(
            (int(row.get("maxwait") or 0) * 1000 + int(row.get("maxwait_us") or 0) // 1000 for row in rows), default=0
        ),
    }


def pool_limits(console_url: str, database: str) -> dict[str, int]:
    """The pool size (and reserve) PgBouncer applies to `database`."""
    config = {row["key"]: row["value"] for row in pgbouncer_console.show(console_url, "CONFIG")}
    size = int(config.get("default_pool_size", 0))
    reserve = int(config.get("reserve_pool_size", 0))
    for row in pgbouncer_console.show(console_url, "DATABASES"):
        if row.get("name") == database:
            size = int(row.get("pool_size") or size)
            reserve = int(row.get("reserve_pool") or reserve)
    return {"pool_size": size, "reserve_pool": reserve}


@dataclass
class ProcessGroups:
    """Named groups of processes to measure: each root PID with all its descendants."""

    roots: dict[str, list[int]]
    extra: dict[str, Callable[[], list[int]]] = field(default_factory=dict)
    # Groups of one process, without its descendants.
    solo: dict[str, int] = field(default_factory=dict)

    @classmethod
    def for_stack(cls, data_dir: Path) -> ProcessGroups:
        # Read at every sample, not once: the fault run restarts these processes mid-run.
        return cls({}, extra={name: _pid_file_reader(data_dir / file) for name, file in STACK_PID_FILES.items()})

    def pids(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for name, roots in {**self.roots, **{name: get() for name, get in self.extra.items()}}.items():
            if not roots:
                continue  # not running (yet, or any more)
            pids: list[int] = []
            for root in roots:
                try:
                    process = psutil.Process(root)
                    pids += [root, *(child.pid for child in process.children(recursive=True))]
                except psutil.NoSuchProcess:
                    continue
            groups[name] = pids
        for name, pid in self.solo.items():
            groups[name] = [pid]
        return groups


def _pid_file_reader(pid_file: Path) -> Callable[[], list[int]]:
    def current() -> list[int]:
        pid = read_pid(pid_file)
        return [] if pid is None else [pid]

    return current


class CpuSampler:
    """CPU seconds per group between two calls, counting processes that appear or exit in between."""

    def __init__(self, groups: ProcessGroups) -> None:
        self.groups = groups
        self._last: dict[int, float] = {}
        self._processes: dict[int, psutil.Process] = {}

    def _cpu_seconds(self, pid: int) -> float | None:
        try:
            process = self._processes.get(pid) or psutil.Process(pid)
            self._processes[pid] = process
            times = process.cpu_times()
            return float(times.user + times.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._processes.pop(pid, None)
            return None

    def sample(self) -> dict[str, float]:
        used: dict[str, float] = {}
        seen: dict[int, float] = {}
        for name, pids in self.groups.pids().items():
            total = 0.0
            for pid in pids:
                seconds = self._cpu_seconds(pid)
                if seconds is None:
                    continue
                # A process new since the last sample counts from zero: short-lived backends count too.
                total += max(0.0, seconds - self._last.get(pid, 0.0))
                seen[pid] = seconds
            used[name] = total
        self._last = seen
        return used


class Monitor(threading.Thread):
    """Samples PgBouncer and CPU every interval_s into JSON lines until stopped."""

    def __init__(
        self,
        output: Path,
        groups: ProcessGroups,
        console_url: str | None,
        database: str = "sightline",
        interval_s: float = 2.0,
    ) -> None:
        super().__init__(name="load-monitor", daemon=True)
        self.output = output
        self.console_url = console_url
        self.database = database
        self.interval_s = interval_s
        self.cpu = CpuSampler(groups)
        self.cpu_count = psutil.cpu_count() or 1
        self._stop_event = threading.Event()
        self.console_errors = 0

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=self.interval_s * 3)

    def run(self) -> None:
        self.cpu.sample()  # the baseline: the first interval starts now
        psutil.cpu_percent()  # likewise: its first answer is a meaningless 0.0
        last = time.monotonic()
        with self.output.open("a") as file:
            while not self._stop_event.wait(self.interval_s):
                now = time.monotonic()
                cpu_seconds = self.cpu.sample()
                record: dict[str, Any] = {
                    "t": time.time(),
                    "interval_s": now - last,
                    # percent of one core, as top shows it
                    "cpu": {name: 100.0 * used / (now - last) for name, used in cpu_seconds.items()},
                    "machine_cpu": psutil.cpu_percent(),
                }
                last = now
                if self.console_url:
                    try:
                        record["pgbouncer"] = server_connections(
                            pgbouncer_console.show(self.console_url, "POOLS", timeout_s=2.0), self.database
                        )
                    except (psycopg.Error, OSError) as exc:  # a missed sample is reported, never fatal
                        self.console_errors += 1
                        record["pgbouncer_error"] = str(exc)
                file.write(json.dumps(record) + "\n")
                file.flush()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def peak(records: list[Mapping[str, Any]], section: str, key: str) -> float:
    return max((float(record[section][key]) for record in records if section in record), default=0.0)
