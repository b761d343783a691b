"""Capacity holds under concurrency: many creators, heartbeats and completions at once never give an
agent more than `max_concurrent` open assignments, nor one assignment to two agents (PostgreSQL in the
PostgreSQL run; the embedded run checks the same on SQLite)."""

from __future__ import annotations

import asyncio
import collections
import uuid

from quart.testing import QuartClient
from sqlalchemy import select

from service import db
from service.application import Switchboard
from service.config import Settings
from service.models.assignments import Assignment
from service.models.events import OutboxEvent
from service.services import sweeper

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


async def test_work_left_pending_while_an_agent_had_room_goes_out_at_the_next_sweep(
    client: QuartClient, app: Switchboard
) -> None:
    # Twelve creates at once against two agents with room for ten each: a create finding both agents'
    # rows locked by the others passes them by and leaves its work pending (waiting instead deadlocked);
    # the sweeper's next round hands it out.
    operator = await signed_in(client, "opal", "operator", app)
    for name in ("a", "b"):
        await online_agent(client, operator, name, max_concurrent=10)

    async def create(n: int) -> uuid.UUID:
        response = await client.post("/api/v1/assignments", json={"title": f"job-{n}"}, headers=operator)
        assert response.status_code == 201, await response.get_data()
        return uuid.UUID((await response.get_json())["data"]["id"])

    made = await asyncio.gather(*(create(n) for n in range(12)))
    settings: Settings = app.config["SETTINGS"]
    async with app.app_context():
        await sweeper.sweep(app.extensions["db"], app.extensions["presence"], settings)

    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        statuses = (await session.execute(select(Assignment.status).where(Assignment.id.in_(made)))).scalars()
        assert sorted(statuses) == ["assigned"] * 12
    await assert_capacity_holds(app)
