"""All SQL of Citus operations (`sightline citus ...`, docs/scaling.md). Callers own the transaction.

Only meaningful on a Citus coordinator; `is_citus` tells the callers which engine they face.
Shard moves use ``block_writes``: writes to a shard wait while it is copied (seconds for a
shard of a small project), and no logical replication is needed (it would need
``wal_level = logical`` and a replica identity on the rollup tables, which have no key).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# A constant in the statements' text: the services' role may not name types of schema citus.
SHARD_TRANSFER_MODE = "block_writes"


@dataclass(frozen=True)
class NodeShards:
    host: str
    port: int
    shards: int
    bytes: int


async def is_citus(connection: AsyncConnection) -> bool:
    result = await connection.execute(text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')"))
    return bool(result.scalar_one())


async def shards_per_node(connection: AsyncConnection) -> list[NodeShards]:
    """Shard placements and their bytes per node (the coordinator holds the reference table)."""
    result = await connection.execute(
        text(
            "SELECT n.nodename, n.nodeport, count(s.shardid), coalesce(sum(s.shard_size), 0)"
            " FROM pg_dist_node n LEFT JOIN citus_shards s ON s.nodename = n.nodename AND s.nodeport = n.nodeport"
            " WHERE n.isactive GROUP BY n.nodename, n.nodeport ORDER BY n.nodeport"
        )
    )
    return [NodeShards(row[0], int(row[1]), int(row[2]), int(row[3])) for row in result]


async def project_shard(connection: AsyncConnection, project_id: int) -> tuple[int, str, int]:
    """(shard id, host, port) of the project's events shard."""
    result = await connection.execute(
        text(
            "SELECT s.shardid, s.nodename, s.nodeport FROM citus_shards s"
            " WHERE s.table_name = 'events'::regclass"
            " AND s.shardid = get_shard_id_for_distribution_column('events', CAST(:project_id AS bigint))"
        ),
        {"project_id": project_id},
    )
    row = result.one()
    return int(row[0]), str(row[1]), int(row[2])


async def isolate_project(connection: AsyncConnection, project_id: int) -> int:
    """Moves the project into shards of its own, in every co-located table; the new shard id of events."""
    result = await connection.execute(
        text(
            "SELECT isolate_tenant_to_new_shard('events', CAST(:project_id AS bigint), 'CASCADE',"
            f" shard_transfer_mode => '{SHARD_TRANSFER_MODE}')"
        ),
        {"project_id": project_id},
    )
    return int(result.scalar_one())


async def start_rebalance(connection: AsyncConnection) -> int | None:
    """Starts moving shards onto under-used nodes in the background; the job id (None: nothing to move)."""
    result = await connection.execute(
        text(f"SELECT citus_rebalance_start(shard_transfer_mode => '{SHARD_TRANSFER_MODE}')")
    )
    job = result.scalar_one_or_none()
    return None if job is None else int(job)


async def rebalance_state(connection: AsyncConnection) -> str | None:
    """The state of the latest rebalance job (scheduled, running, finished, failed, ...)."""
    result = await connection.execute(text("SELECT state FROM citus_rebalance_status()"))
    state = result.scalar_one_or_none()
    return None if state is None else str(state)


async def active_worker_count(connection: AsyncConnection) -> int:
    result = await connection.execute(text("SELECT count(*) FROM pg_dist_node WHERE groupid <> 0 AND isactive"))
    return int(result.scalar_one())
