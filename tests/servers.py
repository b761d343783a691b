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

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from service.config import Settings

from .accounts import PASSWORD
from .conftest import ROOT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_environment(
    database_url: str, redis_url: str, secret_key: str, **overrides: str
) -> dict[str, str]:
    """A served app's process environment: ours, with every setting the service reads replaced (so the
    developer's own DATABASE_URL or .env values never leak into a test server)."""
    names = {name.upper() for name in Settings.model_fields} | {"PROMETHEUS_MULTIPROC_DIR"}
    base = {k: v for k, v in os.environ.items() if k.upper() not in names}
    return {
        **base,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": secret_key,
        "APP_ENV": "production",
        "LOG_FORMAT": "json",
        **overrides,
    }


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


async def ensure_database(database_url: str) -> None:
    """CREATE DATABASE the PostgreSQL database `database_url` names when it is missing (a script's own
    database on a fresh machine); the server's other databases are left alone."""
    url = make_url(database_url).set(drivername="postgresql")
    admin = await asyncpg.connect(url.set(database="postgres").render_as_string(hide_password=False))
    try:
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", url.database) is None:
            await admin.execute(f'CREATE DATABASE "{url.database}"')
    finally:
        await admin.close()
