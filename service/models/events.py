"""The outbox: every event is a row written in the transaction of the change that caused it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Identity, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.entity import Model, utcnow


class OutboxEvent(Model):
    """An event waiting for the relay, then a record of what was published and under which public id.

    The row id only orders the relay's work; subscribers see the id the event log assigns at relay time,
    which is what makes their order total (a row id taken at insert can become visible out of order).
    """

    __tablename__ = "outbox_events"

    # BIGINT on PostgreSQL; SQLite needs the plain INTEGER PRIMARY KEY to autoincrement.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True
    )
    type: Mapped[str] = mapped_column(String(60))
    topic: Mapped[str | None] = mapped_column(String(64), default=None)
    data: Mapped[dict[str, Any]] = mapped_column()
    request_id: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(default=None)
    # The public id "ms-seq" as two numbers, so the archive can read "every event after id X" in id order.
    event_ms: Mapped[int | None] = mapped_column(BigInteger, default=None)
    event_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)

    __table_args__ = (
        # The relay's query: what is not yet published, in order. Partial, so it stays small.
        Index(
            "ix_outbox_events_unpublished",
            "id",
            postgresql_where=published_at.is_(None),
            sqlite_where=published_at.is_(None),
        ),
        # The archive's query (events after an id, in id order) and the retention purge's oldest-first scan.
        Index("ix_outbox_events_event_key", "event_ms", "event_seq"),
    )

    @property
    def event_id(self) -> str | None:
        """The id subscribers saw, once the relay has published the event."""
        if self.event_ms is None or self.event_seq is None:
            return None
        return f"{self.event_ms}-{self.event_seq}"
