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


# Realistic values for the OpenAPI document's examples (they change nothing at run time).
EXAMPLE_AGENT_ID = "6f1c2a4e-8b3d-4f6a-9c1e-2d7b5a8e4f10"
ASSIGNMENT_EXAMPLE: dict[str, Any] = {
    "id": "0b9e7d2c-3f41-4a8e-b6d5-91c2e7f4a3b8",
    "title": "Transcode batch 42",
    "payload": {"batch": 42, "source": "s3://media/incoming/42/"},
    "required_capabilities": ["gpu"],
    "priority": 10,
    "status": "assigned",
    "agent_id": EXAMPLE_AGENT_ID,
    "assigned_at": "2026-03-02T09:12:41.118000Z",
    "started_at": None,
    "finished_at": None,
    "result": None,
    "error": None,
    "attempts": 1,
    "created_at": "2026-03-02T09:12:40.977000Z",
    "updated_at": "2026-03-02T09:12:41.118000Z",
}

Payload = Annotated[dict[str, Any], json_at_most(PAYLOAD_MAX_BYTES)]
# Capabilities are short machine words ("gpu", "linux", "lang:fr"), compared exactly.
Capability = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9:._\-]*$")]


class AssignmentIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "title": "Transcode batch 42",
                    "payload": {"batch": 42, "source": "s3://media/incoming/42/"},
                    "required_capabilities": ["gpu"],
                    "priority": 10,
                }
            ]
        },
    )

    title: str = Field(min_length=1, max_length=200, examples=["Transcode batch 42"])
    payload: Payload = Field(default_factory=dict, examples=[{"batch": 42}])
    required_capabilities: list[Capability] = Field(default_factory=list, max_length=50, examples=[["gpu"]])
    priority: int = Field(default=0, ge=-1000, le=1000, strict=True, description="Higher goes first.")
    agent_id: uuid.UUID | None = Field(
        default=None, description="Give it to this agent; otherwise the service picks one, or it waits."
    )


class AssignmentQuery(PageQuery):
    status: AssignmentStatus | None = None
    agent_id: uuid.UUID | None = None


class CompleteIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"result": {"output": "s3://media/done/42/", "frames": 18000}}]},
    )

    result: Payload | None = None


class FailIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"error": "ffmpeg exited with status 1: unsupported codec"}]},
    )

    error: str = Field(min_length=1, max_length=2000)


class CancelIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "Superseded by batch 43."}]}
    )

    reason: str | None = Field(default=None, max_length=2000)


class ReassignIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"agent_id": "a3d9e1f0-5c27-4b8e-9f14-7e2c6b0d8a51"}]},
    )

    agent_id: uuid.UUID | None = Field(
        default=None, description="The new agent; the service picks when omitted."
    )


class AssignmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [ASSIGNMENT_EXAMPLE]})

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
