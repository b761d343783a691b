"""Request ids, security headers and CORS on every response."""

from __future__ import annotations

import re

import pytest
from quart.testing import QuartClient

from service import create_app

from .conftest import make_settings


async def test_a_sane_request_id_is_kept(client: QuartClient) -> None:
    response = await client.get("/health", headers={"X-Request-ID": "client-chosen-id-42"})
    assert response.headers["X-Request-ID"] == "client-chosen-id-42"


@pytest.mark.parametrize("incoming", [None, "short", "has spaces in it", "x" * 200, "evil\u2028line-id"])
async def test_a_missing_or_odd_request_id_is_replaced(client: QuartClient, incoming: str | None) -> None:
    headers = {"X-Request-ID": incoming} if incoming is not None else {}
    response = await client.get("/health", headers=headers)
    made = response.headers["X-Request-ID"]
    assert made != incoming
    assert re.fullmatch(r"[0-9a-f]{32}", made)


async def test_each_request_gets_its_own_id(client: QuartClient) -> None:
    first = await client.get("/health")
    second = await client.get("/health")
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


@pytest.mark.parametrize("path", ["/health", "/no/such/path", "/docs"])
async def test_security_headers_on_every_response(client: QuartClient, path: str) -> None:
    response = await client.get(path)
    headers = response.headers
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert "Strict-Transport-Security" not in headers  # development: no HSTS
    assert "Server" not in headers


async def test_json_responses_are_not_cached(client: QuartClient) -> None:
    response = await client.get("/health")
    assert response.headers["Cache-Control"] == "no-store"


async def test_production_adds_hsts(database_url: str) -> None:
    settings = make_settings(database_url, app_env="production", secret_key="p" * 40)
    app = create_app(settings)
    async with app.test_app():
        response = await app.test_client().get("/health")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")


async def test_cors_echoes_allowed_origins_with_credentials(database_url: str) -> None:
    app = create_app(make_settings(database_url, allowed_origins="https://app.example"))
    async with app.test_app():
        client = app.test_client()
        allowed = await client.get("/health", headers={"Origin": "https://app.example"})
        other = await client.get("/health", headers={"Origin": "https://evil.example"})
        preflight = await client.options(
            "/health",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "Authorization",
            },
        )
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert "X-Request-ID" in allowed.headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Origin" not in other.headers
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()


async def test_cors_wildcard_never_allows_credentials(database_url: str) -> None:
    app = create_app(make_settings(database_url, allowed_origins="*"))
    async with app.test_app():
        response = await app.test_client().get("/health", headers={"Origin": "https://any.example"})
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://any.example")
    assert "Access-Control-Allow-Credentials" not in response.headers


async def test_no_cors_headers_without_allowed_origins(client: QuartClient) -> None:
    response = await client.get("/health", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
