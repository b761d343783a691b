"""What the tests that run real servers share: a free loopback port, the first admin made through the CLI,
and stopping a server together with the workers in its process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from .accounts import PASSWORD
from .conftest import ROOT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def create_admin(env: dict[str, str]) -> None:
    """`quart --app service create-admin` for root (password PASSWORD), as an operator would run it."""
    made = subprocess.run(
        [
            *(sys.executable, "-m", "quart", "--app", "service", "create-admin"),
            *("--username", "root", "--email", "root@example.com", "--password", PASSWORD),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr


def stop_group(process: subprocess.Popen[Any]) -> None:
    """End a server and its workers (the group it was started in): gracefully, then for sure."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
    process.wait(10)
