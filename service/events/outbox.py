"""Recording events in the outbox (in the caller's transaction) and relaying them to the broker.

The relay is the one place event order is decided: it gives committed rows their public ids, in row
order, and hands them to the broker's log. A row committed late is relayed late and gets a later id, so a
subscriber resuming after any id can never miss it.

The ids are committed before the append. An append whose answer is lost (Redis killed just then) may
still have reached subscribers; the next round appends the same rows again under the same ids, so those
subscribers never see the event twice under two ids, even when Redis lost its log meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from quart import Quart, current_app, has_app_context
from redis.asyncio import Redis
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import background, config, db, log, metrics, request_ids
from service.config import Settings
from service.events import archive
from service.events.broker import Broker, Envelope, event_id_key, following
from service.events.memory_broker import MemoryBroker
from service.events.redis_broker import RedisBroker
from service.models.events import OutboxEvent
from service.services import notifications

logger = log.get(__name__)

# An arbitrary constant naming the relay's PostgreSQL advisory lock: one relay at a time across instances.
RELAY_LOCK = 0x5B_0E7E17
RELAY_LOOP = "relay"
# How soon a relay that found another process relaying tries again (the lock is held for one round).
LEADER_RETRY_SECONDS = 0.05
# Internal events every stream hears (whatever its agent filter) and no client is sent: a session or
# token ended, so the streams it opened must close on every instance.
CONTROL_TOPIC = "_control"
SESSION_ENDED = "_session.ended"
# Events that also go out as notifications (NOTIFY_CHANNELS): work given to an agent, an agent lost.
NOTIFIED = frozenset({"assignment.assigned", "agent.offline"})
TOKEN_REVOKED = "_token.revoked"  # noqa: S105 - an event type, not a password


def record(session: AsyncSession, type_: str, data: dict[str, Any], topic: object | None = None) -> None:
    """Add an event to the caller's transaction: it is published if, and only if, the change commits."""
    event = {"time": datetime.now(UTC).isoformat(), "data": data, "request_id": request_ids.current()}
    topic_text = str(topic) if topic is not None else None
    session.add(OutboxEvent(type=type_, topic=topic_text, data=event, request_id=request_ids.current()))
    db.after_commit(session, _wake_relay)
    if type_ in NOTIFIED and has_app_context():
        # Queued in the same transaction as the change: people hear of it even while Redis is down.
        notifications.enqueue(session, config.current(), type_, {"type": type_, **event})


async def _wake_relay() -> None:
    # The relay runs now rather than at its next poll: events reach subscribers in milliseconds. Outside
    # an app (a script using the services) the next poll publishes them.
    if has_app_context():
        background.loops_of(current_app).wake(RELAY_LOOP)


async def relay(database: db.Database, broker: Broker, batch: int = 500) -> bool:
    """Publish committed, unpublished events in order; True when more may wait (a full batch went, or
    another process held the relay lock).

    Raises:
        BrokerUnavailable: Redis is down; the rows stay unpublished (with their ids) and the next round
            retries them.
    """
    async with database.sessionmaker() as session:
        async with session.begin():
            leading = await db.lead(session, RELAY_LOCK)
            envelopes = await _number_batch(session, batch) if leading else []
        if not leading:
            # Another process is relaying and may have read the outbox before our latest commit: try again
            # shortly (the lock is held while a round numbers its batch), not at the next poll.
            await asyncio.sleep(LEADER_RETRY_SECONDS)
            return True
        if not envelopes:
            return False
        # No lock held from here: any relay appends every numbered, unpublished row in id order, and the
        # log takes an id it already holds for the same event as done (see Broker.append).
        ids = await broker.append(envelopes)
        metrics.events_published_total.inc(len(ids))
        async with session.begin():
            await _mark_published(session, envelopes, ids)
    return len(envelopes) == batch


# Built once (see db.ConditionalUpdate): the relay runs after every commit that records an event. Rows
# numbered by an earlier round whose append failed come first, in id order, then the new ones in row
# order; each row carries the newest id given so far (read in the same statement: a round trip less).
_UNPUBLISHED = (
    select(OutboxEvent, *archive.newest_key_columns())
    .where(OutboxEvent.published_at.is_(None))
    .order_by(OutboxEvent.event_ms.is_(None), OutboxEvent.event_ms, OutboxEvent.event_seq, OutboxEvent.id)
    .limit(bindparam("batch"))
)
_PUBLISHED = (
    update(OutboxEvent)
    .where(OutboxEvent.id.in_(bindparam("ids", expanding=True)))
    .values(published_at=bindparam("now"))
    # Nothing in the session to bring up to date: the rows' objects are not read again.
    .execution_options(synchronize_session=False)
)


async def _number_batch(session: AsyncSession, batch: int) -> list[Envelope]:
    """The next batch to publish, each row given its id (committed with the caller's transaction)."""
    found = (await session.execute(_UNPUBLISHED, {"batch": batch})).all()
    if not found:
        return []
    newest_ms, newest_seq = found[0][1], found[0][2]
    # Above the newest id ever given: a log that restarted empty must not reuse or go below one.
    last = (newest_ms, newest_seq) if newest_ms is not None and newest_seq is not None else (0, 0)
    now_ms = time.time_ns() // 1_000_000
    envelopes = []
    for row, _, _ in found:
        if row.event_ms is None or row.event_seq is None:
            last = following(last, now_ms)
            # The archive reads rows back by this id: what the broker's log loses is served from here.
            row.event_ms, row.event_seq = last
        envelopes.append(Envelope(row.id, row.type, row.data, row.topic, (row.event_ms, row.event_seq)))
    return envelopes


async def _mark_published(session: AsyncSession, envelopes: list[Envelope], ids: list[str]) -> None:
    await session.execute(
        _PUBLISHED, {"ids": [envelope.outbox_id for envelope in envelopes], "now": datetime.now(UTC)}
    )
    for envelope, event_id in zip(envelopes, ids, strict=True):
        key = event_id_key(event_id)
        if key != envelope.key:  # the log gave a new id (see Broker.append): the archive must agree
            row = await session.get_one(OutboxEvent, envelope.outbox_id)
            row.event_ms, row.event_seq = key


def open_broker(app: Quart, settings: Settings) -> Broker:
    """Redis when configured (every process shares one log), else the in-process broker."""
    redis: Redis | None = app.extensions.get("redis")
    store = archive.OutboxArchive(app.extensions["db"])
    if redis is None:
        return MemoryBroker(maxlen=settings.event_retention_count, archive=store)
    return RedisBroker(redis, maxlen=settings.event_retention_count, archive=store)


def init_app(app: Quart, settings: Settings) -> None:
    """The broker (opened before serving) and this process's relay loop."""

    @app.before_serving
    async def _open() -> None:
        broker = open_broker(app, settings)
        await broker.start()
        app.extensions["broker"] = broker

    @app.after_serving
    async def _close() -> None:
        broker: Broker | None = app.extensions.pop("broker", None)
        if broker is not None:
            await broker.close()

    async def round_() -> bool:
        return await relay(app.extensions["db"], app.extensions["broker"])

    # A short backoff cap: once Redis is back, waiting events go out within seconds.
    background.loops_of(app).add(RELAY_LOOP, round_, settings.relay_interval, max_backoff=5.0)
