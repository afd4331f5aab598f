"""The `sightline` command: projects, and the local stack's up / status / down."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli.main import cli
from services.cli.processes import free_port
from services.common.keys import hash_secret_key
from tests.harness import DatabaseHarness


@pytest.fixture
def admin_env(db: DatabaseHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHTLINE_ADMIN_DATABASE_URL", db.admin.url)
    monkeypatch.setenv("SIGHTLINE_DATA_DIR", str(db.root / "no-local-stack"))


async def test_project_create_prints_keys_and_stores_only_the_hash(admin_env: None, admin_engine: AsyncEngine) -> None:
    # The command runs its own event loop, so it runs in a thread of its own here.
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        [
            "project",
            "create",
            "--name",
            "Shop",
            "--domain",
            "WWW.Shop.Example",
            "--domain",
            "shop.example",
            "--timezone",
            "America/New_York",
        ],
    )
    assert result.exit_code == 0, result.output
    created = json.loads(result.output)
    assert set(created) >= {"id", "publicKey", "secretKey"}
    assert created["publicKey"].startswith("pk_")
    assert created["secretKey"].startswith("sk_")
    async with admin_engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT name, allowed_domains, timezone, secret_key_hash FROM projects WHERE project_id = :id"),
                {"id": created["id"]},
            )
        ).one()
    assert row.name == "Shop"
    assert row.allowed_domains == ["shop.example"]  # lower-cased, www. stripped, deduplicated
    assert row.timezone == "America/New_York"
    assert row.secret_key_hash == hash_secret_key(created["secretKey"])
    assert created["secretKey"] not in row.secret_key_hash

    listed = await asyncio.to_thread(CliRunner().invoke, cli, ["project", "list"])
    assert listed.exit_code == 0
    assert any(p["id"] == created["id"] and "secretKey" not in p for p in json.loads(listed.output))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--timezone", "Mars/Olympus"], "unknown timezone 'Mars/Olympus'"),
        (["--domain", "https://example.com/"], "must be a host name"),
    ],
)
def test_project_create_refuses_bad_input(admin_env: None, arguments: list[str], message: str) -> None:
    base = ["project", "create", "--name", "Bad"]
    if "--domain" not in arguments:
        base += ["--domain", "example.com"]
    result = CliRunner().invoke(cli, base + arguments)
    assert result.exit_code == 1
    assert message in result.output


@pytest.fixture
def stack_env() -> Iterator[dict[str, str]]:
    """A separate data directory and free ports, so this stack never meets a developer's."""
    root = Path(tempfile.mkdtemp(prefix="sightline-stack-", dir="/tmp"))
    root.chmod(0o755)
    env = {
        **os.environ,
        "SIGHTLINE_DATA_DIR": str(root / "data"),
        "SIGHTLINE_POSTGRES_PORT": str(free_port()),
        "SIGHTLINE_PGBOUNCER_PORT": str(free_port()),
        "SIGHTLINE_INGEST_PORT": str(free_port()),
        "SIGHTLINE_QUERY_PORT": str(free_port()),
        "SIGHTLINE_REPLAY_PORT": str(free_port()),
        # A small cluster: this test checks process handling, not performance.
        "SIGHTLINE_PGBOUNCER_MAX_CLIENT_CONN": "500",
    }
    for name in ("SIGHTLINE_DATABASE_URL", "SIGHTLINE_ADMIN_DATABASE_URL"):
        env.pop(name, None)
    yield env
    subprocess.run([sys.executable, "-m", "services.cli.main", "down"], env=env, capture_output=True, check=False)
    subprocess.run(["rm", "-rf", str(root)], check=False)


def _sightline(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _own_pids(data_dir: Path) -> set[int]:
    """Processes whose command line mentions the data directory or its ports."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(data_dir) in cmdline:
                pids.add(int(proc.name))
    return pids


def _environment(pid: int) -> dict[str, str]:
    entries = (Path("/proc") / str(pid) / "environ").read_bytes().decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


@pytest.mark.slow
def test_up_is_idempotent_and_down_leaves_nothing_behind(stack_env: dict[str, str]) -> None:
    data_dir = Path(stack_env["SIGHTLINE_DATA_DIR"])
    first = _sightline(stack_env, "up")
    assert first.returncode == 0, first.stderr
    assert "publicKey pk_" in first.stdout
    assert "secretKey sk_" in first.stdout
    keys = json.loads((data_dir / "demo-project.json").read_text())
    assert keys["secretKey"] in first.stdout

    second = _sightline(stack_env, "up")
    assert second.returncode == 0, second.stderr
    assert keys["publicKey"] in second.stdout  # the same demo project, not a new one

    status = _sightline(stack_env, "status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("ready") == 3
    # Every service logs in as the services' role; only ingest holds the owner's credentials
    # (partition upkeep, services/ingest/tasks.py).
    for service in ("ingest", "query", "replay"):
        environ = _environment(int((data_dir / "run" / f"{service}.pid").read_text()))
        assert environ["SIGHTLINE_DATABASE_URL"].startswith("postgresql+asyncpg://sightline_service:"), service
        owner_variables = {"SIGHTLINE_ADMIN_DATABASE_URL", "SIGHTLINE_DATABASE_PASSWORD"}
        assert owner_variables & set(environ) == (owner_variables if service == "ingest" else set()), service

    down = _sightline(stack_env, "down")
    assert down.returncode == 0
    assert "ingest, query, replay, pgbouncer, postgres" in down.stdout
    assert _own_pids(data_dir) == set()
    assert _sightline(stack_env, "status").returncode == 3


@pytest.mark.slow
def test_up_names_a_taken_port_and_starts_nothing(stack_env: dict[str, str]) -> None:
    data_dir = Path(stack_env["SIGHTLINE_DATA_DIR"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(stack_env["SIGHTLINE_QUERY_PORT"])))
        squatter.listen()
        result = _sightline(stack_env, "up")
    assert result.returncode == 1
    assert f"port {stack_env['SIGHTLINE_QUERY_PORT']} (query) is already in use" in result.stderr
    assert _own_pids(data_dir) == set()
