"""Readiness checks: each dependency answers within a deadline or counts as down."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import log
from service.db import Database
from service.schemas.health import CheckOut

logger = log.get(__name__)


async def _timed(name: str, probe: Awaitable[object], deadline: float) -> CheckOut:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe, deadline)
    except (TimeoutError, RedisTimeoutError):
        status = "timeout"
    except Exception as error:  # any failure means "not ready"; the reason goes to the log only
        logger.warning("readiness_check_failed", check=name, error=type(error).__name__)
        status = "error"
    else:
        status = "connected"
    return CheckOut(status=status, latency_ms=round((time.perf_counter() - started) * 1000, 2))


async def check_database(database: Database | None, deadline: float) -> CheckOut:
    if database is None:
        return CheckOut(status="error", latency_ms=0.0)
    return await _timed("database", database.ping(), deadline)


async def check_redis(client: Redis, deadline: float) -> CheckOut:
    return await _timed("redis", client.ping(), deadline)


def check_disk(path: Path, min_free_mb: int) -> CheckOut:
    started = time.perf_counter()
    free = shutil.disk_usage(path).free
    return CheckOut(
        status="ok" if free >= min_free_mb * 1024 * 1024 else "low",
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
        available_gb=round(free / 1024**3, 2),
    )
