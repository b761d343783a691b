"""Background loops and the relay's round: a wake is never lost, a gathering loop takes a burst of wakes in
one round, and a relay that finds another process relaying tries again soon rather than a whole interval
later."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import pytest
from quart.testing import QuartClient
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker

from service import background, db
from service.application import Switchboard
from service.events import outbox
from service.events.broker import BrokerUnavailable, Envelope
from service.events.memory_broker import MemoryBroker
from service.models.events import OutboxEvent

from .accounts import signed_in
from .conftest import AppMaker
from .fleet import make_agent
from .statements import statements


async def test_a_wake_during_a_round_runs_the_next_round_at_once() -> None:
    loops = background.Loops()
    rounds = 0
    second = asyncio.Event()

    async def round_() -> bool:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            loops.wake("work")  # an event committed while this round was reading the outbox
        else:
            second.set()
        return False

    loops.add("work", round_, interval=3600)
    loops.start()
    try:
        await asyncio.wait_for(second.wait(), 5)
    finally:
        await loops.stop()
    assert rounds == 2


async def test_a_gathering_loop_takes_the_wakes_of_its_window_in_one_round() -> None:
    loops = background.Loops()
    rounds: list[float] = []

    async def round_() -> bool:
        rounds.append(asyncio.get_running_loop().time())
        return False

    loops.add("notify", round_, interval=3600, gather=0.3)
    loops.start()
    try:
        await asyncio.sleep(0.05)
        assert len(rounds) == 1  # the first round runs at start, gathering nothing
        woken = asyncio.get_running_loop().time()
        for _ in range(5):  # five commits within the window, each waking the loop
            loops.wake("notify")
            await asyncio.sleep(0.02)
        async with asyncio.timeout(5):
            while len(rounds) < 2:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.4)
    finally:
        await loops.stop()
    assert len(rounds) == 2
    assert rounds[1] - woken >= 0.3


async def _unpublished(database: db.Database) -> int:
    async with database.sessionmaker() as session:
        query = select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))
        return int((await session.execute(query)).scalar_one())


async def test_a_relay_that_cannot_lead_asks_to_run_again_soon(app: Switchboard, client: QuartClient) -> None:
    database: db.Database = app.extensions["db"]
    if not db.is_postgres(database.sessionmaker()):
        # The embedded mode is one process: its relay always leads (the PostgreSQL run covers this).
        assert await outbox.relay(database, app.extensions["broker"]) is False
        return
    operator = await signed_in(client, "opal", "operator", app)
    async with database.engine.connect() as other:
        # Another instance's relay is mid-round: it holds the lock while this event commits.
        await other.execute(text("SELECT pg_advisory_lock(:key)"), {"key": outbox.RELAY_LOCK})
        await make_agent(client, operator, "a1")
        assert await outbox.relay(database, app.extensions["broker"]) is True
        await other.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": outbox.RELAY_LOCK})
    for _ in range(100):  # the app's own loop, told to run again, publishes it now
        if await _unpublished(database) == 0:
            break
        await asyncio.sleep(0.05)
    assert await _unpublished(database) == 0


async def _record_unannounced(database: db.Database, n: int) -> None:
    """An event committed as a script would: no app to wake the relay."""
    async with async_sessionmaker(database.engine)() as session, session.begin():
        outbox.record(session, "agent.updated", {"n": n}, topic="a1")


async def _newest_published(database: db.Database) -> tuple[int, int]:
    async with database.sessionmaker() as session:
        key = select(OutboxEvent.event_ms, OutboxEvent.event_seq).where(OutboxEvent.event_ms.is_not(None))
        ms, seq = (await session.execute(key.order_by(OutboxEvent.id.desc()).limit(1))).one()
    assert ms is not None
    assert seq is not None
    return ms, seq


async def test_a_relay_round_reads_its_batch_and_the_newest_id_in_one_statement(make_app: AppMaker) -> None:
    # Only a wake would run the app's relay within the test, and these commits make none.
    app = await make_app(relay_interval=60)
    database: db.Database = app.extensions["db"]
    await asyncio.sleep(0.05)  # the loop's first round is done
    await _record_unannounced(database, 1)
    assert await outbox.relay(database, app.extensions["broker"]) is False
    first = await _newest_published(database)

    # The log lost everything (Redis restarted empty, or a new process's ring): ids go on above the old.
    await _record_unannounced(database, 2)
    with statements(database.engine) as seen:
        assert await outbox.relay(database, MemoryBroker()) is False
    assert await _newest_published(database) > first
    reads = [sql for sql in seen if sql.lstrip().upper().startswith("SELECT") and "outbox_events" in sql]
    assert len(reads) == 1, reads


class AnswerLost(MemoryBroker):
    """Appends, but the relay never hears back: Redis was killed just after running the append."""

    async def append(self, envelopes: Sequence[Envelope]) -> list[str]:
        await super().append(envelopes)
        raise BrokerUnavailable("connection lost")


async def _event_ids(database: db.Database) -> dict[int, tuple[str | None, bool]]:
    async with database.sessionmaker() as session:
        rows = (await session.scalars(select(OutboxEvent).order_by(OutboxEvent.id))).all()
    return {row.id: (row.event_id, row.published_at is not None) for row in rows}


async def test_events_whose_append_went_unanswered_keep_their_ids_when_sent_again(make_app: AppMaker) -> None:
    """Subscribers may have had them: after the log is lost too, they go out again under the same ids,
    so no subscriber sees one event twice under two ids (and a resume from either id holds)."""
    app = await make_app(relay_interval=60)
    database: db.Database = app.extensions["db"]
    await asyncio.sleep(0.05)  # the loop's first round is done
    for n in range(2):
        await _record_unannounced(database, n)
    lost = AnswerLost()
    with pytest.raises(BrokerUnavailable):
        await outbox.relay(database, lost)
    seen = [event.id for event in await lost.replay("0")]  # what its subscribers were sent
    assert len(seen) == 2
    numbered = await _event_ids(database)
    assert [event_id for event_id, _ in numbered.values()] == seen
    assert not any(published for _, published in numbered.values())

    await _record_unannounced(database, 2)
    again = MemoryBroker()  # the log lost as well: Redis restarted empty
    assert await outbox.relay(database, again) is False
    published = await _event_ids(database)
    assert all(done for _, done in published.values())
    assert [event_id for event_id, _ in published.values()][:2] == seen
    assert [event.id for event in await again.replay("0")] == [event_id for event_id, _ in published.values()]


async def test_stop_ends_a_loop_whose_round_swallowed_the_cancellation() -> None:
    """A cancellation lost inside a round (Python 3.11's wait_for drops one that races with its result)
    must not leave stop() waiting for a loop that runs on: the loop ends at its next turn."""
    loops = background.Loops()
    started = asyncio.Event()

    async def round_() -> bool:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):  # lost, as a racing wait_for loses it
            await asyncio.sleep(3600)
        return True  # "busy": without the stop flag the loop would go straight into another round

    loops.add("swallower", round_, interval=3600)
    loops.start()
    await asyncio.wait_for(started.wait(), 5)
    async with asyncio.timeout(5):
        await loops.stop()
