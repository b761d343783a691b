"""The real server: hypercorn with hypercorn.toml in a subprocess, spoken to over HTTP."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from service.application import Switchboard
from service.config import Settings

from .accounts import PASSWORD
from .conftest import ROOT
from .servers import create_admin, free_port, stop_group


class Server:
    def __init__(self, process: subprocess.Popen[str], port: int, log: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def _serve(tmp_path: Path, database_url: str, workers: int, *args: str, **env: str) -> Iterator[Server]:
    port = free_port()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    log = tmp_path / "server.log"
    base = {
        k: v for k, v in os.environ.items() if k.upper() not in {n.upper() for n in Settings.model_fields}
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hypercorn",
            "--config",
            "hypercorn.toml",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{port}",
            *args,
            "service:create_app()",
        ],
        cwd=ROOT,
        env={
            **base,
            "DATABASE_URL": database_url,
            "APP_ENV": "development",
            "LOG_FORMAT": "json",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            **env,
        },
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        # Its own process group: the workers (and their relay and sweeper loops) go down with it, rather
        # than living on against the test database and Redis.
        start_new_session=True,
    )
    server = Server(process, port, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        stop_group(process)
        pytest.fail(f"server did not start:\n{server.output()}")
    try:
        yield server
    finally:
        stop_group(process)


@pytest.fixture
def server(tmp_path: Path, settings: Settings) -> Iterator[Server]:
    with _serve(tmp_path, settings.database_url, workers=1, REDIS_URL=settings.redis_url or "") as running:
        yield running


def test_serves_http_with_no_server_banner(server: Server) -> None:
    response = httpx.get(f"{server.url}/health", headers={"X-Request-ID": "over-the-wire-01"})
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"
    assert "server" not in response.headers
    assert response.headers["x-request-id"] == "over-the-wire-01"
    ready = httpx.get(f"{server.url}/readiness")
    assert ready.status_code == 200, ready.text
    missing = httpx.get(f"{server.url}/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"
    assert '"over-the-wire-01"' in server.output()  # the JSON access line carries the request id
    # Every logger, hypercorn's own included, can format its lines (it prints the process id).
    assert "Logging error" not in server.output()


def test_metrics_sum_over_two_workers(tmp_path: Path, settings: Settings) -> None:
    with _serve(tmp_path, settings.database_url, workers=2, REDIS_URL=settings.redis_url or "") as server:
        for _ in range(40):
            # A new connection each time, so both workers take requests from the shared socket.
            with httpx.Client() as client:
                assert client.get(f"{server.url}/health").status_code == 200
        text = httpx.get(f"{server.url}/metrics").text
        served = re.search(r'http_requests_total\{endpoint="/health",method="GET",status="200"\} (\d+)', text)
        assert served is not None, text[:2000]
        # The startup probes also hit /health, so at least our 40 are counted whichever worker answers.
        assert float(served.group(1)) >= 40
        files = {path.name.split("_")[0] for path in (tmp_path / "prometheus").iterdir()}
        assert "counter" in files


def _get_status(url: str, into: dict[str, int]) -> None:
    into["status"] = httpx.get(url, timeout=10).status_code


def _signal(server: Server, whom: str) -> None:
    """SIGTERM as `docker stop` sends it (the master only) or as systemd does (the whole group)."""
    if whom == "master":
        server.process.send_signal(signal.SIGTERM)
    else:
        os.killpg(server.process.pid, signal.SIGTERM)


@pytest.mark.parametrize("whom", ["master", "group"])
def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path, settings: Settings, whom: str) -> None:
    # A Redis that never answers makes /readiness take about a second: long enough to be in flight.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    redis_url = f"redis://127.0.0.1:{hole.getsockname()[1]}/0"
    try:
        with _serve(tmp_path, settings.database_url, workers=1, REDIS_URL=redis_url) as server:
            result: dict[str, int] = {}
            caller = threading.Thread(target=_get_status, args=(f"{server.url}/readiness", result))
            caller.start()
            time.sleep(0.3)
            _signal(server, whom)
            caller.join(10)
            assert result.get("status") == 200  # answered in full ("degraded": no Redis), not cut off
            assert server.process.wait(15) == 0
    finally:
        hole.close()


@pytest.mark.parametrize("whom", ["master", "group"])
def test_sigterm_ends_event_streams_at_once_with_a_retry_hint(
    tmp_path: Path, settings: Settings, app: Switchboard, whom: str
) -> None:
    """Draining starts with the shutdown: open streams end with a `retry:` hint (their clients reconnect
    elsewhere) instead of holding the server until its graceful timeout (60 s here) cuts them."""
    env = {"REDIS_URL": settings.redis_url or "", "SECRET_KEY": "server-test-secret-key-0123456789abcdef"}
    with _serve(tmp_path, settings.database_url, 1, "--graceful-timeout", "60", **env) as server:
        create_admin({**os.environ, "DATABASE_URL": settings.database_url, **env})
        login = httpx.post(f"{server.url}/auth/login", json={"username": "root", "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.json()['data']['access_token']}"}
        lines: list[str] = []
        timeout = httpx.Timeout(5.0, read=40.0)
        with httpx.stream("GET", f"{server.url}/api/v1/events", headers=headers, timeout=timeout) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.append(line)
                if line == "retry: 3000":
                    _signal(server, whom)
        assert server.process.wait(30) == 0
    hints = [int(line.removeprefix("retry: ")) for line in lines if line.startswith("retry: ")]
    assert hints[0] == 3000
    assert len(hints) == 2, lines  # the opening hint, and the parting one
    assert 500 <= hints[1] <= 3000
    assert '"reason": "sigterm"' in server.output() or '"reason": "server_shutdown"' in server.output()
