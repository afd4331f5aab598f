"""The session cubes keep their visitor sketches in the row, as visits and pages do (0101).

Migration 0101 stored the `visitors` sketch of `query_rollup_visits` and `query_rollup_pages`
PLAIN: a dense hll (log2m 12, 5 bits a register) is ~2.6 kB, past the 2 kB TOAST threshold,
and the type's own storage (`external`) moves it out of line. The seven session cubes that came
later (migrations 0650, 0660, 0810: entry and exit pages, hours, domains, event names, event
pages, entry x event pages) kept the type's storage, so a busy group's sketch lives in their
TOAST tables: the refresher's merge (an `INSERT ... ON CONFLICT DO UPDATE` per touched group,
nearly every group of the day in each round under the seed load) read the old sketch back from
there and wrote the new one there again, two TOAST rows and their index entries beside the row;
and every query's `hll_union_agg` over them detoasted each.

`toast_tuple_target = 8160` (the most a heap page allows) keeps a row inline up to ~8 kB, the
sketch with it; a longer row still has its widest values moved out. Not `SET STORAGE PLAIN` as
in 0101: Citus refuses that on a distributed table, and propagates storage parameters to every
shard. Measured with tools.bench.merge_replay (docs/benchmarks.md).

A catalog change only, no rewrite: rows move inline as they are next written (each merge writes
a new version of its group's row; a rebuilt day writes them all anew). The exit-page items
(0900) and goal pairs (1000) are left as they are: made from whole days, never merged into.

Revision ID: 1190
Revises: 1180
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "1190"
down_revision: str | None = "1180"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SESSION_CUBE_TABLES as they are at this revision, spelled out so that the migration keeps
# meaning what it did if that list changes.
_SESSION_CUBES = (
    "query_rollup_entry_pages",
    "query_rollup_exit_pages",
    "query_rollup_hours",
    "query_rollup_domains",
    "query_rollup_event_names",
    "query_rollup_event_pages",
    "query_rollup_entry_event_pages",
)


def upgrade() -> None:
    for cube in _SESSION_CUBES:
        op.execute(f"ALTER TABLE {cube} SET (toast_tuple_target = 8160)")


def downgrade() -> None:
    for cube in _SESSION_CUBES:
        op.execute(f"ALTER TABLE {cube} RESET (toast_tuple_target)")
