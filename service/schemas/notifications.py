"""The notification queue as the API shows it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.pagination import PageQuery


class NotificationQuery(PageQuery):
    status: Literal["queued", "delivered", "failed"] | None = None
    kind: str | None = Field(default=None, max_length=60, examples=["agent.offline"])
    channel: Literal["log", "webhook", "email"] | None = None


class NotificationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID = Field(description="Also the X-Switchboard-Delivery header of webhook deliveries.")
    channel: str = Field(examples=["webhook"])
    kind: str = Field(examples=["assignment.assigned"])
    payload: dict[str, Any]
    status: str = Field(
        examples=["failed"],
        description="queued (waiting for its next attempt), delivered, or failed (gave up; see last_error).",
    )
    attempts: int = Field(description="Sends started so far.")
    next_attempt_at: datetime = Field(description="When a queued notification is tried next.")
    last_error: str | None = Field(description="Why the last attempt failed.")
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime
