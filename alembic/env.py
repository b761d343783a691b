"""Alembic environment: async engines, the service's own URL handling, SQLite batch mode."""

from __future__ import annotations

import asyncio
import logging.config
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from alembic import context
from service.config import ConfigError, Settings
from service.db import make_engine
from service.models.entity import UTCDateTime
from service.models.registry import metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Migrations name plain SQLAlchemy types, so they never import the service's code.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = make_engine(url, poolclass=NullPool)
    async with engine.begin() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


def _url() -> str:
    url = config.attributes.get("database_url")
    if url:
        return str(url)
    try:
        return Settings.from_environment().database_url
    except ConfigError as error:
        raise SystemExit(f"alembic: configuration error: {error}") from None


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True, render_item=_render_item)
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    _run(connection)  # called from a running program (tests) with its own connection
else:
    asyncio.run(_run_async(_url()))
