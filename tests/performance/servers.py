"""The servers a benchmark runs: the service (from this checkout or another), the bare-Quart ceiling and
the naive fan-out, each under hypercorn with the production hypercorn.toml on a free loopback port, and
the PostgreSQL database and Redis number they use."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx
from sqlalchemy.engine import make_url

from service.config import Settings

from ..servers import ensure_database, free_port

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ADMIN = "bench-admin"
PASSWORD = "Bench-Switchboard-2041"

# What the benchmarks change from the production defaults, and why (docs/benchmarks.md says the same).
BENCH_SETTINGS = {
    # One client machine is every caller here: the default 300/minute per caller and route, and the
    # login limits, would answer most of the load with 429. The limits stay on (their Redis round trips
    # are part of every request) with rates no benchmark reaches.
    "RATE_LIMIT_DEFAULT": "100000000/minute",
    "RATE_LIMIT_LOGIN": "100000000/minute",
    "RATE_LIMIT_LOGIN_ACCOUNT": "100000000/hour",
    "RATE_LIMIT_REGISTER": "100000000/minute",
    # The SSE scale run holds 10,100 streams for a handful of users (the cap is at most 1000 a user).
    "SSE_STREAMS_PER_USER": "1000",
    # Seeded agents stay online between benchmarks: otherwise the sweeper turns thousands of them
    # offline (thousands of writes and events) in the middle of whichever benchmark runs next.
    "AGENT_HEARTBEAT_TIMEOUT": "86400",
    "AGENT_STALE_AFTER": str(365 * 86400),
}


@dataclass(frozen=True)
class Backends:
    """The benchmark's own PostgreSQL database and Redis database number."""

    database_url: str
    redis_url: str

    @classmethod
    def from_environment(cls) -> Backends:
        return cls(
            os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/bench"),
            os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"),
        )

    @property
    def asyncpg_dsn(self) -> str:
        return make_url(self.database_url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class App:
    """What hypercorn serves, and from which checkout."""

    label: str
    application: str
    checkout: Path = ROOT
    is_service: bool = True


def service(checkout: Path = ROOT, label: str = "switchboard") -> App:
    return App(label, "service:create_app()", checkout)


CEILING = App("ceiling", "tests/performance/ceiling.py:app", is_service=False)
NAIVE = App("naive", "tests/performance/naive_fanout.py:app", is_service=False)


async def create_database(backends: Backends) -> None:
    """CREATE DATABASE the benchmark's database when it is missing (the server's other ones untouched)."""
    await ensure_database(backends.asyncpg_dsn)


async def vacuum(backends: Backends) -> None:
    """VACUUM ANALYZE the benchmark's database. This machine's PostgreSQL runs with autovacuum off: the
    rows every run updates and deletes (hundreds of thousands a day) stay behind as dead tuples, and
    slowed each later run (assign: 72-81 a second after a day of runs, 140-196 again after one VACUUM)."""
    connection = await asyncpg.connect(backends.asyncpg_dsn)
    try:
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()


def environment(app: App, backends: Backends, secret_key: str, prometheus_dir: Path) -> dict[str, str]:
    names = {name.upper() for name in Settings.model_fields} | {"PROMETHEUS_MULTIPROC_DIR", "PYTHONPATH"}
    base = {k: v for k, v in os.environ.items() if k.upper() not in names}
    return {
        **base,
        **BENCH_SETTINGS,
        "APP_ENV": "production",
        "SECRET_KEY": secret_key,
        "DATABASE_URL": backends.database_url,
        "REDIS_URL": backends.redis_url,
        "PROMETHEUS_MULTIPROC_DIR": str(prometheus_dir),
        # The other checkout's `service` package, not the one installed (editable) from this one.
        "PYTHONPATH": str(app.checkout),
    }


def migrate(app: App, backends: Backends) -> None:
    """`alembic upgrade head` of the app's checkout into the benchmark database."""
    env = environment(app, backends, secrets.token_urlsafe(48), Path(tempfile.gettempdir()))
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=app.checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"alembic upgrade head failed in {app.checkout}:\n{done.stderr[-3000:]}")


def ensure_admin(backends: Backends) -> None:
    """The benchmarks' operator, made (or promoted) through the CLI as an operator would."""
    env = environment(service(), backends, secrets.token_urlsafe(48), Path(tempfile.gettempdir()))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "quart",
            "--app",
            "service",
            "create-admin",
            "--username",
            ADMIN,
            "--email",
            "bench-admin@example.com",
            "--password",
            PASSWORD,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"create-admin failed:\n{done.stderr[-3000:]}")


@dataclass
class Server:
    app: App
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    workers: int
    secret_key: str
    _workdir: Path = field(repr=False, default=Path())

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """hypercorn's worker processes (the master's children)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        found = [int(pid) for pid in children.read_text().split()]
        # multiprocessing's resource tracker is a child too, and no worker.
        return [pid for pid in found if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]

    def worker_rss(self) -> int:
        """Resident memory of the workers, in bytes."""
        total = 0
        for pid in self.worker_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU the workers have used so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.worker_pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        return total


def _wait_ready(server: Server, path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        with contextlib.suppress(httpx.HTTPError):
            answered = httpx.get(f"{server.url}{path}", timeout=3).status_code == 200
            # Both workers listen on one socket: give the second a moment to finish its start too.
            if answered and len(server.worker_pids()) >= server.workers:
                time.sleep(1.0)
                return
        time.sleep(0.2)
    raise RuntimeError(f"{server.app.label} did not become ready:\n{server.output()[-4000:]}")


@contextlib.contextmanager
def running(
    app: App, backends: Backends, *, workers: int = 2, extra_env: dict[str, str] | None = None
) -> Iterator[Server]:
    """hypercorn --config hypercorn.toml serving `app` with `workers` workers, until the block ends."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{app.label}-"))
    prometheus = workdir / "prometheus"
    prometheus.mkdir()  # fresh, so no earlier run's counters are summed in
    secret_key = secrets.token_urlsafe(48)
    env = {**environment(app, backends, secret_key, prometheus), **(extra_env or {})}
    port = free_port()
    log = workdir / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hypercorn",
                "--config",
                str(ROOT / "hypercorn.toml"),
                "--workers",
                str(workers),
                "--bind",
                f"127.0.0.1:{port}",
                app.application,
            ],
            cwd=app.checkout if app.is_service else ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(app, process, f"http://127.0.0.1:{port}", log, workers, secret_key, workdir)
    try:
        _wait_ready(server, "/readiness" if app.is_service else "/health")
        yield server
    finally:
        _stop(process)
        _keep_log(app, log)
        shutil.rmtree(workdir, ignore_errors=True)


def _keep_log(app: App, log: Path) -> None:
    """With BENCH_LOGS=dir, the server's log is copied there before its workdir goes: what a server said
    during a round that went wrong is otherwise lost with it."""
    kept = os.environ.get("BENCH_LOGS")
    if not kept:
        return
    Path(kept).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, Path(kept) / f"{time.strftime('%H%M%S')}-{app.label}.log")


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
