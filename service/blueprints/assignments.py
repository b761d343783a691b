"""Assignments (prefix /api/v1/assignments): create, list, and move work through its lifecycle."""

from __future__ import annotations

import uuid

from quart import Blueprint, request
from quart_schema import (
    security_scheme,
    tag_blueprint,
    validate_querystring,
    validate_request,
    validate_response,
)

from service import db, identity, openapi, permissions
from service.schemas.assignments import (
    AssignmentIn,
    AssignmentOut,
    AssignmentQuery,
    CancelIn,
    CompleteIn,
    FailIn,
    ReassignIn,
)
from service.schemas.envelope import Page, Success
from service.services import assignments, idempotency

blueprint = Blueprint("assignments", __name__, url_prefix="/assignments")
tag_blueprint(blueprint, ["assignments"])


def _one(assignment: object, message: str | None = None) -> Success[AssignmentOut]:
    return Success[AssignmentOut](data=AssignmentOut.model_validate(assignment), message=message)


@blueprint.post("")
@openapi.request_header(
    "Idempotency-Key",
    "Makes retries safe: a retry with the same key (and body) answers as the first request did, "
    "creating nothing more; the same key with another body is a 409.",
    "3f0c9a7e-build-42",
    max_length=idempotency.MAX_KEY_LENGTH,
)
@identity.permission_required(permissions.ASSIGNMENTS_WRITE)
@validate_request(AssignmentIn)
@validate_response(Success[AssignmentOut], 201)
async def create_assignment(data: AssignmentIn) -> tuple[Success[AssignmentOut] | dict[str, object], int]:
    """Create work.

    With `agent_id` it goes to that agent (409 when the agent is offline, paused or draining, lacks a
    required capability, or is at capacity). Without it, the online agent with every required capability
    and spare capacity that holds the least work (then has waited longest) gets it; if none can, it stays
    `pending` and is handed out when one can. Send an `Idempotency-Key` header to make retries safe: a
    retry with the same key returns the first answer instead of creating more work.
    """
    caller = await identity.current()
    session = db.session()
    key = request.headers.get("Idempotency-Key")
    claimed: uuid.UUID | None = None
    if key is not None:
        found = await idempotency.claim(
            session, caller.user_id, key, idempotency.fingerprint(data.model_dump(mode="json"))
        )
        if isinstance(found, tuple):
            return found[1], found[0]
        claimed = found
    assignment = await assignments.create_assignment(session, caller, data)
    body = _one(assignment, "Assignment created.")
    if claimed is not None:
        await idempotency.settle(session, claimed, 201, body.model_dump(mode="json"))
    return body, 201


@blueprint.get("")
@identity.permission_required(permissions.ASSIGNMENTS_READ)
@validate_querystring(AssignmentQuery)
@validate_response(Page[AssignmentOut])
async def list_assignments(query_args: AssignmentQuery) -> Page[AssignmentOut]:
    """List assignments.

    Newest first, filtered by `status` and `agent_id`.
    """
    found, total = await assignments.list_assignments(db.session(), query_args)
    return Page[AssignmentOut].of([AssignmentOut.model_validate(a) for a in found], query_args, total)


@blueprint.get("/<uuid:assignment_id>")
@identity.permission_required(permissions.ASSIGNMENTS_READ)
@validate_response(Success[AssignmentOut])
async def get_assignment(assignment_id: uuid.UUID) -> Success[AssignmentOut]:
    """Get one assignment."""
    return _one(await assignments.get_assignment(db.session(), assignment_id))


async def _move(
    assignment_id: uuid.UUID, action: str, changes: dict[str, object] | None = None
) -> Success[AssignmentOut]:
    actor = await identity.current_actor(permissions.ASSIGNMENTS_WRITE)
    moved = await assignments.transition(db.session(), actor, assignment_id, action, changes)
    return _one(moved)


_AGENT_OR_OPERATOR = security_scheme([{"bearerAuth": []}])


@blueprint.post("/<uuid:assignment_id>/accept")
@_AGENT_OR_OPERATOR
@validate_response(Success[AssignmentOut])
async def accept_assignment(assignment_id: uuid.UUID) -> Success[AssignmentOut]:
    """Accept assigned work.

    By the agent it was given to (with its own agent token), or an operator. 409 names the current state when
    the work is not `assigned`.
    """
    return await _move(assignment_id, "accept")


@blueprint.post("/<uuid:assignment_id>/start")
@_AGENT_OR_OPERATOR
@validate_response(Success[AssignmentOut])
async def start_assignment(assignment_id: uuid.UUID) -> Success[AssignmentOut]:
    """Start work.

    From `assigned` or `accepted`; by its agent or an operator.
    """
    return await _move(assignment_id, "start")


@blueprint.post("/<uuid:assignment_id>/complete")
@_AGENT_OR_OPERATOR
@validate_request(CompleteIn)
@validate_response(Success[AssignmentOut])
async def complete_assignment(assignment_id: uuid.UUID, data: CompleteIn) -> Success[AssignmentOut]:
    """Complete work.

    With an optional `result`; the agent's capacity frees and pending work may follow.
    """
    return await _move(assignment_id, "complete", {"result": data.result})


@blueprint.post("/<uuid:assignment_id>/fail")
@_AGENT_OR_OPERATOR
@validate_request(FailIn)
@validate_response(Success[AssignmentOut])
async def fail_assignment(assignment_id: uuid.UUID, data: FailIn) -> Success[AssignmentOut]:
    """Fail work.

    With an `error` saying why; the agent's capacity frees and pending work may follow.
    """
    return await _move(assignment_id, "fail", {"error": data.error})


@blueprint.post("/<uuid:assignment_id>/cancel")
@_AGENT_OR_OPERATOR
@validate_request(CancelIn)
@validate_response(Success[AssignmentOut])
async def cancel_assignment(assignment_id: uuid.UUID, data: CancelIn) -> Success[AssignmentOut]:
    """Cancel open work (operators).

    An agent gets 403 and fails its work instead. The agent holding it is freed and may get pending work.
    """
    return await _move(assignment_id, "cancel", {"error": data.reason} if data.reason else None)


@blueprint.post("/<uuid:assignment_id>/reassign")
@identity.permission_required(permissions.ASSIGNMENTS_WRITE)
@validate_request(ReassignIn)
@validate_response(Success[AssignmentOut])
async def reassign_assignment(assignment_id: uuid.UUID, data: ReassignIn) -> Success[AssignmentOut]:
    """Reassign open work.

    To another agent (`agent_id`), or to the best free one, or back to pending.
    """
    moved = await assignments.reassign(db.session(), await identity.current(), assignment_id, data.agent_id)
    return _one(moved, "Assignment reassigned.")
