"""The event stream's query and the events it carries."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

EVENT_TYPES = (
    "agent.registered",
    "agent.updated",
    "agent.status_changed",
    "agent.offline",
    "agent.deleted",
    "assignment.created",
    "assignment.assigned",
    "assignment.status_changed",
)


class EventQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: uuid.UUID | None = Field(default=None, description="Only events about this agent.")
    types: str | None = Field(
        default=None,
        max_length=500,
        description="Comma-separated event types to receive, e.g. `agent.status_changed,agent.offline`.",
    )
    last_event_id: str | None = Field(
        default=None, max_length=45, description="For clients that cannot send the Last-Event-ID header."
    )

    def type_set(self) -> frozenset[str] | None:
        if not self.types:
            return None
        return frozenset(t.strip() for t in self.types.split(",") if t.strip())


class EventOut(BaseModel):
    """One event as the `data:` of its message."""

    id: str = Field(examples=["1764000000000-0"])
    type: str = Field(examples=["agent.status_changed"])
    time: datetime
    data: dict[str, Any]
    request_id: str | None = Field(description="The request that caused it: one id traces a call end to end.")
