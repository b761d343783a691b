"""The service as production runs it: hypercorn with hypercorn.toml (two workers) in a process group of its
own, configured like production (APP_ENV=production, JSON logs, multiprocess metrics)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ..conftest import ROOT
from ..servers import create_admin, free_port, server_environment, stop_group

SECRET_KEY = "fault-tests-secret-key-not-for-production-0123456789"


def environment(database_url: str, redis_url: str, **overrides: str) -> dict[str, str]:
    """The process environment of the service under fault: production settings."""
    return server_environment(database_url, redis_url, SECRET_KEY, **overrides)


class Switchboard:
    """One instance: `start()`, `stop()` (SIGTERM to the group, then SIGKILL), and its workers' pids."""

    def __init__(self, workdir: Path, env: dict[str, str], workers: int = 2) -> None:
        self.workdir = workdir
        self.env = env
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "switchboard.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        metrics_dir = self.workdir / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)  # wiped at each start, as multiprocess mode needs
        metrics_dir.mkdir(parents=True)
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "hypercorn", "--config", "hypercorn.toml"),
                    *("--workers", str(self.workers), "--bind", f"127.0.0.1:{self.port}"),
                    "service:create_app()",
                ],
                cwd=ROOT,
                env={**self.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
                stdout=sink,
                stderr=subprocess.STDOUT,
                # Its own process group: the workers (and their relay loops) go down with it.
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                healthy = httpx.get(f"{self.url}/health", timeout=2).status_code == 200
                # Both workers import the app; wait until each has a pid, so faults hit a full set.
                if healthy and len(self.worker_pids()) >= self.workers:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the service did not start:\n{self.output()[-4000:]}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None

    def signal_master(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill_worker(self) -> int:
        """SIGKILL one worker (what the OOM killer does); returns its pid."""
        pid = self.worker_pids()[0]
        os.kill(pid, signal.SIGKILL)
        return pid

    def worker_pids(self) -> list[int]:
        """The hypercorn workers: the master's children started by multiprocessing's spawn."""
        if self.process is None:
            return []
        return [pid for pid in _children(self.process.pid) if b"spawn_main" in _cmdline(pid)]

    def pids(self) -> list[int]:
        """The master and every worker."""
        return [] if self.process is None else [self.process.pid, *self.worker_pids()]

    def create_admin(self) -> None:
        create_admin(self.env)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
