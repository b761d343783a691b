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

from service import log, redis_client

logger = log.get(__name__)

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
    """One hash, field = agent id: a beat is one HSET, a sweep one HMGET for every watched agent."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def record(self, agent_id: uuid.UUID, beat: Beat) -> None:
        # Redis down: the beat is not noted, but the agent's answer still comes. The sweeper cannot read
        # presence either meanwhile, so nobody is marked offline for Redis's silence.
        try:
            await self._redis.hset(KEY, str(agent_id), _encode(beat))
        except redis_client.FAILURES as error:
            logger.warning("presence_unavailable", error=type(error).__name__)

    async def last(self, agent_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Beat]:
        ids = list(agent_ids)
        if not ids:
            return {}
        values = await self._redis.hmget(KEY, [str(agent_id) for agent_id in ids])
        return {agent_id: _decode(raw) for agent_id, raw in zip(ids, values, strict=True) if raw is not None}

    async def forget(self, agent_id: uuid.UUID) -> None:
        await self._redis.hdel(KEY, str(agent_id))


async def for_display(store: Presence, agent_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Beat]:
    """The last beats to show in the API; nothing when the store is down (the sweeper, which must not
    mistake Redis's silence for the agents', reads `last` and fails instead)."""
    try:
        return await store.last(agent_ids)
    except redis_client.FAILURES as error:
        logger.warning("presence_unavailable", error=type(error).__name__)
        return {}


def init_app(app: Quart) -> None:
    @app.before_serving
    async def _open() -> None:
        redis: Redis | None = app.extensions.get("redis")
        app.extensions["presence"] = RedisPresence(redis) if redis is not None else MemoryPresence()


def current() -> Presence:
    store: Presence = current_app.extensions["presence"]
    return store
