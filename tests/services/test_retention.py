"""Retention: old events, idempotency keys and settled notifications are purged in batches; what is
still needed (unpublished events, queued notifications, anything recent) is kept."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from service import background, db
from service.application import Switchboard
from service.config import Settings
from service.events.archive import OutboxArchive
from service.events.broker import Envelope, SubscriberLagged
from service.events.memory_broker import MemoryBroker
from service.models.assignments import IdempotencyKey
from service.models.events import OutboxEvent
from service.models.notifications import DELIVERED, FAILED, QUEUED, Notification
from service.services import accounts, retention

from ..accounts import PASSWORD
from ..conftest import AppMaker

NOW = datetime.now(UTC)
# Event ids are times: one per second over the past two days, so each row's id matches its age.
BASE_MS = int((NOW - timedelta(days=2)).timestamp() * 1000)


def _event(seconds: int, *, published: bool = True) -> OutboxEvent:
    at = NOW - timedelta(days=2) + timedelta(seconds=seconds)
    return OutboxEvent(
        type="agent.updated",
        topic=None,
        data={"time": at.isoformat(), "data": {"n": seconds}, "request_id": None},
        created_at=at,
        published_at=at if published else None,
        event_ms=BASE_MS + seconds * 1000 if published else None,
        event_seq=0 if published else None,
    )


async def _add(app: Switchboard, rows: list[Any]) -> None:
    # No background relay or purge meanwhile: each test runs the rounds it means to, and no other.
    await background.loops_of(app).stop()
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session, session.begin():
        session.add_all(rows)


async def _kept_events(app: Switchboard) -> list[int]:
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        rows = (await session.scalars(select(OutboxEvent).order_by(OutboxEvent.id))).all()
    return [row.data["data"]["n"] for row in rows]


async def _purge_all(app: Switchboard) -> None:
    settings: Settings = app.config["SETTINGS"]
    while await retention.purge(app.extensions["db"], settings, NOW):
        pass


async def test_events_beyond_the_age_or_the_count_go_and_unpublished_ones_stay(make_app: AppMaker) -> None:
    app = await make_app(event_retention_count=100, event_retention_hours=24)
    day = 24 * 3600
    old = [_event(n) for n in range(0, 10)]  # two days old
    pending = [_event(20, published=False)]  # old but never published: the relay still owes it
    recent = [_event(day + 60 + n) for n in range(105)]  # within the day, but 5 more than the count
    await _add(app, [*old, *pending, *recent])

    await _purge_all(app)

    kept = await _kept_events(app)
    assert kept == [20, *(day + 60 + n for n in range(5, 105))]


async def test_the_archive_lags_a_client_whose_events_were_purged(make_app: AppMaker) -> None:
    app = await make_app(event_retention_count=100, event_retention_hours=24)
    day = 24 * 3600
    await _add(app, [_event(n) for n in range(3)] + [_event(day + 60 + n) for n in range(3)])
    archive = OutboxArchive(app.extensions["db"])
    purged_id, kept_id = (BASE_MS + 1000, 0), (BASE_MS + (day + 60) * 1000, 0)
    assert [e.data["data"]["n"] for e in await archive(purged_id, None, 10)][:2] == [2, day + 60]

    await _purge_all(app)

    with pytest.raises(SubscriberLagged):
        await archive(purged_id, None, 10)
    assert [e.data["data"]["n"] for e in await archive(kept_id, None, 10)] == [day + 61, day + 62]


async def test_idempotency_keys_live_a_day(app: Switchboard) -> None:
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session, session.begin():
        user = await accounts.new_user(session, "ivy", "ivy@example.com", PASSWORD)
        user_id = user.id

    def key(name: str, age: timedelta) -> IdempotencyKey:
        return IdempotencyKey(
            user_id=user_id, key=name, request_hash="h", status_code=201, response={}, created_at=NOW - age
        )

    await _add(app, [key("stale", timedelta(hours=25)), key("fresh", timedelta(hours=23))])

    await _purge_all(app)

    async with database.sessionmaker() as session:
        assert (await session.scalars(select(IdempotencyKey.key))).all() == ["fresh"]


async def test_settled_notifications_go_after_a_week_and_queued_ones_stay(app: Switchboard) -> None:
    def note(status: str, age: timedelta) -> Notification:
        at = NOW - age
        return Notification(
            channel="log",
            kind=f"{status}-{age.days}",
            payload={},
            status=status,
            created_at=at,
            updated_at=at,
        )

    week = timedelta(days=8)
    await _add(
        app,
        [note(DELIVERED, week), note(FAILED, week), note(QUEUED, week), note(DELIVERED, timedelta(days=1))],
    )

    await _purge_all(app)

    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        kinds = sorted((await session.scalars(select(Notification.kind))).all())
    assert kinds == ["delivered-1", "queued-8"]


async def test_a_large_backlog_goes_in_batches(make_app: AppMaker, monkeypatch: pytest.MonkeyPatch) -> None:
    app = await make_app(event_retention_count=100, event_retention_hours=24)
    monkeypatch.setattr(retention, "BATCH", 4)
    await _add(app, [_event(n) for n in range(10)])
    settings: Settings = app.config["SETTINGS"]

    rounds = [await retention.purge(app.extensions["db"], settings, NOW) for _ in range(4)]

    assert rounds == [True, True, False, False]
    assert await _kept_events(app) == []


async def test_the_log_is_trimmed_by_age(settings: Settings) -> None:
    broker = MemoryBroker()
    await broker.append([Envelope(1, "agent.updated", {}, None, (time.time_ns() // 1_000_000, 0))])

    await retention.trim_log(broker, settings, datetime.now(UTC))
    assert len(await broker.replay("0")) == 1

    later = datetime.now(UTC) + timedelta(hours=settings.event_retention_hours, seconds=1)
    await retention.trim_log(broker, settings, later)
    with pytest.raises(SubscriberLagged):
        await broker.replay("0")
