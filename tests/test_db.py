"""The data layer: the request session commits on success and rolls back on error; the Entity
columns behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from quart.testing import QuartClient
from sqlalchemy import String, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

from service import background, create_app, metrics
from service.application import Switchboard
from service.config import Settings
from service.db import engine_options, make_engine, ping_idle_connections
from service.models.entity import NAMING_CONVENTION, Entity, Model, new_id

from . import probes
from .accounts import signed_in
from .conftest import make_settings
from .faults.proxy import FaultProxy
from .fleet import make_agent
from .statements import statements


@asynccontextmanager
async def _notes_table(app: Switchboard) -> AsyncIterator[None]:
    """The probe routes' table, for the life of the block."""
    engine = app.extensions["db"].engine
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE IF NOT EXISTS probe_notes (body VARCHAR(100))"))
    try:
        yield
    finally:
        async with engine.begin() as connection:
            await connection.execute(text("DROP TABLE probe_notes"))


@pytest.fixture
async def probe_app(settings: Settings) -> AsyncIterator[Switchboard]:
    app = create_app(settings)
    app.register_blueprint(probes.blueprint)
    async with app.test_app(), _notes_table(app):
        yield app


async def _notes(app: Switchboard) -> list[str]:
    async with app.extensions["db"].engine.connect() as connection:
        return list((await connection.execute(text("SELECT body FROM probe_notes"))).scalars())


async def test_a_successful_handler_commits(probe_app: Switchboard) -> None:
    client: QuartClient = probe_app.test_client()
    response = await client.post("/_probe/notes/kept")
    assert response.status_code == 200
    assert await _notes(probe_app) == ["kept"]


async def test_a_failing_handler_leaves_no_partial_write(probe_app: Switchboard) -> None:
    response = await probe_app.test_client().post("/_probe/notes/lost/fail")
    assert response.status_code == 409
    assert await _notes(probe_app) == []


async def test_the_session_is_closed_after_each_request(probe_app: Switchboard) -> None:
    client = probe_app.test_client()
    for _ in range(3):
        assert (await client.get("/_probe/query")).status_code == 200
    assert probe_app.extensions["db"].engine.sync_engine.pool.checkedout() == 0


async def test_a_session_the_request_never_used_is_not_closed(
    probe_app: Switchboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing a session that holds no connection only detaches its objects, for a greenlet switch that
    cost a cached read more than its Redis call. A committed session gave its connection back at the
    commit; one still in a transaction (a failed handler's) is closed, which rolls it back."""
    closed: list[AsyncSession] = []
    close = AsyncSession.close

    async def counting(session: AsyncSession) -> None:
        closed.append(session)
        await close(session)

    await background.loops_of(probe_app).stop()  # their own sessions are not the requests'
    monkeypatch.setattr(AsyncSession, "close", counting)
    client = probe_app.test_client()
    for method in ("GET", "POST"):
        assert (await client.open("/_probe/untouched", method=method)).status_code == 200
    assert closed == []
    assert (await client.get("/_probe/query")).status_code == 200
    assert (await client.post("/_probe/notes/kept")).status_code == 200
    assert closed == []
    assert (await client.post("/_probe/notes/lost/fail")).status_code == 409
    assert len(closed) == 1
    assert await _notes(probe_app) == ["kept"]
    assert probe_app.extensions["db"].engine.sync_engine.pool.checkedout() == 0


async def _leave_mid_request(app: Switchboard, note: str, body_complete: bool) -> list[dict[str, Any]]:
    """POST the held probe over ASGI, the client going away while its view waits; what was sent."""
    reached, release = asyncio.Event(), asyncio.Event()
    app.config["PROBE_HOLD"] = (reached, release)
    arriving: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    arriving.put_nowait({"type": "http.request", "body": b"{}", "more_body": not body_complete})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    path = f"/_probe/notes/{note}/held"
    scope = {
        "type": "http",
        "asgi": {"spec_version": "2.3", "version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
        "extensions": {},
    }
    serving = asyncio.create_task(app(scope, arriving.get, send))  # type: ignore[arg-type]
    await asyncio.wait_for(reached.wait(), 5)
    arriving.put_nowait({"type": "http.disconnect"})
    await asyncio.sleep(0.05)  # the disconnect is seen while the view still waits
    release.set()
    await asyncio.wait_for(serving, 5)
    return sent


async def test_a_client_that_leaves_mid_request_does_not_cut_the_request_short(
    probe_app: Switchboard,
) -> None:
    """Its request runs to the end (a cancelled one could leave its pooled connection checked out until
    the garbage collector found it): the write commits, the connection goes back, nothing is sent."""
    assert await _leave_mid_request(probe_app, "after-leaving", body_complete=True) == []
    assert await _notes(probe_app) == ["after-leaving"]
    assert probe_app.extensions["db"].engine.sync_engine.pool.checkedout() == 0


async def test_a_request_whose_body_never_arrived_is_cancelled_when_its_client_leaves(
    probe_app: Switchboard,
) -> None:
    """A cut body is not acted on: the request stops, and what it wrote is rolled back."""
    assert await _leave_mid_request(probe_app, "cut-body", body_complete=False) == []
    assert await _notes(probe_app) == []
    assert probe_app.extensions["db"].engine.sync_engine.pool.checkedout() == 0


async def test_safe_requests_read_without_a_transaction_block(probe_app: Switchboard) -> None:
    """GET reads cost their queries alone (no BEGIN and COMMIT round trips); POST writes in one block."""
    client = probe_app.test_client()
    assert (await (await client.get("/_probe/transaction")).get_json()) == {"autocommit": True}
    assert (await (await client.post("/_probe/transaction")).get_json()) == {"autocommit": False}


def test_pool_options_are_bounded(settings: Settings) -> None:
    options = engine_options(settings)
    if settings.uses_sqlite:
        # Every transaction queues for SQLite's one connection: as long as SQLite waits for a lock.
        assert options["pool_timeout"] == 5.0
    else:
        assert options["pool_timeout"] == settings.database_pool_timeout
        connect: dict[str, Any] = options["connect_args"]
        assert connect["timeout"] == settings.database_connect_timeout
        assert connect["server_settings"]["statement_timeout"] == "2000"


class _Scratch(DeclarativeBase):
    """A metadata of its own, so this test table never reaches the migrations or the drift check."""

    from sqlalchemy import MetaData

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = Model.type_annotation_map


class Widget(Entity, _Scratch):
    __tablename__ = "scratch_widgets"
    name: Mapped[str] = mapped_column(String(40))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)


@pytest.fixture
async def widgets(app: Switchboard) -> AsyncIterator[Switchboard]:
    engine = app.extensions["db"].engine
    async with engine.begin() as connection:
        await connection.run_sync(_Scratch.metadata.create_all)
    yield app
    async with engine.begin() as connection:
        await connection.run_sync(_Scratch.metadata.drop_all)


async def test_an_idle_connection_the_server_closed_is_replaced(settings: Settings) -> None:
    """A pooled connection that sat idle past DATABASE_POOL_PING_AFTER is tested before use: one the
    server closed meanwhile (a restart, a failover) is replaced instead of failing the request."""
    if settings.uses_sqlite:
        pytest.skip("a server that closes connections: runs in the PostgreSQL configuration")
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
    ping_idle_connections(engine, idle_seconds=0)
    admin = make_engine(settings.database_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            first = await connection.scalar(text("SELECT pg_backend_pid()"))
        async with admin.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        async with engine.connect() as connection:
            second = await connection.scalar(text("SELECT pg_backend_pid()"))
        assert second != first
    finally:
        await engine.dispose()
        await admin.dispose()


@pytest.fixture
def proxy(settings: Settings) -> Iterator[FaultProxy]:
    """A fault proxy in front of the test PostgreSQL: `freeze()` makes it stop answering."""
    if settings.uses_sqlite:
        pytest.skip("a database that stops answering: runs in the PostgreSQL configuration")
    with FaultProxy(make_url(settings.database_url).port or 5432).start() as started:
        yield started


# Every step's own timeout far beyond the request's deadline: an answer well within them shows that the
# deadline, not one of them, ended the request. The background loops keep out of the way.
_SLOW_STEPS = {
    "database_pool_timeout": 30.0,
    "database_connect_timeout": 30.0,
    "database_statement_timeout": 30.0,
    "database_request_timeout": 0.5,
    "relay_interval": 60.0,
    "sweep_interval": 300.0,
    "notify_interval": 3600.0,
}


def _proxied_app(settings: Settings, proxy: FaultProxy, **overrides: Any) -> Switchboard:
    url = make_url(settings.database_url).set(port=proxy.port).render_as_string(hide_password=False)
    app = create_app(make_settings(url, redis_url=None, **{**_SLOW_STEPS, **overrides}))
    app.register_blueprint(probes.blueprint)
    return app


async def _timed(request: Any) -> tuple[Any, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


@pytest.fixture
def goodbyes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every graceful close of an asyncpg connection still open: each waits for the server to answer."""
    waited: list[bool] = []
    close = asyncpg.Connection.close

    async def spy(self: asyncpg.Connection, *, timeout: float | None = None) -> None:
        if not self.is_closed():
            waited.append(True)
        await close(self, timeout=timeout)

    monkeypatch.setattr(asyncpg.Connection, "close", spy)
    return waited


async def _all_returned(app: Switchboard) -> bool:
    """Whether the pool gets every connection back (background rounds borrow one now and then)."""
    pool = app.extensions["db"].engine.sync_engine.pool
    for _ in range(100):
        if pool.checkedout() == 0:
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.parametrize(
    "stalls",
    [
        "statement",  # the connection is in hand; its query is never answered
        "ping",  # an idle connection's ping is never answered, nor the reconnect that would replace it
        "pool",  # the one connection is held by a stalled request, so the next waits for the pool
    ],
)
async def test_a_frozen_database_costs_a_request_one_deadline(
    settings: Settings, proxy: FaultProxy, goodbyes: list[bool], stalls: str
) -> None:
    """Whatever step a request is stuck in, DATABASE_REQUEST_TIMEOUT ends it with a 503 and Retry-After;
    the connections it gave up on are dropped, not closed politely (which waits up to 2 s for a goodbye
    the frozen server never sends); and the pool heals once the database answers again."""
    overrides: dict[str, Any] = {"database_pool_ping_after": 0 if stalls == "ping" else 3600}
    if stalls == "pool":
        overrides |= {"database_pool_size": 1, "database_max_overflow": 0}
    app = _proxied_app(settings, proxy, **overrides)
    async with app.test_app():
        client = app.test_client()
        assert (await client.get("/_probe/query")).status_code == 200
        proxy.freeze()
        try:
            callers = 2 if stalls == "pool" else 1
            answers = await asyncio.gather(*(_timed(client.get("/_probe/query")) for _ in range(callers)))
        finally:
            proxy.pass_through()
        for response, seconds in answers:
            assert response.status_code == 503
            assert (await response.get_json())["error"]["code"] == "SERVICE_UNAVAILABLE"
            assert response.headers["Retry-After"]
            assert seconds < 5.0, f"{stalls}: the 503 took {seconds:.1f} s"
        assert not goodbyes
        assert (await client.get("/_probe/query")).status_code == 200
        assert await _all_returned(app)


async def test_a_request_whose_deadline_cancellation_was_lost_still_commits(settings: Settings) -> None:
    """The deadline fired, but its cancellation was lost on the way (3.11's asyncio.wait_for can lose
    one): the request goes on, commits and answers, rather than failing with a 500 for moving a spent
    deadline (seen with 1,000 event streams opening at once on a slow machine)."""
    if settings.uses_sqlite:
        pytest.skip("the request deadline: runs in the PostgreSQL configuration (SQLite has none)")
    app = create_app(make_settings(settings.database_url, redis_url=None, **_SLOW_STEPS))
    app.register_blueprint(probes.blueprint)
    async with app.test_app(), _notes_table(app):
        response = await app.test_client().post("/_probe/notes/late/swallowed")
        assert response.status_code == 200, await response.get_data(as_text=True)
        assert await _notes(app) == ["late"]


async def test_a_rollback_the_database_never_answers_ends_at_the_deadline(
    settings: Settings, proxy: FaultProxy
) -> None:
    """A failed request whose database froze before its ROLLBACK still answers (its own 409) by the
    deadline, drops the connection, and leaves nothing written."""
    app = _proxied_app(settings, proxy)
    async with app.test_app(), _notes_table(app):
        app.config["PROBE_BEFORE_ROLLBACK"] = proxy.freeze
        try:
            response, seconds = await _timed(app.test_client().post("/_probe/notes/lost/fail"))
        finally:
            proxy.pass_through()
        assert response.status_code == 409
        assert seconds < 5.0, f"the 409 took {seconds:.1f} s"
        assert await _all_returned(app)
        assert await _notes(app) == []


async def test_entity_columns_round_trip(widgets: Switchboard) -> None:
    maker = widgets.extensions["db"].sessionmaker
    async with maker() as session:
        widget = Widget(name="w", attributes={"colour": "red", "sizes": [1, 2]})
        session.add(widget)
        await session.commit()
        widget_id = widget.id
    async with maker() as session:
        stored = await session.get(Widget, widget_id)
        assert stored is not None
        assert isinstance(stored.id, uuid.UUID)
        assert stored.created_at.tzinfo is not None
        assert stored.created_at.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - stored.created_at) < timedelta(minutes=1)
        assert stored.attributes == {"colour": "red", "sizes": [1, 2]}
        assert stored.is_deleted is False
        first_update = stored.updated_at
        stored.soft_delete()
        await session.commit()
    async with maker() as session:
        deleted = await session.get(Widget, widget_id)
        assert deleted is not None
        assert deleted.is_deleted
        assert deleted.updated_at >= first_update
        live = (await session.execute(select(Widget).where(Widget.deleted_at.is_(None)))).scalars().all()
        assert live == []
        deleted.restore()
        assert deleted.is_deleted is False


async def test_naive_datetimes_are_refused(widgets: Switchboard) -> None:
    async with widgets.extensions["db"].sessionmaker() as session:
        session.add(Widget(name="n", created_at=datetime(2026, 1, 1)))
        with pytest.raises(Exception, match="naive datetime"):
            await session.commit()


def test_json_is_jsonb_on_postgresql() -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    column = Widget.__table__.c.attributes
    assert column.type.compile(dialect=postgresql.dialect()) == "JSONB"
    assert column.type.compile(dialect=sqlite.dialect()) == "JSON"


def test_ids_are_time_ordered_uuid7() -> None:
    ids = [new_id() for _ in range(50)]
    assert all(value.version == 7 for value in ids)
    assert len(set(ids)) == 50
    stamps = [value.int >> 80 for value in ids]
    assert stamps == sorted(stamps)


async def test_a_checkout_cancelled_during_its_ping_leaves_the_pool_gauge_alone(settings: Settings) -> None:
    """A request's deadline can cancel an idle connection's ping inside the checkout: SQLAlchemy then
    checks the connection back in without having announced its checkout, which drove
    db_pool_checked_out below zero under load (-5 on a benchmark server)."""
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
    ping_idle_connections(engine, idle_seconds=0)
    metrics.watch_pool(engine.sync_engine.pool)

    def checked_out() -> float:
        value = REGISTRY.get_sample_value("db_pool_checked_out")
        assert value is not None
        return value

    def cancelled(_: Any) -> None:
        raise asyncio.CancelledError

    try:
        before = checked_out()
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            assert checked_out() == before + 1
        assert checked_out() == before
        pinged = engine.dialect.do_ping
        engine.dialect.do_ping = cancelled  # type: ignore[method-assign]
        with pytest.raises(asyncio.CancelledError):
            async with engine.connect():
                pass
        assert checked_out() == before
        engine.dialect.do_ping = pinged  # type: ignore[method-assign]
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            assert checked_out() == before + 1
        assert checked_out() == before
    finally:
        metrics.unwatch_pool(engine.sync_engine.pool)
        await engine.dispose()


async def test_every_statement_sent_is_counted(client: QuartClient, app: Switchboard) -> None:
    """db_statements_total: the round trips a request costs, readable from /metrics (the benchmarks
    report them per request: unlike CPU time, the count does not vary with a noisy machine)."""
    operator = await signed_in(client, "opal", "operator", app)

    def counted() -> float:
        return REGISTRY.get_sample_value("db_statements_total") or 0.0

    with statements(app.extensions["db"].engine) as seen:
        before = counted()  # inside: a background loop's statement now is seen by both
        await make_agent(client, operator, "a1")
        await client.get("/api/v1/agents", headers=operator)
        after = counted()
    assert len(seen) >= 3
    assert after - before == len(seen)
