"""Agents, their heartbeats and registration tokens as the API takes and shows them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from service.pagination import PageQuery
from service.schemas.assignments import (
    ASSIGNMENT_EXAMPLE,
    EXAMPLE_AGENT_ID,
    AssignmentOut,
    Capability,
    json_at_most,
)

METADATA_MAX_BYTES = 8192

# Realistic values for the OpenAPI document's examples (they change nothing at run time).
AGENT_EXAMPLE: dict[str, Any] = {
    "id": EXAMPLE_AGENT_ID,
    "name": "runner-eu-1",
    "capabilities": ["gpu", "linux"],
    "max_concurrent": 2,
    "open_assignments": 1,
    "metadata": {"region": "eu-west", "version": "1.4.2"},
    "status": "online",
    "reported_status": "online",
    "mode": "active",
    "pause_note": None,
    "resume_at": None,
    "load": 0.42,
    "last_heartbeat_at": "2026-03-02T09:14:07.300000Z",
    "status_changed_at": "2026-03-02T08:01:55.040000Z",
    "created_at": "2026-02-27T16:20:03.761000Z",
    "updated_at": "2026-03-02T08:01:55.040000Z",
}
NEW_AGENT_EXAMPLE: dict[str, Any] = {
    **AGENT_EXAMPLE,
    "open_assignments": 0,
    "status": "never_contacted",
    "reported_status": "never_contacted",
    "load": None,
    "last_heartbeat_at": None,
    "status_changed_at": None,
    "created_at": "2026-03-02T09:10:12.204000Z",
    "updated_at": "2026-03-02T09:10:12.204000Z",
}
REGISTRATION_TOKEN_EXAMPLE: dict[str, Any] = {
    "id": "c41f7a92-6d3e-4b15-8a0c-5e9b2d7f1368",
    "name": "ci-runners",
    "default_capabilities": ["linux"],
    "single_use": False,
    "uses": 3,
    "expires_at": "2026-03-03T09:00:00Z",
    "revoked_at": None,
    "created_at": "2026-03-02T09:00:00Z",
}


def _distinct(value: list[str]) -> list[str]:
    return sorted(set(value))


Metadata = Annotated[dict[str, Any], json_at_most(METADATA_MAX_BYTES)]
Capabilities = Annotated[list[Capability], Field(max_length=50), AfterValidator(_distinct)]
AgentName = Annotated[str, Field(min_length=1, max_length=120, examples=["runner-eu-1"])]
Status = Literal["never_contacted", "online", "busy", "away", "offline", "stale", "paused", "draining"]


class AgentIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "runner-eu-1",
                    "capabilities": ["linux", "gpu"],
                    "max_concurrent": 2,
                    "metadata": {"region": "eu-west"},
                }
            ]
        },
    )

    name: AgentName
    capabilities: Capabilities = Field(default_factory=list, examples=[["linux", "gpu"]])
    max_concurrent: int = Field(
        default=1, ge=1, le=1000, strict=True, description="Open assignments it may hold at once."
    )
    metadata: Metadata = Field(default_factory=dict, examples=[{"region": "eu-west"}])


class AgentPatch(BaseModel):
    """Fields to change. `mode` is the operator's say: `paused` (no new work, with a note and an optional
    automatic resume time) or `draining` (keeps its work, gets no new work)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"mode": "paused", "pause_note": "Kernel upgrade.", "resume_at": "2026-03-02T12:00:00Z"}
            ]
        },
    )

    name: AgentName | None = None
    capabilities: Capabilities | None = None
    max_concurrent: int | None = Field(default=None, ge=1, le=1000, strict=True)
    metadata: Metadata | None = None
    mode: Literal["active", "paused", "draining"] | None = None
    pause_note: str | None = Field(default=None, max_length=500)
    resume_at: AwareDatetime | None = Field(
        default=None, description="When a paused agent resumes by itself."
    )


class AgentQuery(PageQuery):
    status: Status | None = None
    capability: Capability | None = None
    q: str | None = Field(default=None, max_length=120, description="Part of the name.")
    sort: Literal["created_at", "-created_at", "name", "-name"] = "name"


class AgentOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [AGENT_EXAMPLE]})

    id: uuid.UUID
    name: str
    capabilities: list[str]
    max_concurrent: int
    open_assignments: int
    metadata: dict[str, Any]
    status: Status = Field(
        description="`paused` or `draining` (the operator's) while connected, else its own."
    )
    reported_status: str
    mode: str
    pause_note: str | None
    resume_at: datetime | None
    load: float | None = Field(description="The load of its last heartbeat.")
    last_heartbeat_at: datetime | None
    status_changed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class AgentCreatedOut(AgentOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {**NEW_AGENT_EXAMPLE, "agent_token": "sba_Zr4kq0x2W9yTn1bF7mH3cVd8sLpE6uJ5aGiKoQwXe2M"}
            ]
        }
    )

    agent_token: str = Field(description="Shown this once: the agent sends it as `Authorization: Bearer …`.")


class HeartbeatIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"status": "online", "load": 0.42}]}
    )

    status: Literal["online", "busy", "away"]
    load: float | None = Field(default=None, ge=0, le=1_000_000, strict=True, examples=[0.4])
    metadata: Metadata | None = Field(default=None, description="Replaces the agent's metadata when given.")


class HeartbeatOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "online", "assignments": [ASSIGNMENT_EXAMPLE], "heartbeat_interval": 10}]
        }
    )

    status: Status
    assignments: list[AssignmentOut] = Field(description="The agent's open assignments.")
    heartbeat_interval: int = Field(description="Seconds until the server wants the next heartbeat.")


class SummaryOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "agents": {"online": 3, "busy": 1, "offline": 1},
                    "total_agents": 5,
                    "assignments": {"pending": 2, "assigned": 1, "in_progress": 3},
                    "open_assignments": 6,
                }
            ]
        }
    )

    agents: dict[str, int] = Field(
        description="Live agents by status.", examples=[{"online": 3, "offline": 1}]
    )
    total_agents: int
    assignments: dict[str, int] = Field(description="Open assignments by status.", examples=[{"pending": 2}])
    open_assignments: int


class RegistrationTokenIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "ci-runners",
                    "expires_in_hours": 24,
                    "single_use": False,
                    "default_capabilities": ["linux"],
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=80, examples=["ci-runners"])
    expires_in_hours: int = Field(default=24, ge=1, le=24 * 365, strict=True)
    single_use: bool = Field(default=False, strict=True)
    default_capabilities: Capabilities = Field(default_factory=list)


class RegistrationTokenOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [REGISTRATION_TOKEN_EXAMPLE]}
    )

    id: uuid.UUID
    name: str
    default_capabilities: list[str]
    single_use: bool
    uses: int
    expires_at: datetime
    revoked_at: datetime | None
    created_at: datetime


class RegistrationTokenCreatedOut(RegistrationTokenOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **REGISTRATION_TOKEN_EXAMPLE,
                    "uses": 0,
                    "token": "sbg_q8Lx3VbN0tR6yWc2Hk9sEa5uJm1ZdP7fGo4iKwTe0Yr",
                }
            ]
        }
    )

    token: str = Field(description="Shown this once; agents send it to `POST /api/v1/agents/register`.")


class AgentRegisterIn(BaseModel):
    """An agent registering itself with a registration token."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "token": "sbg_q8Lx3VbN0tR6yWc2Hk9sEa5uJm1ZdP7fGo4iKwTe0Yr",
                    "name": "ci-runner-17",
                    "capabilities": ["linux"],
                    "max_concurrent": 1,
                    "metadata": {"host": "ci-17.build.internal"},
                }
            ]
        },
    )

    token: str = Field(min_length=1, max_length=200)
    name: AgentName
    capabilities: Capabilities | None = Field(default=None, description="The token's defaults when omitted.")
    max_concurrent: int = Field(default=1, ge=1, le=1000, strict=True)
    metadata: Metadata = Field(default_factory=dict)
