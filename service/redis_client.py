"""The process's Redis client, when REDIS_URL is set (opened in before_serving, closed after serving)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from quart import Quart
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from service import log
from service.config import Settings

logger = log.get(__name__)

# What a dead, frozen or refusing Redis raises (builtin TimeoutError is an OSError): callers that can
# carry on without Redis catch exactly these, around Redis calls only. RuntimeError too: under uvloop,
# a connection the far end accepted and then closed at once (a TCP proxy in front of a dead Redis) fails
# its first write with "unable to perform operation on <TCPTransport closed=True>", which redis-py does
# not translate (seen in tests/faults).
FAILURES = (RedisError, OSError, RuntimeError)
# After a failure, how long callers leave Redis alone before one of them tries it again.
RETRY_SECONDS = 5.0

T = TypeVar("T")


class Down(RedisConnectionError):
    """Redis failed moments ago and is not asked again until the breaker's probe finds it back."""


def text(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes unless told to decode)."""
    return value.decode() if isinstance(value, bytes) else value


class Breaker:
    """Remembers that Redis failed, so a frozen Redis costs a socket timeout only to the calls that were
    already waiting on it when it froze: the others skip Redis and use their fallback.

    The app keeps one per Redis client (`breaker()`), shared by everything that can do without Redis
    (the auth cache, presence, the rate limiter's store): the first of them to fail opens it for all,
    so a request that would ask Redis three times waits out one timeout, not three in a row.

    With a `probe` (a Redis call such as `client.ping`), every `retry_seconds` while Redis is down the
    probe runs in the background and no request waits for it; the breaker closes when it answers.
    Without one, the first caller after each interval probes with its own call.
    """

    def __init__(
        self,
        name: str,
        retry_seconds: float = RETRY_SECONDS,
        probe: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._name = name
        self._retry_seconds = retry_seconds
        self._probe = probe
        self._probing: asyncio.Task[None] | None = None
        self._down_until: float | None = None

    @property
    def down(self) -> bool:
        return self._down_until is not None

    def allows(self) -> bool:
        """Whether to call Redis now: always while it answers; while it is down, never when a probe is
        given (one runs in the background each interval), else for one caller per interval."""
        if self._down_until is None:
            return True
        now = time.monotonic()
        if now < self._down_until:
            return False
        self._down_until = now + self._retry_seconds
        if self._probe is None:
            # This caller probes; the ones that come while it waits skip Redis instead of queueing behind it.
            return True
        if self._probing is None or self._probing.done():
            self._probing = asyncio.get_running_loop().create_task(self._run_probe(self._probe))
        return False

    async def _run_probe(self, probe: Callable[[], Awaitable[object]]) -> None:
        try:
            await probe()
        except FAILURES as error:
            self.failed(error)
        else:
            self.answered()

    async def run(self, command: Callable[[], Awaitable[T]]) -> T:
        """`command()` (Redis calls), unless Redis is known to be down; notes whether it answered.

        Raises:
            One of FAILURES: the command failed, or Redis failed moments ago (Down).
        """
        if not self.allows():
            raise Down("Redis failed moments ago; not asked again yet")
        try:
            result = await command()
        except FAILURES as error:
            self.failed(error)
            raise
        self.answered()
        return result

    def failed(self, error: BaseException) -> None:
        if self._down_until is None:
            logger.warning(f"{self._name}_unavailable", detail="Redis failed", error=type(error).__name__)
        self._down_until = time.monotonic() + self._retry_seconds

    def answered(self) -> None:
        if self._down_until is not None:
            logger.info(f"{self._name}_recovered", detail="Redis answers again")
            self._down_until = None


def open_client(settings: Settings) -> Redis:
    """The process's client: short socket timeouts, so a frozen Redis surfaces as an error in about a
    second, never a hang; and at most REDIS_MAX_CONNECTIONS connections, so it cannot make the process
    open a socket for every request waiting on it (redis-py's own pool has no bound). A command that
    finds them all busy waits as long as for a reply, then fails like a Redis that does not answer
    ("No connection available", a ConnectionError), and its caller falls back.
    """
    assert settings.redis_url is not None
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_socket_timeout,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=30,
        retry_on_timeout=False,
    )
    return Redis.from_pool(pool)


def breaker(app: Quart) -> Breaker:
    """The app's one breaker for its Redis client (see Breaker)."""
    shared: Breaker = app.extensions["redis_breaker"]
    return shared


def init_app(app: Quart, settings: Settings) -> None:
    async def ping() -> None:
        await app.extensions["redis"].ping()

    # Made here rather than with the client so that what is set up before serving can hold it.
    app.extensions["redis_breaker"] = Breaker("redis", probe=ping)

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
