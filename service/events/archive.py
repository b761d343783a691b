"""The archive: published events read back from the outbox table, for what the broker's log lost.

The Redis stream (or the embedded ring) is fast but may lose events: it is trimmed to its length cap, and
a Redis that restarts without its data starts an empty stream. Every published event also stays in its
outbox row, with the public id it got, until the retention purge removes it; reading those rows in id
order gives the same events, so a subscriber resuming across such a loss still gets no gap.
"""

from __future__ import annotations

from sqlalchemy import ScalarSelect, Select, select, tuple_
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from service import db
from service.events.broker import (
    BrokerUnavailable,
    Event,
    SubscriberLagged,
    encode_data,
    format_event_id,
    make_event,
)
from service.models.events import OutboxEvent

_event_key = tuple_(OutboxEvent.event_ms, OutboxEvent.event_seq)


def as_event(row: OutboxEvent) -> Event:
    """The event a subscriber received for this published row, frame and all."""
    assert row.event_id is not None
    data_json = encode_data(row.type, row.data)
    return make_event(row.event_id, row.type, row.topic, data_json)


def _end_key_query(newest: bool, table: type[OutboxEvent] = OutboxEvent) -> Select[int | None, int | None]:
    order = (table.event_ms, table.event_seq)
    return (
        select(*order)
        .where(table.event_ms.is_not(None))
        .order_by(*(column.desc() if newest else column for column in order))
        .limit(1)
    )


# Built once (see db.ConditionalUpdate): every resume from the archive reads it.
_OLDEST = _end_key_query(newest=False)


def newest_key_columns() -> tuple[ScalarSelect[int | None], ScalarSelect[int | None]]:
    """The newest published id's two parts as uncorrelated scalar subqueries, for a statement on the
    outbox to carry (the relay reads its batch and the newest id in one round trip). None and None when
    nothing was published yet."""
    published = aliased(OutboxEvent)  # not the outer statement's rows: computed once, not per row
    query = _end_key_query(True, published)
    return (
        query.with_only_columns(published.event_ms).scalar_subquery(),
        query.with_only_columns(published.event_seq).scalar_subquery(),
    )


async def oldest_key(session: AsyncSession) -> tuple[int, int] | None:
    """The id of the oldest event the archive holds; None when it holds none."""
    found = (await session.execute(_OLDEST)).first()
    if found is None or found[0] is None or found[1] is None:
        return None
    return found[0], found[1]


class OutboxArchive:
    """Callable as the brokers' `Archive`: events after an id (and below another), oldest first."""

    def __init__(self, database: db.Database) -> None:
        self._database = database

    async def __call__(
        self, after: tuple[int, int], before: tuple[int, int] | None, limit: int
    ) -> list[Event]:
        """Published events with `after` < id (< `before`), in id order.

        Raises:
            SubscriberLagged: the purge removed events after `after` (it is older than every kept row).
            BrokerUnavailable: the database cannot be read.
        """
        try:
            async with self._database.sessionmaker() as session:
                oldest = await oldest_key(session)
                if oldest is None:
                    return []
                if after < oldest:
                    # The row of `after` itself is gone: events just after it may be gone with it.
                    raise SubscriberLagged(
                        f"the archive no longer holds the events after {format_event_id(after)}"
                    )
                # Published only: a row numbered but not yet appended may still get another id (see
                # Broker.append), and until it is appended, the log has not gone past it.
                query = select(OutboxEvent).where(
                    OutboxEvent.published_at.is_not(None), _event_key > tuple_(*after)
                )
                if before is not None:
                    query = query.where(_event_key < tuple_(*before))
                rows = (
                    await session.scalars(
                        query.order_by(OutboxEvent.event_ms, OutboxEvent.event_seq).limit(limit)
                    )
                ).all()
        except (SQLAlchemyError, OSError) as error:
            raise BrokerUnavailable(f"cannot read the event archive: {type(error).__name__}") from error
        return [as_event(row) for row in rows]
