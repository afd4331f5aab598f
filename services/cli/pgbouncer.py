"""A local PgBouncer in front of the local cluster, configured from infra/pgbouncer/."""

from __future__ import annotations

import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from string import Template

from services.cli.processes import (
    StackError,
    as_service_account,
    make_server_dirs,
    port_is_free,
    read_pid,
    run,
    stop_pid,
    with_open_files_raised,
)

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "infra" / "pgbouncer"


@dataclass
class LocalPgBouncer:
    conf_dir: Path  # pgbouncer.ini and userlist.txt, readable only by the service account
    run_dir: Path  # pid file and unix socket
    log_file: Path
    listen_port: int
    postgres_port: int
    user: str
    password: str
    database: str = "sightline"
    pool_size: int = 30
    max_client_conn: int = 10_000
    binary: str = "pgbouncer"

    @property
    def config_file(self) -> Path:
        return self.conf_dir / "pgbouncer.ini"

    def pid(self) -> int | None:
        return read_pid(self.run_dir / "pgbouncer.pid")

    def render(self) -> None:
        make_server_dirs(self.conf_dir, self.run_dir, self.log_file)
        values = {
            "database": self.database,
            "postgres_host": "127.0.0.1",
            "postgres_port": str(self.postgres_port),
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.listen_port),
            "run_dir": str(self.run_dir),
            "log_file": str(self.log_file),
            "auth_file": str(self.conf_dir / "userlist.txt"),
            "user": self.user,
            "password": self.password.replace('"', '""'),
            "pool_size": str(self.pool_size),
            "max_client_conn": str(self.max_client_conn),
            "max_db_connections": str(self.pool_size + 5),
        }
        for name in ("pgbouncer.ini", "userlist.txt"):
            template = Template((TEMPLATE_DIR / f"{name}.template").read_text())
            # Written through the service account so the files are its own, mode 600.
            run(
                as_service_account(["sh", "-c", f"umask 077 && cat > '{self.conf_dir / name}'"]),
                input_text=template.substitute(values),
            )

    def start(self) -> None:
        if self.pid() is not None:
            return
        binary = shutil.which(self.binary)
        if binary is None:
            raise StackError(f"'{self.binary}' not found: apt-get install -y pgbouncer")
        self.render()
        run(as_service_account(with_open_files_raised([binary, "-d", str(self.config_file)])))
        self.wait_listening()

    def wait_listening(self, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while port_is_free(self.listen_port):
            if time.monotonic() > deadline:
                raise StackError(f"PgBouncer did not listen on port {self.listen_port}; see {self.log_file}")
            time.sleep(0.1)

    def stop(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        # SIGTERM: close every connection now; a SIGINT would wait for clients to leave.
        stop_pid(pid, sig=signal.SIGTERM, timeout_s=10)
        return True
