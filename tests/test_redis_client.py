"""The process's Redis client: bounded in time and in connections, so a frozen Redis costs errors the
callers fall back from, never a hang or a socket per waiting request."""

from __future__ import annotations

import asyncio

from redis.asyncio import BlockingConnectionPool

from service import redis_client
from service.config import Settings

from .faults.proxy import FaultProxy


def _settings(redis_url: str, **overrides: object) -> Settings:
    return Settings(redis_url=redis_url, _env_file=None, **overrides)  # type: ignore[arg-type]


async def test_the_pool_is_bounded_by_the_setting() -> None:
    client = redis_client.open_client(_settings("redis://127.0.0.1:6379/0", redis_max_connections=7))
    try:
        pool = client.connection_pool
        assert isinstance(pool, BlockingConnectionPool)
        assert pool.max_connections == 7
        assert pool.timeout == 1.0  # REDIS_SOCKET_TIMEOUT: a free connection is awaited as long as a reply
    finally:
        await client.aclose()


async def test_a_frozen_redis_gets_no_more_sockets_than_the_bound() -> None:
    """Twenty commands at once against a Redis that never answers: three connections reach it (the
    bound), and every command fails with an error the fallbacks catch, the ones that waited for a
    connection included."""
    with FaultProxy(target_port=9).start() as frozen:
        frozen.freeze()
        settings = _settings(
            f"redis://127.0.0.1:{frozen.port}/0", redis_max_connections=3, redis_socket_timeout=0.3
        )
        client = redis_client.open_client(settings)
        try:
            results = await asyncio.gather(
                *(client.get(f"key-{n}") for n in range(20)), return_exceptions=True
            )
        finally:
            await client.aclose()
        assert frozen.accepted <= 3, frozen.accepted
    assert all(isinstance(result, redis_client.FAILURES) for result in results), results


async def test_while_redis_is_down_a_background_probe_not_a_request_tries_it() -> None:
    calls: list[str] = []
    answers = asyncio.Event()

    async def probe() -> None:
        calls.append("probe")
        if not answers.is_set():
            raise ConnectionError("still down")

    breaker = redis_client.Breaker("test", retry_seconds=0.05, probe=probe)
    breaker.failed(ConnectionError("Redis went away"))
    assert not breaker.allows()  # within the interval: nobody calls Redis
    await asyncio.sleep(0.06)
    assert not breaker.allows()  # the interval passed: the probe runs, the caller still skips Redis
    await asyncio.sleep(0)
    assert calls == ["probe"]
    assert breaker.down  # the probe failed: down for another interval
    answers.set()
    await asyncio.sleep(0.06)
    assert not breaker.allows()
    await asyncio.sleep(0)
    assert calls == ["probe", "probe"]
    assert breaker.allows()  # the probe answered: callers use Redis again
