"""docs/benchmarks.md: every benchmark writes its figures there, each between its own markers."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"

# (start marker, end marker, heading used when the section is new)
Markers = tuple[str, str, str]


def machine_line() -> str:
    return (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores, "
        f"{platform.machine()}, Python {platform.python_version()}); the load generator, Postgres, PgBouncer and "
        "the services share the machine."
    )


def write_section(section: str, markers: Markers, path: Path = BENCHMARKS) -> None:
    """Puts section (which begins with the start marker and ends with the end marker) into the file."""
    start, end, heading = markers
    path.parent.mkdir(exist_ok=True)
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in current and end in current:
        before, rest = current.split(start, 1)
        current = before + section + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + f"\n\n{heading}\n\n{section}\n"
    path.write_text(current)
