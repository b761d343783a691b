"""The durable queue of notifications (work assigned, agent offline) and their delivery state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.entity import Entity, Model, utcnow

QUEUED = "queued"
DELIVERED = "delivered"
FAILED = "failed"  # gave up after the last retry


class Notification(Entity, Model):
    __tablename__ = "notifications"

    channel: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(60))
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(20), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(1000), default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (Index("ix_notifications_due", "status", "next_attempt_at"),)
