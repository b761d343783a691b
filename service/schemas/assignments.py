"""Assignments as the API takes and shows them."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.pagination import PageQuery

PAYLOAD_MAX_BYTES = 65536
AssignmentStatus = Literal[
    "pending", "assigned", "accepted", "in_progress", "completed", "failed", "cancelled"
]


def json_at_most(limit: int) -> AfterValidator:
    """A validator bounding a JSON document's encoded size (depth and count limits alone are not enough)."""

    def check(value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, separators=(",", ":"))) > limit:
            raise ValueError(f"at most {limit} bytes of JSON")
        return value

    return AfterValidator(check)


Payload = Annotated[dict[str, Any], json_at_most(PAYLOAD_MAX_BYTES)]
# Capabilities are short machine words ("gpu", "linux", "lang:fr"), compared exactly.
Capability = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9:._\-]*$")]


class AssignmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200, examples=["Transcode batch 42"])
    payload: Payload = Field(default_factory=dict, examples=[{"batch": 42}])
    required_capabilities: list[Capability] = Field(default_factory=list, max_length=50, examples=[["gpu"]])
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher goes first.")
    agent_id: uuid.UUID | None = Field(
        default=None, description="Give it to this agent; otherwise the service picks one, or it waits."
    )


class AssignmentQuery(PageQuery):
    status: AssignmentStatus | None = None
    agent_id: uuid.UUID | None = None


class CompleteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    result: Payload | None = None


class FailIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: str = Field(min_length=1, max_length=2000)


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=2000)


class ReassignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: uuid.UUID | None = Field(
        default=None, description="The new agent; the service picks when omitted."
    )


class AssignmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    title: str
    payload: dict[str, Any]
    required_capabilities: list[str]
    priority: int
    status: AssignmentStatus
    agent_id: uuid.UUID | None
    assigned_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
