"""The per-process agent cache: a read or an unchanged beat served without the database, and every change
seen at once by every process (each change replaces the agent's version in the shared presence store).

The cases with two apps need Redis, the store two processes share: they are left out of collection (not
skipped) when TEST_REDIS_URL is unset, as CI runs the suite once with it and once without.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from quart.testing import QuartClient
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from service import agent_cache, background, db, presence, redis_client
from service.application import Switchboard
from service.config import Settings
from service.models.agents import Agent
from service.schemas.agents import AgentOut
from service.services import sweeper

from .accounts import signed_in
from .conftest import AppMaker
from .fleet import beat, make_work, online_agent
from .statements import commands, statements

REDIS_URL = os.environ.get("TEST_REDIS_URL") or None


def _engine(app: Switchboard) -> AsyncEngine:
    database: db.Database = app.extensions["db"]
    return database.engine


async def _agent(client: QuartClient, headers: dict[str, str], agent_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/agents/{agent_id}", headers=headers)
    assert response.status_code == 200, await response.get_data()
    data: dict[str, Any] = (await response.get_json())["data"]
    return data


async def _listed(client: QuartClient, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    response = await client.get("/api/v1/agents", headers=headers)
    assert response.status_code == 200, await response.get_data()
    return {agent["id"]: agent for agent in (await response.get_json())["data"]}


async def _rename_behind_the_service(app: Switchboard, agent_id: str, name: str) -> None:
    """A change no session of the service makes: no version changes, so caches keep what they hold."""
    table = Agent.__table__
    async with _engine(app).begin() as connection:  # a connection, not a session: no session events
        await connection.execute(table.update().where(table.c.id == uuid.UUID(agent_id)).values(name=name))


async def test_a_read_comes_from_the_cache_until_the_agent_changes(
    client: QuartClient, app: Switchboard
) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, _ = await online_agent(client, operator, "ada")
    assert (await _agent(client, operator, agent_id))["name"] == "ada"

    await _rename_behind_the_service(app, agent_id, "renamed-in-sql")
    with statements(_engine(app)) as seen:
        cached = await _agent(client, operator, agent_id)
    assert cached["name"] == "ada"  # served from the cache: the version did not change
    assert not [sql for sql in seen if "agents" in sql]

    response = await client.patch(f"/api/v1/agents/{agent_id}", json={"max_concurrent": 3}, headers=operator)
    assert response.status_code == 200
    fresh = await _agent(client, operator, agent_id)
    assert (fresh["name"], fresh["max_concurrent"]) == ("renamed-in-sql", 3)  # read again after the change


async def test_a_list_takes_cached_views_and_reads_only_the_rows_the_cache_misses(
    client: QuartClient, app: Switchboard
) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    ada, _ = await online_agent(client, operator, "ada")
    bob, _ = await online_agent(client, operator, "bob")
    await background.loops_of(app).stop()  # the relay's statements would mix with the list's
    await _listed(client, operator)  # both cached now
    await _rename_behind_the_service(app, ada, "ada-in-sql")
    await _rename_behind_the_service(app, bob, "bob-in-sql")

    with statements(_engine(app)) as seen:
        listed = await _listed(client, operator)
    assert (listed[ada]["name"], listed[bob]["name"]) == ("ada", "bob")  # the versions did not change
    assert len(seen) == 1  # which agents, and how many: no row is loaded
    assert "agents.max_concurrent" not in seen[0]

    patched = await client.patch(f"/api/v1/agents/{bob}", json={"max_concurrent": 3}, headers=operator)
    assert patched.status_code == 200
    with statements(_engine(app)) as seen:
        listed = await _listed(client, operator)
    assert (listed[ada]["name"], listed[bob]["name"], listed[bob]["max_concurrent"]) == (
        "ada",
        "bob-in-sql",
        3,
    )
    assert listed[bob] == await _agent(client, operator, bob)
    loads = [sql for sql in seen if "agents.max_concurrent" in sql]
    assert len(loads) == 1  # bob's row alone, the one whose version changed
    assert "IN" in loads[0]


async def test_a_cached_read_still_shows_the_latest_beat(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, token = await online_agent(client, operator, "ada")
    await _agent(client, operator, agent_id)
    await beat(client, agent_id, token, load=0.75)
    shown = await _agent(client, operator, agent_id)
    assert shown["load"] == 0.75
    assert datetime.fromisoformat(shown["last_heartbeat_at"]) > datetime.now(UTC) - timedelta(seconds=5)


async def test_an_unchanged_beat_of_an_idle_agent_touches_no_database(
    client: QuartClient, app: Switchboard
) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, token = await online_agent(client, operator, "ada")
    await beat(client, agent_id, token)  # read once, cached
    # The relay would publish the events above meanwhile, with statements of its own.
    await background.loops_of(app).stop()
    with statements(_engine(app)) as seen:
        answer = await beat(client, agent_id, token, load=0.5)
    assert answer["status"] == "online"
    assert answer["assignments"] == []
    assert seen == []


async def test_an_unchanged_beat_the_cache_misses_costs_one_query(
    client: QuartClient, app: Switchboard
) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, token = await online_agent(client, operator, "ada")
    app.extensions["agent_cache"].drop((), every_agent=True)  # as when the entry expired
    with statements(_engine(app)) as seen:
        await beat(client, agent_id, token)
    # The agent's row, read once (in an autocommit session on PostgreSQL: no BEGIN or COMMIT), and
    # nothing written. (The background loops' own statements may run meanwhile.)
    assert len([sql for sql in seen if "FROM agents" in sql]) == 1
    assert not [
        sql for sql in seen if sql.lstrip().upper().startswith(("UPDATE AGENTS", "INSERT INTO OUTBOX"))
    ]
    with statements(_engine(app)) as seen:
        await beat(client, agent_id, token)
    assert not [sql for sql in seen if "agents" in sql]  # and then cached


async def test_a_beat_from_an_agent_holding_work_lists_it(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, token = await online_agent(client, operator, "ada")
    await beat(client, agent_id, token)
    work = await make_work(client, operator)
    assert work["agent_id"] == agent_id
    assert [held["id"] for held in (await beat(client, agent_id, token))["assignments"]] == [work["id"]]


async def test_a_change_of_status_is_written_although_the_agent_is_cached(
    client: QuartClient, app: Switchboard
) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, token = await online_agent(client, operator, "ada")
    await _agent(client, operator, agent_id)
    assert (await beat(client, agent_id, token, status="busy"))["status"] == "busy"
    assert (await _agent(client, operator, agent_id))["status"] == "busy"
    assert (await beat(client, agent_id, token, status="busy", metadata={"rack": 7}))["status"] == "busy"
    assert (await _agent(client, operator, agent_id))["metadata"] == {"rack": 7}


async def test_a_rolled_back_change_keeps_the_version(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    agent_id, _ = await online_agent(client, operator, "ada")
    store: presence.Presence = app.extensions["presence"]
    before = (await store.look([uuid.UUID(agent_id)]))[uuid.UUID(agent_id)].version
    database: db.Database = app.extensions["db"]
    async with app.app_context(), database.sessionmaker() as session:
        agent = await session.get(Agent, uuid.UUID(agent_id))
        assert agent is not None
        agent.name = "never"
        await session.flush()
        await session.rollback()
        await db.commit(session)
    assert (await store.look([uuid.UUID(agent_id)]))[uuid.UUID(agent_id)].version == before
    async with app.app_context(), database.sessionmaker() as session:
        agent = await session.get(Agent, uuid.UUID(agent_id))
        assert agent is not None
        agent.name = "renamed"
        await db.commit(session)
    assert (await store.look([uuid.UUID(agent_id)]))[uuid.UUID(agent_id)].version != before


async def test_a_statement_naming_no_agents_changes_every_version(
    client: QuartClient, app: Switchboard
) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    first, _ = await online_agent(client, operator, "ada")
    second, _ = await online_agent(client, operator, "bea")
    ids = [uuid.UUID(first), uuid.UUID(second)]
    store: presence.Presence = app.extensions["presence"]
    before = await store.look(ids)
    database: db.Database = app.extensions["db"]
    async with app.app_context(), database.sessionmaker() as session:
        await session.execute(
            update(Agent).values(pause_note=None).execution_options(synchronize_session=False)
        )
        await db.commit(session)
    after = await store.look(ids)
    assert all(after[agent_id].version != before[agent_id].version for agent_id in ids)


async def test_auto_assignment_changes_the_version_of_the_agent_it_chose_only(
    client: QuartClient, app: Switchboard
) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    chosen, _ = await online_agent(client, operator, "ada")
    other, other_token = await online_agent(client, operator, "bea")
    await beat(client, other, other_token, status="away")  # auto-assignment passes it by
    ids = [uuid.UUID(chosen), uuid.UUID(other)]
    assert (await _agent(client, operator, chosen))["open_assignments"] == 0  # now cached
    store: presence.Presence = app.extensions["presence"]
    before = await store.look(ids)

    work = await make_work(client, operator)

    assert work["agent_id"] == chosen
    after = await store.look(ids)
    assert after[ids[0]].version != before[ids[0]].version
    assert after[ids[1]].version == before[ids[1]].version
    assert (await _agent(client, operator, chosen))["open_assignments"] == 1


def test_entries_expire_and_the_oldest_go_first() -> None:
    view = AgentOut.model_validate(
        {
            "id": uuid.uuid4(),
            "name": "ada",
            "capabilities": [],
            "max_concurrent": 1,
            "open_assignments": 0,
            "metadata": {},
            "status": "online",
            "reported_status": "online",
            "mode": "active",
            "pause_note": None,
            "resume_at": None,
            "load": None,
            "last_heartbeat_at": None,
            "status_changed_at": None,
            "created_at": datetime.now(UTC),
            "updated_at": datetime.now(UTC),
        }
    )
    ids = [uuid.uuid4() for _ in range(3)]
    cache = agent_cache.AgentCache(size=2, seconds=60)
    for agent_id in ids:
        cache.put(agent_id, "v1", view)
    assert len(cache) == 2
    assert cache.get(ids[0], "v1") is None
    assert cache.get(ids[2], "v1") is view
    assert cache.get(ids[2], "v2") is None
    assert cache.get(ids[2], "v1") is None  # a mismatch drops the entry

    now = [100.0]
    aging = agent_cache.AgentCache(size=10, seconds=30, clock=lambda: now[0])
    aging.put(ids[0], "v1", view)
    now[0] += 29
    assert aging.get(ids[0], "v1") is view
    now[0] += 31  # 30 s after its read, however often it was used
    assert aging.get(ids[0], "v1") is None
    off = agent_cache.AgentCache(size=0, seconds=60)
    off.put(ids[0], "v1", view)
    assert len(off) == 0


if REDIS_URL is not None:  # two processes share versions through Redis only

    async def test_another_process_sees_every_change_at_once(make_app: AppMaker) -> None:
        writer = await make_app()
        reader = await make_app()
        writes, reads = writer.test_client(), reader.test_client()
        operator = await signed_in(writes, "opal", "operator", writer)
        agent_id, token = await online_agent(writes, operator, "ada")

        async def shown() -> dict[str, Any]:
            one = await _agent(reads, operator, agent_id)
            assert (await _listed(reads, operator))[agent_id] == one  # a list takes the same cache
            return one

        assert (await shown())["name"] == "ada"  # now cached in the reader
        assert (
            await writes.patch(f"/api/v1/agents/{agent_id}", json={"name": "ada2"}, headers=operator)
        ).status_code == 200
        assert (await shown())["name"] == "ada2"

        await beat(writes, agent_id, token, status="busy")
        assert (await shown())["status"] == "busy"
        await beat(writes, agent_id, token, status="online")

        work = await make_work(writes, operator)  # the agent's counter changes in an UPDATE naming it
        assert (await shown())["open_assignments"] == 1
        # The reader's own beat path must not answer "no work" from an entry older than the assignment.
        assert [held["id"] for held in (await beat(reads, agent_id, token))["assignments"]] == [work["id"]]
        started = await writes.post(f"/api/v1/assignments/{work['id']}/start", json={}, headers=token)
        assert started.status_code == 200, await started.get_data()
        done = await writes.post(f"/api/v1/assignments/{work['id']}/complete", json={}, headers=token)
        assert done.status_code == 200, await done.get_data()
        assert (await shown())["open_assignments"] == 0

        settings: Settings = writer.config["SETTINGS"]
        async with writer.app_context():  # as the background loop runs it
            await sweeper.sweep(
                writer.extensions["db"],
                writer.extensions["presence"],
                settings,
                datetime.now(UTC) + timedelta(seconds=settings.agent_heartbeat_timeout + 1),
            )
        assert (await shown())["status"] == "offline"

        assert (await writes.delete(f"/api/v1/agents/{agent_id}", headers=operator)).status_code == 200
        assert (await reads.get(f"/api/v1/agents/{agent_id}", headers=operator)).status_code == 404
        assert agent_id not in await _listed(reads, operator)

    async def test_a_read_takes_the_beat_and_version_the_rate_limiter_read(make_app: AppMaker) -> None:
        """GET /agents/{id} reads the agent's beat and versions in the limiter's Redis call: what that
        call read is what the answer shows, including another process's change just before."""
        writer = await make_app()
        reader = await make_app()
        await background.loops_of(reader).stop()  # its relay's and sweeper's Redis calls are not counted
        writes, reads = writer.test_client(), reader.test_client()
        operator = await signed_in(writes, "opal", "operator", writer)
        agent_id, token = await online_agent(writes, operator, "ada")
        assert (await _agent(reads, operator, agent_id))["name"] == "ada"  # cached in the reader
        assert (
            await writes.patch(f"/api/v1/agents/{agent_id}", json={"name": "ada2"}, headers=operator)
        ).status_code == 200
        await beat(writes, agent_id, token, load=0.25)
        with commands(reader) as seen:
            shown = await _agent(reads, operator, agent_id)
        assert (shown["name"], shown["load"]) == ("ada2", 0.25)
        assert seen == {"EVALSHA": 1}

    async def test_a_version_change_waiting_to_be_written_goes_before_the_read(make_app: AppMaker) -> None:
        """A version change Redis has not taken yet must reach it before any version is read: the
        limiter's call then leaves the agent alone, and the read writes the change, then reads."""
        app = await make_app()
        await background.loops_of(app).stop()  # their Redis calls are not counted
        client = app.test_client()
        operator = await signed_in(client, "opal", "operator", app)
        agent_id, _ = await online_agent(client, operator, "ada")
        store: presence.RedisPresence = app.extensions["presence"]
        breaker = redis_client.breaker(app)
        breaker.failed(ConnectionError("Redis went away"))  # as after a failed call
        await store.bump([uuid.UUID(agent_id)], every_agent=False)  # not written: Redis is "down"
        breaker.answered()
        assert not store.current
        with commands(app) as seen:
            assert (await _agent(client, operator, agent_id))["name"] == "ada"
        assert seen == {"EVALSHA": 1, "HSET": 1, "HMGET": 1}
        assert store.current
        with commands(app) as seen:
            await _agent(client, operator, agent_id)
        assert seen == {"EVALSHA": 1}

    async def test_a_version_change_redis_missed_is_written_before_the_next_read(make_app: AppMaker) -> None:
        app = await make_app()
        redis = app.extensions["redis"]
        breaker = redis_client.Breaker("test", retry_seconds=3600)
        store = presence.RedisPresence(redis, breaker)
        agent_id = uuid.uuid4()
        before = (await store.look([agent_id]))[agent_id].version

        breaker.failed(ConnectionError("Redis went away"))  # as after a failed call
        await store.bump([agent_id], every_agent=False)
        assert (await presence.RedisPresence(redis).look([agent_id]))[
            agent_id
        ].version == before  # not written

        breaker.answered()  # Redis answers again: the next call writes the change first
        assert (await store.look([agent_id]))[agent_id].version != before
