"""The engine and sessionmaker (opened in before_serving) and the per-request session."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from quart import Quart, current_app, g, request
from sqlalchemy import ColumnElement, event, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry

from service import metrics
from service.config import Settings


@dataclass(frozen=True)
class Database:
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    # Sessions for safe requests (GET, HEAD): each statement commits on its own, so a read costs its
    # query alone, without the BEGIN and COMMIT round trips around it (same pool, same connections).
    reader: async_sessionmaker[AsyncSession]

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        metrics.unwatch_pool(self.engine.sync_engine.pool)
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _: ConnectionPoolEntry) -> None:
    # Foreign keys are off by default in SQLite; WAL lets readers run beside the writer.
    cursor = dbapi_connection.cursor()
    for pragma in ("foreign_keys=ON", "journal_mode=WAL", "busy_timeout=5000", "synchronous=NORMAL"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def engine_options(settings: Settings) -> dict[str, Any]:
    """Pool and driver options; both are bounded so a dead database fails fast instead of hanging."""
    pool = {
        "pool_size": settings.database_pool_size,
        "max_overflow": settings.database_max_overflow,
        "pool_timeout": settings.database_pool_timeout,
        "pool_recycle": settings.database_pool_recycle,
    }
    if settings.uses_sqlite:
        # One connection: SQLite has one writer anyway, and a transaction that read before another
        # committed cannot write afterwards (SQLITE_BUSY_SNAPSHOT). Queueing transactions for the one
        # connection makes the embedded mode correct under concurrent requests, at a laptop's scale.
        # Every request waits its turn there, so the wait is as long as SQLite's own for a lock (5 s),
        # not the short one that makes a stalled PostgreSQL fail fast.
        pool |= {"pool_size": 1, "max_overflow": 0, "pool_timeout": max(settings.database_pool_timeout, 5.0)}
        return {**pool, "connect_args": {"timeout": max(settings.database_connect_timeout, 5.0)}}
    return {
        **pool,
        "connect_args": {
            "timeout": settings.database_connect_timeout,
            "command_timeout": settings.database_statement_timeout,
            "server_settings": {
                "application_name": "switchboard",
                "statement_timeout": str(int(settings.database_statement_timeout * 1000)),
            },
        },
    }


def make_engine(database_url: str, **options: Any) -> AsyncEngine:
    """An engine for either database: SQLite gets its directory made and its pragmas set."""
    url = make_url(database_url)
    sqlite = url.get_backend_name() == "sqlite"
    if sqlite and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, **options)
    if sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def ping_idle_connections(engine: AsyncEngine, idle_seconds: float) -> None:
    """Test a connection as it leaves the pool when it has sat there `idle_seconds` or more.

    SQLAlchemy's pool_pre_ping tests every checkout, which on asyncpg is three round trips (BEGIN,
    a query, ROLLBACK) before each request's own. A connection in steady use has just proved itself; one
    that sat idle may have been closed by a server restart or failover, and is replaced unnoticed.
    A connection that dies while in use still fails its request (503), and the pool then discards every
    connection older than the failure.
    """

    dialect = engine.dialect

    def _returned(_: Any, record: ConnectionPoolEntry) -> None:
        record.info["returned_at"] = time.monotonic()

    def _leaving(dbapi_connection: Any, record: ConnectionPoolEntry, _: Any) -> None:
        returned: float | None = record.info.get("returned_at")
        if returned is None or time.monotonic() - returned < idle_seconds:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool replaces the connection and tries again (up to three times).
            raise DisconnectionError(f"pooled connection failed its ping: {error}") from error

    event.listen(engine.sync_engine, "checkin", _returned)
    event.listen(engine.sync_engine, "checkout", _leaving)


def open_database(settings: Settings) -> Database:
    engine = make_engine(settings.database_url, **engine_options(settings))
    if settings.database_pool_pre_ping:
        ping_idle_connections(engine, settings.database_pool_ping_after)
    metrics.watch_pool(engine.sync_engine.pool)
    # expire_on_commit=False: after the request commits, routes still read the objects they hold.
    return Database(
        engine,
        async_sessionmaker(engine, expire_on_commit=False),
        async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False),
    )


# Methods that change nothing (RFC 9110 "safe"): their requests read in autocommit sessions.
_SAFE_METHODS = frozenset({"GET", "HEAD"})


def session() -> AsyncSession:
    """The request's session, opened on first use; committed when the handler succeeds.

    A safe request (GET, HEAD) gets an autocommit session: its reads are not one snapshot (a page and
    its total may straddle a concurrent change), and the one write a read may make (a personal token's
    last use) commits on its own.
    """
    current: AsyncSession | None = g.get("db_session")
    if current is None:
        database: Database = current_app.extensions["db"]
        current = (database.reader if request.method in _SAFE_METHODS else database.sessionmaker)()
        g.db_session = current
    return current


AfterCommit = Callable[[], Awaitable[None]]
M = TypeVar("M")


async def conditional_update(
    session: AsyncSession, model: type[M], *conditions: ColumnElement[bool], **values: Any
) -> Sequence[M]:
    """`UPDATE model SET values WHERE conditions RETURNING` the rows it changed, with the session's copies
    refreshed: the rows a concurrent transaction changed first do not match, so the result says what
    this transaction won."""
    result = await session.execute(
        update(model)
        .where(*conditions)
        .values(**values)
        .returning(model)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return result.scalars().all()


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def lead(session: AsyncSession, key: int) -> bool:
    """Whether this transaction may act as the one leader for `key` across every process and instance.

    On PostgreSQL a transaction-scoped advisory lock (released at commit or rollback); the embedded mode
    is one process, so it always leads.
    """
    if not is_postgres(session):
        return True
    return bool(await session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}))


def after_commit(session: AsyncSession | Session, action: AfterCommit) -> None:
    """Run `action` once `session` commits (cache invalidation that must not precede the commit).

    The same action registered twice runs once: a transaction writing many events wakes the relay once.
    """
    waiting = session.info.setdefault("after_commit", [])
    if action not in waiting:
        waiting.append(action)


async def commit(session: AsyncSession) -> None:
    """Commit, then run what was waiting for the commit."""
    await session.commit()
    for action in session.info.pop("after_commit", []):
        await action()


async def commit_request_session() -> None:
    current: AsyncSession | None = g.get("db_session")
    if current is not None and (current.in_transaction() or current.info.get("after_commit")):
        await commit(current)


def abandon_request_session() -> None:
    """The request failed because a dependency did not answer: end its session by dropping its
    connection rather than rolling back, which on a frozen database would wait out another command
    timeout before the error could be sent. The server rolls back what a dropped connection began."""
    g.db_session_abandoned = True


async def _close_request_session(_: BaseException | None) -> None:
    # Closing rolls back whatever was not committed: a failed handler leaves no partial writes.
    current: AsyncSession | None = g.pop("db_session", None)
    if current is not None:
        if g.pop("db_session_abandoned", False):
            await current.invalidate()
        else:
            await current.close()


def init_app(app: Quart, settings: Settings) -> None:
    @app.before_serving
    async def _open() -> None:
        app.extensions["db"] = open_database(settings)

    @app.after_serving
    async def _close() -> None:
        database: Database | None = app.extensions.pop("db", None)
        if database is not None:
            await database.close()

    app.teardown_request(_close_request_session)
