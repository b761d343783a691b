"""Agents: registering them (by operators or by themselves with a registration token), changing,
deleting, rotating their tokens, and recording their heartbeats.

A heartbeat that changes nothing writes nothing to the database: its time and load go to the presence
store. Only a change of status (or of metadata) becomes a row update and an event. A single agent's view
comes from the process's agent cache while its version matches (service/agent_cache.py): a beat that
changes nothing, or a read of an agent that did not change, then touches no database at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Select,
    and_,
    bindparam,
    case,
    func,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from service import agent_cache, db, errors, identity, pagination, presence, redis_client, tokens
from service.events import outbox
from service.identity import AgentIdentity, Identity
from service.models import agents as states
from service.models import assignments as work_states
from service.models.agents import Agent, RegistrationToken
from service.models.assignments import Assignment
from service.schemas.agents import (
    AgentIn,
    AgentOut,
    AgentQuery,
    AgentRegisterIn,
    HeartbeatIn,
    RegistrationTokenIn,
)
from service.services import assignments

_SORT_COLUMNS: dict[str, Any] = {"created_at": Agent.created_at, "name": func.lower(Agent.name)}


def effective_status() -> ColumnElement[str]:
    """SQL for Agent.status: the operator's mode while the agent is connected, else what it reported."""
    return case(
        (and_(Agent.mode != states.ACTIVE, Agent.reported_status.in_(states.BEATING)), Agent.mode),
        else_=Agent.reported_status,
    )


def view(agent: Agent, beat: presence.Beat | None) -> AgentOut:
    """The agent as the API shows it, with the live heartbeat time and load from the presence store."""
    return with_beat(_record_view(agent), beat)


def with_beat(record: AgentOut, beat: presence.Beat | None) -> AgentOut:
    """The view of the agent's row completed with its last beat (the row holds the status changes')."""
    if beat is None:
        return record
    last = record.last_heartbeat_at
    return record.model_copy(
        update={"load": beat.load, "last_heartbeat_at": beat.at if last is None or beat.at > last else last}
    )


def _record_view(agent: Agent) -> AgentOut:
    return AgentOut(
        id=agent.id,
        name=agent.name,
        capabilities=agent.capabilities,
        max_concurrent=agent.max_concurrent,
        open_assignments=agent.open_assignments,
        metadata=agent.metadata_,
        status=agent.status,
        reported_status=agent.reported_status,
        mode=agent.mode,
        pause_note=agent.pause_note,
        resume_at=agent.resume_at,
        load=None,
        last_heartbeat_at=agent.last_heartbeat_at,
        status_changed_at=agent.status_changed_at,
        created_at=agent.created_at,
        updated_at=agent.updated_at,
    )


def record_event(session: AsyncSession, type_: str, agent: Agent, **extra: Any) -> None:
    """An event about the agent (its API view in `data.agent`), in the caller's transaction."""
    outbox.record(session, type_, {"agent": view(agent, None).model_dump(mode="json"), **extra}, agent.id)


async def _ensure_unique_name(session: AsyncSession, name: str, ignore: uuid.UUID | None = None) -> None:
    query = select(Agent.id).where(func.lower(Agent.name) == name.lower(), Agent.deleted_at.is_(None))
    if ignore is not None:
        query = query.where(Agent.id != ignore)
    if (await session.execute(query.limit(1))).first() is not None:
        raise errors.Conflict("An agent with that name exists.", {"field": "name"})


async def _new_agent(
    session: AsyncSession,
    name: str,
    capabilities: list[str],
    max_concurrent: int,
    metadata: dict[str, Any],
    created_by: uuid.UUID | None,
) -> tuple[Agent, str]:
    await _ensure_unique_name(session, name)
    secret = tokens.new_secret(tokens.AGENT_PREFIX)
    agent = Agent(
        name=name,
        capabilities=capabilities,
        max_concurrent=max_concurrent,
        metadata_=metadata,
        token_hash=tokens.digest(secret),
        created_by=created_by,
    )
    session.add(agent)
    await session.flush()
    record_event(session, "agent.registered", agent)
    return agent, secret


async def create_agent(session: AsyncSession, caller: Identity, data: AgentIn) -> tuple[Agent, str]:
    """Register an agent; returns it and its token, which is shown only now.

    Raises:
        Conflict: a live agent has that name.
    """
    return await _new_agent(
        session, data.name, data.capabilities, data.max_concurrent, data.metadata, caller.user_id
    )


async def get_agent(session: AsyncSession, agent_id: uuid.UUID) -> Agent:
    agent = await session.get(Agent, agent_id)
    if agent is None or agent.is_deleted:
        raise errors.NotFound("No such agent.")
    return agent


async def read_view(
    session: AsyncSession,
    presence_store: presence.Presence,
    cache: agent_cache.AgentCache,
    agent_id: uuid.UUID,
) -> AgentOut:
    """One agent as the API shows it (see `_views_of`).

    Raises:
        NotFound: no such live agent.
    """
    found = await _views_of(session, presence_store, cache, [agent_id])
    if not found:
        raise errors.NotFound("No such agent.")
    return found[0]


async def _cached_view(
    session: AsyncSession, cache: agent_cache.AgentCache, agent_id: uuid.UUID, version: str | None
) -> AgentOut:
    """The view of the agent's row under `version` (read before, in the same call as the beat; see
    `_row_views`).

    Raises:
        NotFound: no such live agent.
    """
    record = (await _row_views(session, cache, {agent_id: version})).get(agent_id)
    if record is None:
        raise errors.NotFound("No such agent.")
    return record


async def _row_views(
    session: AsyncSession, cache: agent_cache.AgentCache, versions: dict[uuid.UUID, str | None]
) -> dict[uuid.UUID, AgentOut]:
    """The views of the agents' rows: each cached under its version (read before this), the others read
    from the database in one query and cached under theirs. No version (the store is down): the
    database's, not cached. An agent deleted meanwhile is left out."""
    records: dict[uuid.UUID, AgentOut] = {}
    for agent_id, version in versions.items():
        record = cache.get(agent_id, version) if version is not None else None
        if record is not None:
            records[agent_id] = record
    missing = [agent_id for agent_id in versions if agent_id not in records]
    if missing:
        rows = await session.scalars(select(Agent).where(Agent.id.in_(missing), Agent.deleted_at.is_(None)))
        for agent in rows:
            records[agent.id] = record = _record_view(agent)
            if (version := versions[agent.id]) is not None:
                cache.put(agent.id, version, record)
    return records


async def list_views(
    session: AsyncSession, presence_store: presence.Presence, cache: agent_cache.AgentCache, query: AgentQuery
) -> tuple[list[AgentOut], int]:
    """A page of agents as the API shows them, and how many match in all."""
    ids, total = await _list_ids(session, query)
    # A safe request's connection goes back to the pool while Redis answers (see db.release_reads).
    await db.release_reads()
    return await _views_of(session, presence_store, cache, ids), total


async def _list_ids(session: AsyncSession, query: AgentQuery) -> tuple[Sequence[uuid.UUID], int]:
    statement: Select[uuid.UUID] = select(Agent.id).where(Agent.deleted_at.is_(None))
    if query.status:
        statement = statement.where(effective_status() == query.status)
    if query.capability:
        statement = statement.where(assignments.agent_has_all(session, [query.capability]))
    if query.q:
        statement = statement.where(pagination.contains(Agent.name, query.q))
    statement = statement.order_by(pagination.sort_order(_SORT_COLUMNS, query.sort), Agent.id)
    return await pagination.fetch_page(session, statement, query.page, query.per_page)


async def _views_of(
    session: AsyncSession,
    presence_store: presence.Presence,
    cache: agent_cache.AgentCache,
    agent_ids: Sequence[uuid.UUID],
) -> list[AgentOut]:
    """The agents as the API shows them, in the order given: each row's view from the cache while the
    agent's version is the one it was read under, else from the database, with its last beat (the beats
    and versions read in one call). An agent deleted since its id was read is left out."""
    try:
        live = await presence_store.look(agent_ids)
    except redis_client.FAILURES:
        live = {}  # no versions to check against: the database answers (the store logged the outage)
    versions = {agent_id: found.version if (found := live.get(agent_id)) else None for agent_id in agent_ids}
    records = await _row_views(session, cache, versions)
    return [
        with_beat(records[agent_id], found.beat if (found := live.get(agent_id)) else None)
        for agent_id in agent_ids
        if agent_id in records
    ]


async def update_agent(session: AsyncSession, agent_id: uuid.UUID, changes: dict[str, Any]) -> Agent:
    """Change an agent. Pausing keeps a note and an optional resume time; resuming or giving it more
    capacity hands it pending work at once.

    Raises:
        NotFound: no such agent.
        Conflict: the new name is taken.
    """
    agent = await get_agent(session, agent_id)
    if changes.get("name") is not None:
        await _ensure_unique_name(session, changes["name"], ignore=agent.id)
        agent.name = changes["name"]
    for field in ("capabilities", "max_concurrent"):
        if changes.get(field) is not None:
            setattr(agent, field, changes[field])
    if changes.get("metadata") is not None:
        agent.metadata_ = changes["metadata"]
    before = agent.status
    if changes.get("mode") is not None:
        agent.mode = changes["mode"]
        if agent.mode != states.PAUSED:
            agent.pause_note, agent.resume_at = None, None
    if agent.mode == states.PAUSED:
        if "pause_note" in changes:
            agent.pause_note = changes["pause_note"]
        if "resume_at" in changes:
            agent.resume_at = changes["resume_at"]
    agent.updated_at = datetime.now(UTC)
    await session.flush()
    record_event(session, "agent.updated", agent)
    if agent.status != before:
        record_event(session, "agent.status_changed", agent, **{"from": before, "to": agent.status})
    await assignments.dispatch_to(session, agent.id)
    await session.refresh(agent)
    return agent


async def delete_agent(
    session: AsyncSession, presence_store: presence.Presence, agent_id: uuid.UUID
) -> list[uuid.UUID]:
    """Soft-delete an agent: its token stops working and the work it held goes back to pending.

    Returns the requeued assignment ids.
    """
    agent = await get_agent(session, agent_id)
    agent.soft_delete()
    identity.forget_agent_token(session, agent.token_hash)
    requeued = await assignments.requeue_held(session, agent.id)
    record_event(session, "agent.deleted", agent, requeued=[str(i) for i in requeued])
    await presence_store.forget(agent.id)
    return requeued


async def rotate_token(session: AsyncSession, agent_id: uuid.UUID) -> tuple[Agent, str]:
    """A new token for the agent; the old one is refused from the commit on, everywhere."""
    agent = await get_agent(session, agent_id)
    identity.forget_agent_token(session, agent.token_hash)
    secret = tokens.new_secret(tokens.AGENT_PREFIX)
    agent.token_hash = tokens.digest(secret)
    agent.updated_at = datetime.now(UTC)
    return agent, secret


async def create_registration_token(
    session: AsyncSession, caller: Identity, data: RegistrationTokenIn
) -> tuple[RegistrationToken, str]:
    secret = tokens.new_secret(tokens.REGISTRATION_PREFIX)
    token = RegistrationToken(
        name=data.name,
        token_hash=tokens.digest(secret),
        default_capabilities=data.default_capabilities,
        single_use=data.single_use,
        expires_at=datetime.now(UTC) + timedelta(hours=data.expires_in_hours),
        created_by=caller.user_id,
    )
    session.add(token)
    await session.flush()
    return token, secret


async def list_registration_tokens(
    session: AsyncSession, page: int, per_page: int
) -> tuple[Sequence[RegistrationToken], int]:
    """Tokens that still work or could (not revoked), newest first."""
    statement = (
        select(RegistrationToken)
        .where(RegistrationToken.revoked_at.is_(None))
        .order_by(RegistrationToken.created_at.desc(), RegistrationToken.id)
    )
    return await pagination.fetch_page(session, statement, page, per_page)


async def revoke_registration_token(session: AsyncSession, token_id: uuid.UUID) -> None:
    token = await session.get(RegistrationToken, token_id)
    if token is None or token.revoked_at is not None:
        raise errors.NotFound("No such registration token.")
    token.revoked_at = datetime.now(UTC)


async def register_with_token(session: AsyncSession, data: AgentRegisterIn) -> tuple[Agent, str]:
    """An agent registers itself with a registration token (a single-use one works once).

    Raises:
        Unauthorized: unknown, expired, revoked or used-up token.
        Conflict: a live agent has that name.
    """
    now = datetime.now(UTC)
    # Count the use only if the token is still good at this instant: two agents racing for a single-use
    # token cannot both win.
    used = await session.execute(
        update(RegistrationToken)
        .where(
            RegistrationToken.token_hash == tokens.digest(data.token),
            RegistrationToken.revoked_at.is_(None),
            RegistrationToken.expires_at > now,
            (RegistrationToken.single_use.is_(False)) | (RegistrationToken.uses == 0),
        )
        .values(uses=RegistrationToken.uses + 1)
        .returning(RegistrationToken.default_capabilities)
    )
    defaults = used.scalar_one_or_none()
    if defaults is None:
        raise errors.Unauthorized("Invalid or expired registration token.")
    capabilities = data.capabilities if data.capabilities is not None else list(defaults)
    return await _new_agent(session, data.name, capabilities, data.max_concurrent, data.metadata, None)


# Built once (see db.ConditionalUpdate): most beats of a working agent read it.
_OPEN_WORK = (
    select(Assignment)
    .where(Assignment.agent_id == bindparam("the_agent"), Assignment.status.in_(work_states.HELD))
    .order_by(Assignment.priority.desc(), Assignment.assigned_at)
)


async def open_work(session: AsyncSession, agent_id: uuid.UUID) -> Sequence[Assignment]:
    return (await session.execute(_OPEN_WORK, {"the_agent": agent_id})).scalars().all()


async def record_heartbeat(
    session: AsyncSession,
    reader: AsyncSession,
    presence_store: presence.Presence,
    cache: agent_cache.AgentCache,
    caller: AgentIdentity,
    agent_id: uuid.UUID,
    beat: HeartbeatIn,
) -> tuple[str, Sequence[Assignment]]:
    """Note that the agent is alive; a change of status is written and published, nothing else is.
    Returns the agent's status and the work it holds. `reader` (an autocommit session) reads what an
    unchanged beat needs; a change is read again and written in `session`'s transaction.

    Raises:
        NotFound: no such agent, or the token is another agent's.
    """
    if caller.agent_id != agent_id:
        raise errors.NotFound("No such agent.")
    now = datetime.now(UTC)
    # The version comes back with the beat's write, before any database read (see agent_cache).
    version = await presence_store.record(agent_id, presence.Beat(now, beat.load))
    cached = await _cached_view(reader, cache, agent_id, version)
    # The common beat changes nothing: with the view cached and no work held (open_assignments counts
    # the held work in the same transactions that change it, the capacity invariant), nothing is read.
    if _changes_nothing(cached, beat):
        work = await open_work(reader, agent_id) if cached.open_assignments else []
        return cached.status, work
    await reader.close()  # its pooled connection back now: the change takes the transaction's
    agent = await get_agent(session, agent_id)
    if beat.metadata is not None and beat.metadata != agent.metadata_:
        agent.metadata_ = beat.metadata
        record_event(session, "agent.updated", agent)
    if agent.reported_status != beat.status:
        before = agent.status
        agent.reported_status = beat.status
        agent.status_changed_at = now
        agent.last_heartbeat_at = now
        record_event(session, "agent.status_changed", agent, **{"from": before, "to": agent.status})
        await session.flush()
        await assignments.dispatch_to(session, agent.id)
    # A change may just have dispatched work, which the loaded row does not count yet: look.
    return agent.status, await open_work(session, agent.id)


def _changes_nothing(record: AgentOut, beat: HeartbeatIn) -> bool:
    same_metadata = beat.metadata is None or beat.metadata == record.metadata
    return record.reported_status == beat.status and same_metadata


def _summary_statement() -> CompoundSelect[str, str, int]:
    status = effective_status()
    by_status = (
        select(literal("agents").label("part"), status.label("status"), func.count().label("count"))
        .where(Agent.deleted_at.is_(None))
        .group_by(status)
    )
    by_work = (
        select(literal("assignments"), Assignment.status, func.count())
        .where(Assignment.deleted_at.is_(None), Assignment.status.in_(work_states.OPEN))
        .group_by(Assignment.status)
    )
    return union_all(by_status, by_work)


# Both counts in one statement, built once: dashboards poll it.
_SUMMARY = _summary_statement()


async def summary(session: AsyncSession) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {"agents": {}, "assignments": {}}
    for part, status, count in (await session.execute(_SUMMARY)).all():
        counts[part][status] = count
    agents, work = counts["agents"], counts["assignments"]
    return {
        "agents": agents,
        "total_agents": sum(agents.values()),
        "assignments": work,
        "open_assignments": sum(work.values()),
    }


async def history(
    session: AsyncSession, agent_id: uuid.UUID, page: int, per_page: int
) -> tuple[Sequence[Assignment], int]:
    """Every assignment the agent holds or held, newest first."""
    await get_agent(session, agent_id)
    statement = (
        select(Assignment)
        .where(Assignment.agent_id == agent_id)
        .order_by(Assignment.created_at.desc(), Assignment.id.desc())
    )
    return await pagination.fetch_page(session, statement, page, per_page)
