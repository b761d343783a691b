"""The heartbeat sweeper: silent agents go offline (their held work back to pending), long-offline ones
go stale, paused ones resume when their time comes, pending work goes to agents with room (what a
create could not place then). One sweeper at a time across every instance.

Policy (the lease): work an agent holds (assigned, accepted or in progress) is leased to it for as long as
it beats. When the sweeper marks it offline the lease ends: the work returns to `pending` and is handed
to another agent, or waits. An agent that finishes a job while marked offline gets 409 for it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from quart import Quart
from sqlalchemy import Row, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from service import background, db, log, presence
from service.config import Settings
from service.models import agents as states
from service.models.agents import Agent
from service.services import agents, assignments

logger = log.get(__name__)

# Names the sweeper's PostgreSQL advisory lock (arbitrary, distinct from the relay's).
SWEEP_LOCK = 0x5B_05EE9
SWEEP_LOOP = "sweeper"


# Silent agents whose beats are asked again at once, just before they are marked offline. Each is then
# marked in a transaction of its own: marking one locks its row and those of the agents its work moves
# to, and a transaction for several held all those locks until its last agent was done. On a busy
# worker (each statement's answer waiting its turn on the event loop) a transaction of 20 held them for
# seconds, and the requests that touched those agents meanwhile (a completion, a cancellation) ran into
# DATABASE_STATEMENT_TIMEOUT: 503s in the load run (docs/reliability.md).
OFFLINE_BATCH = 20


async def sweep(
    database: db.Database, presence_store: presence.Presence, settings: Settings, now: datetime | None = None
) -> bool:
    """One round. Returns False (the loop waits for its interval); a round that cannot take the lock
    because another instance is sweeping stops there.

    What is read (the agents that should be beating, their beats in the presence store) is read outside
    any transaction, so no connection is held while Redis answers; the silent ones are then marked
    offline one per transaction, each taking the sweeper's lock, their beats asked again just before
    (OFFLINE_BATCH at a time).
    """
    now = now or datetime.now(UTC)
    deadline = now - timedelta(seconds=settings.agent_heartbeat_timeout)
    async with database.autocommit() as reader:
        watched = (await reader.execute(_WATCHED)).all()
    silent = _silent(watched, await presence_store.last(row.id for row in watched), deadline)
    offline, handed_out, leading = 0, 0, True
    for start in range(0, len(silent), OFFLINE_BATCH):
        chunk = silent[start : start + OFFLINE_BATCH]
        # Beats that came while the earlier agents were marked spare their agents.
        beats = await presence_store.last(row.id for row in chunk)
        for row in _silent(chunk, beats, deadline):
            async with _as_sweeper(database) as session:
                leading = session is not None
                if session is None:
                    break
                beat = beats.get(row.id)
                last_seen = beat.at if beat is not None else row.last_heartbeat_at
                if await _mark_offline(session, row.id, last_seen, row.reported_status, now):
                    offline += 1
        if not leading:
            break
    if leading:
        with_room: list[uuid.UUID] = []
        async with _as_sweeper(database) as session:
            if session is not None:
                await _mark_stale(session, now - timedelta(seconds=settings.agent_stale_after), now)
                with_room = await _resume_paused(session, now)
                with_room += await assignments.agents_for_pending_work(session)
        # Each in a transaction of its own, for the reason marking offline is (OFFLINE_BATCH). Work that
        # a crash here leaves pending goes out at the next round.
        for agent_id in dict.fromkeys(with_room):
            async with _as_sweeper(database) as session:
                if session is None:
                    break
                handed_out += len(await assignments.dispatch_to(session, agent_id))
    if offline:
        logger.info("agents_offline", count=offline)
    if handed_out:
        logger.info("pending_work_handed_out", count=handed_out)
    return False


@asynccontextmanager
async def _as_sweeper(database: db.Database) -> AsyncIterator[AsyncSession | None]:
    """A transaction holding the sweeper's lock, committed at the end of the block (and what waits for
    the commit run); None, with nothing to do, when another instance is sweeping."""
    async with database.sessionmaker() as session:
        if not await db.lead(session, SWEEP_LOCK):
            await session.rollback()
            yield None
            return
        yield session
        await db.commit(session)


# The agents that should be beating, with what the database knows of their last sign of life.
_Watched = Row[uuid.UUID, datetime | None, datetime | None, str]
_WATCHED = select(Agent.id, Agent.last_heartbeat_at, Agent.status_changed_at, Agent.reported_status).where(
    Agent.reported_status.in_(states.BEATING), Agent.deleted_at.is_(None)
)


def _silent(
    watched: Sequence[_Watched], beats: dict[uuid.UUID, presence.Beat], deadline: datetime
) -> list[_Watched]:
    """The watched agents last seen before `deadline`."""
    silent = []
    for row in watched:
        beat = beats.get(row.id)
        seen = beat.at if beat is not None else (row.last_heartbeat_at or row.status_changed_at)
        if seen is None or seen < deadline:
            silent.append(row)
    return silent


# Conditional: a beat that changed the status meanwhile wins over the sweeper.
_MARK_OFFLINE = db.ConditionalUpdate(
    Agent,
    Agent.id == bindparam("agent_id"),
    Agent.reported_status.in_(states.BEATING),
    reported_status=states.OFFLINE,
    status_changed_at=bindparam("now"),
    last_heartbeat_at=bindparam("last_seen"),
)
_MARK_STALE = db.ConditionalUpdate(
    Agent,
    Agent.reported_status == states.OFFLINE,
    Agent.status_changed_at < bindparam("deadline"),
    Agent.deleted_at.is_(None),
    reported_status=states.STALE,
    status_changed_at=bindparam("now"),
)
_RESUME_PAUSED = db.ConditionalUpdate(
    Agent,
    Agent.mode == states.PAUSED,
    Agent.resume_at <= bindparam("now"),
    Agent.deleted_at.is_(None),
    mode=states.ACTIVE,
    pause_note=None,
    resume_at=None,
    updated_at=bindparam("now"),
)


async def _mark_offline(
    session: AsyncSession, agent_id: uuid.UUID, last_seen: datetime | None, was: str, now: datetime
) -> bool:
    """Whether the agent was marked offline (not when a beat changed its status meanwhile)."""
    won = await _MARK_OFFLINE(session, agent_id=agent_id, now=now, last_seen=last_seen)
    if not won:
        return False
    agent = won[0]
    requeued = await assignments.requeue_held(session, agent.id)
    requeued_ids = [str(i) for i in requeued]
    agents.record_event(
        session, "agent.status_changed", agent, requeued=requeued_ids, **{"from": was, "to": states.OFFLINE}
    )
    agents.record_event(session, "agent.offline", agent, requeued=requeued_ids)
    return True


async def _mark_stale(session: AsyncSession, deadline: datetime, now: datetime) -> None:
    stale = await _MARK_STALE(session, deadline=deadline, now=now)
    for agent in stale:
        agents.record_event(
            session, "agent.status_changed", agent, **{"from": states.OFFLINE, "to": states.STALE}
        )


async def _resume_paused(session: AsyncSession, now: datetime) -> list[uuid.UUID]:
    """Resume the paused agents whose time has come; returns them, for pending work to follow."""
    resumed = await _RESUME_PAUSED(session, now=now)
    for agent in resumed:
        agents.record_event(
            session, "agent.status_changed", agent, **{"from": states.PAUSED, "to": agent.status}
        )
    return [agent.id for agent in resumed]


def init_app(app: Quart, settings: Settings) -> None:
    async def round_() -> bool:
        return await sweep(app.extensions["db"], app.extensions["presence"], settings)

    background.loops_of(app).add(SWEEP_LOOP, round_, settings.sweep_interval)
