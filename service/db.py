"""The engine and sessionmaker (opened in before_serving) and the per-request session."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic_core import from_json
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
    # Sessions whose statements each commit on their own, so a read costs its query alone, without the
    # BEGIN and COMMIT round trips around it (same pool, same connections): for safe requests (GET,
    # HEAD) and the sweeper's reads.
    autocommit: async_sessionmaker[AsyncSession]
    # The most a request may spend on the database, from the moment it asks for its session
    # (DATABASE_REQUEST_TIMEOUT); None on SQLite, whose requests queue for its one connection.
    request_timeout: float | None = None

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
    # JSON columns read through pydantic's parser (Rust): the same values as json.loads, several times
    # faster, on every agent and assignment row a list returns.
    engine = create_async_engine(url, json_deserializer=from_json, **options)
    if sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    else:
        event.listen(engine.sync_engine, "close", _drop_at_once)
    return engine


def _drop_at_once(dbapi_connection: Any, _: ConnectionPoolEntry) -> None:
    """Close the socket of a connection the pool lets go, without a goodbye to the server.

    SQLAlchemy closes an invalidated or recycled asyncpg connection gracefully first, waiting up to 2 s for
    the server to acknowledge; when the server is frozen (often why the connection is let go) every
    request that let one go waited that long. The pool has already rolled back what it closes, and the
    server rolls back anything a dropped connection left open.
    """
    dbapi_connection.driver_connection.terminate()


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
    metrics.watch_statements(engine.sync_engine)
    # expire_on_commit=False: after the request commits, routes still read the objects they hold.
    return Database(
        engine,
        async_sessionmaker(engine, expire_on_commit=False),
        async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False),
        None if settings.uses_sqlite else settings.database_request_timeout,
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
        current = (database.autocommit if request.method in _SAFE_METHODS else database.sessionmaker)()
        g.db_session = current
        _arm_deadline(database)
    return current


def read_session() -> AsyncSession:
    """An autocommit session for what a writing request reads before it knows whether it will write (a
    heartbeat's look at its agent): a read costs its query alone, without BEGIN and COMMIT. Closed with
    the request; nothing written through it is part of the request's transaction, so write nothing.
    A safe request's own session is one already; on SQLite the request's session is the reader too (a
    second session would wait for the one connection the first holds).
    """
    database: Database = current_app.extensions["db"]
    if request.method in _SAFE_METHODS or database.engine.dialect.name == "sqlite":
        return session()
    current: AsyncSession | None = g.get("db_reader")
    if current is None:
        current = database.autocommit()
        g.db_reader = current
        _arm_deadline(database)
    return current


async def release_reads() -> None:
    """Hand a safe request's pooled connection back before it waits on something else (the presence
    store in Redis): its autocommit session would otherwise hold the connection to the end of the
    request, and a frozen Redis would then starve the pool of connections nobody uses. Used again, the
    session takes a connection anew. A writing request's transaction is left alone."""
    current: AsyncSession | None = g.get("db_session")
    if current is not None and request.method in _SAFE_METHODS and current.in_transaction():
        await current.commit()


def _arm_deadline(database: Database) -> None:
    """Start the request's database deadline with its first session (one deadline, however many)."""
    if database.request_timeout is not None and g.get("db_deadline") is None:
        _set_deadline(asyncio.get_running_loop().time() + database.request_timeout)


def _set_deadline(when: float | None) -> None:
    """Arm (or, with None, disarm) the request's database deadline, and the scope running now if any."""
    g.db_deadline = when
    scope: asyncio.Timeout | None = g.get("db_scope")
    # An expired scope has fired: it cancelled the request, and can no longer be moved (reschedule would
    # raise, a 500). Usually the cancellation ends the request, a 503; but something on the way may have
    # swallowed it (3.11's asyncio.wait_for can, when what it waited for finished in the same instant),
    # and the request went on, as here after its commit (seen with 1,000 streams opening at once).
    if scope is not None and not scope.expired():
        scope.reschedule(when)


@asynccontextmanager
async def request_deadline() -> AsyncIterator[None]:
    """Hold part of a request (its before-request hooks; its view and commit) to the deadline of its
    database work: DATABASE_REQUEST_TIMEOUT after it first asks for its session, whether the time goes
    to waiting for a pooled connection, an idle connection's ping, a reconnect or the statements. Past
    it, what is awaited is cancelled and the request ends in TimeoutError, a 503 (errors.py): one
    deadline rather than the sum of every step's own timeout. Until the session is opened it is not
    armed, so requests that never touch the database are not bounded by it.
    """
    try:
        async with asyncio.timeout_at(g.get("db_deadline")) as scope:
            g.db_scope = scope
            yield
    except TimeoutError as error:
        if scope.expired():  # ours, not a timeout from within that merely passes through
            raise TimeoutError("the request's database work ran past DATABASE_REQUEST_TIMEOUT") from error
        raise
    finally:
        g.db_scope = None


AfterCommit = Callable[[], Awaitable[None]]
M = TypeVar("M")


class ConditionalUpdate(Generic[M]):
    """`UPDATE model SET values WHERE conditions RETURNING` the rows it changed, with the session's copies
    refreshed: the rows a concurrent transaction changed first do not match, so the result says what
    this transaction won.

    Built once, where it is defined (at import), with `bindparam`s for what varies from call to call:
    SQLAlchemy then neither builds the statement nor computes its cache key per call, which cost as much
    as the database round trip itself on the write paths (0.3 ms of 0.8 ms, docs/benchmarks.md).
    """

    def __init__(self, model: type[M], *conditions: ColumnElement[bool], **values: Any) -> None:
        self.statement = (
            update(model)
            .where(*conditions)
            .values(**values)
            .returning(model)
            .execution_options(synchronize_session=False, populate_existing=True)
        )

    async def __call__(self, session: AsyncSession, **params: Any) -> Sequence[M]:
        """Run it with the `bindparam` values `params`; the rows it changed."""
        return (await session.execute(self.statement, params)).scalars().all()


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")


async def lead(session: AsyncSession, key: int) -> bool:
    """Whether this transaction may act as the one leader for `key` across every process and instance.

    On PostgreSQL a transaction-scoped advisory lock (released at commit or rollback); the embedded mode
    is one process, so it always leads.
    """
    if not is_postgres(session):
        return True
    return bool(await session.scalar(_TRY_LOCK, {"key": key}))


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
    await _run_after_commit(session)


async def _run_after_commit(session: AsyncSession) -> None:
    for action in session.info.pop("after_commit", []):
        await action()


async def commit_request_session() -> None:
    current: AsyncSession | None = g.get("db_session")
    if current is not None and (current.in_transaction() or current.info.get("after_commit")):
        await current.commit()
        # Committed: what waited for the commit (cache invalidation) is not database work, and a 503
        # now would report a change that was made as not made.
        _set_deadline(None)
        await _run_after_commit(current)


def abandon_request_session() -> None:
    """The request failed because a dependency did not answer: end its session by dropping its
    connection rather than rolling back, which on a frozen database would wait out another command
    timeout before the error could be sent. The server rolls back what a dropped connection began."""
    g.db_session_abandoned = True


async def _close_request_session(_: BaseException | None) -> None:
    # A session that holds no transaction holds no connection: closing it would only detach its objects,
    # at the cost of a greenlet switch (more than making the session did). Requests served from the
    # caches open their sessions and never use them.
    # The reader is in autocommit: returning its connection to the pool sends nothing.
    reader: AsyncSession | None = g.pop("db_reader", None)
    if reader is not None and reader.in_transaction():
        await reader.close()
    # Closing rolls back whatever was not committed: a failed handler leaves no partial writes.
    current: AsyncSession | None = g.pop("db_session", None)
    abandoned: bool = g.pop("db_session_abandoned", False)
    if current is None or not (abandoned or current.in_transaction()):
        return
    if abandoned:
        await current.invalidate()
        return
    try:
        # Still within the request's deadline: a ROLLBACK the server does not answer costs the rest of
        # it, not another command timeout.
        async with asyncio.timeout_at(g.pop("db_deadline", None)):
            await current.close()
    except TimeoutError:
        await current.invalidate()


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
