"""Assignments under /api/v1/assignments: placement, the lifecycle, pending work, reassignment, retries."""

from __future__ import annotations

import asyncio

from quart.testing import QuartClient
from sqlalchemy import func, select

from service import db
from service.application import Switchboard
from service.models.agents import Agent
from service.models.assignments import HELD, Assignment
from service.models.events import OutboxEvent

from ..accounts import signed_in
from ..fleet import beat, make_agent, make_work, online_agent

WORK = "/api/v1/assignments"


async def _status(client: QuartClient, headers: dict[str, str], work_id: str) -> tuple[str, str | None]:
    data = (await (await client.get(f"{WORK}/{work_id}", headers=headers)).get_json())["data"]
    return data["status"], data["agent_id"]


async def assert_capacity_holds(app: Switchboard) -> None:
    """Each agent's counter equals the work it holds, and never exceeds its capacity."""
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        held = dict(
            (
                await session.execute(
                    select(Assignment.agent_id, func.count())
                    .where(Assignment.status.in_(HELD))
                    .group_by(Assignment.agent_id)
                )
            ).all()
        )
        for agent in (await session.execute(select(Agent))).scalars():
            assert agent.open_assignments == held.get(agent.id, 0), agent.name
            assert agent.open_assignments <= agent.max_concurrent, agent.name


async def test_the_whole_lifecycle_by_the_agent(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, token = await online_agent(client, operator, "a1")
    work = await make_work(client, operator, payload={"n": 1})
    assert (work["status"], work["agent_id"]) == ("assigned", agent_id)
    seen = await beat(client, agent_id, token)
    assert [a["id"] for a in seen["assignments"]] == [work["id"]]
    for action, status in (("accept", "accepted"), ("start", "in_progress")):
        response = await client.post(f"{WORK}/{work['id']}/{action}", headers=token)
        assert (await response.get_json())["data"]["status"] == status
    done = await client.post(f"{WORK}/{work['id']}/complete", json={"result": {"ok": True}}, headers=token)
    data = (await done.get_json())["data"]
    assert (data["status"], data["result"]) == ("completed", {"ok": True})
    assert data["finished_at"] is not None
    again = await client.post(f"{WORK}/{work['id']}/start", headers=token)
    assert again.status_code == 409
    assert (await again.get_json())["error"]["details"]["status"] == "completed"
    await assert_capacity_holds(app)


async def test_agents_act_on_their_own_work_only(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    first, first_token = await online_agent(client, operator, "a1")
    _, second_token = await online_agent(client, operator, "a2")
    work = await make_work(client, operator, agent_id=first)
    assert (await client.post(f"{WORK}/{work['id']}/accept", headers=second_token)).status_code == 404
    assert (await client.post(f"{WORK}/{work['id']}/accept", headers=first_token)).status_code == 200
    viewer = await signed_in(client, "vic")
    assert (await client.post(f"{WORK}/{work['id']}/cancel", json={}, headers=viewer)).status_code == 403
    assert (await client.post(f"{WORK}/{work['id']}/start", headers=viewer)).status_code == 403
    assert (await client.post(WORK, json={"title": "x"}, headers=viewer)).status_code == 403
    assert (await client.post(f"{WORK}/{work['id']}/start")).status_code == 401
    # An operator may move any work.
    assert (await client.post(f"{WORK}/{work['id']}/start", headers=operator)).status_code == 200


async def test_explicit_placement_refuses_what_cannot_work(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    offline_id, _ = await make_agent(client, operator, "never-seen")
    busy_id, _ = await online_agent(client, operator, "full", ["gpu"], max_concurrent=1)
    await make_work(client, operator, agent_id=busy_id)
    for body, reason in (
        ({"agent_id": offline_id}, "agent_status"),
        ({"agent_id": busy_id, "required_capabilities": ["arm"]}, "missing_capabilities"),
        ({"agent_id": busy_id}, "max"),
    ):
        response = await client.post(WORK, json={"title": "x", **body}, headers=operator)
        assert response.status_code == 409, body
        assert reason in (await response.get_json())["error"]["details"]
    missing = await client.post(
        WORK, json={"title": "x", "agent_id": "00000000-0000-7000-8000-000000000000"}, headers=operator
    )
    assert missing.status_code == 404
    await assert_capacity_holds(app)


async def test_auto_placement_prefers_capable_least_loaded_then_longest_idle(
    client: QuartClient, app: Switchboard
) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    first, _ = await online_agent(client, operator, "first", ["gpu"], max_concurrent=5)
    second, _ = await online_agent(client, operator, "second", ["gpu", "linux"], max_concurrent=5)
    plain, _ = await online_agent(client, operator, "plain", [], max_concurrent=5)
    linux = await make_work(client, operator, required_capabilities=["linux"])
    assert linux["agent_id"] == second
    gpu = await make_work(client, operator, required_capabilities=["gpu"])
    assert gpu["agent_id"] == first  # second already holds one
    spread = [
        (await make_work(client, operator, required_capabilities=["gpu"]))["agent_id"] for _ in range(2)
    ]
    assert sorted(spread) == sorted([first, second])
    anything = await make_work(client, operator)
    assert anything["agent_id"] == plain
    await assert_capacity_holds(app)


async def test_pending_work_waits_and_goes_by_priority(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    low = await make_work(client, operator, "low", priority=1)
    high = await make_work(client, operator, "high", priority=5)
    gpu = await make_work(client, operator, "gpu", priority=9, required_capabilities=["gpu"])
    assert {low["status"], high["status"], gpu["status"]} == {"pending"}
    agent_id, token = await make_agent(client, operator, "a1", max_concurrent=1)
    seen = await beat(client, agent_id, token)  # coming online hands out work
    assert [a["title"] for a in seen["assignments"]] == ["high"]
    for action in ("accept", "start"):
        await client.post(f"{WORK}/{high['id']}/{action}", headers=token)
    finished = await client.post(f"{WORK}/{high['id']}/complete", json={}, headers=token)
    assert finished.status_code == 200
    assert (await _status(client, operator, low["id"])) == ("assigned", agent_id)  # freed capacity: next one
    assert (await _status(client, operator, gpu["id"]))[0] == "pending"  # nobody can do it
    await assert_capacity_holds(app)


async def test_paused_and_draining_agents_get_no_new_work(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, token = await online_agent(client, operator, "a1", max_concurrent=3)
    held = await make_work(client, operator)
    for mode in ("paused", "draining"):
        response = await client.patch(f"/api/v1/agents/{agent_id}", json={"mode": mode}, headers=operator)
        assert (await response.get_json())["data"]["status"] == mode
        waiting = await make_work(client, operator)
        assert waiting["status"] == "pending"
    assert (await _status(client, operator, held["id"])) == ("assigned", agent_id)  # it keeps its work
    await client.patch(f"/api/v1/agents/{agent_id}", json={"mode": "active"}, headers=operator)
    assert (await beat(client, agent_id, token))["status"] == "online"
    assert len((await beat(client, agent_id, token))["assignments"]) == 3  # resumed: pending work follows
    await assert_capacity_holds(app)


async def test_cancel_and_reassign(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    first, _ = await online_agent(client, operator, "a1")
    second, second_token = await online_agent(client, operator, "a2")
    work = await make_work(client, operator)
    holder = work["agent_id"]
    other = second if holder == first else first
    moved = await client.post(f"{WORK}/{work['id']}/reassign", json={"agent_id": other}, headers=operator)
    assert (await moved.get_json())["data"]["agent_id"] == other
    async with app.extensions["db"].sessionmaker() as session:
        event = (await session.scalars(select(OutboxEvent).order_by(OutboxEvent.id.desc()).limit(1))).one()
    assert event.type == "assignment.assigned"
    assert {k: event.data["data"][k] for k in ("from", "to", "from_agent_id")} == {
        "from": "assigned",
        "to": "assigned",
        "from_agent_id": holder,
    }
    cancelled = await client.post(
        f"{WORK}/{work['id']}/cancel", json={"reason": "not needed"}, headers=operator
    )
    assert (await cancelled.get_json())["data"]["status"] == "cancelled"
    closed = await client.post(f"{WORK}/{work['id']}/reassign", json={}, headers=operator)
    assert closed.status_code == 409
    mine = await make_work(client, operator, agent_id=second)
    refused = await client.post(f"{WORK}/{mine['id']}/cancel", json={}, headers=second_token)
    assert refused.status_code == 403
    await assert_capacity_holds(app)


async def test_idempotency_key_replays_the_first_answer(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    headers = {**operator, "Idempotency-Key": "create-job-1"}
    first = await client.post(WORK, json={"title": "once"}, headers=headers)
    second = await client.post(WORK, json={"title": "once"}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert (await first.get_json())["data"]["id"] == (await second.get_json())["data"]["id"]
    listing = await (await client.get(WORK, headers=operator)).get_json()
    assert listing["pagination"]["total_items"] == 1
    different = await client.post(WORK, json={"title": "other"}, headers=headers)
    assert different.status_code == 409
    concurrent = await asyncio.gather(
        *(
            client.post(WORK, json={"title": "raced"}, headers={**operator, "Idempotency-Key": "race"})
            for _ in range(5)
        )
    )
    ids = {(await r.get_json())["data"]["id"] for r in concurrent}
    assert len(ids) == 1


async def test_list_filters(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, _ = await online_agent(client, operator, "a1")
    await make_work(client, operator, "mine")
    await make_work(client, operator, "waiting")
    pending = await (await client.get(f"{WORK}?status=pending", headers=operator)).get_json()
    assert [a["title"] for a in pending["data"]] == ["waiting"]
    held = await (await client.get(f"{WORK}?agent_id={agent_id}", headers=operator)).get_json()
    assert [a["title"] for a in held["data"]] == ["mine"]
    assert (await client.get(f"{WORK}?status=done", headers=operator)).status_code == 422
