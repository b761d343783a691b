"""The event stream's query and the events it carries.

The event models below document what the stream sends (the OpenAPI document builds one message schema per
event type from `EVENT_DATA`); the services write the same shapes as plain JSON into the outbox.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.agents import AGENT_EXAMPLE, AgentOut
from service.schemas.assignments import ASSIGNMENT_EXAMPLE, EXAMPLE_AGENT_ID, AssignmentOut

_REQUEUED_EXAMPLE = [ASSIGNMENT_EXAMPLE["id"]]
_OFFLINE_AGENT_EXAMPLE = {
    **AGENT_EXAMPLE,
    "open_assignments": 0,
    "status": "offline",
    "reported_status": "offline",
    "status_changed_at": "2026-03-02T09:15:40.002000Z",
    "updated_at": "2026-03-02T09:15:40.002000Z",
}


class EventQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: uuid.UUID | None = Field(
        default=None, description="Only events about this agent.", examples=[EXAMPLE_AGENT_ID]
    )
    types: str | None = Field(
        default=None,
        max_length=500,
        description="Comma-separated event types to receive, e.g. `agent.status_changed,agent.offline`.",
        examples=["agent.status_changed,agent.offline"],
    )
    last_event_id: str | None = Field(
        default=None,
        max_length=45,
        description="For clients that cannot send the Last-Event-ID header.",
        examples=["1772442847512-0"],
    )

    def type_set(self) -> frozenset[str] | None:
        if not self.types:
            return None
        return frozenset(t.strip() for t in self.types.split(",") if t.strip())


class EventOut(BaseModel):
    """One event as the `data:` of its message."""

    id: str = Field(
        examples=["1772442847512-0"], description="The event id, also the message's `id:` (`<ms>-<seq>`)."
    )
    type: str = Field(examples=["agent.status_changed"], description="The event type, also its `event:`.")
    time: datetime = Field(description="When the change was made.")
    data: dict[str, Any] = Field(description="What changed; its shape depends on the type.")
    request_id: str | None = Field(description="The request that caused it: one id traces a call end to end.")


class AgentEventData(BaseModel):
    """`agent.registered`, `agent.updated`: the agent as it is now."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"agent": AGENT_EXAMPLE}]})

    agent: AgentOut


class AgentStatusChangedData(AgentEventData):
    """`agent.status_changed`: the agent's status moved `from` one value `to` another."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "agent": _OFFLINE_AGENT_EXAMPLE,
                    "from": "online",
                    "to": "offline",
                    "requeued": _REQUEUED_EXAMPLE,
                }
            ]
        },
    )

    from_: str = Field(alias="from", description="The status before.", examples=["online"])
    to: str = Field(description="The status now.", examples=["offline"])
    requeued: list[uuid.UUID] | None = Field(
        default=None,
        description="Only when it went offline: the assignments it held, put back to pending.",
    )


class AgentGoneData(AgentEventData):
    """`agent.offline`, `agent.deleted`: the agent, and the work it held, now back to pending."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"agent": _OFFLINE_AGENT_EXAMPLE, "requeued": _REQUEUED_EXAMPLE}]}
    )

    requeued: list[uuid.UUID] = Field(description="The assignments it held, put back to pending.")


class AssignmentEventData(BaseModel):
    """`assignment.created`: the assignment as it is now."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"assignment": ASSIGNMENT_EXAMPLE}]})

    assignment: AssignmentOut


class AssignmentAssignedData(AssignmentEventData):
    """`assignment.assigned`: work given to the agent named by `assignment.agent_id`."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"assignment": ASSIGNMENT_EXAMPLE}]})

    from_agent_id: uuid.UUID | None = Field(
        default=None, description="Only when it was reassigned: the agent that held it before, if any."
    )


class AssignmentStatusChangedData(AssignmentEventData):
    """`assignment.status_changed`: the work moved `from` one status `to` another."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "assignment": {
                        **ASSIGNMENT_EXAMPLE,
                        "status": "in_progress",
                        "started_at": "2026-03-02T09:13:02.664000Z",
                        "updated_at": "2026-03-02T09:13:02.664000Z",
                    },
                    "from": "accepted",
                    "to": "in_progress",
                }
            ]
        },
    )

    from_: str | None = Field(
        default=None,
        alias="from",
        description="The status before; `held` when its agent was lost. Absent when an operator "
        "reassigned it back to pending (then `from_agent_id` is set).",
        examples=["accepted"],
    )
    to: str | None = Field(default=None, description="The status now (absent as for `from`).")
    from_agent_id: uuid.UUID | None = Field(
        default=None, description="When it was taken from an agent (lost or reassigned): that agent."
    )


class ResetData(BaseModel):
    """`reset` (no `id:`): the stream cannot go on without a gap. Reload what you show, then subscribe
    again without Last-Event-ID."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "beyond_retention"}]})

    reason: Literal["beyond_retention", "session_ended", "unavailable"] = Field(
        description="`beyond_retention`: the events after your Last-Event-ID are no longer kept, or you "
        "fell too far behind; `session_ended`: you logged out or the token was revoked (do not "
        "reconnect with it); `unavailable`: the event log cannot be read right now."
    )


# Every event type a client can receive, with the model of its `data`.
EVENT_DATA: dict[str, type[BaseModel]] = {
    "agent.registered": AgentEventData,
    "agent.updated": AgentEventData,
    "agent.status_changed": AgentStatusChangedData,
    "agent.offline": AgentGoneData,
    "agent.deleted": AgentGoneData,
    "assignment.created": AssignmentEventData,
    "assignment.assigned": AssignmentAssignedData,
    "assignment.status_changed": AssignmentStatusChangedData,
}
EVENT_TYPES = tuple(EVENT_DATA)
# The control message that is not an event: it has no id and is never replayed.
RESET = "reset"
