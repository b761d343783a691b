"""The process's Redis client, when REDIS_URL is set (opened in before_serving, closed after serving)."""

from __future__ import annotations

from quart import Quart
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service import log
from service.config import Settings

logger = log.get(__name__)

# What a dead, frozen or refusing Redis raises (builtin TimeoutError is an OSError): callers that can
# carry on without Redis catch exactly these.
FAILURES = (RedisError, OSError)


def open_client(settings: Settings) -> Redis:
    assert settings.redis_url is not None
    # Short socket timeouts: a frozen Redis must surface as an error in about a second, never a hang.
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=30,
        retry_on_timeout=False,
    )


def init_app(app: Quart, settings: Settings) -> None:
    @app.before_serving
    async def _open() -> None:
        if settings.redis_url is None:
            logger.warning(
                "embedded_mode",
                detail="REDIS_URL is unset: events and rate limits stay in this process; "
                "run one process only",
            )
            return
        app.extensions["redis"] = open_client(settings)

    @app.after_serving
    async def _close() -> None:
        client: Redis | None = app.extensions.pop("redis", None)
        if client is not None:
            await client.aclose()
