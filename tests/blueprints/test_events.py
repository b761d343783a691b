"""The live event stream: what a change sends, filters, resuming without gaps, resets, limits, closing."""

from __future__ import annotations

import asyncio

from quart.testing import QuartClient
from sqlalchemy import func, select

from service.application import Switchboard
from service.events import outbox
from service.events.broker import event_id_key
from service.models.events import OutboxEvent

from ..accounts import bearer, login, register, signed_in
from ..conftest import AppMaker
from ..fleet import beat, make_agent, online_agent
from ..sse import watching

EVENTS = "/api/v1/events"


async def test_a_change_reaches_a_subscriber_with_its_request_id(
    client: QuartClient, app: Switchboard
) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    async with watching(client, operator) as stream:
        created = await client.post(
            "/api/v1/agents", json={"name": "a1"}, headers={**operator, "X-Request-ID": "trace-me-123"}
        )
        frame = await stream.next_event()
    assert frame.event == "agent.registered"
    assert frame.id is not None
    assert frame.data["id"] == frame.id
    assert frame.data["type"] == "agent.registered"
    assert frame.data["request_id"] == created.headers["X-Request-ID"] == "trace-me-123"
    assert frame.data["data"]["agent"]["name"] == "a1"
    assert frame.data["time"]


async def test_filters_by_agent_and_type(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    first, first_token = await make_agent(client, operator, "a1")
    second, second_token = await make_agent(client, operator, "a2")
    query = f"?agent_id={first}&types=agent.status_changed"
    async with watching(client, operator, query) as stream:
        await beat(client, second, second_token)
        await beat(client, first, first_token)
        frame = await stream.next_event()
    assert (frame.event, frame.data["data"]["agent"]["id"]) == ("agent.status_changed", first)


async def test_resuming_with_last_event_id_has_no_gap_and_no_duplicate(
    client: QuartClient, app: Switchboard
) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    async with watching(client, operator) as stream:
        await make_agent(client, operator, "a1")
        await make_agent(client, operator, "a2")
        seen = await stream.events(2)
    last = seen[-1].id
    assert last is not None
    for name in ("a3", "a4", "a5"):  # while the client is away
        await make_agent(client, operator, name)
    async with watching(client, operator, **{"Last-Event-ID": last}) as stream:
        resumed = await stream.events(3)
        await make_agent(client, operator, "a6")
        live = await stream.next_event()
    names = [f.data["data"]["agent"]["name"] for f in [*seen, *resumed, live]]
    assert names == ["a1", "a2", "a3", "a4", "a5", "a6"]
    ids = [f.id for f in [*seen, *resumed, live]]
    assert len(set(ids)) == len(ids)


async def _published(app: Switchboard) -> None:
    """Wait until the relay has handed every outbox row to the broker."""
    async with asyncio.timeout(10):
        while True:
            async with app.extensions["db"].sessionmaker() as session:
                waiting = await session.scalar(
                    select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))
                )
            if not waiting:
                return
            await asyncio.sleep(0.02)


async def test_resuming_after_the_log_was_lost_reads_the_outbox(
    client: QuartClient, app: Switchboard
) -> None:
    """A restarted process (an empty ring) or a Redis that restarted empty: the events after the client's
    last id are read back from the outbox table, then the stream goes live, with no gap and no repeat."""
    operator = await signed_in(client, "opal", "operator", app)
    async with watching(client, operator) as stream:
        await make_agent(client, operator, "a1")
        seen = await stream.next_event()
    for name in ("a2", "a3"):  # while the client is away
        await make_agent(client, operator, name)
    await _published(app)

    lost = app.extensions["broker"]
    await lost.close()
    redis = app.extensions.get("redis")
    if redis is not None:
        await redis.delete("sb:events")
    fresh = outbox.open_broker(app, app.config["SETTINGS"])
    await fresh.start()
    app.extensions["broker"] = fresh
    await make_agent(client, operator, "a4")

    async with watching(client, operator, **{"Last-Event-ID": seen.id}) as stream:
        resumed = await stream.events(3)
        await make_agent(client, operator, "a5")
        live = await stream.next_event()
    frames = [seen, *resumed, live]
    assert [f.data["data"]["agent"]["name"] for f in frames] == ["a1", "a2", "a3", "a4", "a5"]
    keys = [event_id_key(f.id or "") for f in frames]
    assert keys == sorted(set(keys))  # increasing: the new log gives ids above the lost one's


async def test_the_query_parameter_resumes_too(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    async with watching(client, operator) as stream:
        await make_agent(client, operator, "a1")
        first = await stream.next_event()
    await make_agent(client, operator, "a2")
    async with watching(client, operator, f"?last_event_id={first.id}") as stream:
        assert (await stream.next_event()).data["data"]["agent"]["name"] == "a2"


async def test_bad_or_ancient_ids(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    junk = await client.get(EVENTS, headers={**operator, "Last-Event-ID": "yesterday"})
    assert junk.status_code == 400
    async with watching(client, operator, **{"Last-Event-ID": "1000-0"}) as stream:
        frame = await stream.next()
    assert (frame.event, frame.data) == ("reset", {"reason": "beyond_retention"})


async def test_heartbeat_comments_keep_the_stream_alive(make_app: AppMaker) -> None:
    app = await make_app(sse_heartbeat_seconds=0.1)
    client = app.test_client()
    operator = await signed_in(client, "opal", "operator", app)
    async with watching(client, operator) as stream:
        frame = await stream.next(timeout=2)
    assert frame.comment == "ping"


async def test_logout_ends_the_stream(client: QuartClient, app: Switchboard) -> None:
    await register(client, "vic")
    pair = await login(client, "vic")
    headers = bearer(pair["access_token"])
    async with watching(client, headers) as stream:
        await client.post("/auth/logout", headers=headers)
        frame = await stream.next_event()
    assert (frame.event, frame.data) == ("reset", {"reason": "session_ended"})


async def test_streams_per_user_are_capped_and_freed(make_app: AppMaker) -> None:
    app = await make_app(sse_streams_per_user=2)
    client = app.test_client()
    viewer = await signed_in(client, "vic")
    async with watching(client, viewer), watching(client, viewer):
        refused = await client.get(EVENTS, headers=viewer)
        assert refused.status_code == 429
        assert (await refused.get_json())["error"]["code"] == "RATE_LIMITED"
        assert app.extensions["broker"].subscriber_count == 2
    await asyncio.sleep(0.05)
    assert app.extensions["broker"].subscriber_count == 0  # disconnects free everything
    async with watching(client, viewer):
        pass


async def test_the_stream_needs_credentials(client: QuartClient) -> None:
    response = await client.get(EVENTS)
    assert response.status_code == 401


async def test_assignment_events_follow_the_work(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, token = await online_agent(client, operator, "a1")
    kinds = "assignment.created,assignment.assigned,assignment.status_changed"
    async with watching(client, operator, f"?agent_id={agent_id}&types={kinds}") as stream:
        work = await client.post("/api/v1/assignments", json={"title": "job"}, headers=operator)
        work_id = (await work.get_json())["data"]["id"]
        await client.post(f"/api/v1/assignments/{work_id}/accept", headers=token)
        frames = await stream.events(3)
    assert [f.event for f in frames] == [
        "assignment.created",
        "assignment.assigned",
        "assignment.status_changed",
    ]
    assert frames[2].data["data"]["to"] == "accepted"
