"""Login sessions and personal API tokens as the API shows them (never a token hash)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from service import permissions

# Realistic values for the OpenAPI document's examples (they change nothing at run time).
API_TOKEN_EXAMPLE: dict[str, Any] = {
    "id": "f7a0c3e5-1b9d-4c62-8e47-2d6b9f0a4c18",
    "name": "ci-deployer",
    "scopes": ["agents:read", "agents:write"],
    "created_at": "2026-03-01T14:02:11.093000Z",
    "expires_at": "2026-05-30T14:02:11.093000Z",
    "last_used_at": "2026-03-02T09:01:45.870000Z",
    "revoked_at": None,
}


class SessionOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "2b7d4f90-6e1a-4c38-9d52-8f0e3a7c1b64",
                    "ip": "203.0.113.7",
                    "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:135.0) Gecko/20100101 Firefox/135.0",
                    "created_at": "2026-03-02T08:58:02.311000Z",
                    "last_used_at": "2026-03-02T09:14:07.512000Z",
                    "expires_at": "2026-04-01T08:58:02.311000Z",
                    "revoked_at": None,
                    "revoked_reason": None,
                }
            ]
        },
    )

    id: uuid.UUID
    ip: str | None
    user_agent: str | None
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None


class ApiTokenIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "ci-deployer", "scopes": ["agents:read", "agents:write"], "expires_in_days": 90}
            ]
        },
    )

    name: str = Field(min_length=1, max_length=80, examples=["ci-deployer"])
    scopes: list[Annotated[str, Field(min_length=1, max_length=40)]] = Field(
        min_length=1,
        max_length=len(permissions.ALL),
        description="Permissions the token may use; it never exceeds its owner's.",
        examples=[["agents:read", "agents:write"]],
    )
    expires_in_days: int | None = Field(
        default=90,
        ge=1,
        le=3650,
        strict=True,
        description="Days until it expires; null for never.",
        examples=[90],
    )


class ApiTokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [API_TOKEN_EXAMPLE]})

    id: uuid.UUID
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiTokenCreatedOut(ApiTokenOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **API_TOKEN_EXAMPLE,
                    "created_at": "2026-03-02T09:14:07.512000Z",
                    "expires_at": "2026-05-31T09:14:07.512000Z",
                    "last_used_at": None,
                    "token": "sbp_W3nR8cT1yQ6vK0xB5mJ9hD2fL7aZ4sE1uG8oP3iN6kV",
                }
            ]
        }
    )

    token: str = Field(description="Shown this once; send it as `Authorization: Bearer …`.")
