"""Every error the service can produce has the one envelope, with the right status and code."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from quart.testing import QuartClient

from service import create_app
from service.application import Switchboard
from service.config import Settings

from . import probes
from .conftest import make_settings


@pytest.fixture
async def probe_client(settings: Settings) -> AsyncIterator[QuartClient]:
    app = create_app(settings)
    app.register_blueprint(probes.blueprint)
    async with app.test_app():
        yield app.test_client()


def assert_envelope(body: dict[str, object], code: str) -> dict[str, object]:
    assert body["status"] == "error"
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    metadata = body["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["request_id"]
    assert metadata["timestamp"]
    return error


async def test_unknown_path_is_a_404_envelope(client: QuartClient) -> None:
    response = await client.get("/no/such/path")
    assert response.status_code == 404
    body = await response.get_json()
    assert_envelope(body, "NOT_FOUND")
    assert body["metadata"]["request_id"] == response.headers["X-Request-ID"]


async def test_wrong_method_is_a_405_with_allow(client: QuartClient) -> None:
    response = await client.delete("/health")
    assert response.status_code == 405
    assert_envelope(await response.get_json(), "METHOD_NOT_ALLOWED")
    assert "GET" in response.headers["Allow"]


async def test_malformed_json_is_a_400(probe_client: QuartClient) -> None:
    response = await probe_client.post(
        "/_probe/echo", data=b'{"name": "a",', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    error = assert_envelope(await response.get_json(), "VALIDATION_ERROR")
    assert "not valid JSON" in str(error["message"])


async def test_a_body_that_is_not_utf8_is_a_400(probe_client: QuartClient) -> None:
    response = await probe_client.post(
        "/_probe/echo", data=b'{"name": "\xff\xfe"}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    error = assert_envelope(await response.get_json(), "VALIDATION_ERROR")
    assert "UTF-8" in str(error["message"])


async def test_invalid_fields_are_a_422_with_per_field_details(probe_client: QuartClient) -> None:
    response = await probe_client.post("/_probe/echo", json={"name": "", "count": -1})
    assert response.status_code == 422
    error = assert_envelope(await response.get_json(), "VALIDATION_ERROR")
    details = error["details"]
    assert isinstance(details, dict)
    assert set(details) == {"name", "count"}


async def test_valid_body_passes(probe_client: QuartClient) -> None:
    response = await probe_client.post("/_probe/echo", json={"name": "x", "count": 2})
    assert response.status_code == 200
    assert await response.get_json() == {"name": "x", "count": 2}


async def test_wrong_content_type_is_a_415(probe_client: QuartClient) -> None:
    response = await probe_client.post(
        "/_probe/echo", data=b"name=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 415
    assert_envelope(await response.get_json(), "UNSUPPORTED_MEDIA_TYPE")


async def test_oversized_body_is_a_413(database_url: str) -> None:
    app = create_app(make_settings(database_url, max_body_bytes=2048))
    app.register_blueprint(probes.blueprint)
    async with app.test_app():
        response = await app.test_client().post("/_probe/echo", json={"name": "x" * 4096, "count": 1})
    assert response.status_code == 413
    assert_envelope(await response.get_json(), "PAYLOAD_TOO_LARGE")


async def test_api_errors_keep_their_status_code_and_details(probe_client: QuartClient) -> None:
    response = await probe_client.get("/_probe/conflict")
    assert response.status_code == 409
    error = assert_envelope(await response.get_json(), "CONFLICT")
    assert error["details"] == {"field": "username"}


async def test_unexpected_exception_is_a_500_without_internals(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(make_settings(database_url, log_format="json"))
    app.register_blueprint(probes.blueprint)
    async with app.test_app():
        probe_client = app.test_client()
        response = await probe_client.get("/_probe/boom", headers={"X-Request-ID": "trace-boom-0001"})
        assert response.status_code == 500
        raw = (await response.get_data()).decode()
        assert_envelope(await response.get_json(), "INTERNAL_ERROR")
        for leak in ("Traceback", "RuntimeError", "hunter2", "/srv/app.py"):
            assert leak not in raw
        # The traceback goes to the log, tied to the request id.
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        logged = [line for line in lines if line.get("event") == "unhandled_exception"]
        assert logged
        event = logged[0]
        assert event["request_id"] == "trace-boom-0001"
        assert event["level"] == "error"
        assert "RuntimeError" in event["exception"]
        # The process keeps serving.
        assert (await probe_client.get("/health")).status_code == 200


async def test_database_down_is_a_503_with_retry_after(app: Switchboard) -> None:
    dead = make_settings("postgresql://nobody@127.0.0.1:9/none", database_connect_timeout=1.0)
    down = create_app(dead)
    down.register_blueprint(probes.blueprint)
    async with down.test_app():
        response = await down.test_client().get("/_probe/query")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    raw = (await response.get_data()).decode()
    assert_envelope(await response.get_json(), "SERVICE_UNAVAILABLE")
    for leak in ("asyncpg", "sqlalchemy", "127.0.0.1", "Traceback"):
        assert leak not in raw


async def test_a_deadlock_is_a_503_to_retry(probe_client: QuartClient, database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip(
            "deadlocks are PostgreSQL's; SQLite transactions take turns (the PostgreSQL run covers it)"
        )
    response = await probe_client.get("/_probe/deadlock")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    raw = (await response.get_data()).decode()
    assert_envelope(await response.get_json(), "SERVICE_UNAVAILABLE")
    for leak in ("deadlock", "asyncpg", "pg_advisory", "Traceback"):
        assert leak not in raw
