"""Agents (prefix /api/v1/agents): registration, changes, heartbeats, and the fleet's summary."""

from __future__ import annotations

import uuid

from quart import Blueprint
from quart_schema import (
    security_scheme,
    tag_blueprint,
    validate_querystring,
    validate_request,
    validate_response,
)

from service import agent_cache, config, db, identity, permissions, presence
from service.models.agents import Agent
from service.pagination import PageQuery
from service.schemas.agents import (
    AgentCreatedOut,
    AgentIn,
    AgentOut,
    AgentPatch,
    AgentQuery,
    AgentRegisterIn,
    HeartbeatIn,
    HeartbeatOut,
    RegistrationTokenCreatedOut,
    RegistrationTokenIn,
    RegistrationTokenOut,
    SummaryOut,
)
from service.schemas.assignments import AssignmentOut
from service.schemas.envelope import Page, Success
from service.services import agents

blueprint = Blueprint("agents", __name__, url_prefix="/agents")
tag_blueprint(blueprint, ["agents"])


async def _one(agent: Agent) -> AgentOut:
    """The agent with its live heartbeat time and load."""
    await db.release_reads()
    beats = await presence.for_display(presence.current(), [agent.id])
    return agents.view(agent, beats.get(agent.id))


def _created(agent: Agent, token: str, message: str) -> Success[AgentCreatedOut]:
    out = AgentCreatedOut(**agents.view(agent, None).model_dump(), agent_token=token)
    return Success[AgentCreatedOut](data=out, message=message)


@blueprint.post("")
@identity.permission_required(permissions.AGENTS_WRITE)
@validate_request(AgentIn)
@validate_response(Success[AgentCreatedOut], 201)
async def create_agent(data: AgentIn) -> tuple[Success[AgentCreatedOut], int]:
    """Register an agent.

    The answer holds its `agent_token` this once (only a hash is kept): the agent sends it as
    `Authorization: Bearer …` with its heartbeats. 409 when a live agent has the name.
    """
    agent, token = await agents.create_agent(db.session(), await identity.current(), data)
    return _created(agent, token, "Agent registered; store its token now."), 201


@blueprint.get("")
@identity.permission_required(permissions.AGENTS_READ)
@validate_querystring(AgentQuery)
@validate_response(Page[AgentOut])
async def list_agents(query_args: AgentQuery) -> Page[AgentOut]:
    """List agents.

    Filtered by `status`, `capability` and `q` (part of the name), in the order `sort` names.
    """
    views, total = await agents.list_views(
        db.session(), presence.current(), agent_cache.current(), query_args
    )
    return Page[AgentOut].of(views, query_args, total)


@blueprint.get("/summary")
@identity.permission_required(permissions.AGENTS_READ)
@validate_response(Success[SummaryOut])
async def get_summary() -> Success[SummaryOut]:
    """Summarise the fleet.

    Live agents by status and open assignments by status.
    """
    return Success[SummaryOut](data=SummaryOut(**await agents.summary(db.session())))


@blueprint.post("/registration-tokens")
@identity.permission_required(permissions.AGENTS_WRITE)
@validate_request(RegistrationTokenIn)
@validate_response(Success[RegistrationTokenCreatedOut], 201)
async def create_registration_token(
    data: RegistrationTokenIn,
) -> tuple[Success[RegistrationTokenCreatedOut], int]:
    """Create a registration token for agents.

    Agents exchange it at `POST /api/v1/agents/register` for their own record, as CI runners do: it expires,
    can be revoked, and can be single-use. Shown this once.
    """
    token, secret = await agents.create_registration_token(db.session(), await identity.current(), data)
    out = RegistrationTokenCreatedOut(**RegistrationTokenOut.model_validate(token).model_dump(), token=secret)
    return Success[RegistrationTokenCreatedOut](data=out), 201


@blueprint.get("/registration-tokens")
@identity.permission_required(permissions.AGENTS_WRITE)
@validate_querystring(PageQuery)
@validate_response(Page[RegistrationTokenOut])
async def list_registration_tokens(query_args: PageQuery) -> Page[RegistrationTokenOut]:
    """List registration tokens.

    Those not revoked, newest first; never the secrets.
    """
    found, total = await agents.list_registration_tokens(db.session(), query_args.page, query_args.per_page)
    return Page[RegistrationTokenOut].of(
        [RegistrationTokenOut.model_validate(t) for t in found], query_args, total
    )


@blueprint.delete("/registration-tokens/<uuid:token_id>")
@identity.permission_required(permissions.AGENTS_WRITE)
@validate_response(Success[None])
async def revoke_registration_token(token_id: uuid.UUID) -> Success[None]:
    """Revoke a registration token.

    Agents can no longer register with it.
    """
    await agents.revoke_registration_token(db.session(), token_id)
    return Success[None](data=None, message="Registration token revoked.")


@blueprint.post("/register")
@validate_request(AgentRegisterIn)
@validate_response(Success[AgentCreatedOut], 201)
async def register_agent(data: AgentRegisterIn) -> tuple[Success[AgentCreatedOut], int]:
    """Register an agent with a registration token.

    For the agent itself, which gets its own `agent_token` (shown this once). Capabilities default to the
    token's. 401 for an unknown, expired, revoked or used-up token; 409 when a live agent has the name.
    """
    agent, token = await agents.register_with_token(db.session(), data)
    return _created(agent, token, "Agent registered; store its token now."), 201


@blueprint.get("/<uuid:agent_id>")
@presence.looks_at("agent_id")
@identity.permission_required(permissions.AGENTS_READ)
@validate_response(Success[AgentOut])
async def get_agent(agent_id: uuid.UUID) -> Success[AgentOut]:
    """Get one agent.

    With its live status, load and last heartbeat.
    """
    found = await agents.read_view(db.session(), presence.current(), agent_cache.current(), agent_id)
    return Success[AgentOut](data=found)


@blueprint.patch("/<uuid:agent_id>")
@identity.permission_required(permissions.AGENTS_WRITE)
@validate_request(AgentPatch)
@validate_response(Success[AgentOut])
async def patch_agent(agent_id: uuid.UUID, data: AgentPatch) -> Success[AgentOut]:
    """Change an agent.

    Its name, capabilities, capacity, metadata, or its `mode`: `paused` (no new work; with `pause_note` and an
    optional `resume_at`), `draining` (keeps its work, gets none new) or `active`.
    """
    agent = await agents.update_agent(db.session(), agent_id, data.model_dump(exclude_unset=True))
    return Success[AgentOut](data=await _one(agent), message="Agent updated.")


@blueprint.delete("/<uuid:agent_id>")
@identity.permission_required(permissions.AGENTS_WRITE)
@validate_response(Success[None])
async def delete_agent(agent_id: uuid.UUID) -> Success[None]:
    """Soft-delete an agent.

    Its token stops working and the work it held goes back to pending.
    """
    requeued = await agents.delete_agent(db.session(), presence.current(), agent_id)
    return Success[None](data=None, message=f"Agent deleted; {len(requeued)} assignment(s) back to pending.")


@blueprint.post("/<uuid:agent_id>/token")
@identity.permission_required(permissions.AGENTS_WRITE)
@validate_response(Success[AgentCreatedOut])
async def rotate_agent_token(agent_id: uuid.UUID) -> Success[AgentCreatedOut]:
    """Rotate an agent's token.

    The answer holds the new `agent_token` this once; the old one is refused from now on, everywhere.
    """
    agent, token = await agents.rotate_token(db.session(), agent_id)
    return _created(agent, token, "Token rotated; store the new one now.")


@blueprint.post("/<uuid:agent_id>/heartbeat")
@security_scheme([{"bearerAuth": []}])
@validate_request(HeartbeatIn)
@validate_response(Success[HeartbeatOut])
async def post_heartbeat(agent_id: uuid.UUID, data: HeartbeatIn) -> Success[HeartbeatOut]:
    """Send an agent's heartbeat.

    With the agent's own token (`Authorization: Bearer <agent_token>`), for its own record only. Answers with
    its open assignments and the interval the server wants between heartbeats. A change of status is
    published to event subscribers; an unchanged beat writes nothing to the database.
    """
    caller = await identity.current_agent()
    status, work = await agents.record_heartbeat(
        db.session(), db.read_session(), presence.current(), agent_cache.current(), caller, agent_id, data
    )
    out = HeartbeatOut(
        status=status,
        assignments=[AssignmentOut.model_validate(a) for a in work],
        heartbeat_interval=config.current().agent_heartbeat_interval,
    )
    return Success[HeartbeatOut](data=out)


@blueprint.get("/<uuid:agent_id>/assignments")
@identity.permission_required(permissions.AGENTS_READ)
@validate_querystring(PageQuery)
@validate_response(Page[AssignmentOut])
async def list_agent_assignments(agent_id: uuid.UUID, query_args: PageQuery) -> Page[AssignmentOut]:
    """List an agent's assignments.

    Newest first: what it holds and what it finished.
    """
    found, total = await agents.history(db.session(), agent_id, query_args.page, query_args.per_page)
    return Page[AssignmentOut].of([AssignmentOut.model_validate(a) for a in found], query_args, total)
