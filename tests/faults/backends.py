"""Throwaway PostgreSQL and Redis servers on free loopback ports, for tests that break them on purpose.

Never the machine's shared servers: these live in a temporary directory, listen on ports of their own, and
are killed (with everything they started) when the tests end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..servers import free_port


class Unavailable(Exception):
    """The binaries to start the server are not installed here."""


def _postgres_bin() -> Path:
    # The newest installed major version (Debian: /usr/lib/postgresql/15/bin; Ubuntu runners: 16).
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise Unavailable("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


def _as_postgres(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: drop to the postgres account when we are root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class ThrowawayPostgres:
    """An initdb'd cluster of our own (trust auth, fsync off: speed over surviving a power cut, which the
    tests do not simulate; synchronous_commit stays on, so a killed server keeps what it acknowledged)."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="switchboard-pg-"))
        self.data = self.dir / "data"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")

    def url(self, port: int | None = None) -> str:
        return f"postgresql://postgres@127.0.0.1:{port or self.port}/postgres"

    def init(self) -> None:
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N"])

    def start(self) -> None:
        options = " ".join(
            (
                f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1",
                "-c fsync=off -c full_page_writes=off -c max_connections=200",
            )
        )
        self._ctl("-o", options, "-l", str(self.dir / "log"), "-w", "-t", "30", "start")

    def kill(self) -> None:
        """A crash: every backend goes at once, nothing is shut down cleanly."""
        self._ctl("-m", "immediate", "-w", "-t", "30", "stop")

    def running(self) -> bool:
        status = subprocess.run(
            _as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "status"]),
            capture_output=True,
            timeout=30,
            check=False,
        )
        return status.returncode == 0

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if (self.data / "postmaster.pid").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.postmaster_pid(), signal.SIGCONT)  # a frozen one cannot stop
                self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _ctl(self, *args: str) -> None:
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), *args])

    def _run(self, command: list[str]) -> None:
        done = subprocess.run(_as_postgres(command), capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            log = self.dir / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{command[0]} failed: {done.stdout}{done.stderr}{tail}")


class ThrowawayRedis:
    """A redis-server of our own with nothing saved: killing it loses everything, as a crash would."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise Unavailable("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="switchboard-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, port: int | None = None, db: int = 0) -> str:
        return f"redis://127.0.0.1:{port or self.port}/{db}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)),
                *("--save", "", "--appendonly", "no", "--daemonize", "no", "--maxclients", "1000"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if pings(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError("the throwaway redis-server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a frozen process takes SIGKILL either way
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def pings(port: int) -> bool:
    """Whether a Redis on `port` answers PING within a second."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
