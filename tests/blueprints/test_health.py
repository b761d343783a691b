"""Liveness, readiness and metrics."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from quart.testing import QuartClient

from service import create_app
from service.config import Settings

from ..blackhole import blackhole
from ..conftest import make_settings


async def test_health_is_alive_and_touches_nothing(database_url: str) -> None:
    # A database that cannot be reached does not matter to liveness.
    app = create_app(make_settings("postgresql://nobody@127.0.0.1:9/none"))
    async with app.test_app():
        response = await app.test_client().get("/health")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["status"] == "healthy"
    assert body["service"] == "switchboard"
    assert body["version"]
    assert body["timestamp"].endswith("Z")


async def test_readiness_reports_each_check(client: QuartClient, settings: Settings) -> None:
    response = await client.get("/readiness")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["status"] == "ready"
    checks = body["checks"]
    assert checks["database"]["status"] == "connected"
    assert checks["database"]["latency_ms"] >= 0
    assert checks["disk_space"]["status"] == "ok"
    assert checks["disk_space"]["available_gb"] > 0
    if settings.redis_url:
        assert checks["redis"]["status"] == "connected"
    else:
        assert "redis" not in checks


# Nothing listens on port 9 (discard) here: connections to it are refused.
DEAD_REDIS = "redis://127.0.0.1:9/0"


async def _readiness(settings: Settings) -> tuple[int, Any]:
    """/readiness of a fresh app with these settings: its status and body."""
    app = create_app(settings)
    async with app.test_app():
        response = await app.test_client().get("/readiness")
    return response.status_code, await response.get_json()


@pytest.mark.parametrize("redis_url", [None, DEAD_REDIS], ids=["without-redis", "redis-down-too"])
async def test_readiness_is_503_when_the_database_refuses(database_url: str, redis_url: str | None) -> None:
    status, body = await _readiness(
        make_settings("postgresql://nobody@127.0.0.1:9/none", redis_url=redis_url)
    )
    assert status == 503
    assert body["status"] == "not_ready"
    assert body["checks"]["database"]["status"] == "error"


@pytest.mark.parametrize(
    ("dependency", "status", "state"),
    [("database", 503, "not_ready"), ("redis", 200, "degraded")],
)
async def test_readiness_answers_within_two_seconds_when_a_dependency_hangs(
    database_url: str, dependency: str, status: int, state: str
) -> None:
    async with blackhole() as port:
        if dependency == "database":
            settings = make_settings(f"postgresql://nobody@127.0.0.1:{port}/frozen", redis_url=None)
        else:
            settings = make_settings(database_url, redis_url=f"redis://127.0.0.1:{port}/0")
        app = create_app(settings)
        async with app.test_app():
            started = time.monotonic()
            response = await app.test_client().get("/readiness")
            elapsed = time.monotonic() - started
    assert response.status_code == status
    body = await response.get_json()
    assert body["status"] == state
    assert body["checks"][dependency]["status"] == "timeout"
    assert elapsed < 2.0


async def test_readiness_stays_200_degraded_while_redis_is_down(database_url: str) -> None:
    """The API serves without Redis (limits, presence and caches fall back to each process; events wait
    in the outbox), so a Redis outage must not take every instance out of the load balancer."""
    status, body = await _readiness(make_settings(database_url, redis_url=DEAD_REDIS))
    assert status == 200
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["status"] == "error"
    assert body["checks"]["database"]["status"] == "connected"


async def test_metrics_count_requests_by_route_template(client: QuartClient) -> None:
    await client.get("/health")
    for ident in ("a1", "b2", "c3"):
        await client.get(f"/_docs/swagger/{ident}.js")
    await client.get("/really/unknown/path-7731")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = (await response.get_data()).decode()
    assert 'http_requests_total{endpoint="/health",method="GET",status="200"}' in text
    assert 'endpoint="/_docs/swagger/<path:filename>",method="GET",status="404"' in text
    assert 'endpoint="<unmatched>"' in text
    assert "path-7731" not in text
    assert "a1.js" not in text
    assert 'http_request_duration_seconds_bucket{endpoint="/health",le="0.005",method="GET"}' in text
    assert "db_pool_checked_out" in text


async def test_metrics_pool_gauges_follow_checkouts(database_url: str) -> None:
    settings = make_settings(database_url, database_pool_size=7)
    app = create_app(settings)
    async with app.test_app():
        client = app.test_client()
        await client.get("/readiness")
        text = (await (await client.get("/metrics")).get_data()).decode()
    # SQLite always gets one connection (one writer); PostgreSQL the configured pool.
    assert f"db_pool_size {1 if settings.uses_sqlite else 7}.0" in text
    gauges = {
        line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("db_pool_")
    }
    # Background loops (relay, sweeper) use connections too, so the exact count varies from moment to
    # moment; what holds is that the readiness check's connection went back and one at least is open.
    assert 0 <= gauges["db_pool_checked_out"] < gauges["db_pool_open"] + 1
    assert gauges["db_pool_open"] >= 1


async def test_metrics_token_guards_the_endpoint(database_url: str) -> None:
    app = create_app(make_settings(database_url, metrics_token="scrape-secret"))
    async with app.test_app():
        client = app.test_client()
        refused = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        allowed = await client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert refused.status_code == 401
    assert wrong.status_code == 401
    assert (await refused.get_json())["error"]["code"] == "UNAUTHORIZED"
    assert allowed.status_code == 200


def test_multiprocess_mode_is_off_in_the_test_process() -> None:
    # The server test covers several workers; here metrics come from the process registry.
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
