"""Running one service in the background for a test or a benchmark, and waiting until it is ready."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.cli.processes import StackError, free_port
from services.common.settings import ServiceName

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RunningService:
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def running_service(
    service: ServiceName, env: Mapping[str, str], log_path: Path, ready_timeout_s: float = 30.0
) -> Iterator[RunningService]:
    """`sightline serve <service>` on a free port with env, ready; stopped (SIGTERM) after."""
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "serve", service],
            env={**env, f"SIGHTLINE_{service.upper()}_PORT": str(port)},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(process, url, log_path, ready_timeout_s)
            yield RunningService(url, process)
        finally:
            # SIGTERM: Granian lets in-flight requests finish and runs the lifespan's shutdown.
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None:
            raise StackError(f"the service exited during start:\n{log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise StackError(f"the service was not ready within {timeout_s:.0f}s; see {log_path}")
        time.sleep(0.2)
