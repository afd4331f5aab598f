"""compose.yaml is accepted by docker-compose and names only files that exist."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.cli.postgres import DEFAULT_SERVER_SETTINGS, PRIVACY_SERVER_SETTINGS

ROOT = Path(__file__).resolve().parents[2]


def test_docker_compose_accepts_the_file() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing; .ci/run installs Debian's docker-compose package")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    result = subprocess.run([binary, "config", "-q"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_every_build_context_and_dockerfile_exists() -> None:
    compose = (ROOT / "compose.yaml").read_text()
    contexts = [line.split("build:", 1)[1].strip() for line in compose.splitlines() if "build:" in line]
    assert contexts
    for context in contexts:
        assert (ROOT / context / "Dockerfile").is_file(), context
    for copied in ("pgbouncer.ini.template", "userlist.txt.template", "entrypoint.sh"):
        assert (ROOT / "infra" / "pgbouncer" / copied).is_file()
    assert (ROOT / "infra" / "postgres" / "service-role.sh").is_file()


def test_every_postgres_in_compose_runs_with_the_local_stacks_privacy_and_wal_settings() -> None:
    """What `make up` sets for a reason (services/cli/postgres.py) holds in compose.yaml too."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    servers = {
        name: service["command"]
        for name, service in compose["services"].items()
        if isinstance(service.get("command"), list) and service["command"][:1] == ["postgres"]
    }
    assert {"postgres", "citus-coordinator"} <= servers.keys()
    required = {**PRIVACY_SERVER_SETTINGS, "wal_compression": DEFAULT_SERVER_SETTINGS["wal_compression"]}
    for name, command in servers.items():
        settings = dict(
            value.split("=", 1) for flag, value in zip(command[1::2], command[2::2], strict=True) if flag == "-c"
        )
        missing = {key: value for key, value in required.items() if settings.get(key) != value}
        assert not missing, f"{name}: {missing}"
