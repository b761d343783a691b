"""Each process's cache of agents' API views, exact across processes and instances.

An entry holds an agent's view as the database had it, under the agent's **version** from the presence
store (service/presence.py) read *before* that database read. Every commit that changes an agent's row
replaces its version afterwards, and before the request that made the change is answered. A reader
gets the version with the heartbeat it needs anyway (one round trip) and uses its entry only when the
versions match; so a reader whose view predates a commit that was already answered cannot match, on any
worker or instance.

Which agents a transaction changed is noted by session events, not by each service: rows the ORM
flushes, and UPDATE or DELETE statements on `agents`. A statement names the agents it touches with
`touches(...)`; one that does not (a bulk change) replaces the version of every agent.

When Redis fails after a commit, the version change waits in the process that made it until Redis
answers again; meanwhile another process could show the view from before. Entries therefore also
expire (`AGENT_CACHE_SECONDS`), which bounds that case; while Redis is down no entry is used at all,
since no version can be read.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from quart import Quart, current_app, has_app_context
from sqlalchemy import CursorResult, Executable, Result, event
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from service import db
from service.cache import Lru
from service.models.agents import Agent
from service.schemas.agents import AgentOut

# session.info keys: the agents this transaction changed, and whether it changed agents it cannot name.
_CHANGED = "agents_changed"
_CHANGED_ALL = "agents_changed_all"
# The execution option naming the agents a statement touches.
_TOUCHES = "touches_agents"
_PUBLISH = "agents_publish"


def touches(*agent_ids: uuid.UUID) -> dict[str, Any]:
    """Execution options for an UPDATE of `agents` that changes only these agents' rows."""
    return {_TOUCHES: frozenset(agent_ids)}


class AgentCache:
    """Views by agent id, each with the version it was read under and when; least recently used out."""

    def __init__(self, size: int, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._entries: Lru[uuid.UUID, tuple[str, float, AgentOut]] = Lru(size)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, agent_id: uuid.UUID, version: str) -> AgentOut | None:
        """The cached view if it was read under `version` and is not too old."""
        entry = self._entries.get(agent_id)
        if entry is None:
            return None
        cached_version, stored_at, view = entry
        if cached_version != version or self._clock() - stored_at > self._seconds:
            self._entries.pop(agent_id)
            return None
        return view

    def put(self, agent_id: uuid.UUID, version: str, view: AgentOut) -> None:
        """Keep the view read from the database after `version` was read (never one this process's own
        uncommitted transaction changed: only views read outside a transaction that wrote)."""
        self._entries.put(agent_id, (version, self._clock(), view))

    def drop(self, agent_ids: Iterable[uuid.UUID], every_agent: bool) -> None:
        if every_agent:
            self._entries.clear()
            return
        for agent_id in agent_ids:
            self._entries.pop(agent_id)


def current() -> AgentCache:
    cache: AgentCache = current_app.extensions["agent_cache"]
    return cache


def _note(session: Session, agent_ids: Iterable[uuid.UUID], every_agent: bool = False) -> None:
    changed: set[uuid.UUID] = session.info.setdefault(_CHANGED, set())
    changed.update(agent_ids)
    if every_agent:
        session.info[_CHANGED_ALL] = True
    if not has_app_context():
        return  # a script outside the app: no process caches to keep exact
    publish = session.info.get(_PUBLISH)
    if publish is None:
        app = current_app._get_current_object()  # type: ignore[attr-defined]

        async def publish() -> None:
            await _publish(app, session)

        session.info[_PUBLISH] = publish
    db.after_commit(session, publish)  # registered once per commit, however many changes note it


async def _publish(app: Quart, session: Session) -> None:
    """After the commit: replace the changed agents' versions, and drop this process's own entries."""
    agent_ids: set[uuid.UUID] = session.info.pop(_CHANGED, set())
    every_agent = bool(session.info.pop(_CHANGED_ALL, False))
    if not agent_ids and not every_agent:
        return
    app.extensions["agent_cache"].drop(agent_ids, every_agent)
    await app.extensions["presence"].bump(agent_ids, every_agent)


@event.listens_for(Session, "before_flush")
def _flushed(session: Session, flush_context: UOWTransaction, instances: object) -> None:
    changed = [item.id for item in (*session.dirty, *session.deleted) if isinstance(item, Agent)]
    if changed:
        _note(session, changed)


@event.listens_for(Session, "do_orm_execute")
def _executed(state: ORMExecuteState) -> Result[Any] | None:
    if not (state.is_update or state.is_delete):
        return None
    table = getattr(state.statement, "table", None)
    if table is None or table.name != Agent.__tablename__:
        return None
    named: frozenset[uuid.UUID] | None = state.execution_options.get(_TOUCHES)
    if named is not None:
        _note(state.session, named)
        return None
    # Unnamed: the agents it returned (`RETURNING` the rows, as a db.ConditionalUpdate does, or only
    # their ids), else all.
    result = state.invoke_statement()
    if isinstance(result, CursorResult) and not result.returns_rows:
        _note(state.session, (), every_agent=True)
        return result
    frozen = result.freeze()
    returned = [value for row in frozen() for value in row]
    if all(isinstance(value, Agent) for value in returned):
        _note(state.session, [agent.id for agent in returned])
    elif _returns_ids(state.statement):
        _note(state.session, returned)
    else:
        _note(state.session, (), every_agent=True)
    return frozen()


def _returns_ids(statement: Executable) -> bool:
    returning: list[dict[str, Any]] = getattr(statement, "returning_column_descriptions", [])
    return len(returning) == 1 and returning[0]["expr"] is Agent.id


@event.listens_for(Session, "after_rollback")
def _rolled_back(session: Session) -> None:
    # Nothing the transaction did is visible: nothing to publish.
    session.info.pop(_CHANGED, None)
    session.info.pop(_CHANGED_ALL, None)


def init_app(app: Quart, size: int, seconds: float) -> None:
    app.extensions["agent_cache"] = AgentCache(size, seconds)
