"""Shared fixtures: settings for the embedded default or, when TEST_DATABASE_URL / TEST_REDIS_URL are
set, for real PostgreSQL and Redis; a migrated database; a fresh app and client per test."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from alembic.config import Config
from quart.testing import QuartClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from alembic import command
from service import create_app
from service.application import Switchboard
from service.config import Settings
from service.models.registry import metadata

from .smtp_sink import sink  # noqa: F401 - the fixture, shared by the mail tests

ROOT = Path(__file__).resolve().parents[1]
# Reference data the migrations seed (the built-in roles) stays between tests.
SEEDED_TABLES = frozenset({"roles"})


def alembic_config(database_url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "app_env": "testing",
        "database_url": database_url,
        "redis_url": os.environ.get("TEST_REDIS_URL") or None,
        "log_format": "console",
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database migrated to head once per run (the migrations are what build the schema)."""
    url = os.environ.get("TEST_DATABASE_URL") or f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    url = Settings(database_url=url, _env_file=None).database_url  # type: ignore[call-arg]
    config = alembic_config(url)
    command.downgrade(config, "base")
    command.upgrade(config, "head")
    yield url
    command.downgrade(config, "base")


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Switchboard]:
    application = create_app(settings)
    async with application.test_app():
        yield application
        await empty_tables(application)


AppMaker = Callable[..., Awaitable[Switchboard]]


@pytest.fixture
async def make_app(database_url: str) -> AsyncIterator[AppMaker]:
    """Build apps with other settings (`await make_app(require_email_verification=True)`), serving until
    the test ends, then emptied like the `app` fixture."""
    built: list[Switchboard] = []
    async with contextlib.AsyncExitStack() as stack:

        async def build(**overrides: object) -> Switchboard:
            application = create_app(make_settings(database_url, **overrides))
            await stack.enter_async_context(application.test_app())
            built.append(application)
            return application

        yield build
        if built:
            await empty_tables(built[0])


async def empty_database(engine: AsyncEngine) -> None:
    """Empty every table but the seeded ones; the schema itself stays migrated."""
    async with engine.begin() as connection:
        for table in reversed(metadata.sorted_tables):
            if table.name in SEEDED_TABLES:
                continue
            await connection.execute(text(f'DELETE FROM "{table.name}"'))  # noqa: S608 - our own table names


async def empty_tables(application: Switchboard) -> None:
    """Each test starts from empty tables (but the seeded ones) and an empty Redis database."""
    await empty_database(application.extensions["db"].engine)
    redis = application.extensions.get("redis")
    if redis is not None:
        await redis.flushdb()


@pytest.fixture
def client(app: Switchboard) -> QuartClient:
    return app.test_client()
