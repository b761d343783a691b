"""Resource limits against abuse: bounded inputs, the body cap, pages, and slow clients cut off by the server.

Covered elsewhere: the body cap's 413 envelope on a probe route (tests/test_errors.py), concurrent event
streams per user (tests/blueprints/test_events.py), a forged X-Forwarded-For (tests/test_rate_limits.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart.testing import QuartClient

from service.application import Switchboard
from service.config import Settings

from ..accounts import PASSWORD, admin_headers, bearer
from ..conftest import ROOT, AppMaker
from ..servers import create_admin, free_port, stop_group

# Strings that need no length of their own: a closed set or a fixed shape.
_SHAPED_FORMATS = frozenset({"uuid", "date-time", "date"})


def _resolve(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _unbounded(schema: dict[str, Any], document: dict[str, Any], where: str) -> Iterator[str]:
    """Every string without a maximum length and every array without a maximum size in `schema`."""
    schema = _resolve(schema, document)
    for key in ("anyOf", "oneOf", "allOf"):
        for part in schema.get(key, []):
            yield from _unbounded(part, document, where)
    kind = schema.get("type")
    if kind == "string" and not (
        "maxLength" in schema
        or "enum" in schema
        or "const" in schema
        or schema.get("format") in _SHAPED_FORMATS
    ):
        yield where
    if kind == "array":
        if "maxItems" not in schema:
            yield f"{where} (items)"
        yield from _unbounded(schema.get("items", {}), document, f"{where}[]")
    for name, field in schema.get("properties", {}).items():
        yield from _unbounded(field, document, f"{where}.{name}")


async def _document(client: QuartClient) -> dict[str, Any]:
    document: dict[str, Any] = await (await client.get("/openapi.json")).get_json()
    return document


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield f"{method.upper()} {path}", operation


async def test_every_input_string_and_list_is_bounded(client: QuartClient) -> None:
    """Bodies, query strings, headers and paths: a length or size limit on each string and list."""
    document = await _document(client)
    unbounded: list[str] = []
    for name, operation in _operations(document):
        for content in operation.get("requestBody", {}).get("content", {}).values():
            unbounded += _unbounded(content["schema"], document, f"{name} body")
        for parameter in operation.get("parameters", []):
            where = f"{name} {parameter['in']} {parameter['name']}"
            unbounded += _unbounded(parameter.get("schema", {}), document, where)
    assert unbounded == []


async def test_pages_are_bounded_everywhere(app: Switchboard, client: QuartClient) -> None:
    """Every list declares its largest page and refuses a larger one."""
    admin = await admin_headers(app, client)
    document = await _document(client)
    lists = {
        name: parameter["schema"]
        for name, operation in _operations(document)
        for parameter in operation.get("parameters", [])
        if parameter["name"] == "per_page"
    }
    assert len(lists) >= 8
    for name, schema in lists.items():
        path = name.split(" ", 1)[1].replace("{user_id}", (await _me(client, admin))["id"])
        path = path.replace("{agent_id}", "01a23700-0000-7000-8000-000000000000")
        assert schema["maximum"] <= 100, name
        if path.endswith("/events"):
            continue  # a stream, not a page: it has no per_page
        response = await client.get(f"{path}?per_page={schema['maximum'] + 1}", headers=admin)
        assert response.status_code == 422, name
        assert (await response.get_json())["error"]["code"] == "VALIDATION_ERROR", name


async def _me(client: QuartClient, headers: dict[str, str]) -> dict[str, Any]:
    me: dict[str, Any] = (await (await client.get("/auth/me", headers=headers)).get_json())["data"]
    return me


@pytest.mark.parametrize("path", ["/auth/login", "/auth/register", "/api/v1/assignments"])
async def test_a_body_over_the_cap_is_a_413_before_anything_else(make_app: AppMaker, path: str) -> None:
    """Refused whole, before validation or a password hash is looked at."""
    app = await make_app(max_body_bytes=4096)
    client = app.test_client()
    admin = await admin_headers(app, client)
    response = await client.post(path, json={"username": "x" * 5000, "title": "y" * 5000}, headers=admin)
    assert response.status_code == 413
    body = await response.get_json()
    assert (body["status"], body["error"]["code"]) == ("error", "PAYLOAD_TOO_LARGE")


def test_hypercorn_cuts_slow_headers_within_ten_seconds() -> None:
    """The production setting: a connection that has not sent its request headers this long is closed."""
    settings = tomllib.loads((ROOT / "hypercorn.toml").read_text())
    assert settings["keep_alive_timeout"] <= 10
    # Event streams send nothing back after their request, so only a much longer read timeout may apply.
    assert settings["read_timeout"] >= 60


@pytest.fixture
def live_server(tmp_path: Path, settings: Settings) -> Iterator[str]:
    """hypercorn with hypercorn.toml, but a 2-second keep-alive (the header deadline) to keep the test short,
    and a ping every half second on event streams."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k.upper() not in {n.upper() for n in Settings.model_fields}}
    env |= {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url or "",
        "APP_ENV": "development",
        "SSE_HEARTBEAT_SECONDS": "0.5",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    create_admin(env)
    command = [sys.executable, "-m", "hypercorn", "--config", "hypercorn.toml", "--workers", "1"]
    command += ["--bind", f"127.0.0.1:{port}", "--keep-alive", "2", "service:create_app()"]
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail((tmp_path / "server.log").read_text())
        yield url
    finally:
        stop_group(process)


def _trickle_until_closed(port: int, request: bytes, limit: float) -> float | None:
    """Send `request` a byte every 0.1 s; the time the server closed the connection, or None if it never did
    within `limit` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
        started = time.monotonic()
        for byte in request:
            if time.monotonic() - started > limit:
                return None
            try:
                connection.sendall(bytes([byte]))
                connection.settimeout(0.1)
                if connection.recv(1024) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - started
    return None


def test_a_header_trickle_is_cut_while_event_streams_live_on(live_server: str) -> None:
    port = int(live_server.rsplit(":", 1)[1])
    slow = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    closed_after = _trickle_until_closed(port, slow, limit=15)
    assert closed_after is not None  # cut off before it could finish its headers
    token = bearer(login_over_http(live_server))
    with (
        httpx.Client(timeout=10) as http,
        http.stream("GET", f"{live_server}/api/v1/events", headers=token) as stream,
    ):
        assert stream.status_code == 200
        started = time.monotonic()
        chunks = stream.iter_bytes()
        # Well past the keep-alive deadline the stream still delivers (its pings).
        while time.monotonic() - started < 4:
            assert next(chunks)


def login_over_http(url: str) -> str:
    response = httpx.post(f"{url}/auth/login", json={"username": "root", "password": PASSWORD})
    assert response.status_code == 200, response.text
    token: str = response.json()["data"]["access_token"]
    return token


async def test_a_nul_character_is_never_a_server_error(app: Switchboard, client: QuartClient) -> None:
    """PostgreSQL text cannot hold NUL (the fuzzer found a 500 in a query filter): a 400, where SQLite
    simply stores it."""
    admin = await admin_headers(app, client)
    for method, path, body in (
        ("GET", "/api/v1/audit?action=a%00b", None),
        ("GET", "/api/v1/users?q=a%00b", None),
        ("GET", "/api/v1/agents?q=a%00b", None),
        ("POST", "/api/v1/assignments", {"title": "a\x00b"}),
        ("POST", "/api/v1/agents", {"name": "runner", "metadata": {"note": "a\x00b"}}),
    ):
        response = await client.open(path, method=method, json=body, headers=admin)
        assert response.status_code < 500, (method, path)
        if response.status_code == 400:
            assert (await response.get_json())["error"]["code"] in {"VALIDATION_ERROR", "MALFORMED_REQUEST"}
