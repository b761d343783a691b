"""The notification queue as the API shows it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.pagination import PageQuery
from service.schemas.assignments import ASSIGNMENT_EXAMPLE


class NotificationQuery(PageQuery):
    status: Literal["queued", "delivered", "failed"] | None = None
    kind: str | None = Field(default=None, max_length=60, examples=["agent.offline"])
    channel: Literal["log", "webhook", "email"] | None = None


class NotificationOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "5d8e2b71-9a4c-4f36-8e0b-c7f1a3d6e952",
                    "channel": "webhook",
                    "kind": "assignment.assigned",
                    "payload": {
                        "type": "assignment.assigned",
                        "time": "2026-03-02T09:12:41.120000Z",
                        "data": {"assignment": ASSIGNMENT_EXAMPLE},
                        "request_id": "b4e1c7a09d2f4e8b9a6c3f5d0e7b1a28",
                    },
                    "status": "failed",
                    "attempts": 5,
                    "next_attempt_at": "2026-03-02T09:43:10.000000Z",
                    "last_error": "HTTP 502 from https://hooks.example.com/switchboard",
                    "delivered_at": None,
                    "created_at": "2026-03-02T09:12:41.120000Z",
                    "updated_at": "2026-03-02T09:43:10.000000Z",
                }
            ]
        },
    )

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
