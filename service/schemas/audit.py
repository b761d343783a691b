"""The audit log as the API shows it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from service.pagination import PageQuery


class AuditQuery(PageQuery):
    action: str | None = Field(default=None, max_length=40, examples=["login_failed"])
    actor_id: uuid.UUID | None = None
    target_id: str | None = Field(default=None, max_length=64)
    since: AwareDatetime | None = Field(
        default=None, description="Only events at or after this time (with a UTC offset)."
    )
    until: AwareDatetime | None = Field(default=None, description="Only events before this time.")


class AuditEventOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "e2a74c19-0d8b-4f3e-a6c5-3b91f8d27e04",
                    "action": "login_failed",
                    "actor_id": "9c3b5e1a-72d4-4f08-b1e6-0a5d8c2f7b93",
                    "target_type": "user",
                    "target_id": "9c3b5e1a-72d4-4f08-b1e6-0a5d8c2f7b93",
                    "ip": "203.0.113.7",
                    "request_id": "7f2e9a4c1b8d4e6fa3c05d9e8b1f2a47",
                    "details": {"username": "ada_l", "reason": "wrong_password"},
                    "created_at": "2026-03-02T08:57:31.442000Z",
                }
            ]
        },
    )

    id: uuid.UUID
    action: str
    actor_id: uuid.UUID | None
    target_type: str | None
    target_id: str | None
    ip: str | None
    request_id: str | None
    details: dict[str, Any]
    created_at: datetime
