"""Structured logs: one access line per request, request ids bound, secrets never written."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from service import create_app, log

from .accounts import PASSWORD, bearer, login, make_admin, register
from .conftest import empty_tables, make_settings


@pytest.fixture
def json_lines(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    def read() -> list[dict[str, object]]:
        err = capsys.readouterr().err
        return [json.loads(line) for line in err.splitlines() if line.startswith("{")]

    return read


async def test_one_json_access_line_per_request(database_url: str, json_lines) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_settings(database_url, log_format="json"))
    async with app.test_app():
        json_lines()
        await app.test_client().get("/health", headers={"X-Request-ID": "access-line-test-1"})
    lines = [line for line in json_lines() if line.get("event") == "request"]
    assert len(lines) == 1
    line = lines[0]
    assert line["method"] == "GET"
    assert line["path"] == "/health"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float)
    assert line["request_id"] == "access-line-test-1"
    assert line["level"] == "info"
    assert str(line["timestamp"]).endswith("Z")


def test_secrets_are_redacted_from_log_lines(json_lines) -> None:  # type: ignore[no-untyped-def]
    log.configure("INFO", "json")
    log.get("test").info(
        "login", password="hunter2", Authorization="Bearer abc.def", refresh_token="r-123", username="ann"
    )
    logging.getLogger("stdlib").warning("plain %s", "message")
    lines = json_lines()
    login = next(line for line in lines if line["event"] == "login")
    assert login["username"] == "ann"
    for key in ("password", "Authorization", "refresh_token"):
        assert login[key] == log.REDACTED
    raw = json.dumps(lines)
    assert "hunter2" not in raw
    assert "abc.def" not in raw
    assert any(line["event"] == "plain message" for line in lines)


def test_a_later_configuration_reaches_loggers_already_used(json_lines) -> None:  # type: ignore[no-untyped-def]
    """Loggers assemble their chain on first use and keep it (modules hold theirs for the process): the
    level and format of the newest configure() are still the ones every line gets, structlog's and the
    standard library's alike."""
    used = log.get("test.levels")
    log.configure("INFO", "console")
    used.info("first")
    log.configure("WARNING", "json")
    used.info("quiet")
    logging.getLogger("test.stdlib").info("quiet too")
    used.warning("loud", detail="x")
    logging.getLogger("test.stdlib").warning("loud too")
    lines = json_lines()
    assert [line["event"] for line in lines] == ["loud", "loud too"]
    assert lines[0]["level"] == lines[1]["level"] == "warning"
    assert lines[0]["logger"] == "test.levels"
    assert lines[1]["logger"] == "test.stdlib"
    assert set(lines[0]) - {"detail"} == set(lines[1])
    log.configure("INFO", "json")
    used.info("heard")
    assert [line["event"] for line in json_lines()] == ["heard"]


async def test_no_secret_reaches_the_log_in_a_whole_account_story(database_url: str, json_lines) -> None:  # type: ignore[no-untyped-def]
    """Register, fail a login, log in, refresh, use tokens, change the password, log out: the log holds
    no password, token, Authorization header or password hash."""
    app = create_app(make_settings(database_url, log_format="json"))
    new_password = "Brand-New-Kettle-7"
    async with app.test_app():
        client = app.test_client()
        json_lines()
        user = await register(client, "logan")
        await client.post("/auth/login", json={"username": "logan", "password": "Wrong-Guess-99"})
        pair = await login(client, "logan")
        refreshed = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        renewed = (await refreshed.get_json())["data"]
        headers = bearer(renewed["access_token"])
        created = await client.post(
            "/auth/tokens", json={"name": "ci", "scopes": ["agents:read"]}, headers=headers
        )
        api_token = (await created.get_json())["data"]["token"]
        await client.get("/auth/me", headers=bearer(api_token))
        await client.get("/auth/me", headers=bearer(pair["access_token"] + "x"))  # a tampered token
        await client.patch(
            f"/api/v1/users/{user['id']}",
            json={"password": new_password, "current_password": PASSWORD},
            headers=headers,
        )
        await client.post("/auth/logout", headers=headers)
        await empty_tables(app)
    raw = json.dumps(json_lines())
    assert '"event": "request"' in raw  # the story was logged...
    secrets = [PASSWORD, "Wrong-Guess-99", new_password, api_token, "Bearer ", "$argon2"]
    secrets += [
        pair["access_token"],
        pair["refresh_token"],
        renewed["access_token"],
        renewed["refresh_token"],
    ]
    secrets += [token.rsplit(".", 1)[-1] for token in (pair["access_token"], renewed["access_token"])]
    for secret in secrets:
        assert secret not in raw, secret  # ...and none of its secrets


async def test_no_secret_reaches_the_log_from_agents_tokens_and_mail(database_url: str, json_lines) -> None:  # type: ignore[no-untyped-def]
    """As production logs: an admin's failed and good logins, a refresh, a personal token, a registration
    token, an agent registering with it and beating with its own token, a rotated agent token and a
    password reset link mailed and used. No password, token, link token or Authorization header."""
    app = create_app(
        make_settings(database_url, log_format="json", app_env="production", secret_key="k" * 64)
    )
    async with app.test_app():
        client = app.test_client()
        json_lines()
        await make_admin(app)
        await client.post("/auth/login", json={"username": "root", "password": "Wrong-Guess-99"})
        pair = await login(client, "root")
        renewed = (
            await (
                await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
            ).get_json()
        )["data"]
        admin = bearer(renewed["access_token"])
        made = await client.post(
            "/auth/tokens", json={"name": "ci", "scopes": ["agents:read"]}, headers=admin
        )
        personal = (await made.get_json())["data"]["token"]
        await client.get("/api/v1/agents", headers=bearer(personal))
        issued = await client.post("/api/v1/agents/registration-tokens", json={"name": "ci"}, headers=admin)
        registration = (await issued.get_json())["data"]["token"]
        joined = await client.post("/api/v1/agents/register", json={"token": registration, "name": "runner"})
        agent = (await joined.get_json())["data"]
        await client.post(
            f"/api/v1/agents/{agent['id']}/heartbeat",
            json={"status": "online"},
            headers=bearer(agent["agent_token"]),
        )
        rotated = await client.post(f"/api/v1/agents/{agent['id']}/token", headers=admin)
        new_agent_token = (await rotated.get_json())["data"]["agent_token"]
        mailer = app.extensions["mailer"]
        sent: list[str] = []
        real_send = mailer.send

        async def keep(message):  # type: ignore[no-untyped-def]
            sent.append(message.body)
            await real_send(message)

        mailer.send = keep
        await client.post("/auth/password/forgot", json={"email": "root@example.com"})
        await asyncio.sleep(0.1)  # the mail goes out after the answer
        reset_token = next(word for body in sent for word in body.split() if "sbm_" in word).rsplit("=", 1)[
            -1
        ]
        await client.post(
            "/auth/password/reset", json={"token": reset_token, "password": "Brand-New-Kettle-7"}
        )
        await empty_tables(app)
    raw = json.dumps(json_lines())
    assert '"event": "request"' in raw
    assert '"event": "mail"' in raw  # the link was mailed: to the log, body withheld
    secrets = [PASSWORD, "Wrong-Guess-99", "Brand-New-Kettle-7", "Bearer ", "$argon2", reset_token]
    secrets += [
        pair["access_token"],
        pair["refresh_token"],
        renewed["access_token"],
        renewed["refresh_token"],
    ]
    secrets += [personal, registration, agent["agent_token"], new_agent_token]
    for secret in secrets:
        assert secret not in raw, secret
