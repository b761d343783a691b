"""Agents, their heartbeats and registration tokens as the API takes and shows them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from service.pagination import PageQuery
from service.schemas.assignments import AssignmentOut, Capability, json_at_most

METADATA_MAX_BYTES = 8192


def _distinct(value: list[str]) -> list[str]:
    return sorted(set(value))


Metadata = Annotated[dict[str, Any], json_at_most(METADATA_MAX_BYTES)]
Capabilities = Annotated[list[Capability], Field(max_length=50), AfterValidator(_distinct)]
AgentName = Annotated[str, Field(min_length=1, max_length=120, examples=["runner-eu-1"])]
Status = Literal["never_contacted", "online", "busy", "away", "offline", "stale", "paused", "draining"]


class AgentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: AgentName
    capabilities: Capabilities = Field(default_factory=list, examples=[["linux", "gpu"]])
    max_concurrent: int = Field(default=1, ge=1, le=1000, description="Open assignments it may hold at once.")
    metadata: Metadata = Field(default_factory=dict, examples=[{"region": "eu-west"}])


class AgentPatch(BaseModel):
    """Fields to change. `mode` is the operator's say: `paused` (no new work, with a note and an optional
    automatic resume time) or `draining` (keeps its work, gets no new work)."""

    model_config = ConfigDict(extra="forbid")

    name: AgentName | None = None
    capabilities: Capabilities | None = None
    max_concurrent: int | None = Field(default=None, ge=1, le=1000)
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
    agent_token: str = Field(description="Shown this once: the agent sends it as `Authorization: Bearer …`.")


class HeartbeatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["online", "busy", "away"]
    load: float | None = Field(default=None, ge=0, le=1_000_000, examples=[0.4])
    metadata: Metadata | None = Field(default=None, description="Replaces the agent's metadata when given.")


class HeartbeatOut(BaseModel):
    status: Status
    assignments: list[AssignmentOut] = Field(description="The agent's open assignments.")
    heartbeat_interval: int = Field(description="Seconds until the server wants the next heartbeat.")


class SummaryOut(BaseModel):
    agents: dict[str, int] = Field(
        description="Live agents by status.", examples=[{"online": 3, "offline": 1}]
    )
    total_agents: int
    assignments: dict[str, int] = Field(description="Open assignments by status.", examples=[{"pending": 2}])
    open_assignments: int


class RegistrationTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=80, examples=["ci-runners"])
    expires_in_hours: int = Field(default=24, ge=1, le=24 * 365)
    single_use: bool = False
    default_capabilities: Capabilities = Field(default_factory=list)


class RegistrationTokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    default_capabilities: list[str]
    single_use: bool
    uses: int
    expires_at: datetime
    revoked_at: datetime | None
    created_at: datetime


class RegistrationTokenCreatedOut(RegistrationTokenOut):
    token: str = Field(description="Shown this once; agents send it to `POST /api/v1/agents/register`.")


class AgentRegisterIn(BaseModel):
    """An agent registering itself with a registration token."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=200)
    name: AgentName
    capabilities: Capabilities | None = Field(default=None, description="The token's defaults when omitted.")
    max_concurrent: int = Field(default=1, ge=1, le=1000)
    metadata: Metadata = Field(default_factory=dict)
