"""Agents under /api/v1/agents: registration, tokens, heartbeats, statuses, modes and the summary."""

from __future__ import annotations

from typing import Any

from quart.testing import QuartClient
from sqlalchemy import func, select

from service import background, db
from service.application import Switchboard
from service.models.events import OutboxEvent

from ..accounts import signed_in
from ..fleet import beat, make_agent, make_work, online_agent

AGENTS = "/api/v1/agents"


async def _events(app: Switchboard, type_: str | None = None) -> list[OutboxEvent]:
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        query = select(OutboxEvent).order_by(OutboxEvent.id)
        if type_ is not None:
            query = query.where(OutboxEvent.type == type_)
        return list((await session.execute(query)).scalars())


async def test_operators_register_agents_and_see_the_token_once(
    client: QuartClient, app: Switchboard
) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    response = await client.post(
        AGENTS,
        json={
            "name": "runner-1",
            "capabilities": ["linux", "gpu", "gpu"],
            "max_concurrent": 2,
            "metadata": {"zone": "a"},
        },
        headers=operator,
    )
    assert response.status_code == 201
    data = (await response.get_json())["data"]
    assert data["agent_token"].startswith("sba_")
    assert (data["status"], data["capabilities"], data["metadata"]) == (
        "never_contacted",
        ["gpu", "linux"],
        {"zone": "a"},
    )
    shown = await (await client.get(f"{AGENTS}/{data['id']}", headers=operator)).get_json()
    assert "agent_token" not in shown["data"]
    duplicate = await client.post(AGENTS, json={"name": "RUNNER-1"}, headers=operator)
    assert duplicate.status_code == 409
    assert [e.type for e in await _events(app)] == ["agent.registered"]


async def test_viewers_read_but_cannot_write(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, _ = await make_agent(client, operator, "runner-1")
    viewer = await signed_in(client, "vic")
    assert (await client.get(AGENTS, headers=viewer)).status_code == 200
    assert (await client.get(f"{AGENTS}/{agent_id}", headers=viewer)).status_code == 200
    assert (await client.post(AGENTS, json={"name": "x"}, headers=viewer)).status_code == 403
    assert (await client.patch(f"{AGENTS}/{agent_id}", json={"name": "y"}, headers=viewer)).status_code == 403
    assert (await client.delete(f"{AGENTS}/{agent_id}", headers=viewer)).status_code == 403
    assert (await client.get(AGENTS)).status_code == 401


async def test_heartbeats_change_status_and_write_only_changes(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, token = await make_agent(client, operator, "runner-1")
    first = await beat(client, agent_id, token, load=0.5)
    assert first == {"status": "online", "assignments": [], "heartbeat_interval": 10}
    for _ in range(3):
        await beat(client, agent_id, token, load=0.7)  # unchanged: no row write, no event
    changes = await _events(app, "agent.status_changed")
    assert [(e.data["data"]["from"], e.data["data"]["to"]) for e in changes] == [
        ("never_contacted", "online")
    ]
    shown = (await (await client.get(f"{AGENTS}/{agent_id}", headers=operator)).get_json())["data"]
    assert shown["load"] == 0.7
    assert shown["last_heartbeat_at"] is not None
    await beat(client, agent_id, token, status="busy")
    assert len(await _events(app, "agent.status_changed")) == 2


async def test_an_agent_token_works_for_its_own_agent_only(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    first, first_token = await make_agent(client, operator, "runner-1")
    second, _ = await make_agent(client, operator, "runner-2")
    other = await client.post(f"{AGENTS}/{second}/heartbeat", json={"status": "online"}, headers=first_token)
    assert other.status_code == 404
    anonymous = await client.post(f"{AGENTS}/{first}/heartbeat", json={"status": "online"})
    assert anonymous.status_code == 401
    user = await client.post(f"{AGENTS}/{first}/heartbeat", json={"status": "online"}, headers=operator)
    assert user.status_code == 401
    # An agent token is not a user: it cannot read the API.
    assert (await client.get(AGENTS, headers=first_token)).status_code == 401
    bad = await client.post(f"{AGENTS}/{first}/heartbeat", json={"status": "sleepy"}, headers=first_token)
    assert bad.status_code == 422


async def test_rotating_the_token_refuses_the_old_one(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, old = await make_agent(client, operator, "runner-1")
    await beat(client, agent_id, old)
    rotated = await client.post(f"{AGENTS}/{agent_id}/token", headers=operator)
    new = {"Authorization": f"Bearer {(await rotated.get_json())['data']['agent_token']}"}
    refused = await client.post(f"{AGENTS}/{agent_id}/heartbeat", json={"status": "online"}, headers=old)
    assert refused.status_code == 401
    await beat(client, agent_id, new)


async def test_registration_tokens_let_agents_register_themselves(
    client: QuartClient, app: Switchboard
) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    created = await client.post(
        f"{AGENTS}/registration-tokens",
        json={"name": "ci", "single_use": True, "default_capabilities": ["linux"]},
        headers=operator,
    )
    assert created.status_code == 201
    secret = (await created.get_json())["data"]["token"]
    registered = await client.post(f"{AGENTS}/register", json={"token": secret, "name": "ci-runner-1"})
    assert registered.status_code == 201
    data = (await registered.get_json())["data"]
    assert data["capabilities"] == ["linux"]
    await beat(client, data["id"], {"Authorization": f"Bearer {data['agent_token']}"})
    again = await client.post(f"{AGENTS}/register", json={"token": secret, "name": "ci-runner-2"})
    assert again.status_code == 401  # single-use
    forged = await client.post(f"{AGENTS}/register", json={"token": "sbg_nope", "name": "ci-runner-3"})
    assert forged.status_code == 401


async def test_revoked_registration_tokens_stop_working(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    created = (
        await (
            await client.post(f"{AGENTS}/registration-tokens", json={"name": "ci"}, headers=operator)
        ).get_json()
    )["data"]
    listed = await (await client.get(f"{AGENTS}/registration-tokens", headers=operator)).get_json()
    assert [t["name"] for t in listed["data"]] == ["ci"]
    assert "token" not in listed["data"][0]
    assert (
        await client.delete(f"{AGENTS}/registration-tokens/{created['id']}", headers=operator)
    ).status_code == 200
    refused = await client.post(f"{AGENTS}/register", json={"token": created["token"], "name": "late"})
    assert refused.status_code == 401


async def test_list_filters_by_status_capability_and_name(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    await online_agent(client, operator, "gpu-box", ["gpu"])
    await make_agent(client, operator, "cpu-box", ["linux"])
    paused_id, _ = await online_agent(client, operator, "paused-box", ["gpu"])
    await client.patch(
        f"{AGENTS}/{paused_id}", json={"mode": "paused", "pause_note": "maintenance"}, headers=operator
    )

    async def names(query: str) -> list[str]:
        body = await (await client.get(f"{AGENTS}?{query}", headers=operator)).get_json()
        return [a["name"] for a in body["data"]]

    assert await names("status=online") == ["gpu-box"]
    assert await names("status=never_contacted") == ["cpu-box"]
    assert await names("status=paused") == ["paused-box"]
    assert await names("capability=gpu") == ["gpu-box", "paused-box"]
    assert await names("q=CPU") == ["cpu-box"]
    assert await names("sort=-name&per_page=1") == ["paused-box"]
    assert (await client.get(f"{AGENTS}?status=sleeping", headers=operator)).status_code == 422


async def test_summary_counts_agents_and_open_work(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    await online_agent(client, operator, "a1")
    await make_agent(client, operator, "a2")
    await make_work(client, operator, "one")
    await make_work(client, operator, "two")
    summary = (await (await client.get(f"{AGENTS}/summary", headers=operator)).get_json())["data"]
    assert summary == {
        "agents": {"online": 1, "never_contacted": 1},
        "total_agents": 2,
        "assignments": {"assigned": 1, "pending": 1},
        "open_assignments": 2,
    }


async def test_delete_refuses_the_token_and_requeues_work(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, token = await online_agent(client, operator, "a1")
    work = await make_work(client, operator)
    assert work["agent_id"] == agent_id
    assert (await client.delete(f"{AGENTS}/{agent_id}", headers=operator)).status_code == 200
    assert (await client.get(f"{AGENTS}/{agent_id}", headers=operator)).status_code == 404
    refused = await client.post(f"{AGENTS}/{agent_id}/heartbeat", json={"status": "online"}, headers=token)
    assert refused.status_code == 401
    back = (await (await client.get(f"/api/v1/assignments/{work['id']}", headers=operator)).get_json())[
        "data"
    ]
    assert (back["status"], back["agent_id"]) == ("pending", None)
    assert [e.type for e in await _events(app, "agent.deleted")] == ["agent.deleted"]


async def test_agent_history_lists_its_work(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, _ = await online_agent(client, operator, "a1", max_concurrent=3)
    for title in ("one", "two"):
        await make_work(client, operator, title)
    history = await (await client.get(f"{AGENTS}/{agent_id}/assignments", headers=operator)).get_json()
    assert [a["title"] for a in history["data"]] == ["two", "one"]
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(OutboxEvent)) > 0


class _CountingCache:
    """The app's auth cache, counting the reads that name an agent token."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.agent_token_reads = 0

    async def get_many(self, keys: list[str]) -> list[str | None]:
        self.agent_token_reads += sum(key.startswith("agenttok:") for key in keys)
        found: list[str | None] = await self._inner.get_many(keys)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_heartbeat_looks_its_token_up_once(client: QuartClient, app: Switchboard) -> None:
    """The rate limiter and the view both ask who the agent is: one lookup answers both."""
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, token = await make_agent(client, operator, "a1")
    await beat(client, agent_id, token)  # the first beat fills the cache
    counting = app.extensions["auth_cache"] = _CountingCache(app.extensions["auth_cache"])
    await beat(client, agent_id, token)
    assert counting.agent_token_reads == 1


async def test_a_list_waits_on_the_presence_store_holding_no_database_connection(
    client: QuartClient, app: Switchboard
) -> None:
    """A Redis that stops answering must not starve the pool: a list hands its connection back before
    it asks the presence store for the agents' beats and versions."""
    operator = await signed_in(client, "opal", "operator", app)
    await online_agent(client, operator, "ada")
    await background.loops_of(app).stop()  # their rounds take connections of their own
    database: db.Database = app.extensions["db"]
    store = app.extensions["presence"]
    held: list[int] = []
    original = store.look

    async def look(agent_ids: Any) -> Any:
        held.append(database.engine.sync_engine.pool.checkedout())
        return await original(agent_ids)

    store.look = look
    try:
        response = await client.get(AGENTS, headers=operator)
    finally:
        store.look = original
    assert response.status_code == 200
    assert (await response.get_json())["data"][0]["name"] == "ada"
    assert held == [0]
