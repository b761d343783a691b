"""One throwaway PostgreSQL and one throwaway Redis per run, each behind a fault proxy, and the service
(hypercorn, two workers, production settings) connected through the proxies.

These run in the PostgreSQL + Redis configuration (TEST_DATABASE_URL set); the embedded run skips them,
saying so. Without the server binaries they fail in CI and skip elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from alembic import command
from service.config import Settings

from ..conftest import alembic_config
from .backends import ThrowawayPostgres, ThrowawayRedis, Unavailable
from .load import Fleet, readiness, seed
from .proxy import FaultProxy
from .switchboard import Switchboard, environment

# Production settings but for limits the load would trip (one operator makes all the calls; several
# listeners share the operator's streams) and a login limit low enough to test in a few requests.
OVERRIDES = {
    "RATE_LIMIT_DEFAULT": "1000000/minute",
    "RATE_LIMIT_LOGIN": "5/minute",
    "SSE_STREAMS_PER_USER": "50",
    "SSE_HEARTBEAT_SECONDS": "2",
    "RELAY_INTERVAL": "0.2",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the served stack run with coverage paused (pytest-cov's `no_cover`). They time answers
    at the client, and the client and the fault proxies run in this process: traced line by line, they
    answered up to 1.2 s after the service had (a 503 at 4.5 s at the client, 3.3 s in the service's
    access line), the harness's lag rather than the service's. The service is a subprocess coverage
    never traced, so no coverage is lost."""
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.no_cover)


@dataclass
class Stack:
    postgres: ThrowawayPostgres
    redis: ThrowawayRedis
    postgres_proxy: FaultProxy
    redis_proxy: FaultProxy
    service: Switchboard
    fleet: Fleet

    @property
    def database_url(self) -> str:
        """Straight to PostgreSQL, past the proxy: what the tests check with."""
        url: str = Settings(database_url=self.postgres.url(), _env_file=None).database_url
        return url

    def engine(self) -> AsyncEngine:
        return create_async_engine(self.database_url, poolclass=NullPool)

    def heal(self) -> None:
        """Every fault undone: proxies passing, both servers up and answering, the service running."""
        self.postgres_proxy.pass_through()
        self.redis_proxy.pass_through()
        if not self.postgres.running():
            self.postgres.start()
        if self.redis.process is None:
            self.redis.start()
        else:
            self.redis.thaw()
        if not self.service.running:
            self.service.stop()
            self.service.start()


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"fault tests cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("fault tests run in the PostgreSQL + Redis configuration (TEST_DATABASE_URL unset)")
    try:
        postgres = ThrowawayPostgres()
        redis = ThrowawayRedis()
    except Unavailable as error:
        _unavailable(str(error))
        raise
    started: list[FaultProxy] = []
    service: Switchboard | None = None
    try:
        postgres.init()
        postgres.start()
        redis.start()
        postgres_proxy = FaultProxy(postgres.port).start()
        started.append(postgres_proxy)
        redis_proxy = FaultProxy(redis.port).start()
        started.append(redis_proxy)
        migrated = Settings(database_url=postgres.url(), _env_file=None).database_url
        command.upgrade(alembic_config(migrated), "head")
        workdir = tmp_path_factory.mktemp("faults")
        env = environment(postgres.url(postgres_proxy.port), redis.url(redis_proxy.port), **OVERRIDES)
        service = Switchboard(Path(workdir), env)
        service.start()
        service.create_admin()
        fleet = asyncio.run(seed(service.url))
        yield Stack(postgres, redis, postgres_proxy, redis_proxy, service, fleet)
    finally:
        if service is not None:
            service.stop()
        for proxy in started:
            proxy.close()
        redis.destroy()
        postgres.destroy()


@pytest.fixture
def faults(stack: Stack) -> Iterator[Stack]:
    """The stack, healed and ready before the test and healed again after it."""
    stack.heal()
    wait_ready(stack.service.url)
    yield stack
    stack.heal()


def wait_ready(url: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError):
            if readiness(httpx.get(f"{url}/readiness", timeout=3)) == (200, "ready"):
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not become ready within {timeout} s")
