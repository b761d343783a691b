"""Capacity holds under concurrency: many creators, heartbeats and completions at once never give an
agent more than `max_concurrent` open assignments, nor one assignment to two agents (PostgreSQL in the
PostgreSQL run; the embedded run checks the same on SQLite)."""

from __future__ import annotations

import asyncio
import collections

from quart.testing import QuartClient
from sqlalchemy import select

from service import db
from service.application import Switchboard
from service.models.assignments import Assignment
from service.models.events import OutboxEvent

from ..accounts import signed_in
from ..blueprints.test_assignments import assert_capacity_holds
from ..fleet import beat, online_agent

AGENTS, CAPACITY, CREATORS = 10, 2, 50


async def test_fifty_creators_and_heartbeats_never_overfill_an_agent(
    client: QuartClient, app: Switchboard
) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    fleet = [await online_agent(client, operator, f"a{i}", max_concurrent=CAPACITY) for i in range(AGENTS)]

    async def create(n: int) -> None:
        response = await client.post("/api/v1/assignments", json={"title": f"job-{n}"}, headers=operator)
        assert response.status_code == 201, await response.get_data()

    async def flap(agent_id: str, token: dict[str, str]) -> None:
        for status in ("busy", "online", "busy", "online"):
            await beat(client, agent_id, token, status=status)

    await asyncio.gather(*(create(n) for n in range(CREATORS)), *(flap(a, t) for a, t in fleet))
    await assert_capacity_holds(app)
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        work = (await session.execute(select(Assignment))).scalars().all()
        assigned = collections.Counter(
            e.data["data"]["assignment"]["id"]
            for e in (
                await session.execute(select(OutboxEvent).where(OutboxEvent.type == "assignment.assigned"))
            ).scalars()
        )
    assert len(work) == CREATORS
    held = [a for a in work if a.agent_id is not None]
    assert 0 < len(held) <= AGENTS * CAPACITY
    assert all(count == 1 for count in assigned.values())  # no assignment went to two agents
    assert set(assigned) == {str(a.id) for a in held}
