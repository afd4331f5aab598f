"""CPU seconds of a process tree, from /proc, for CPU-per-request figures in the benchmarks.

A tree's CPU is its root's own user+system time, plus what its reaped children used
(cutime+cstime, which the kernel adds to the parent when it waits for them), plus the own
time of its children still alive. The difference of two readings is then exact even when
children come and go between them (Postgres backends, Granian workers restarting): a child
alive at the first reading and reaped by the second is counted once, its part before the
first reading subtracted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class TreeReading:
    own: float
    reaped_children: float
    live_children: float

    @property
    def total(self) -> float:
        return self.own + self.reaped_children + self.live_children


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    return raw[raw.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for task in tasks:
        try:
            children.extend(int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except OSError:
            continue
    return children


def read_tree(root_pid: int) -> TreeReading:
    """CPU seconds of root_pid and every descendant, alive or reaped."""
    fields = _stat_fields(root_pid)
    if fields is None:
        raise ProcessLookupError(root_pid)
    # After the name: state(0) ppid ... utime(11) stime(12) cutime(13) cstime(14).
    own = (int(fields[11]) + int(fields[12])) / _TICKS
    reaped = (int(fields[13]) + int(fields[14])) / _TICKS
    live = 0.0
    for child in _children(root_pid):
        try:
            live += read_tree(child).total
        except ProcessLookupError:
            continue  # exited between the listing and the read: counted in our cutime next time
    return TreeReading(own, reaped, live)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
