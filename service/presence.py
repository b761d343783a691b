"""When each agent last beat and with what load: kept out of the database, because an unchanged heartbeat
must not cost a row write. Redis when configured (shared by every process), else process memory.

The database holds the status and its changes; this store holds the liveness the sweeper reads. Losing
it (a Redis flush) only makes agents look silent until their next beat, which puts them back online.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from quart import Quart, current_app
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from service import redis_client

KEY = "sb:presence"


@dataclass(frozen=True, slots=True)
class Beat:
    at: datetime
    load: float | None


def _encode(beat: Beat) -> str:
    return f"{beat.at.timestamp():.3f}|{'' if beat.load is None else beat.load}"


def _decode(raw: bytes | str) -> Beat:
    text = raw.decode() if isinstance(raw, bytes) else raw
    at, _, load = text.partition("|")
    return Beat(datetime.fromtimestamp(float(at), UTC), float(load) if load else None)


class Presence(Protocol):
    async def record(self, agent_id: uuid.UUID, beat: Beat) -> None: ...

    async def last(self, agent_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Beat]: ...

    async def forget(self, agent_id: uuid.UUID) -> None: ...


class MemoryPresence:
    def __init__(self) -> None:
        self._beats: dict[uuid.UUID, Beat] = {}

    async def record(self, agent_id: uuid.UUID, beat: Beat) -> None:
        self._beats[agent_id] = beat

    async def last(self, agent_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Beat]:
        return {agent_id: self._beats[agent_id] for agent_id in agent_ids if agent_id in self._beats}

    async def forget(self, agent_id: uuid.UUID) -> None:
        self._beats.pop(agent_id, None)


class RedisPresence:
    """One hash, field = agent id: a beat is one HSET, a sweep one HMGET for every watched agent.

    After a failure Redis is left alone for a few seconds but for one probe (`redis_client.Breaker`), so
    a frozen Redis costs one heartbeat a socket timeout per interval rather than every heartbeat.
    """

    def __init__(self, redis: Redis, breaker: redis_client.Breaker | None = None) -> None:
        self._redis = redis
        self._breaker = breaker or redis_client.Breaker("presence")

    async def record(self, agent_id: uuid.UUID, beat: Beat) -> None:
        # Redis down: the beat is not noted, but the agent's answer still comes. The sweeper cannot read
        # presence either meanwhile, so nobody is marked offline for Redis's silence.
        if not self._breaker.allows():
            return
        try:
            await self._redis.hset(KEY, str(agent_id), _encode(beat))
        except redis_client.FAILURES as error:
            self._breaker.failed(error)
        else:
            self._breaker.answered()

    async def last(self, agent_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Beat]:
        """The last beats of these agents.

        Raises:
            redis.exceptions.ConnectionError (one of redis_client.FAILURES): Redis is down.
        """
        ids = list(agent_ids)
        if not ids:
            return {}
        if not self._breaker.allows():
            raise RedisConnectionError("Redis failed moments ago; not asked again yet")
        try:
            values = await self._redis.hmget(KEY, [str(agent_id) for agent_id in ids])
        except redis_client.FAILURES as error:
            self._breaker.failed(error)
            raise
        self._breaker.answered()
        return {agent_id: _decode(raw) for agent_id, raw in zip(ids, values, strict=True) if raw is not None}

    async def forget(self, agent_id: uuid.UUID) -> None:
        await self._redis.hdel(KEY, str(agent_id))


async def for_display(store: Presence, agent_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Beat]:
    """The last beats to show in the API; nothing when the store is down (the sweeper, which must not
    mistake Redis's silence for the agents', reads `last` and fails instead)."""
    try:
        return await store.last(agent_ids)
    except redis_client.FAILURES:
        return {}  # the store's breaker logged the outage once


def init_app(app: Quart) -> None:
    @app.before_serving
    async def _open() -> None:
        redis: Redis | None = app.extensions.get("redis")
        app.extensions["presence"] = RedisPresence(redis) if redis is not None else MemoryPresence()


def current() -> Presence:
    store: Presence = current_app.extensions["presence"]
    return store
