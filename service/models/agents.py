"""Agents (people or machines that take work) and the tokens that let agents register themselves."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from service.models.entity import Entity, Model

# What the agent reports, or what the sweeper concluded from its silence.
NEVER_CONTACTED = "never_contacted"
ONLINE = "online"
BUSY = "busy"
AWAY = "away"
OFFLINE = "offline"
STALE = "stale"
REPORTED = (NEVER_CONTACTED, ONLINE, BUSY, AWAY, OFFLINE, STALE)
# Statuses that mean the agent is beating; the sweeper watches these for silence.
BEATING = (ONLINE, BUSY, AWAY)

# What an operator decided, which wins over what the agent reports while it is connected.
ACTIVE = "active"
PAUSED = "paused"
DRAINING = "draining"
MODES = (ACTIVE, PAUSED, DRAINING)


class Agent(Entity, Model):
    __tablename__ = "agents"

    name: Mapped[str] = mapped_column(String(120))
    capabilities: Mapped[list[str]] = mapped_column(default=list)
    max_concurrent: Mapped[int] = mapped_column(Integer, default=1)
    # Kept in step with the open assignments in the same transaction, under a conditional UPDATE, so
    # capacity checks are one indexed comparison and never over-commit (see services/assignments.py).
    open_assignments: Mapped[int] = mapped_column(Integer, default=0)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    reported_status: Mapped[str] = mapped_column(String(20), default=NEVER_CONTACTED)
    mode: Mapped[str] = mapped_column(String(20), default=ACTIVE)
    pause_note: Mapped[str | None] = mapped_column(String(500), default=None)
    resume_at: Mapped[datetime | None] = mapped_column(default=None)
    status_changed_at: Mapped[datetime | None] = mapped_column(default=None)
    # Written when the status changes, not on every beat; the live value is in the presence store.
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    # When it last got work: the tie-break of auto-assignment (longest idle first).
    last_assigned_at: Mapped[datetime | None] = mapped_column(default=None)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )

    __table_args__ = (
        CheckConstraint("open_assignments >= 0", name="open_assignments_not_negative"),
        CheckConstraint("max_concurrent >= 1", name="max_concurrent_positive"),
        Index("ix_agents_reported_status", "reported_status"),
    )

    @property
    def status(self) -> str:
        """What the API shows: the operator's pause or drain while the agent is connected, else its own."""
        if self.mode != ACTIVE and self.reported_status in BEATING:
            return self.mode
        return self.reported_status


# Live agents are named uniquely, case-insensitively: an operator tells them apart by name.
Index(
    "uq_agents_name_live",
    func.lower(Agent.name),
    unique=True,
    postgresql_where=Agent.deleted_at.is_(None),
    sqlite_where=Agent.deleted_at.is_(None),
)

# Agents with given capabilities (`capabilities @> '["gpu"]'`), for auto-assignment's candidates
# (services/assignments.py): without it every online agent's list is read and tested, about 5 ms of the
# database's time per assignment in a fleet of 10,000. PostgreSQL only (GIN); the embedded fleet is small.
# (An index in the candidates' order was tried too: the planner then walked the whole fleet in that order
# looking for the few capable agents, 20 ms a query.)
POSTGRESQL_ONLY = {"postgresql_only": True}
Index(
    "ix_agents_capabilities",
    Agent.capabilities,
    postgresql_using="gin",
    postgresql_ops={"capabilities": "jsonb_path_ops"},
    postgresql_where=Agent.deleted_at.is_(None),
    info=POSTGRESQL_ONLY,
).ddl_if(dialect="postgresql")


class RegistrationToken(Entity, Model):
    """Lets agents register themselves, as CI runners do: expiring, revocable, optionally single-use."""

    __tablename__ = "registration_tokens"

    name: Mapped[str] = mapped_column(String(80))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    default_capabilities: Mapped[list[str]] = mapped_column(default=list)
    single_use: Mapped[bool] = mapped_column(default=False)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
