"""Structured logs: one access line per request, request ids bound, secrets never written."""

from __future__ import annotations

import json
import logging

import pytest

from service import create_app, log

from .conftest import make_settings


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
