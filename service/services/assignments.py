"""Assignments: giving work to agents, by choice or automatically, and moving it through its lifecycle.

Correct under concurrency on both databases without trusting what a transaction read: every change of
an agent's load or of an assignment's state is a conditional UPDATE (`... WHERE open_assignments <
max_concurrent`, `... WHERE status = 'pending'`) whose row count says whether it won. On PostgreSQL the
candidate rows are also taken `FOR UPDATE SKIP LOCKED`, so concurrent creators spread over different
agents instead of queueing on the same one.

Policy: auto-assignment picks an `online`, `active` agent with every required capability and spare
capacity: fewest open assignments first, then the one that got work longest ago. Pending work is handed
out by priority, then age, when an agent comes online, frees capacity or is resumed.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    Update,
    and_,
    bindparam,
    cast,
    exists,
    func,
    literal,
    not_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from service import agent_cache, db, errors, pagination
from service.events import outbox
from service.identity import AgentIdentity, Identity
from service.models import agents as agent_states
from service.models import assignments as states
from service.models.agents import Agent
from service.models.assignments import Assignment
from service.schemas.assignments import AssignmentIn, AssignmentOut, AssignmentQuery

# Work no agent holds: what a reassignment or an ended lease leaves.
_UNHELD: dict[str, Any] = {
    "status": states.PENDING,
    "agent_id": None,
    "assigned_at": None,
    "started_at": None,
}

# action → (states it may start from, the state it leads to)
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "accept": ((states.ASSIGNED,), states.ACCEPTED),
    "start": ((states.ASSIGNED, states.ACCEPTED), states.IN_PROGRESS),
    "complete": ((states.ACCEPTED, states.IN_PROGRESS), states.COMPLETED),
    "fail": ((states.ASSIGNED, states.ACCEPTED, states.IN_PROGRESS), states.FAILED),
    "cancel": (states.OPEN, states.CANCELLED),
}


def _postgres_has_all(required: ColumnElement[str]) -> ColumnElement[bool]:
    """SQL (PostgreSQL): the agent's capabilities contain the JSON array `required`."""
    return Agent.capabilities.op("@>")(cast(required, JSONB))


def agent_has_all(session: AsyncSession, required: Sequence[str]) -> ColumnElement[bool]:
    """SQL: the agent's capabilities include every one of `required`."""
    if not required:
        return true()
    if db.is_postgres(session):
        return _postgres_has_all(literal(json.dumps(list(required))))
    checks = []
    for capability in required:
        each = func.json_each(Agent.capabilities).table_valued("value").alias()
        checks.append(exists(select(literal(1)).select_from(each).where(each.c.value == capability)))
    return and_(*checks)


def work_fits(session: AsyncSession, capabilities: Sequence[str]) -> ColumnElement[bool]:
    """SQL: the assignment requires nothing outside `capabilities`."""
    if db.is_postgres(session):
        return Assignment.required_capabilities.op("<@")(cast(literal(json.dumps(list(capabilities))), JSONB))
    each = func.json_each(Assignment.required_capabilities).table_valued("value").alias()
    return not_(exists(select(literal(1)).select_from(each).where(each.c.value.not_in(list(capabilities)))))


def event_data(assignment: Assignment) -> dict[str, Any]:
    return {"assignment": AssignmentOut.model_validate(assignment).model_dump(mode="json")}


def _claim_statement(statuses: tuple[str, ...], agent: ColumnElement[uuid.UUID]) -> Update:
    """Take one slot of `agent`'s capacity if it has one and is active, in one of `statuses`."""
    return (
        update(Agent)
        .where(
            Agent.id == agent,
            Agent.deleted_at.is_(None),
            Agent.mode == agent_states.ACTIVE,
            Agent.reported_status.in_(statuses),
            Agent.open_assignments < Agent.max_concurrent,
        )
        .values(open_assignments=Agent.open_assignments + 1, last_assigned_at=bindparam("now"))
        .execution_options(synchronize_session=False)
    )


# Built once (see db.ConditionalUpdate): auto-assignment takes online agents only; a named agent may be
# busy or away as well.
_CLAIM = {
    True: _claim_statement((agent_states.ONLINE,), bindparam("the_agent")),
    False: _claim_statement(
        (agent_states.ONLINE, agent_states.BUSY, agent_states.AWAY), bindparam("the_agent")
    ),
}


async def _claim_capacity(session: AsyncSession, agent_id: uuid.UUID, *, auto: bool) -> bool:
    """Take one slot of the agent's capacity if it still has one (and, for auto-assignment, is online)."""
    won = await session.execute(
        _CLAIM[auto],
        {"the_agent": agent_id, "now": datetime.now(UTC)},
        execution_options=agent_cache.touches(agent_id),
    )
    return bool(won.rowcount == 1)  # type: ignore[attr-defined]


_RELEASE = db.ConditionalUpdate(
    Agent,
    Agent.id == bindparam("the_agent"),
    Agent.open_assignments > 0,
    open_assignments=Agent.open_assignments - 1,
)


async def release_capacity(session: AsyncSession, agent_id: uuid.UUID) -> Agent | None:
    """Give back one slot of the agent's capacity; returns its row as it is now (None if it held none),
    so that handing it pending work next needs no read of its own."""
    released = await _RELEASE(session, the_agent=agent_id)
    return released[0] if released else None


# Online, active agents with room, best first (auto-assignment's policy).
_WITH_ROOM = (
    select(Agent.id)
    .where(
        Agent.deleted_at.is_(None),
        Agent.mode == agent_states.ACTIVE,
        Agent.reported_status == agent_states.ONLINE,
        Agent.open_assignments < Agent.max_concurrent,
    )
    .order_by(Agent.open_assignments, Agent.last_assigned_at.asc().nulls_first(), Agent.id)
)


def _claim_best_statement(has_all: ColumnElement[bool]) -> Update:
    # The best free agent, locked as it is chosen; on PostgreSQL a candidate another transaction holds
    # is passed by, and one that no longer qualifies once locked is dropped for the next (the lock is
    # taken below the LIMIT), so one statement both chooses and claims. Passed by rather than waited
    # for: a transaction may hold other agents' rows already (a completion, a requeue), and waiting
    # creators deadlocked with each other (each can lock rows that then fail the recheck). Work left
    # pending so is handed out by the sweeper's next round (agents_for_pending_work).
    best = (
        _WITH_ROOM.where(has_all).limit(1).with_for_update(skip_locked=True).correlate(None).scalar_subquery()
    )
    # The agent cache notes the agent it returns.
    return _claim_statement((agent_states.ONLINE,), best).returning(Agent.id)


# Built once (see db.ConditionalUpdate), the capabilities a bound JSON array.
_POSTGRES_CLAIM_BEST = _claim_best_statement(_postgres_has_all(bindparam("required", type_=String)))


async def _claim_best(session: AsyncSession, required: Sequence[str]) -> uuid.UUID | None:
    """Take a slot of the best free agent that can do the work, in one statement; its id, or None when
    no agent can take it now."""
    now = datetime.now(UTC)
    if db.is_postgres(session):
        statement = _POSTGRES_CLAIM_BEST
        params: dict[str, Any] = {"required": json.dumps(list(required)), "now": now}
    else:  # SQLite tests each capability with an EXISTS of its own: built per call
        statement, params = _claim_best_statement(agent_has_all(session, required)), {"now": now}
    return (await session.execute(statement, params)).scalar_one_or_none()


async def _explicit_agent(session: AsyncSession, agent_id: uuid.UUID, required: Sequence[str]) -> Agent:
    """The chosen agent, checked.

    Raises:
        NotFound: no such live agent.
        Conflict: it is offline, paused or draining, lacks a capability, or is at capacity.
    """
    query = select(Agent).where(Agent.id == agent_id, Agent.deleted_at.is_(None)).with_for_update()
    agent = (await session.execute(query.execution_options(populate_existing=True))).scalar_one_or_none()
    if agent is None:
        raise errors.NotFound("No such agent.")
    if agent.reported_status not in agent_states.BEATING or agent.mode != agent_states.ACTIVE:
        raise errors.Conflict(f"The agent is {agent.status}.", {"agent_status": agent.status})
    missing = sorted(set(required) - set(agent.capabilities))
    if missing:
        raise errors.Conflict("The agent lacks required capabilities.", {"missing_capabilities": missing})
    if not await _claim_capacity(session, agent.id, auto=False):
        raise errors.Conflict(
            "The agent is at capacity.",
            {"open_assignments": agent.open_assignments, "max": agent.max_concurrent},
        )
    return agent


async def _place(session: AsyncSession, assignment: Assignment, agent_id: uuid.UUID | None) -> None:
    """Give the (new or pending) assignment to the chosen agent, or the best free one, or leave it pending."""
    chosen: uuid.UUID | None = None
    if agent_id is not None:
        chosen = (await _explicit_agent(session, agent_id, assignment.required_capabilities)).id
    else:
        chosen = await _claim_best(session, assignment.required_capabilities)
    if chosen is not None:
        assignment.status = states.ASSIGNED
        assignment.agent_id = chosen
        assignment.assigned_at = datetime.now(UTC)
        assignment.attempts += 1


async def create_assignment(session: AsyncSession, caller: Identity, data: AssignmentIn) -> Assignment:
    """Create work and place it at once if an agent can take it.

    Raises:
        NotFound / Conflict: see _explicit_agent, when `agent_id` is given.
    """
    assignment = Assignment(
        title=data.title,
        payload=data.payload,
        required_capabilities=sorted(set(data.required_capabilities)),
        priority=data.priority,
        created_by=caller.user_id,
        attempts=0,
    )
    session.add(assignment)
    # Placed before it is written: one INSERT with its agent, rather than an INSERT that the candidates'
    # query would flush first and an UPDATE after it.
    with session.no_autoflush:
        await _place(session, assignment, data.agent_id)
    await session.flush()
    view = event_data(assignment)
    outbox.record(session, "assignment.created", view, assignment.agent_id)
    if assignment.agent_id is not None:
        outbox.record(session, "assignment.assigned", view, assignment.agent_id)
    return assignment


async def get_assignment(session: AsyncSession, assignment_id: uuid.UUID) -> Assignment:
    assignment = await session.get(Assignment, assignment_id)
    if assignment is None or assignment.is_deleted:
        raise errors.NotFound("No such assignment.")
    return assignment


async def list_assignments(session: AsyncSession, query: AssignmentQuery) -> tuple[Sequence[Assignment], int]:
    statement: Select[Assignment] = select(Assignment).where(Assignment.deleted_at.is_(None))
    if query.status:
        statement = statement.where(Assignment.status == query.status)
    if query.agent_id:
        statement = statement.where(Assignment.agent_id == query.agent_id)
    statement = statement.order_by(Assignment.created_at.desc(), Assignment.id.desc())
    return await pagination.fetch_page(session, statement, query.page, query.per_page)


@functools.cache
def _move(action: str, changed: frozenset[str]) -> db.ConditionalUpdate[Assignment]:
    """The UPDATE of one action with the given columns of `changes` (one statement per such pair)."""
    sources, target = TRANSITIONS[action]
    values: dict[str, Any] = {"status": target, "updated_at": bindparam("now")}
    values.update({name: bindparam(f"new_{name}") for name in changed})
    if target == states.IN_PROGRESS:
        values["started_at"] = bindparam("now")
    if target in states.CLOSED:
        values["finished_at"] = bindparam("now")
    return db.ConditionalUpdate(
        Assignment, Assignment.id == bindparam("the_assignment"), Assignment.status.in_(sources), **values
    )


_UNHOLD = db.ConditionalUpdate(
    Assignment,
    Assignment.id == bindparam("the_assignment"),
    Assignment.status == bindparam("was"),
    **_UNHELD,
)
_GIVE_PENDING = db.ConditionalUpdate(
    Assignment,
    Assignment.id == bindparam("the_assignment"),
    Assignment.status == states.PENDING,
    status=states.ASSIGNED,
    agent_id=bindparam("the_agent"),
    assigned_at=bindparam("now"),
    attempts=Assignment.attempts + 1,
)
_REQUEUE_HELD = db.ConditionalUpdate(
    Assignment, Assignment.agent_id == bindparam("the_agent"), Assignment.status.in_(states.HELD), **_UNHELD
)


async def transition(
    session: AsyncSession,
    actor: Identity | AgentIdentity,
    assignment_id: uuid.UUID,
    action: str,
    changes: dict[str, Any] | None = None,
) -> Assignment:
    """Move an assignment along its lifecycle (accept, start, complete, fail, cancel).

    An agent may act only on its own assignments and may not cancel; operators may do any of it.

    Raises:
        NotFound: no such assignment, or another agent's.
        Forbidden: an agent cancelling.
        Conflict: the assignment is not in a state the action starts from (details name the state).
    """
    assignment = await get_assignment(session, assignment_id)
    if isinstance(actor, AgentIdentity):
        if assignment.agent_id != actor.agent_id:
            raise errors.NotFound("No such assignment.")
        if action == "cancel":
            raise errors.Forbidden("Agents cannot cancel work; fail it instead.")
    sources, target = TRANSITIONS[action]
    changes = changes or {}
    previous = assignment.status
    held_by = assignment.agent_id if assignment.status in states.HELD else None
    moved = await _move(action, frozenset(changes))(
        session,
        the_assignment=assignment.id,
        now=datetime.now(UTC),
        **{f"new_{name}": value for name, value in changes.items()},
    )
    if not moved:
        await session.refresh(assignment)
        raise errors.Conflict(
            f"Cannot {action} an assignment that is {assignment.status}.",
            {"status": assignment.status, "allowed_from": list(sources)},
        )
    outbox.record(
        session,
        "assignment.status_changed",
        {**event_data(assignment), "from": previous, "to": target},
        assignment.agent_id,
    )
    if target in states.CLOSED and held_by is not None:
        await dispatch_to(session, held_by, await release_capacity(session, held_by))
    return assignment


async def reassign(
    session: AsyncSession, caller: Identity, assignment_id: uuid.UUID, agent_id: uuid.UUID | None
) -> Assignment:
    """Take open work from its agent (if any) and give it to another, or the best free one, or pending.

    Raises:
        NotFound: no such assignment or agent.
        Conflict: the work is closed, or the chosen agent cannot take it.
    """
    assignment = await get_assignment(session, assignment_id)
    if assignment.status not in states.OPEN:
        raise errors.Conflict(
            f"Cannot reassign an assignment that is {assignment.status}.", {"status": assignment.status}
        )
    previous_agent = assignment.agent_id if assignment.status in states.HELD else None
    before = assignment.status
    taken = await _UNHOLD(session, the_assignment=assignment.id, was=assignment.status)
    if not taken:
        raise errors.Conflict("The assignment changed meanwhile; try again.")
    released = None if previous_agent is None else await release_capacity(session, previous_agent)
    await _place(session, assignment, agent_id)
    await session.flush()
    outbox.record(
        session,
        "assignment.assigned" if assignment.agent_id else "assignment.status_changed",
        {
            **event_data(assignment),
            "from": before,
            "to": assignment.status,
            "from_agent_id": str(previous_agent) if previous_agent else None,
        },
        assignment.agent_id or previous_agent,
    )
    if previous_agent is not None and previous_agent != assignment.agent_id:
        await dispatch_to(session, previous_agent, released)
    return assignment


async def dispatch_to(
    session: AsyncSession, agent_id: uuid.UUID, row: Agent | None = None
) -> list[Assignment]:
    """Hand pending work the agent can do to it, by priority then age, while it has capacity. `row`: the
    agent's row as this transaction just wrote it, if the caller has it (else it is read)."""
    agent = row or await session.get(Agent, agent_id, populate_existing=True)
    if (
        agent is None
        or agent.is_deleted
        or agent.mode != agent_states.ACTIVE
        or agent.reported_status != agent_states.ONLINE
        or agent.open_assignments >= agent.max_concurrent
    ):
        return []
    pending = (
        (
            await session.execute(
                select(Assignment.id)
                .where(
                    Assignment.status == states.PENDING,
                    Assignment.deleted_at.is_(None),
                    work_fits(session, agent.capabilities),
                )
                .order_by(Assignment.priority.desc(), Assignment.created_at, Assignment.id)
                .limit(agent.max_concurrent - agent.open_assignments)
                .with_for_update(skip_locked=True)
            )
        )
        .scalars()
        .all()
    )
    given: list[Assignment] = []
    for assignment_id in pending:
        if not await _claim_capacity(session, agent.id, auto=True):
            break
        won = await _GIVE_PENDING(
            session, the_assignment=assignment_id, the_agent=agent.id, now=datetime.now(UTC)
        )
        claimed = won[0] if won else None
        if claimed is None:  # another transaction handed it out first: give the slot back
            await release_capacity(session, agent.id)
            continue
        outbox.record(session, "assignment.assigned", event_data(claimed), agent.id)
        given.append(claimed)
    return given


# Agents a sweeper round gives pending work to at most.
HAND_OUT_BATCH = 20
_ANY_PENDING = (
    select(Assignment.id).where(Assignment.status == states.PENDING, Assignment.deleted_at.is_(None)).limit(1)
)
_HAND_OUT_TO = _WITH_ROOM.limit(HAND_OUT_BATCH)


async def agents_for_pending_work(session: AsyncSession) -> Sequence[uuid.UUID]:
    """Online agents with room, best first (HAND_OUT_BATCH at most), when work is pending: the sweeper
    gives each its share (dispatch_to) in a transaction of its own, since each one locks the agent's row.

    Work is handed out when an agent comes online, frees capacity or is resumed; this catches work that
    was left pending although some agent had room (every such agent was locked by another transaction
    at that moment: _claim_best_statement passes locked agents by), so it waits one sweep at most.
    """
    if await session.scalar(_ANY_PENDING) is None:
        return []
    return (await session.execute(_HAND_OUT_TO)).scalars().all()


async def requeue_held(session: AsyncSession, agent_id: uuid.UUID) -> list[uuid.UUID]:
    """Put the work an agent holds back to pending (it went offline or was deleted: its lease ended),
    then hand it to other agents. Returns the requeued ids."""
    held = await _REQUEUE_HELD(session, the_agent=agent_id)
    if not held:
        return []
    await session.execute(
        update(Agent)
        .where(Agent.id == agent_id)
        .values(open_assignments=0)
        .execution_options(synchronize_session=False, **agent_cache.touches(agent_id))
    )
    for assignment in held:
        outbox.record(
            session,
            "assignment.status_changed",
            {**event_data(assignment), "from": "held", "to": states.PENDING, "from_agent_id": str(agent_id)},
            agent_id,
        )
    for assignment in held:
        await _place(session, assignment, None)
        if assignment.agent_id is not None:
            outbox.record(session, "assignment.assigned", event_data(assignment), assignment.agent_id)
    await session.flush()
    return [assignment.id for assignment in held]
