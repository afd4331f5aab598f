"""A local Citus cluster: the stack's Postgres as coordinator, plus N worker clusters.

Every node is a `LocalPostgres` with ``shared_preload_libraries = 'citus'``, on 127.0.0.1 and its
own port, run as the service account. The same database (``sightline``), role and extensions
(citus, hll) are made on every node; the coordinator then registers itself
(``citus_set_coordinator_host``) and each worker (``citus_add_node``). Tables are distributed by
the Alembic revision 0700 (alembic/versions/20261130_0700_citus_distribution.py), not here.

Nodes talk to each other over TCP with scram-sha-256 passwords: ``pg_dist_authinfo`` (kept on the
coordinator and synced to the workers) holds the password Citus uses per role, for the services'
role and for the superuser that Citus's own maintenance connections run as. No node trusts
anything by address.

Worker data lives beside the coordinator's under the stack's data directory::

    citus/worker-1/    PGDATA of worker 1 (port: coordinator port + 1)
    citus/worker-2/    ...
    citus/nodes.json   how many workers this stack has, so `down` and `status` find them
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.cli.postgres import LocalPostgres
from services.cli.processes import StackError, make_owned_dir
from services.common import citus_repository
from services.common.db import create_admin_engine
from services.common.settings import AdminDatabaseSettings

T = TypeVar("T")

# Loaded into every node of a Citus stack.
CITUS_SERVER_SETTINGS: dict[str, str] = {
    "shared_preload_libraries": "citus",
    # Citus checks connections between nodes against this list; both are local here.
    "citus.local_hostname": "127.0.0.1",
}

# Lets the query rollups' trigger on events (alembic 0100) be created on distributed tables.
# It writes only the co-located shard of query_rollup_days on the same worker, the one case
# Citus runs inside a shard's trigger (see the 0700 revision).
CITUS_DATABASE_SETTINGS: dict[str, str] = {"citus.enable_unsafe_triggers": "on"}

CITUS_EXTENSIONS = ("citus", "hll")


def worker_port(coordinator_port: int, index: int) -> int:
    return coordinator_port + index


@dataclass
class LocalCitus:
    """The workers of a Citus stack and how they are joined to the coordinator."""

    coordinator: LocalPostgres
    root: Path  # <data>/citus
    run_dir: Path
    log_dir: Path
    workers: list[LocalPostgres] = field(default_factory=list)

    @classmethod
    def for_coordinator(
        cls,
        coordinator: LocalPostgres,
        root: Path,
        worker_count: int,
        *,
        worker_ports: list[int] | None = None,
    ) -> LocalCitus:
        ports = worker_ports or [worker_port(coordinator.port, index) for index in range(1, worker_count + 1)]
        if len(ports) != worker_count:
            raise StackError("one port per Citus worker is needed")
        workers = [
            LocalPostgres(
                data_dir=root / f"worker-{index}",
                run_dir=coordinator.run_dir,  # one socket per port, so the nodes can share it
                log_file=coordinator.log_file.parent / f"citus-worker-{index}.log",
                port=port,
                bin_dir=coordinator.bin_dir,
                max_connections=coordinator.max_connections,
                server_settings=with_citus(coordinator.server_settings),
            )
            for index, port in enumerate(ports, start=1)
        ]
        return cls(
            coordinator=coordinator,
            root=root,
            run_dir=coordinator.run_dir,
            log_dir=coordinator.log_file.parent,
            workers=workers,
        )

    @classmethod
    def recorded(cls, coordinator: LocalPostgres, root: Path) -> LocalCitus | None:
        """The Citus workers that `sightline up --citus-workers` recorded under root, if any."""
        nodes = root / "nodes.json"
        if not nodes.exists():
            return None
        ports = [int(port) for port in json.loads(nodes.read_text())["worker_ports"]]
        return cls.for_coordinator(coordinator, root, len(ports), worker_ports=ports)

    def record(self) -> None:
        make_owned_dir(self.root, 0o755)
        (self.root / "nodes.json").write_text(
            json.dumps({"worker_ports": [worker.port for worker in self.workers]}, indent=2) + "\n"
        )

    # -- start / stop ----------------------------------------------------------------

    def start_workers(self) -> list[str]:
        """Initialise and start every worker that is not running; returns the names started."""
        ensure_citus_installed(self.coordinator.bin_dir)
        make_owned_dir(self.root, 0o755)
        started = []
        for index, worker in enumerate(self.workers, start=1):
            if not worker.initialised:
                worker.init()
            if worker.pid() is None:
                worker.start()
                started.append(f"citus-worker-{index}")
            worker.wait_accepting()
        return started

    def stop_workers(self, mode: str = "fast") -> list[str]:
        return [f"citus-worker-{index}" for index, worker in enumerate(self.workers, start=1) if worker.stop(mode)]

    # -- join ------------------------------------------------------------------------

    def join_stack(self, user: str, password: str, database: str, logins: Sequence[tuple[str, str]] = ()) -> None:
        """Prepares the coordinator and the workers not joined yet, joins them; records them for `down` and `status`.

        A joined worker is left alone: Citus refuses DDL on objects it manages (the extensions)
        anywhere but on the coordinator. logins: (role, password) of further login roles (the
        services' role) that must exist on every node, with their passwords known to Citus: the
        coordinator reaches the workers as the role its client logged in as.
        """
        self.prepare_nodes([self.coordinator], user, password, database, self.superuser_password())
        joined = set(self.active_worker_ports(database))
        fresh = [worker for worker in self.workers if worker.port not in joined]
        self.prepare_nodes(fresh, user, password, database, self.superuser_password())
        for node in (self.coordinator, *self.workers):
            for role, secret in logins:
                node.ensure_login_role(role, secret, watched_by=user)
        self.join(user, password, database, self.superuser_password(), logins)
        self.record()

    def superuser_password(self) -> str:
        """The password of `postgres` on every node (Citus's own connections), kept mode 600."""
        make_owned_dir(self.root, 0o755)
        path = self.root / "superuser-password"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(new_superuser_password() + "\n")
        return path.read_text().strip()

    def prepare_nodes(
        self, nodes: list[LocalPostgres], user: str, password: str, database: str, superuser_password: str
    ) -> None:
        """The role, database, extensions and passwords every node needs, coordinator included."""
        for node in nodes:
            node.ensure_role_and_database(user, password, database)
            quoted = superuser_password.replace("'", "''")
            node.psql(f"ALTER ROLE postgres PASSWORD '{quoted}'")
            for extension in CITUS_EXTENSIONS:
                node.psql(f"CREATE EXTENSION IF NOT EXISTS {extension}", database=database)
            for name, value in CITUS_DATABASE_SETTINGS.items():
                node.psql(f"ALTER DATABASE {database} SET {name} = '{value}'")

    def join(
        self,
        user: str,
        password: str,
        database: str,
        superuser_password: str,
        logins: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Registers the coordinator and every worker; idempotent."""
        coordinator = self.coordinator
        # Not synced by Citus: workers connect to each other too (shard moves), so every node
        # holds the passwords.
        for node in (coordinator, *self.workers):
            for role, secret in ((user, password), ("postgres", superuser_password), *logins):
                authinfo = f"password={secret}".replace("'", "''")
                node.psql(
                    "INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo)"
                    f" VALUES (0, '{role}', '{authinfo}')"
                    " ON CONFLICT (nodeid, rolename) DO UPDATE SET authinfo = EXCLUDED.authinfo",
                    database=database,
                )
        coordinator.psql(f"SELECT citus_set_coordinator_host('127.0.0.1', {coordinator.port})", database=database)
        registered = set(
            coordinator.psql("SELECT nodeport FROM pg_dist_node WHERE groupid <> 0", database=database).split()
        )
        for worker in self.workers:
            if str(worker.port) not in registered:
                coordinator.psql(f"SELECT citus_add_node('127.0.0.1', {worker.port})", database=database)

    def add_worker(
        self,
        user: str,
        password: str,
        database: str,
        port: int | None = None,
        logins: Sequence[tuple[str, str]] = (),
    ) -> LocalPostgres:
        """One more worker (on the next port unless given), started and joined; shards move only on a rebalance."""
        index = len(self.workers) + 1
        if port is None:
            ports = [worker.port for worker in self.workers]
            port = max(ports) + 1 if ports else worker_port(self.coordinator.port, 1)
        worker = LocalPostgres(
            data_dir=self.root / f"worker-{index}",
            run_dir=self.run_dir,
            log_file=self.log_dir / f"citus-worker-{index}.log",
            port=port,
            bin_dir=self.coordinator.bin_dir,
            max_connections=self.coordinator.max_connections,
            server_settings=with_citus(self.coordinator.server_settings),
        )
        self.workers.append(worker)
        self.start_workers()
        self.join_stack(user, password, database, logins)
        return worker

    def active_worker_ports(self, database: str) -> list[int]:
        out = self.coordinator.psql(
            "SELECT nodeport FROM pg_dist_node WHERE groupid <> 0 AND isactive ORDER BY nodeport", database=database
        )
        return [int(port) for port in out.split()]


def ensure_citus_installed(bin_dir: Path) -> None:
    library = bin_dir.parent / "lib" / "citus.so"
    if not library.exists():
        raise StackError(
            f"{library} not found: install Citus for PostgreSQL 15 (Citus's packages, or on a machine "
            "without them `bash ../shared/citus/build.sh` as root), or run without --citus-workers"
        )


def with_citus(server_settings: dict[str, str]) -> dict[str, str]:
    return {**server_settings, **CITUS_SERVER_SETTINGS}


def new_superuser_password() -> str:
    return secrets.token_urlsafe(24)


# -- operations on any Citus deployment (through the admin database URL) -------------------


async def _on_coordinator(settings: AdminDatabaseSettings, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    engine = create_admin_engine(settings)
    try:
        async with engine.begin() as connection:
            if not await citus_repository.is_citus(connection):
                raise StackError("this database is not a Citus coordinator (no citus extension)")
            return await work(connection)
    except (OSError, SQLAlchemyError) as exc:
        raise StackError(f"on the Citus coordinator: {exc}") from exc
    finally:
        await engine.dispose()


async def shards_per_node(settings: AdminDatabaseSettings) -> list[citus_repository.NodeShards]:
    return await _on_coordinator(settings, citus_repository.shards_per_node)


async def isolate_project(settings: AdminDatabaseSettings, project_id: int) -> dict[str, object]:
    """The project's rows of every co-located table into shards of their own (same worker)."""

    async def isolate(connection: AsyncConnection) -> dict[str, object]:
        shard = await citus_repository.isolate_project(connection, project_id)
        _, host, port = await citus_repository.project_shard(connection, project_id)
        return {"project": project_id, "eventsShard": shard, "node": f"{host}:{port}"}

    return await _on_coordinator(settings, isolate)


async def rebalance(settings: AdminDatabaseSettings, *, wait_s: float, poll_s: float = 1.0) -> str:
    """Starts a rebalance and waits up to wait_s for it; its state ('finished' when every move is done).

    A move that fails is retried by Citus in the background (the job stays 'running'); the
    reason is in `SELECT * FROM citus_rebalance_status()`.
    """
    job = await _on_coordinator(settings, citus_repository.start_rebalance)
    if job is None:
        return "nothing to move"
    deadline = asyncio.get_running_loop().time() + wait_s
    state: str | None = "scheduled"
    while asyncio.get_running_loop().time() < deadline:
        state = await _on_coordinator(settings, citus_repository.rebalance_state)
        if state in {"finished", "failed", "cancelled"}:
            break
        await asyncio.sleep(poll_s)
    return state or "unknown"


async def wait_for_workers(settings: AdminDatabaseSettings, expected: int, timeout_s: float = 120.0) -> int:
    """Waits until the coordinator has `expected` active workers (a compose stack joins them in a
    job of its own, which may finish after the database accepts connections); the count seen."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            active = await _on_coordinator(settings, citus_repository.active_worker_count)
        except StackError:
            active = 0  # not up yet, or no citus extension yet
        if active >= expected:
            return active
        if asyncio.get_running_loop().time() > deadline:
            raise StackError(f"the coordinator has {active} of {expected} Citus workers after {timeout_s:.0f}s")
        await asyncio.sleep(1.0)
