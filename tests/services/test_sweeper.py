"""The heartbeat sweeper: silence means offline (and the lease on held work ends), long silence stale,
paused agents resume on time; one sweeper at a time across instances."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from quart.testing import QuartClient
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from service import background, db, presence
from service.application import Switchboard
from service.config import Settings
from service.models.events import OutboxEvent
from service.models.notifications import Notification
from service.services import sweeper

from ..accounts import signed_in
from ..fleet import beat, make_agent, make_work, online_agent


async def _sweep(app: Switchboard, after: timedelta) -> None:
    """One round as the background loop runs it: inside the app's context (loops start in it)."""
    settings: Settings = app.config["SETTINGS"]
    async with app.app_context():
        await sweeper.sweep(
            app.extensions["db"], app.extensions["presence"], settings, datetime.now(UTC) + after
        )


async def _event_types(app: Switchboard) -> list[str]:
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        return list((await session.execute(select(OutboxEvent.type).order_by(OutboxEvent.id))).scalars())


async def _agent(client: QuartClient, headers: dict[str, str], agent_id: str) -> dict[str, object]:
    data: dict[str, object] = (
        await (await client.get(f"/api/v1/agents/{agent_id}", headers=headers)).get_json()
    )["data"]
    return data


async def test_silent_agents_go_offline_and_their_work_moves_on(
    client: QuartClient, app: Switchboard
) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    quiet, _ = await online_agent(client, operator, "quiet")
    work = await make_work(client, operator)
    assert work["agent_id"] == quiet
    await client.post(f"/api/v1/assignments/{work['id']}/accept", headers=operator)
    await _sweep(app, timedelta(seconds=10))
    assert (await _agent(client, operator, quiet))["status"] == "online"  # within the timeout
    lively, lively_token = await make_agent(client, operator, "lively")
    await _sweep(app, timedelta(seconds=31))
    assert (await _agent(client, operator, quiet))["status"] == "offline"
    moved = (await (await client.get(f"/api/v1/assignments/{work['id']}", headers=operator)).get_json())[
        "data"
    ]
    assert (moved["status"], moved["agent_id"]) == ("pending", None)  # the lease ended with the agent
    assert "agent.offline" in await _event_types(app)
    seen = await beat(client, lively, lively_token)
    assert [a["id"] for a in seen["assignments"]] == [work["id"]]


async def test_a_beat_brings_an_offline_agent_back(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, token = await online_agent(client, operator, "a1")
    await _sweep(app, timedelta(seconds=60))
    assert (await _agent(client, operator, agent_id))["status"] == "offline"
    assert (await beat(client, agent_id, token))["status"] == "online"


async def test_long_offline_agents_turn_stale(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, _ = await online_agent(client, operator, "a1")
    await _sweep(app, timedelta(seconds=60))
    await _sweep(app, timedelta(days=2))
    assert (await _agent(client, operator, agent_id))["status"] == "stale"


async def test_paused_agents_resume_on_time(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, token = await online_agent(client, operator, "a1")
    resume_at = (datetime.now(UTC) + timedelta(seconds=20)).isoformat()
    paused = await client.patch(
        f"/api/v1/agents/{agent_id}",
        json={"mode": "paused", "pause_note": "patching", "resume_at": resume_at},
        headers=operator,
    )
    assert (await paused.get_json())["data"]["pause_note"] == "patching"
    waiting = await make_work(client, operator)
    assert waiting["status"] == "pending"
    await beat(client, agent_id, token)  # still beating, still paused
    await _sweep(app, timedelta(seconds=25))
    shown = await _agent(client, operator, agent_id)
    assert (shown["status"], shown["pause_note"]) == ("online", None)
    assert (await _agent(client, operator, agent_id))["open_assignments"] == 1  # resumed: work followed


async def test_one_sweeper_at_a_time(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, _ = await online_agent(client, operator, "a1")
    database: db.Database = app.extensions["db"]
    if database.engine.dialect.name == "postgresql":
        # Another instance holds the sweeper's lock: this one must leave the agent alone.
        async with database.engine.connect() as other:
            await other.execute(text("SELECT pg_advisory_lock(:key)"), {"key": sweeper.SWEEP_LOCK})
            await _sweep(app, timedelta(seconds=60))
            assert (await _agent(client, operator, agent_id))["status"] == "online"
            await other.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": sweeper.SWEEP_LOCK})
    # Several sweeps at once mark the agent offline once.
    await asyncio.gather(*(_sweep(app, timedelta(seconds=60)) for _ in range(4)))
    assert (await _event_types(app)).count("agent.offline") == 1


async def test_assigned_work_and_lost_agents_are_notified(client: QuartClient, app: Switchboard) -> None:
    """Both notifications are queued in the transaction of the change (the default channel is `log`)."""
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, _ = await online_agent(client, operator, "a1")
    await make_work(client, operator)
    await _sweep(app, timedelta(seconds=60))
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        queued = (
            (await session.execute(select(Notification).order_by(Notification.created_at))).scalars().all()
        )
    assert [(n.channel, n.kind) for n in queued] == [("log", "assignment.assigned"), ("log", "agent.offline")]
    assert queued[1].payload["data"]["agent"]["id"] == agent_id


async def test_a_large_round_marks_each_agent_alone_holding_no_connection_across_redis(
    client: QuartClient, app: Switchboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round's silent agents are marked offline one per transaction (a transaction for several would
    hold every row it touched until its last agent was done: 503s for the requests touching those agents
    in the load run); the presence store is asked with no database connection held, and each batch's
    beats are asked again just before it is marked, so an agent that beats while earlier batches are
    marked stays online."""
    operator = await signed_in(client, "opal", "operator", app)
    fleet = [await online_agent(client, operator, f"a{n}") for n in range(sweeper.OFFLINE_BATCH + 3)]
    await background.loops_of(app).stop()  # their rounds take connections of their own
    database: db.Database = app.extensions["db"]
    store = app.extensions["presence"]
    held: list[int] = []
    original = store.last
    later = datetime.now(UTC) + timedelta(seconds=60)
    revived: list[uuid.UUID] = []

    async def last(agent_ids: Any) -> Any:
        held.append(database.engine.sync_engine.pool.checkedout())
        asked = list(agent_ids)
        if len(held) == 3:  # the second batch, the first one marked: one of its agents beats now
            revived.append(asked[0])
            await store.record(asked[0], presence.Beat(later, None))
        return await original(asked)

    sessions: list[AsyncSession] = []  # each commits once: a session is a transaction here
    mark = sweeper._mark_offline

    async def marking(session: AsyncSession, *args: Any) -> bool:
        sessions.append(session)
        return await mark(session, *args)

    store.last = last
    monkeypatch.setattr(sweeper, "_mark_offline", marking)
    try:
        async with app.app_context():
            settings: Settings = app.config["SETTINGS"]
            await sweeper.sweep(database, store, settings, later)
    finally:
        store.last = original
    assert held == [0, 0, 0]  # the whole fleet, then each of the two batches again
    assert len(sessions) == len(fleet) - 1
    assert len({id(session) for session in sessions}) == len(sessions)  # one each
    statuses = {agent_id: (await _agent(client, operator, agent_id))["status"] for agent_id, _ in fleet}
    assert statuses.pop(str(revived[0])) == "online"
    assert set(statuses.values()) == {"offline"}
    assert (await _event_types(app)).count("agent.offline") == len(fleet) - 1


async def test_pending_work_goes_to_each_agent_with_room_in_a_transaction_of_its_own(
    client: QuartClient, app: Switchboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Work that waits while agents have room goes out at the next round, each agent's share in its own
    transaction: handing work to an agent locks its row until the commit, and a transaction for the
    whole round held every such row meanwhile."""
    operator = await signed_in(client, "opal", "operator", app)
    fleet = [await online_agent(client, operator, f"a{n}") for n in range(3)]
    for agent_id, _ in fleet:
        paused = await client.patch(f"/api/v1/agents/{agent_id}", json={"mode": "paused"}, headers=operator)
        assert paused.status_code == 200
    work = [await make_work(client, operator, f"job-{n}") for n in range(3)]
    assert {item["status"] for item in work} == {"pending"}  # nobody active to take it
    await background.loops_of(app).stop()
    database: db.Database = app.extensions["db"]
    async with database.engine.begin() as connection:  # behind the service: no dispatch on resuming
        await connection.execute(text("UPDATE agents SET mode = 'active', pause_note = NULL"))
    sessions = _dispatch_sessions(monkeypatch)
    await _sweep(app, timedelta(0))
    assert len(sessions) == 3
    assert len({id(session) for session in sessions}) == 3  # one each
    holders = {(await _work(client, operator, item["id"]))["agent_id"] for item in work}
    assert holders == {agent_id for agent_id, _ in fleet}


async def test_an_agent_resumed_on_time_gets_its_work_in_a_transaction_of_its_own(
    client: QuartClient, app: Switchboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming agents and giving them work are separate transactions: the resume's one statement locks
    every agent due, and holding those rows while each one's work was placed made their requests wait."""
    operator = await signed_in(client, "opal", "operator", app)
    fleet = [await online_agent(client, operator, f"a{n}") for n in range(2)]
    resume_at = (datetime.now(UTC) + timedelta(seconds=20)).isoformat()
    for agent_id, _ in fleet:
        paused = await client.patch(
            f"/api/v1/agents/{agent_id}", json={"mode": "paused", "resume_at": resume_at}, headers=operator
        )
        assert paused.status_code == 200
    work = [await make_work(client, operator, f"job-{n}") for n in range(2)]
    for agent_id, token in fleet:
        await beat(client, agent_id, token)  # still beating, still paused
    await background.loops_of(app).stop()
    sessions = _dispatch_sessions(monkeypatch)
    await _sweep(app, timedelta(seconds=25))
    assert len(sessions) == 2
    assert len({id(session) for session in sessions}) == 2  # one each, and not the resume's
    holders = {(await _work(client, operator, item["id"]))["agent_id"] for item in work}
    assert holders == {agent_id for agent_id, _ in fleet}


def _dispatch_sessions(monkeypatch: pytest.MonkeyPatch) -> list[AsyncSession]:
    """The session of each call the sweeper makes to hand an agent work (dispatch_to), from now on."""
    sessions: list[AsyncSession] = []
    dispatch = sweeper.assignments.dispatch_to

    async def dispatching(session: AsyncSession, agent_id: uuid.UUID, *rest: Any) -> Any:
        sessions.append(session)
        return await dispatch(session, agent_id, *rest)

    monkeypatch.setattr(sweeper.assignments, "dispatch_to", dispatching)
    return sessions


async def _work(client: QuartClient, headers: dict[str, str], work_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/assignments/{work_id}", headers=headers)
    assert response.status_code == 200
    data: dict[str, Any] = (await response.get_json())["data"]
    return data
