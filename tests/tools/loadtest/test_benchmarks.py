"""--write-benchmarks replaces only its own marked section of docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

from tools.benchmarks_file import write_section
from tools.loadtest.benchmarks import LIMIT, LIMIT_CITUS, SEED, limit_markers


def test_a_section_is_appended_once_then_replaced_in_place(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\n<!-- ingest-wrk:start -->\nwrk figures\n<!-- ingest-wrk:end -->\n")
    write_section(f"{SEED[0]}\nfirst\n{SEED[1]}", SEED, path)
    write_section(f"{LIMIT[0]}\nlimit\n{LIMIT[1]}", LIMIT, path)
    write_section(f"{SEED[0]}\nsecond\n{SEED[1]}", SEED, path)
    assert path.read_text() == (
        "# Benchmarks\n\n<!-- ingest-wrk:start -->\nwrk figures\n<!-- ingest-wrk:end -->\n\n"
        f"{SEED[2]}\n\n{SEED[0]}\nsecond\n{SEED[1]}\n\n"
        f"{LIMIT[2]}\n\n{LIMIT[0]}\nlimit\n{LIMIT[1]}\n"
    )


def test_a_citus_stack_keeps_its_own_breaking_point(tmp_path: Path) -> None:
    assert limit_markers(tmp_path) == LIMIT
    (tmp_path / "citus").mkdir()
    (tmp_path / "citus" / "nodes.json").write_text('{"worker_ports": [1, 2]}')
    assert limit_markers(tmp_path) == LIMIT_CITUS
    assert LIMIT_CITUS[0] != LIMIT[0]
