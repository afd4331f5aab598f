"""compose.yaml is accepted by docker-compose and names only files that exist."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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
