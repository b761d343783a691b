"""The rate limiter's one Redis call also reads the caller's auth cache entries (identity.prefetch): a warm
authenticated request makes no separate cache read, and revocation stays exact.

Redis only (the embedded mode has no Redis call to share): the cases are left out of collection, not
skipped, when TEST_REDIS_URL is unset, as CI runs the suite once with it and once without.
"""

from __future__ import annotations

import os
from collections import Counter

from quart.testing import QuartClient

from service.application import Switchboard
from service.cache import RedisCache

from .accounts import signed_in
from .fleet import beat, online_agent
from .statements import commands

REDIS_URL = os.environ.get("TEST_REDIS_URL") or None


if REDIS_URL is not None:

    async def test_a_read_reads_the_identity_in_the_limiters_call(
        client: QuartClient, app: Switchboard
    ) -> None:
        operator = await signed_in(client, "opal", "operator", app)
        agent_id, _ = await online_agent(client, operator, "ada")
        assert (await client.get(f"/api/v1/agents/{agent_id}", headers=operator)).status_code == 200
        with commands(app) as seen:
            assert (await client.get(f"/api/v1/agents/{agent_id}", headers=operator)).status_code == 200
        # The limits, the session and grants, and the agent's beat and version (presence.looks_at): one
        # script.
        assert seen == Counter({"EVALSHA": 1})

    async def test_a_beat_reads_the_agent_token_in_the_limiters_call(
        client: QuartClient, app: Switchboard
    ) -> None:
        operator = await signed_in(client, "opal", "operator", app)
        agent_id, token = await online_agent(client, operator, "ada")
        await beat(client, agent_id, token)
        with commands(app) as seen:
            await beat(client, agent_id, token)
        # The limits and the token in one script; the beat noted and the version read in another.
        assert seen == Counter({"EVALSHA": 2})

    async def test_a_logged_out_token_is_refused_at_once(client: QuartClient, app: Switchboard) -> None:
        operator = await signed_in(client, "opal", "operator", app)
        assert (await client.get("/api/v1/agents", headers=operator)).status_code == 200
        assert (await client.post("/auth/logout", headers=operator)).status_code == 200
        assert (await client.get("/api/v1/agents", headers=operator)).status_code == 401

    async def test_a_rotated_agent_token_is_refused_at_once(client: QuartClient, app: Switchboard) -> None:
        operator = await signed_in(client, "opal", "operator", app)
        agent_id, token = await online_agent(client, operator, "ada")
        await beat(client, agent_id, token)  # known to this process, so the next beat is prefetched
        rotated = await client.post(f"/api/v1/agents/{agent_id}/token", headers=operator)
        assert rotated.status_code == 200
        refused = await client.post(
            f"/api/v1/agents/{agent_id}/heartbeat", json={"status": "online"}, headers=token
        )
        assert refused.status_code == 401

    async def test_entries_whose_deletion_waits_are_read_through_the_cache(app: Switchboard) -> None:
        cache = RedisCache(app.extensions["redis"])
        assert cache.keys_to_read_elsewhere(["sess:1"]) == ["sb:sess:1"]
        cache._undeleted.add("sb:sess:2")  # a revocation Redis did not take yet
        assert cache.keys_to_read_elsewhere(["sess:1"]) is None
