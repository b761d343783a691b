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
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    action: str
    actor_id: uuid.UUID | None
    target_type: str | None
    target_id: str | None
    ip: str | None
    request_id: str | None
    details: dict[str, Any]
    created_at: datetime
