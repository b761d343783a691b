"""The notification queue: rows written with the change that causes them, delivered in the background.

`enqueue` adds one row per enabled channel to the caller's transaction, so a change that rolls back
notifies nobody. `deliver_due` (the "notifications" background loop) claims due rows, sends them outside
any transaction and records the outcome: delivered, queued again with backoff, or failed for good.

Several processes and instances may run `deliver_due` at once. Claiming is one UPDATE that moves each row's
`next_attempt_at` a lease ahead (on PostgreSQL over `FOR UPDATE SKIP LOCKED`, so claimers pass each other
by): no one else takes the row while it is being sent, and a process that dies mid-send leaves it to be
retried once the lease runs out. Delivery is therefore at least once; receivers deduplicate by id.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic_core import to_jsonable_python
from quart import Quart
from sqlalchemy import bindparam, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import background, db, errors, log, notifiers, pagination
from service.config import Settings
from service.models.notifications import DELIVERED, FAILED, QUEUED, Notification
from service.schemas.notifications import NotificationQuery

logger = log.get(__name__)

LOOP = "notifications"
ASSIGNMENT_ASSIGNED = "assignment.assigned"
AGENT_OFFLINE = "agent.offline"

# How long a claimed row stays hidden from other claimers. It must outlast the slowest batch: with
# SEND_CONCURRENCY sends at a time, each cut off at SEND_DEADLINE, a 50-row batch ends within 5 minutes.
# The price is that a row whose sender crashed is retried only this much later.
LEASE = timedelta(minutes=10)
SEND_DEADLINE = 60.0
SEND_CONCURRENCY = 10
# A commit wakes the delivery loop, which then waits this long before claiming: what else is committed
# meanwhile goes in the same round. A round costs the same few statements (claim, record) for one row or
# fifty, so under load (an auto-placed assignment is a notification) this turns a round per row into a
# round per batch; people notified do not notice a quarter of a second.
GATHER_SECONDS = 0.25
MAX_BACKOFF_SECONDS = 15 * 60

# Key in `session.info` under which the app lends sessions a way to wake the delivery loop.
_WAKE = "notifications.wake"


@dataclass(frozen=True)
class _Claim:
    """A claimed row as it was at the claim: sending and recording need nothing more."""

    delivery: notifiers.Delivery
    channel: str
    attempts: int


def enqueue(session: AsyncSession, settings: Settings, kind: str, payload: dict[str, Any]) -> None:
    """Queue a notification on every channel NOTIFY_CHANNELS enables, in the caller's transaction.

    Nothing is sent here: the delivery loop sends it once the transaction commits (at once when the
    session came from the app's sessionmaker and is committed with `db.commit`; otherwise at its next
    poll). `payload` may hold what pydantic turns into JSON (UUIDs, datetimes, models); it is stored,
    and sent, as that JSON.
    """
    document = to_jsonable_python(payload)
    for channel in settings.notify_channels:
        session.add(Notification(channel=channel, kind=kind, payload=document))
    if settings.notify_channels:
        _wake_after_commit(session)


def _wake_after_commit(session: AsyncSession) -> None:
    wake: Callable[[], None] | None = session.info.get(_WAKE)
    if wake is None:
        return  # a session the app did not make (a script): the loop's next poll finds the rows

    async def _wake() -> None:
        wake()

    db.after_commit(session, _wake)


async def deliver_due(
    database: db.Database, channels: Mapping[str, notifiers.Notifier], settings: Settings, limit: int = 50
) -> bool:
    """Send what is due on the channels given; True when a full batch was claimed (more may be waiting).

    Rows of channels not given (turned off since they were queued) stay queued, untouched.
    """
    claims = await _claim(database, list(channels), limit)
    gate = asyncio.Semaphore(SEND_CONCURRENCY)

    async def _deliver(claim: _Claim) -> _Claim | None:
        """The claim when it went out (recorded with the round's others), else None once its failure is."""
        async with gate:
            failure = await _send(channels[claim.channel], claim)
        if failure is None:
            return claim
        await _record_failure(database, settings, claim, failure)
        return None

    # Every send runs to its end even if recording one fails (the database went away): what was sent
    # and recorded stays so, and the first error then fails the round for the loop to report.
    outcomes = await asyncio.gather(*(_deliver(claim) for claim in claims), return_exceptions=True)
    # One statement for every delivery of the round rather than a transaction each: with work handed out
    # by the hundred a second, per-row transactions cost the workers a sixth of their time and held
    # pooled connections the requests were waiting for. (A crash before it means those rows go again
    # once their lease ends: delivery was at least once already.)
    await _record_delivered(database, [outcome for outcome in outcomes if isinstance(outcome, _Claim)])
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return len(claims) == limit


# Built once (see db.ConditionalUpdate): the loop runs after every commit that queues a notification.
_DUE = (
    select(Notification.id)
    .where(
        Notification.status == QUEUED,
        Notification.next_attempt_at <= bindparam("now"),
        Notification.channel.in_(bindparam("channels", expanding=True)),
        Notification.deleted_at.is_(None),
    )
    .order_by(Notification.next_attempt_at)
    .limit(bindparam("limit"))
    # PostgreSQL: rows another claimer holds are skipped, not waited for. SQLite has no row locks
    # and needs none: an UPDATE takes the database's one write lock before it reads.
    .with_for_update(skip_locked=True)
    # A CTE runs once; a subquery under IN could be re-run by the planner and lock other rows.
    .cte("due")
)
_CLAIM = (
    update(Notification)
    .where(Notification.id.in_(select(_DUE.c.id)))
    .values(
        attempts=Notification.attempts + 1,
        next_attempt_at=bindparam("lease_end"),
        updated_at=bindparam("now"),
    )
    .returning(
        Notification.id,
        Notification.channel,
        Notification.kind,
        Notification.payload,
        Notification.created_at,
        Notification.attempts,
    )
    .execution_options(synchronize_session=False)
)


async def _claim(database: db.Database, channels: list[str], limit: int) -> list[_Claim]:
    if not channels:
        return []
    now = datetime.now(UTC)
    params = {"now": now, "lease_end": now + LEASE, "channels": channels, "limit": limit}
    # In a transaction although it is one statement: run in an autocommit session (one round trip
    # instead of three) it left the embedded mode's one connection checked out when the loop was stopped
    # mid-round (aiosqlite then answered on a closed event loop; the pool gauge drifted in CI, 3 Dec).
    async with database.sessionmaker() as session, session.begin():
        rows = (await session.execute(_CLAIM, params)).all()
    return [
        _Claim(notifiers.Delivery(row.id, row.kind, row.payload, row.created_at), row.channel, row.attempts)
        for row in rows
    ]


async def _send(notifier: notifiers.Notifier, claim: _Claim) -> notifiers.DeliveryFailed | None:
    """Send one claimed row; the failure, if any, rather than an exception."""
    try:
        async with asyncio.timeout(SEND_DEADLINE):
            await notifier.send(claim.delivery)
    except notifiers.DeliveryFailed as failure:
        return failure
    except TimeoutError:
        return notifiers.DeliveryFailed(f"no answer within {SEND_DEADLINE:g} s", retryable=True)
    except Exception as error:
        # A bug in a channel must not stall the queue: the row is retried like any other failure.
        logger.exception("notification_send_crashed", id=str(claim.delivery.id), channel=claim.channel)
        return notifiers.DeliveryFailed(f"unexpected {type(error).__name__}", retryable=True)
    return None


# Guarded by the attempt count: if a send outlived its lease and another process claimed the row again,
# that process's outcome is the one kept.
_DELIVERED = (
    update(Notification)
    .where(
        tuple_(Notification.id, Notification.attempts).in_(bindparam("claims", expanding=True)),
        Notification.status == QUEUED,
    )
    .values(status=DELIVERED, delivered_at=bindparam("now"), last_error=None, updated_at=bindparam("now"))
    .execution_options(synchronize_session=False)
)


async def _record_delivered(database: db.Database, delivered: Sequence[_Claim]) -> None:
    if not delivered:
        return
    claims = [(claim.delivery.id, claim.attempts) for claim in delivered]
    async with database.sessionmaker() as session, session.begin():
        await session.execute(_DELIVERED, {"claims": claims, "now": datetime.now(UTC)})


async def _record_failure(
    database: db.Database, settings: Settings, claim: _Claim, failure: notifiers.DeliveryFailed
) -> None:
    now = datetime.now(UTC)
    values: dict[str, Any]
    if failure.retryable and claim.attempts < settings.notify_max_attempts:
        delay = backoff(claim.attempts)
        values = {"last_error": failure.reason, "next_attempt_at": now + delay}
        _log_failure(claim, failure, retry_in=round(delay.total_seconds(), 1))
    else:
        values = {"status": FAILED, "last_error": failure.reason}
        _log_failure(claim, failure, retry_in=None)
    # Guarded by the attempt count, as above.
    record = (
        update(Notification)
        .where(
            Notification.id == claim.delivery.id,
            Notification.attempts == claim.attempts,
            Notification.status == QUEUED,
        )
        .values(**values, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    async with database.sessionmaker() as session, session.begin():
        await session.execute(record)


def _log_failure(claim: _Claim, failure: notifiers.DeliveryFailed, retry_in: float | None) -> None:
    logger.warning(
        "notification_failed" if retry_in is None else "notification_retry",
        id=str(claim.delivery.id),
        channel=claim.channel,
        kind=claim.delivery.kind,
        attempt=claim.attempts,
        reason=failure.reason,
        retryable=failure.retryable,
        retry_in_seconds=retry_in,
    )


def backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failure: 2^attempts seconds, capped at 15 minutes, plus up to a
    quarter more at random so receivers coming back are not hit by every retry at the same moment."""
    base = min(MAX_BACKOFF_SECONDS, 2**attempts)
    return timedelta(seconds=base * (1 + random.uniform(0, 0.25)))  # noqa: S311 - jitter, not a secret


async def list_notifications(
    session: AsyncSession, query: NotificationQuery
) -> tuple[Sequence[Notification], int]:
    """One page of the queue, newest first, filtered by status, kind and channel."""
    statement = select(Notification).where(Notification.deleted_at.is_(None))
    if query.status:
        statement = statement.where(Notification.status == query.status)
    if query.kind:
        statement = statement.where(Notification.kind == query.kind)
    if query.channel:
        statement = statement.where(Notification.channel == query.channel)
    statement = statement.order_by(Notification.created_at.desc(), Notification.id.desc())
    return await pagination.fetch_page(session, statement, query.page, query.per_page)


async def retry(session: AsyncSession, notification_id: uuid.UUID) -> Notification:
    """Queue a failed notification again, due now, with its full number of attempts.

    Raises:
        NotFound: no such notification.
        Conflict: it has not failed (it is queued or delivered already).
    """
    notification = await session.get(Notification, notification_id)
    if notification is None or notification.is_deleted:
        raise errors.NotFound("No such notification.")
    if notification.status != FAILED:
        raise errors.Conflict(f"Only failed notifications can be retried; this one is {notification.status}.")
    # last_error stays until the next attempt replaces it, so the operator still sees why it failed.
    now = datetime.now(UTC)
    notification.status = QUEUED
    notification.attempts = 0
    notification.next_attempt_at = now
    notification.updated_at = now
    _wake_after_commit(session)
    return notification


def init_app(app: Quart, settings: Settings) -> None:
    """Build the enabled channels and register the delivery loop (after db, mail and background)."""
    channels = notifiers.for_settings(settings, app.extensions["mailer"])
    app.extensions["notifiers"] = channels
    loops = background.loops_of(app)

    async def round_() -> bool:
        return await deliver_due(app.extensions["db"], channels, settings)

    loops.add(LOOP, round_, settings.notify_interval, gather=GATHER_SECONDS)

    @app.before_serving
    async def _lend_wake() -> None:
        # Sessions from the app's sessionmaker carry a way to wake the loop after they commit, so services
        # that enqueue need neither current_app nor a wake argument passed down through every call.
        # Registered after db.init_app, so the database is open by now.
        sessionmaker = app.extensions["db"].sessionmaker
        info = {**sessionmaker.kw.get("info", {}), _WAKE: lambda: loops.wake(LOOP)}
        sessionmaker.configure(info=info)

    @app.after_serving
    async def _close_channels() -> None:
        # after_serving runs once the loops have stopped: no send is in flight.
        await notifiers.close_all(channels)
