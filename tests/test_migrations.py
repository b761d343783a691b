"""Migrations build the schema on both databases and match the models exactly."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from alembic import command
from service.config import Settings
from service.db import make_engine
from service.models.registry import metadata

from .conftest import alembic_config

_POSTGRESQL_ONLY = {
    index.name
    for table in metadata.tables.values()
    for index in table.indexes
    if index.info.get("postgresql_only")
}


def _diff(connection: Connection) -> list[object]:
    def include(item: object, name: str | None, kind: str, reflected: bool, compare_to: object) -> bool:
        # Indexes the models mark PostgreSQL-only exist on PostgreSQL only.
        return connection.dialect.name == "postgresql" or kind != "index" or name not in _POSTGRESQL_ONLY

    context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": include})
    return list(compare_metadata(context, metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_models_and_migrations_do_not_drift(settings: Settings, app: object) -> None:
    engine = make_engine(settings.database_url)
    async with engine.connect() as connection:
        assert await connection.run_sync(_diff) == []
    await engine.dispose()


def test_there_is_one_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


async def _inspect(url: str) -> tuple[set[str], list[object]]:
    engine = make_engine(url)
    async with engine.connect() as connection:
        tables = await connection.run_sync(_tables)
        diff = await connection.run_sync(_diff)
    await engine.dispose()
    return tables, diff


def test_downgrade_to_base_and_back(settings: Settings) -> None:
    # Synchronous on purpose: Alembic's env.py runs its own event loop, as `alembic upgrade` does.
    config = alembic_config(settings.database_url)
    command.downgrade(config, "base")
    remaining, _ = asyncio.run(_inspect(settings.database_url))
    assert remaining <= {"alembic_version"}
    command.upgrade(config, "head")
    tables, diff = asyncio.run(_inspect(settings.database_url))
    assert diff == []
    assert {table.name for table in metadata.sorted_tables} <= tables
