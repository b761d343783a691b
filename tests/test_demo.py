"""`quart --app service demo`: pretend agents that beat, take work and finish it over HTTP, so the
board moves. In-process through an ASGI transport, and once for real against hypercorn."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart.testing import QuartClient
from redis import Redis

from service import create_app, db
from service.application import Switchboard
from service.config import Settings
from service.demo import client as demo_client
from service.demo import simulation
from service.services import accounts

from .accounts import PASSWORD, admin_headers
from .conftest import ROOT, AppMaker, empty_database, make_settings
from .test_server import _serve

# Fast enough that a run takes seconds; the app's sweeper is as quick (see `served`).
FAST = simulation.Pace(
    beat=0.05, work=0.05, report=0.3, first_quiet=0.2, quiet_every=0.3, quiet_check=0.1, quiet_linger=0.1
)
# A guard, not an expectation: every run ends on a condition long before this.
LONGEST = 60.0


@pytest.fixture
async def served(make_app: AppMaker) -> Switchboard:
    """An app whose sweeper marks a silent agent offline within seconds, without rate limits (the
    fast demo beats far more often than any agent should)."""
    return await make_app(agent_heartbeat_timeout=2, sweep_interval=0.2, rate_limits_enabled=False)


async def _run(
    app: Switchboard,
    until: Callable[[simulation.Tally], bool],
    agents: int = 4,
    username: str = "ops",
    password: str = PASSWORD,
) -> tuple[simulation.Tally, list[str]]:
    """The demo against the app in this process, until `until` holds."""
    lines: list[str] = []
    tally = await simulation.run(
        simulation.Options(url="http://switchboard.test", agents=agents, duration=LONGEST, seed=7, pace=FAST),
        demo_client.Login(username, password),
        lines.append,
        transport=httpx.ASGITransport(app),
        until=until,
    )
    return tally, lines


async def _demo_agents(client: QuartClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = await client.get(
        "/api/v1/agents", query_string={"q": "demo-", "per_page": 100}, headers=headers
    )
    assert response.status_code == 200
    agents: list[dict[str, Any]] = (await response.get_json())["data"]
    return agents


async def _count(client: QuartClient, headers: dict[str, str], status: str) -> int:
    response = await client.get("/api/v1/assignments", query_string={"status": status}, headers=headers)
    total: int = (await response.get_json())["pagination"]["total_items"]
    return total


async def test_agents_beat_take_work_finish_it_and_come_back_from_offline(served: Switchboard) -> None:
    client = served.test_client()
    operator = await admin_headers(served, client, "ops")
    tally, lines = await _run(served, lambda t: t.completed >= 3 and t.failed >= 1 and t.offline >= 1)
    assert tally.completed >= 3, (tally, lines)
    assert tally.failed >= 1, (tally, lines)
    assert tally.offline >= 1, (tally, lines)

    agents = await _demo_agents(client, operator)
    assert sorted(agent["name"] for agent in agents) == ["demo-01", "demo-02", "demo-03", "demo-04"]
    assert all(agent["last_heartbeat_at"] is not None for agent in agents)
    assert len({tuple(agent["capabilities"]) for agent in agents}) == 4
    assert await _count(client, operator, "completed") >= 3
    assert await _count(client, operator, "failed") >= 1
    # `offline` counts what the server's sweeper decided (the agent's status read back), not a guess.
    assert any("goes quiet" in line for line in lines)
    assert any("is offline" in line for line in lines)
    assert any("is back" in line for line in lines)
    assert any("board: agents" in line for line in lines)


async def test_a_second_run_reuses_the_agents_and_adds_only_the_missing(served: Switchboard) -> None:
    client = served.test_client()
    operator = await admin_headers(served, client, "ops")
    await _run(served, lambda t: t.beats >= 4, agents=3)
    first = {agent["name"]: agent["id"] for agent in await _demo_agents(client, operator)}

    _, lines = await _run(served, lambda t: t.beats >= 8, agents=4)
    second = {agent["name"]: agent["id"] for agent in await _demo_agents(client, operator)}
    assert len(first) == 3
    assert len(second) == 4
    assert {name: second[name] for name in first} == first
    assert any("4 agents ready (1 new, 3 reused" in line for line in lines)


async def test_waits_out_a_rate_limit_as_retry_after_asks(make_app: AppMaker) -> None:
    app = await make_app(rate_limit_login="1/second", agent_heartbeat_timeout=2, sweep_interval=0.2)
    client = app.test_client()
    await admin_headers(app, client, "ops")  # spends this second's one login for "ops"
    _, lines = await _run(app, lambda t: t.beats >= 1, agents=1)
    assert any("rate limited (429 on /auth/login)" in line for line in lines)


async def test_a_wrong_password_or_a_viewer_stops_with_a_message(served: Switchboard) -> None:
    client = served.test_client()
    await admin_headers(served, client, "ops")
    with pytest.raises(demo_client.DemoError, match="cannot log in as 'ops'"):
        await _run(served, lambda t: True, password="Not-The-Password-1")

    await client.post(
        "/auth/register", json={"username": "val", "email": "val@example.com", "password": PASSWORD}
    )
    with pytest.raises(demo_client.DemoError, match="the demo needs an operator or admin"):
        await _run(served, lambda t: True, username="val")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _user_exists(settings: Settings, username: str) -> bool:
    async def find() -> bool:
        database = db.open_database(settings)
        try:
            async with database.sessionmaker() as session:
                return await accounts.find_user(session, username) is not None
        finally:
            await database.close()

    return asyncio.run(find())


def test_no_server_is_one_line_and_exit_code_1(settings: Settings) -> None:
    runner = create_app(settings).test_cli_runner()
    result = runner.invoke(args=["demo", "--url", f"http://127.0.0.1:{_closed_port()}", "--duration", "1"])
    assert result.exit_code == 1
    assert "no Switchboard answers at http://127.0.0.1:" in result.output
    assert "make run" in result.output
    assert "Traceback" not in result.output
    assert not _user_exists(settings, simulation.USERNAME)  # nothing is set up for a server that is not there


def test_production_gets_no_account_with_a_public_password(database_url: str) -> None:
    settings = make_settings(database_url, app_env="production", secret_key="k" * 48)
    result = create_app(settings).test_cli_runner().invoke(args=["demo", "--duration", "1"])
    assert result.exit_code == 1
    assert "pass --username" in result.output
    assert not _user_exists(settings, simulation.USERNAME)


# -- for real: hypercorn in its own process group, the command in another ----------------------------


def _cleanup(settings: Settings) -> None:
    async def empty() -> None:
        database = db.open_database(settings)
        try:
            await empty_database(database.engine)
        finally:
            await database.close()

    asyncio.run(empty())
    if settings.redis_url:
        Redis.from_url(settings.redis_url).flushdb()


def _demo_command(server_url: str, settings: Settings, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env.update(DATABASE_URL=settings.database_url, APP_ENV="development", REDIS_URL=settings.redis_url or "")
    # Ctrl-C must reach it even when this test runs where SIGINT is ignored (a background job): a child
    # inherits "ignored", and Python then installs no KeyboardInterrupt at all.
    command = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "import quart.cli; quart.cli.main()"
    )
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-c", command, "--app", "service", "demo", "--url", server_url, *extra],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def _agents_over_http(url: str) -> list[dict[str, Any]]:
    credentials = {"username": simulation.USERNAME, "password": simulation.PASSWORD}
    token = httpx.post(f"{url}/auth/login", json=credentials).json()["data"]["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    found = httpx.get(f"{url}/api/v1/agents", params={"q": "demo-"}, headers=headers).json()["data"]
    return list(found)


def test_the_command_against_a_real_server_until_ctrl_c(tmp_path: Path, settings: Settings) -> None:
    env = {"REDIS_URL": settings.redis_url or ""}
    try:
        with _serve(tmp_path, settings.database_url, workers=1, **env) as server:
            log = tmp_path / "demo.log"
            running = _demo_command(server.url, settings, log, "--agents", "3", "--seed", "1")
            try:
                deadline = time.monotonic() + LONGEST
                while time.monotonic() < deadline and running.poll() is None:
                    if "agents ready" in log.read_text():
                        beating = [a for a in _agents_over_http(server.url) if a["last_heartbeat_at"]]
                        if len(beating) == 3:
                            break
                    time.sleep(0.3)
                first = {agent["name"]: agent["id"] for agent in _agents_over_http(server.url)}
                assert len(first) == 3, log.read_text()
                running.send_signal(signal.SIGINT)
                assert running.wait(30) == 0, log.read_text()
            finally:
                if running.poll() is None:
                    running.kill()
            output = log.read_text()
            assert "Created admin 'demo'." in output
            assert f"Dashboard: {server.url}/ (sign in as 'demo', password '{simulation.PASSWORD}')" in output
            assert "Demo over after" in output.splitlines()[-1]
            assert "Traceback" not in output
            assert "HTTP Request" not in output  # httpx's own log lines would flood the terminal

            again = tmp_path / "again.log"
            assert (
                _demo_command(server.url, settings, again, "--agents", "3", "--duration", "2").wait(60) == 0
            )
            assert "Using the demo account 'demo'." in again.read_text()
            assert "3 agents ready (0 new, 3 reused" in again.read_text()
            assert {agent["name"]: agent["id"] for agent in _agents_over_http(server.url)} == first
    finally:
        _cleanup(settings)
