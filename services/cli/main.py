"""The `sightline` command."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from importlib.metadata import EntryPoint, entry_points
from importlib.util import find_spec
from pathlib import Path

import click

from services.cli import admin, citus, retention
from services.cli.processes import StackError
from services.cli.stack import DATABASE_NAME, DATABASE_USER, LocalStack, granian_command, load_local_env
from services.common.log import granian_log_config
from services.common.settings import (
    SERVICES,
    AdminDatabaseSettings,
    DatabaseSettings,
    ServerSettings,
    ServiceName,
    StackSettings,
)

DEMO_DOMAINS = ["localhost", "127.0.0.1", "example.com"]


TOOL_COMMANDS = "sightline.commands"


class SightlineGroup(click.Group):
    """The built-in commands, plus those that tooling beside the services registers.

    The load test and the fault run (`tools/`) add `sightline load` and `sightline chaos` through
    the `sightline.commands` entry points, loaded only when named: the services never import the
    tooling, and an install without it (the production image) simply lacks those commands.
    """

    def _tool_entry_points(self) -> dict[str, EntryPoint]:
        return {entry.name: entry for entry in entry_points(group=TOOL_COMMANDS)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._tool_available()})

    def _tool_available(self) -> list[str]:
        return [name for name, entry in self._tool_entry_points().items() if find_spec(entry.module.split(".")[0])]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in self._tool_available():
            return command
        loaded = self._tool_entry_points()[cmd_name].load()
        return loaded if isinstance(loaded, click.Command) else None


@click.group(cls=SightlineGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Sightline: self-hosted web analytics and session replay."""
    load_local_env()


@cli.command()
@click.option(
    "--citus-workers",
    type=click.IntRange(min=0, max=16),
    default=0,
    help="Make Postgres a Citus coordinator with this many worker clusters (docs/scaling.md).",
)
def up(citus_workers: int) -> None:
    """Start Postgres, PgBouncer and the three services; return when all are ready."""
    try:
        stack = LocalStack(StackSettings.from_env(), citus_workers=citus_workers)
        env_values = stack.up()
        os.environ.update(env_values)
        project = stack.demo_project()
        if project is None:
            project = asyncio.run(
                admin.create_project(
                    AdminDatabaseSettings.from_env(), name="Demo", domains=DEMO_DOMAINS, timezone="UTC"
                )
            )
            stack.paths.demo_project.touch(mode=0o600)
            stack.paths.demo_project.write_text(json.dumps(project, indent=2) + "\n")
    except (StackError, admin.ProjectInputError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("Sightline is up:")
    for service in SERVICES:
        server = ServerSettings.from_env(service)
        click.echo(f"  {service:<7} http://{server.host}:{server.port}  (OpenAPI: /schema)")
    click.echo(f"  pgbouncer 127.0.0.1:{stack.settings.pgbouncer_port}")
    click.echo(f"  postgres  127.0.0.1:{stack.settings.postgres_port}  (admin commands and migrations only)")
    if stack.citus is not None:
        role = "Citus coordinator of " + ", ".join(f"127.0.0.1:{worker.port}" for worker in stack.citus.workers)
        click.echo(f"            {role}")
    click.echo(f"Demo project (keys also in {stack.paths.demo_project}):")
    click.echo(f"  publicKey {project['publicKey']}")
    click.echo(f"  secretKey {project['secretKey']}")
    query, replay = ServerSettings.from_env("query"), ServerSettings.from_env("replay")
    click.echo("Pages (paste the secretKey into their key form; it never goes into a URL):")
    click.echo(f"  dashboard http://{query.host}:{query.port}/dashboard")
    click.echo(f"  player    http://{replay.host}:{replay.port}/player")


@cli.command()
def down() -> None:
    """Stop everything `sightline up` started (by PID file)."""
    stopped = LocalStack(StackSettings.from_env()).down()
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@cli.command()
def status() -> None:
    """Show what runs, with PIDs and readiness."""
    rows = LocalStack(StackSettings.from_env()).status()
    for row in rows:
        state = "stopped" if row["pid"] is None else f"running pid {row['pid']}"
        if "ready" in row:
            state += ", ready" if row["ready"] else ", NOT ready"
        click.echo(f"{row['name']:<10} :{row['port']:<6} {state}")
    if any(row["pid"] is None or row.get("ready") is False for row in rows):
        sys.exit(3)


@cli.command()
@click.argument("service", type=click.Choice(SERVICES))
def serve(service: ServiceName) -> None:
    """Serve one service in the foreground under Granian (what containers run)."""
    server = ServerSettings.from_env(service)
    log_config = Path(tempfile.gettempdir()) / f"sightline-{service}-log-config.json"
    log_config.write_text(json.dumps(granian_log_config(service)))
    command = granian_command(service, server, log_config)
    os.execv(command[0], command)


@cli.command()
@click.option("--revision", default="head", show_default=True)
def migrate(revision: str) -> None:
    """Apply Alembic migrations (directly, not through PgBouncer) and create event partitions.

    With SIGHTLINE_CITUS_WORKERS=N (compose's citus profile), first waits until the Citus
    coordinator has N workers, so the tables are distributed over all of them.
    """
    citus_workers = int(os.environ.get("SIGHTLINE_CITUS_WORKERS", "0") or "0")
    if citus_workers > 0:
        try:
            asyncio.run(citus.wait_for_workers(AdminDatabaseSettings.from_env(), citus_workers))
        except StackError as exc:
            raise click.ClickException(str(exc)) from exc
    created = admin.migrate(AdminDatabaseSettings.from_env(), revision)
    click.echo(f"schema at {revision}; partitions created: {len(created)}")


@cli.command()
@click.option("--project-id", type=int, default=None, help="Only this project's days.")
def rollup(project_id: int | None) -> None:
    """Rebuild the query rollups of every changed day now (query workers also do it in the background)."""
    from services.query.tasks import rebuild_changed_days

    rebuilt = asyncio.run(rebuild_changed_days(DatabaseSettings.from_env("query"), project_id))
    click.echo(f"rollups: {rebuilt} days rebuilt")


@cli.group()
def project() -> None:
    """Create, list and configure projects."""


PROJECT_OPTION = click.option("--project", "project_id", type=int, required=True, help="The project's id.")


def _found(project_id: int, found: object) -> None:
    """Every project command's answer when the id names no project."""
    if not found:
        raise click.ClickException(f"no project with id {project_id}")


@project.command("create")
@click.option("--name", required=True)
@click.option("--domain", "domains", multiple=True, required=True, help="Allowed host; repeat for more.")
@click.option("--timezone", default="UTC", show_default=True, help="IANA zone for dashboards.")
@click.option("--retention-days", type=click.IntRange(min=1), default=None)
def project_create(name: str, domains: tuple[str, ...], timezone: str, retention_days: int | None) -> None:
    """Create a project; prints JSON {id, publicKey, secretKey, ...}. The secret key is shown only once."""
    try:
        created = asyncio.run(
            admin.create_project(
                AdminDatabaseSettings.from_env(),
                name=name,
                domains=list(domains),
                timezone=timezone,
                retention_days=retention_days,
            )
        )
    except admin.ProjectInputError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(created))


@project.command("list")
def project_list() -> None:
    """List projects as JSON (secret keys are never stored, so never shown)."""
    click.echo(json.dumps(asyncio.run(admin.list_projects(AdminDatabaseSettings.from_env())), indent=2))


@project.command("set-retention")
@PROJECT_OPTION
@click.option("--days", type=click.IntRange(min=1), required=True, help="Keep events and recordings this many days.")
def project_set_retention(project_id: int, days: int) -> None:
    """Set how many days a project's events and recordings are kept (applied by `retention apply`)."""
    _found(project_id, asyncio.run(retention.set_project_retention(AdminDatabaseSettings.from_env(), project_id, days)))
    click.echo(json.dumps({"id": project_id, "retentionDays": days}))


@project.command("set-timezone")
@PROJECT_OPTION
@click.option("--timezone", required=True, help="IANA zone for dashboards, e.g. America/New_York.")
def project_set_timezone(project_id: int, timezone: str) -> None:
    """Set the zone whose local days and hours dashboards count in. The project's rollups are
    dropped and rebuilt by the query service's refresher (until then queries read raw events)."""
    try:
        found = asyncio.run(admin.set_project_timezone(AdminDatabaseSettings.from_env(), project_id, timezone))
    except admin.ProjectInputError as exc:
        raise click.ClickException(str(exc)) from exc
    _found(project_id, found)
    click.echo(json.dumps({"id": project_id, "timezone": timezone}))


@project.command("rotate-keys")
@PROJECT_OPTION
@click.option(
    "--grace-hours",
    type=click.FloatRange(min=0),
    default=admin.DEFAULT_PUBLIC_KEY_GRACE_S / 3600,
    show_default=True,
    help="How long the old public key keeps working (trackers already on pages).",
)
def project_rotate_keys(project_id: int, grace_hours: float) -> None:
    """New public and secret keys; prints them once. The old secret key stops now (services cache
    keys for up to 30 s), the old public key after the grace period."""
    rotated = asyncio.run(admin.rotate_project_keys(AdminDatabaseSettings.from_env(), project_id, grace_hours * 3600))
    _found(project_id, rotated is not None)
    click.echo(json.dumps(rotated, indent=2))


@project.command("revoke")
@PROJECT_OPTION
def project_revoke(project_id: int) -> None:
    """Stop every key of the project (its data stays; `project delete` removes it)."""
    _found(project_id, asyncio.run(admin.revoke_project(AdminDatabaseSettings.from_env(), project_id)))
    click.echo(json.dumps({"id": project_id, "revoked": True}))


@project.command("delete")
@PROJECT_OPTION
@click.option("--yes", is_flag=True, help="Confirm: every event, recording and rollup of the project goes.")
def project_delete(project_id: int, yes: bool) -> None:
    """Delete the project and all its data (like an erasure of every person in it); prints rows per table."""
    if not yes:
        raise click.UsageError("deleting a project removes all its data; pass --yes to confirm")
    deleted = asyncio.run(admin.delete_project(AdminDatabaseSettings.from_env(), project_id))
    _found(project_id, deleted is not None)
    click.echo(json.dumps({"id": project_id, "deletedRows": deleted}, indent=2))


@cli.group("retention")
def retention_group() -> None:
    """Remove data that projects' retention no longer allows."""


@retention_group.command("apply")
@click.option(
    "--project",
    "project_ids",
    type=int,
    multiple=True,
    help="Delete rows of this project only (repeat for more); whole expired partitions are still dropped.",
)
@click.option(
    "--idempotency-days",
    type=click.IntRange(min=1),
    default=retention.IDEMPOTENCY_KEEP_DAYS,
    show_default=True,
    help="Keep ingest idempotency keys this many days.",
)
def retention_apply(project_ids: tuple[int, ...], idempotency_days: int) -> None:
    """Drop expired event partitions, delete expired events and recordings, prune idempotency keys; prints JSON."""
    report = asyncio.run(
        retention.apply_retention(
            AdminDatabaseSettings.from_env(),
            datetime.now(UTC),
            project_ids=set(project_ids) or None,
            idempotency_keep_days=idempotency_days,
        )
    )
    click.echo(json.dumps(report.as_json()))


@cli.group("citus")
def citus_group() -> None:
    """Scale out on Citus: shards per node, add a worker, rebalance, isolate a project (docs/scaling.md)."""


@citus_group.command("status")
def citus_status() -> None:
    """Shard placements and their size per node, as JSON."""
    try:
        nodes = asyncio.run(citus.shards_per_node(AdminDatabaseSettings.from_env()))
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps([{"node": f"{n.host}:{n.port}", "shards": n.shards, "bytes": n.bytes} for n in nodes]))


@citus_group.command("add-worker")
def citus_add_worker() -> None:
    """Start one more worker cluster for the local stack and join it (then run `sightline citus rebalance`)."""
    stack = LocalStack(StackSettings.from_env())
    if stack.citus is None:
        raise click.ClickException("this stack is not a Citus stack: start one with `sightline up --citus-workers N`")
    try:
        worker = stack.citus.add_worker(
            DATABASE_USER, stack.database_password(), DATABASE_NAME, logins=stack.service_logins()
        )
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"worker 127.0.0.1:{worker.port} joined; move shards onto it with `sightline citus rebalance`")


@citus_group.command("rebalance")
@click.option("--wait-s", type=click.FloatRange(min=0), default=600, show_default=True, help="How long to wait.")
def citus_rebalance(wait_s: float) -> None:
    """Move shards so every worker holds a fair share (citus_rebalance_start); prints the job's state."""
    try:
        state = asyncio.run(citus.rebalance(AdminDatabaseSettings.from_env(), wait_s=wait_s))
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"rebalance: {state}")
    if state not in {"finished", "nothing to move"}:
        sys.exit(3)


@citus_group.command("isolate")
@PROJECT_OPTION
def citus_isolate(project_id: int) -> None:
    """Give a big project shards of its own in every table (isolate_tenant_to_new_shard); prints JSON."""
    try:
        result = asyncio.run(citus.isolate_project(AdminDatabaseSettings.from_env(), project_id))
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(result))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
