"""Retention: what the service keeps only for a while is removed here, by one instance at a time.

- Published events (outbox rows, the archive SSE clients resume from) beyond the event retention window:
  older than EVENT_RETENTION_HOURS, or not among the newest EVENT_RETENTION_COUNT. The broker's log is
  trimmed by the same age (its length is capped on every append). Unpublished rows are never touched.
- Idempotency keys after IDEMPOTENCY_TTL: a retry later than that is a new request.
- Notifications delivered or given up after NOTIFICATION_TTL (queued ones stay until they are settled).

Deletes go in batches, each its own short transaction, so a large backlog never holds locks for long.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from quart import Quart
from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from service import background, db, log
from service.config import Settings
from service.events.broker import Broker, BrokerUnavailable
from service.models.assignments import IdempotencyKey
from service.models.events import OutboxEvent
from service.models.notifications import DELIVERED, FAILED, Notification

logger = log.get(__name__)

# Names the purge's PostgreSQL advisory lock (arbitrary, distinct from the relay's and the sweeper's).
RETENTION_LOCK = 0x5B_7E7A1
RETENTION_LOOP = "retention"
RETENTION_INTERVAL = 60.0
IDEMPOTENCY_TTL = timedelta(hours=24)
NOTIFICATION_TTL = timedelta(days=7)
BATCH = 5000


async def purge(database: db.Database, settings: Settings, now: datetime | None = None) -> bool:
    """One round: at most one batch per kind. True when a batch was full (more may be waiting)."""
    now = now or datetime.now(UTC)
    async with database.sessionmaker() as session, session.begin():
        if not await db.lead(session, RETENTION_LOCK):
            return False
        removed = {
            "events": await _purge_events(session, settings, now),
            "idempotency_keys": await _delete_batch(
                session, IdempotencyKey, IdempotencyKey.created_at < now - IDEMPOTENCY_TTL
            ),
            "notifications": await _delete_batch(
                session,
                Notification,
                Notification.status.in_((DELIVERED, FAILED)),
                Notification.updated_at < now - NOTIFICATION_TTL,
            ),
        }
    if any(removed.values()):
        logger.info("retention_purged", **removed)
    return any(count == BATCH for count in removed.values())


async def trim_log(broker: Broker, settings: Settings, now: datetime | None = None) -> None:
    """Trim the broker's log by age; with Redis down it waits for the next round."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(hours=settings.event_retention_hours)
    try:
        await broker.trim(int(cutoff.timestamp() * 1000))
    except BrokerUnavailable as error:
        logger.warning("retention_trim_unavailable", error=str(error))


async def _purge_events(session: AsyncSession, settings: Settings, now: datetime) -> int:
    published = OutboxEvent.published_at.is_not(None)
    # The id of the oldest row still within the newest `count`: everything published below it goes.
    keep_from = await session.scalar(
        select(OutboxEvent.id)
        .where(published)
        .order_by(OutboxEvent.id.desc())
        .offset(settings.event_retention_count - 1)
        .limit(1)
    )
    too_old = OutboxEvent.created_at < now - timedelta(hours=settings.event_retention_hours)
    beyond = too_old if keep_from is None else too_old | (OutboxEvent.id < keep_from)
    return await _delete_batch(session, OutboxEvent, published, beyond)


async def _delete_batch(session: AsyncSession, model: Any, *conditions: ColumnElement[bool]) -> int:
    """Delete up to BATCH rows matching the conditions, oldest ids first; the number deleted."""
    ids = (await session.scalars(select(model.id).where(*conditions).order_by(model.id).limit(BATCH))).all()
    if ids:
        await session.execute(delete(model).where(model.id.in_(ids)))
    return len(ids)


def init_app(app: Quart, settings: Settings) -> None:
    async def round_() -> bool:
        more = await purge(app.extensions["db"], settings)
        await trim_log(app.extensions["broker"], settings)
        return more

    background.loops_of(app).add(RETENTION_LOOP, round_, RETENTION_INTERVAL, wait_first=True)
