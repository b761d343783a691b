"""Login sessions and personal API tokens as the API shows them (never a token hash)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from service import permissions


class SessionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    ip: str | None
    user_agent: str | None
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None


class ApiTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=80, examples=["ci-deployer"])
    scopes: list[str] = Field(
        min_length=1,
        max_length=len(permissions.ALL),
        description="Permissions the token may use; it never exceeds its owner's.",
        examples=[["agents:read", "agents:write"]],
    )
    expires_in_days: int | None = Field(
        default=90, ge=1, le=3650, description="Days until it expires; null for never.", examples=[90]
    )


class ApiTokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiTokenCreatedOut(ApiTokenOut):
    token: str = Field(description="Shown this once; send it as `Authorization: Bearer …`.")
