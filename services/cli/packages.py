"""The Debian packages the local stack needs beside PostgreSQL 15's server binaries."""

from __future__ import annotations

import shutil
from pathlib import Path

from services.cli.processes import StackError, run, running_as_root

# package -> what shows it is installed
REQUIRED_PACKAGES: dict[str, str] = {
    "pgbouncer": "pgbouncer",  # on PATH
    # HyperLogLog sketches for the query rollups' unique visitors.
    "postgresql-15-hll": "/usr/share/postgresql/15/extension/hll.control",
}


def _installed(marker: str) -> bool:
    return Path(marker).exists() if marker.startswith("/") else shutil.which(marker) is not None


def missing_packages() -> list[str]:
    return [package for package, marker in REQUIRED_PACKAGES.items() if not _installed(marker)]


def ensure_packages_installed() -> None:
    """Installs missing packages from Debian's repositories when we may (as root)."""
    missing = missing_packages()
    if not missing:
        return
    if not running_as_root() or not shutil.which("apt-get"):
        raise StackError(f"missing Debian packages: apt-get install -y {' '.join(missing)}")
    print(f"Installing {', '.join(missing)} from Debian's packages ...", flush=True)
    environment = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    run(["apt-get", "update", "-qq"], env=environment)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=environment)
    still_missing = missing_packages()
    if still_missing:
        raise StackError(f"still missing after apt-get install: {', '.join(still_missing)}")
