"""Operations endpoints: liveness, readiness and Prometheus metrics (no URL prefix)."""

from __future__ import annotations

import asyncio
import hmac
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from quart import Blueprint, Response, current_app, request
from quart_schema import hide, tag, validate_response

from service import config, draining, errors, metrics
from service.schemas.health import HealthOut, ReadinessOut
from service.services import health

blueprint = Blueprint("health", __name__)

SERVICE_NAME = "switchboard"
VERSION = version("switchboard")
# Checks the API can fail and still serve (degraded, not unready): without Redis, limits, presence and
# caches fall back to each process and events wait in the outbox.
_SERVES_WITHOUT = frozenset({"redis"})


@blueprint.get("/health")
@tag(["health"])
@validate_response(HealthOut)
async def get_health() -> HealthOut:
    """Liveness probe.

    Answers while the process can serve requests; touches no database or Redis.
    """
    return HealthOut(timestamp=datetime.now(UTC), version=VERSION, service=SERVICE_NAME)


@blueprint.get("/readiness")
@tag(["health"])
@validate_response(ReadinessOut, 200)
@validate_response(ReadinessOut, 503)
async def get_readiness() -> tuple[ReadinessOut, int, dict[str, str]]:
    """Readiness probe.

    Checks the database, Redis (when configured) and free disk space, each within a deadline. 200 with
    `"status": "ready"` when all pass, and with `"status": "degraded"` when only Redis fails: the API
    serves without it (rate limits count in each process, events wait in the database and go out once
    it is back), so an instance stays in the load balancer through a Redis outage. 503 with
    `"status": "not_ready"` when the database or the disk check fails, and with `"status": "draining"`
    once the instance has begun shutting down (take it out of the load balancer).
    """
    if draining.current(current_app).started:
        body = ReadinessOut(status="draining", timestamp=datetime.now(UTC), checks={})
        return body, 503, {"Cache-Control": "no-store"}
    settings = config.current()
    deadline = settings.readiness_timeout
    probes = {"database": health.check_database(current_app.extensions.get("db"), deadline)}
    if "redis" in current_app.extensions:
        probes["redis"] = health.check_redis(current_app.extensions["redis"], deadline)
    results = dict(zip(probes, await asyncio.gather(*probes.values()), strict=True))
    results["disk_space"] = health.check_disk(Path.cwd(), settings.readiness_min_free_disk_mb)
    failed = {name for name, check in results.items() if check.status not in ("connected", "ok")}
    if failed - _SERVES_WITHOUT:
        status, code = "not_ready", 503
    else:
        status, code = ("degraded" if failed else "ready"), 200
    body = ReadinessOut(status=status, timestamp=datetime.now(UTC), checks=results)
    return body, code, {"Cache-Control": "no-store"}


@blueprint.get("/metrics")
@hide
async def get_metrics() -> Response:
    """Prometheus metrics in the text exposition format."""
    token = config.current().metrics_token
    if token is not None:
        offered = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(offered.encode(), token.encode()):
            raise errors.Unauthorized("A metrics token is required.")
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)
