"""A merge's staging statement timed as it is and as it was.

Takes a window of a project's stored non-bot events as `tools.bench.merge_replay` does (the
project with the most events in the last day unless --project-id), and runs the staging
statement of `rollup_repository.refresh_project` on their keys (`_stage_events_sql`), alternating
its variants on one connection, each run rolled back:

- as landed: the event-key filter `_EVENT_KEY_FILTER` (the key as bytes under a CASE), into the
  staged table without an index (migration 1170);
- the staged table with its `project_id` index (before 1170), created inside the run;
- the same bytes without the CASE (the planner estimates `= ANY(...)` one array element at a time);
- the text key used before (the uuid's text form and `extract(epoch)` as numeric);
- the rows read and not inserted (`SELECT count(*)` of the statement's query): what the insert adds.

Each run's backend CPU comes from /proc. Run it against a stack `sightline up` started, with its
refresher off and no load running. Nothing is asserted; each variant's CPU per run and per event
is printed as a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
from dataclasses import dataclass

from sqlalchemy import text

from services.query import rollup_repository
from tools.bench.merge_replay import add_window_arguments, find_window, stack_rollup_engine
from tools.bench.refresher_cpu import process_cpu_s

_LANDED = rollup_repository._EVENT_KEY_FILTER
# Each key form as Postgres builds it: the bench reads the window's keys in both forms, as the
# refresher's take reads the landed one, so no form is encoded a second time in Python.
_BYTES_KEY = rollup_repository._EVENT_KEY.format(uuid="e.event_uuid", occurred_at="e.occurred_at")
_TEXT_KEY_OF = "(CAST(e.event_uuid AS text) || '@' || CAST(extract(epoch FROM e.occurred_at) * 1000000 AS bigint))"
_BYTES_WITHOUT_CASE = f"{_BYTES_KEY} = ANY(CAST(:event_keys AS bytea[])) AND NOT e.is_bot"
_TEXT_KEY = f"{_TEXT_KEY_OF} = ANY(CAST(:event_keys AS text[])) AND NOT e.is_bot"


@dataclass(frozen=True)
class Variant:
    where: str  # the key filter
    key: str  # the window's column holding the keys this filter compares: "bytes_key" or "text_key"
    setup: str | None = None  # run in the transaction first, untimed
    read_only: bool = False  # the statement's query counted, nothing inserted


_STAGED_INDEX = "CREATE INDEX ix_query_rollup_events_staged_project_id ON query_rollup_events_staged (project_id)"
_VARIANTS = {
    "landed": Variant(_LANDED, "bytes_key"),
    "staged table indexed (before 1170)": Variant(_LANDED, "bytes_key", setup=_STAGED_INDEX),
    "bytes without the CASE": Variant(_BYTES_WITHOUT_CASE, "bytes_key"),
    "text key (before the bytes key)": Variant(_TEXT_KEY, "text_key"),
    "read only": Variant(_LANDED, "bytes_key", read_only=True),
}
_WINDOW = (
    f"SELECT e.occurred_at, {_BYTES_KEY} AS bytes_key, {_TEXT_KEY_OF} AS text_key FROM events e"
    " WHERE e.project_id = :project_id AND e.occurred_at >= :start AND e.occurred_at < :end AND NOT e.is_bot"
)


async def main(arguments: argparse.Namespace) -> None:
    # The services' engine settings: no statement cache, so every run is planned with its keys
    # (a generic plan would not hash the array).
    engine = stack_rollup_engine()
    try:
        async with engine.connect() as connection:
            window = await find_window(connection, arguments)
            project_id, timezone = window["project_id"], window["timezone"]
            keys = list(await connection.execute(text(_WINDOW), window))
            await connection.rollback()
            if not keys:
                raise SystemExit("no non-bot events in the window; move it with --seconds and --before-end")
            ranges = rollup_repository._stage_ranges([row.occurred_at for row in keys])
            if ranges is None:
                raise SystemExit("the window's times fall in too many ranges; choose a shorter --seconds")
            base: dict[str, object] = {"project_id": project_id, "timezone": timezone}
            for index, (first, last) in enumerate(ranges):
                base[f"range_start_{index}"] = first
                base[f"range_end_{index}"] = last
            staging = rollup_repository._stage_events_sql(len(ranges))
            query = "SELECT count(*) FROM (" + staging[staging.index(" SELECT ") + 1 :] + ") staged"
            raw = await connection.get_raw_connection()
            pid = raw.driver_connection.get_server_pid()  # type: ignore[union-attr]
            cpu: dict[str, list[float]] = {name: [] for name in _VARIANTS}
            for _ in range(arguments.repeat):
                for name, variant in _VARIANTS.items():
                    params = dict(base, event_keys=[getattr(row, variant.key) for row in keys])
                    statement = (query if variant.read_only else staging).replace(_LANDED, variant.where)
                    async with connection.begin() as transaction:
                        if variant.setup is not None:
                            await connection.execute(text(variant.setup))
                        before = process_cpu_s(pid)
                        result = await connection.execute(text(statement), params)
                        cpu[name].append(process_cpu_s(pid) - before)
                        staged = result.scalar_one() if variant.read_only else result.rowcount
                        await transaction.rollback()
                    if staged != len(keys):
                        raise SystemExit(f"{name}: staged {staged} of {len(keys)} events")
            for name, runs in cpu.items():
                print(
                    json.dumps(
                        {
                            "variant": name,
                            "project_id": project_id,
                            "events": len(keys),
                            "cpu_s": [round(run, 2) for run in runs],
                            "mean_s": round(statistics.mean(runs), 3),
                            "us_per_event": round(statistics.mean(runs) / len(keys) * 1e6, 2),
                            "load": os.getloadavg(),
                        }
                    ),
                    flush=True,
                )
    finally:
        await engine.dispose()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_window_arguments(parser, before_end=60.0)
    parser.add_argument("--repeat", type=int, default=10, help="runs of each variant, alternated")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
