"""Small process helpers shared by the local stack and the test harness."""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

# Postgres and PgBouncer refuse to run as root; when we are root they run as the
# account Debian's postgresql-common package creates.
SERVICE_ACCOUNT = "postgres"

# PgBouncer needs a descriptor per client and per server connection.
OPEN_FILES_LIMIT = 65_536


class StackError(RuntimeError):
    """Something the operator must fix; the message says what."""


def running_as_root() -> bool:
    return os.geteuid() == 0


def service_account_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError as exc:
        raise StackError(
            f"no '{SERVICE_ACCOUNT}' system user: install Debian's postgresql-common "
            "(it creates it), or run as a non-root user"
        ) from exc
    return entry.pw_uid, entry.pw_gid


def as_service_account(command: Sequence[str]) -> list[str]:
    if running_as_root():
        return ["runuser", "-u", SERVICE_ACCOUNT, "--", *command]
    return list(command)


def make_owned_dir(path: Path, mode: int = 0o700) -> None:
    """A directory the database processes own (they run as the service account)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if running_as_root():
        uid, gid = service_account_ids()
        os.chown(path, uid, gid)


def make_server_dirs(private_dir: Path, run_dir: Path, log_file: Path) -> None:
    """A server's own directory (only the service account may read it), its run directory and
    its log's directory."""
    make_owned_dir(private_dir)
    make_owned_dir(run_dir, 0o755)
    make_owned_dir(log_file.parent, 0o755)


def check_reachable_by_service_account(path: Path) -> None:
    if not running_as_root():
        return
    probe = subprocess.run(as_service_account(["test", "-x", str(path)]), check=False)
    if probe.returncode != 0:
        raise StackError(
            f"the '{SERVICE_ACCOUNT}' user cannot reach {path}: give its parent directories "
            "o+x, or set SIGHTLINE_DATA_DIR to a directory it can reach"
        )


def raise_open_files_limit() -> None:
    """Used as preexec_fn: the child's descriptor limit as high as it may go, before exec."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (max(OPEN_FILES_LIMIT, hard), hard):
        # Raising the hard limit needs CAP_SYS_RESOURCE, which a container may not grant.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return


def with_open_files_raised(command: Sequence[str]) -> list[str]:
    """Wraps command so it raises its own soft descriptor limit to the hard one first.

    runuser's PAM session resets the soft limit (1024 on Debian), below what PgBouncer
    needs for thousands of clients.
    """
    return ["sh", "-c", 'ulimit -n "$(ulimit -Hn)" && exec "$0" "$@"', *command]


def run(
    command: Sequence[str],
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(command),
        check=False,
        capture_output=True,
        text=True,
        env=env,
        input=input_text,
        preexec_fn=raise_open_files_limit,
    )
    if check and result.returncode != 0:
        raise StackError(
            f"{' '.join(command)} failed with exit code {result.returncode}:\n"
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def read_pid(pid_file: Path) -> int | None:
    """The PID in pid_file if that process is alive, else None."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


def stop_pid(pid: int, *, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30.0) -> bool:
    """Signal pid and wait for it to exit; SIGKILL after timeout_s. True if it was running."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    # Reap it if it is our child, so it does not linger as a zombie.
    with contextlib.suppress(ChildProcessError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
