"""When each agent last beat and with what load: kept out of the database, because an unchanged heartbeat
must not cost a row write. Redis when configured (shared by every process), else process memory.

The database holds the status and its changes; this store holds the liveness the sweeper reads. Losing
it (a Redis flush) only makes agents look silent until their next beat, which puts them back online.

Beside each beat the store keeps the agent's record **version**: a random value replaced after every
commit that changed the agent's row (and one for the whole table, replaced after a change whose agents
are not known one by one). Each process caches agents' views under the version they were read at
(service/agent_cache.py); a read or a beat gets the beat and the version in the same round trip, so a
cached view is checked against every process's latest commit at no extra cost.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from quart import Quart, current_app, g, has_request_context
from redis.asyncio import Redis

from service import redis_client

V = TypeVar("V", bound=Callable[..., Any])

KEY = "sb:presence"
# The version fields beside the beats: one per agent, and one for changes of agents not known one by one.
VERSION_PREFIX = "v:"
EVERY_AGENT = "v:*"
# Beside the per-agent version in a version string when the store holds none (never changed, or flushed).
_NONE = "-"

# A beat and the agent's version in one call: HSET the beat, HMGET the two version fields.
_RECORD_AND_VERSION = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HMGET', KEYS[1], ARGV[3], ARGV[4])
"""


@dataclass(frozen=True, slots=True)
class Beat:
    at: datetime
    load: float | None


def _encode(beat: Beat) -> str:
    return f"{beat.at.timestamp():.3f}|{'' if beat.load is None else beat.load}"


def _decode(raw: bytes | str) -> Beat:
    text = redis_client.text(raw)
    at, _, load = text.partition("|")
    return Beat(datetime.fromtimestamp(float(at), UTC), float(load) if load else None)


def _version(agent: bytes | str | None, every: bytes | str | None) -> str:
    """An agent's version string: its own field and the whole table's, either of which a change replaces."""
    own = _NONE if agent is None else redis_client.text(agent)
    table = _NONE if every is None else redis_client.text(every)
    return f"{own}/{table}"


def _version_field(agent_id: uuid.UUID) -> str:
    return f"{VERSION_PREFIX}{agent_id}"


def new_version() -> str:
    # Random rather than counted: a flushed or restarted store can never hand out a value seen before.
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Live:
    """What the store knows of an agent: its last beat (if any) and its record's version."""

    beat: Beat | None
    version: str


class Presence(Protocol):
    async def record(self, agent_id: uuid.UUID, beat: Beat) -> str | None:
        """Note the beat; returns the agent's version, or None when the store did not answer."""
        ...

    async def last(self, agent_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Beat]: ...

    async def look(self, agent_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Live]:
        """The agents' last beats and versions (every agent asked for is in the answer)."""
        ...

    async def bump(self, agent_ids: Iterable[uuid.UUID], every_agent: bool) -> None:
        """Replace the versions of these agents (of every agent when `every_agent`): their rows changed."""
        ...

    async def forget(self, agent_id: uuid.UUID) -> None: ...


class MemoryPresence:
    def __init__(self) -> None:
        self._beats: dict[uuid.UUID, Beat] = {}
        self._versions: dict[str, str] = {}

    async def record(self, agent_id: uuid.UUID, beat: Beat) -> str | None:
        self._beats[agent_id] = beat
        return self._version_of(agent_id)

    async def last(self, agent_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Beat]:
        return {agent_id: self._beats[agent_id] for agent_id in agent_ids if agent_id in self._beats}

    async def look(self, agent_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Live]:
        version = self._version_of
        return {agent_id: Live(self._beats.get(agent_id), version(agent_id)) for agent_id in agent_ids}

    async def bump(self, agent_ids: Iterable[uuid.UUID], every_agent: bool) -> None:
        for agent_id in agent_ids:
            self._versions[_version_field(agent_id)] = new_version()
        if every_agent:
            self._versions[EVERY_AGENT] = new_version()

    async def forget(self, agent_id: uuid.UUID) -> None:
        self._beats.pop(agent_id, None)

    def _version_of(self, agent_id: uuid.UUID) -> str:
        return _version(self._versions.get(_version_field(agent_id)), self._versions.get(EVERY_AGENT))


class RedisPresence:
    """One hash, field = agent id: a beat is one HSET, a sweep one HMGET for every watched agent.

    After a failure Redis is left alone for a few seconds but for one probe in the background
    (`redis_client.Breaker`, the app's one), so a frozen Redis costs a socket timeout only to the calls
    already waiting when it froze.
    """

    def __init__(self, redis: Redis, breaker: redis_client.Breaker | None = None) -> None:
        self._redis = redis
        self._breaker = breaker or redis_client.Breaker("redis", probe=redis.ping)
        self._record_script = redis.register_script(_RECORD_AND_VERSION)
        # Version changes Redis did not take (it failed after the commit): written before anything else
        # once it answers again. Meanwhile the caches' entry lifetime bounds what another process may show.
        self._unbumped: set[uuid.UUID] = set()
        # Changes of every agent waiting: a count, since more may come while one is being written.
        self._unbumped_every = 0

    async def record(self, agent_id: uuid.UUID, beat: Beat) -> str | None:
        async def write() -> list[bytes | str | None]:
            await self._catch_up()
            fields = [str(agent_id), _encode(beat), _version_field(agent_id), EVERY_AGENT]
            versions: list[bytes | str | None] = await self._record_script(keys=[KEY], args=fields)
            return versions

        # Redis down: the beat is not noted, but the agent's answer still comes. The sweeper cannot read
        # presence either meanwhile, so nobody is marked offline for Redis's silence.
        try:
            agent, every = await self._breaker.run(write)
        except redis_client.FAILURES:
            return None
        return _version(agent, every)

    async def last(self, agent_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Beat]:
        """The last beats of these agents.

        Raises:
            redis.exceptions.ConnectionError (one of redis_client.FAILURES): Redis is down.
        """
        ids = list(agent_ids)
        values = await self._fields([str(agent_id) for agent_id in ids])
        return {agent_id: _decode(raw) for agent_id, raw in zip(ids, values, strict=True) if raw is not None}

    async def look(self, agent_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Live]:
        """The agents' beats and versions in one HMGET.

        Raises:
            redis.exceptions.ConnectionError (one of redis_client.FAILURES): Redis is down.
        """
        ids = list(agent_ids)
        if not ids:
            return {}
        every, *values = await self._fields(look_fields(ids))
        return {
            agent_id: Live(None if raw is None else _decode(raw), _version(version, every))
            for agent_id, raw, version in zip(ids, values[0::2], values[1::2], strict=True)
        }

    async def _fields(self, fields: list[str]) -> list[bytes | str | None]:
        """HMGET, after writing any version change Redis missed.

        Raises:
            redis.exceptions.ConnectionError (one of redis_client.FAILURES): Redis is down.
        """
        if not fields:
            return []
        read_ahead = self._read_ahead(fields)
        if read_ahead is not None:
            return read_ahead

        async def read() -> list[bytes | str | None]:
            await self._catch_up()
            values: list[bytes | str | None] = await self._redis.hmget(KEY, fields)
            return values

        return await self._breaker.run(read)

    @property
    def current(self) -> bool:
        """Whether Redis holds every version change this process made (none waits to be written)."""
        return not self._unbumped and not self._unbumped_every

    def _read_ahead(self, fields: list[str]) -> list[bytes | str | None] | None:
        """The fields as the request's rate limiter read them (see looks_at), when it read them all and no
        version change has waited to be written since (what it read could predate one)."""
        if not has_request_context() or not self.current:
            return None
        primed: dict[str, bytes | str | None] | None = g.get("presence_read_ahead")
        if primed is None or not all(field in primed for field in fields):
            return None
        return [primed[field] for field in fields]

    async def bump(self, agent_ids: Iterable[uuid.UUID], every_agent: bool) -> None:
        """Replace the versions; what Redis does not take now it gets before anything else later."""
        self._unbumped.update(agent_ids)
        self._unbumped_every += every_agent
        with contextlib.suppress(*redis_client.FAILURES):
            await self._breaker.run(self._catch_up)

    async def _catch_up(self) -> None:
        """Write the version changes not yet written (cheap when there are none: the common case)."""
        if not self._unbumped and not self._unbumped_every:
            return
        ids, every = set(self._unbumped), self._unbumped_every
        changed = {_version_field(agent_id): new_version() for agent_id in ids}
        if every:
            changed[EVERY_AGENT] = new_version()
        await self._redis.hset(KEY, mapping=changed)  # type: ignore[arg-type]
        # Only what was written is done: a bump queued while the HSET waited stays for the next call.
        self._unbumped -= ids
        self._unbumped_every -= every

    async def forget(self, agent_id: uuid.UUID) -> None:
        await self._redis.hdel(KEY, str(agent_id))


async def for_display(store: Presence, agent_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Beat]:
    """The last beats to show in the API; nothing when the store is down (the sweeper, which must not
    mistake Redis's silence for the agents', reads `last` and fails instead)."""
    try:
        return await store.last(agent_ids)
    except redis_client.FAILURES:
        return {}  # the store's breaker logged the outage once


def look_fields(agent_ids: Iterable[uuid.UUID]) -> list[str]:
    """The hash fields `look` reads: the table's version, then each agent's beat and version."""
    fields = [EVERY_AGENT]
    for agent_id in agent_ids:
        fields += [str(agent_id), _version_field(agent_id)]
    return fields


_LOOKS_AT = "_switchboard_looks_at"


def looks_at(view_arg: str) -> Callable[[V], V]:
    """Mark a view that will `look` at the agent its URL's `view_arg` names: the rate limiter's Redis call
    (which every such request makes first) reads the agent's beat and versions too, and `look` takes
    them from there, a round trip fewer. Place it directly under the route decorator."""

    def mark(view: V) -> V:
        setattr(view, _LOOKS_AT, view_arg)
        return view

    return mark


def fields_to_read_ahead(view: Callable[..., Any] | None, view_args: Mapping[str, Any] | None) -> list[str]:
    """The fields of KEY the current request's view will look at (see looks_at), for the rate limiter to
    read; none when the view is not marked or the store is not Redis's, or a version change of this
    process still waits to be written (it must reach Redis before anything reads a version)."""
    name: str | None = getattr(view, _LOOKS_AT, None)
    if name is None or not view_args or not isinstance(view_args.get(name), uuid.UUID):
        return []
    store = current_app.extensions.get("presence")
    if not isinstance(store, RedisPresence) or not store.current:
        return []
    return look_fields([view_args[name]])


def read_ahead(fields: Sequence[str], values: Sequence[bytes | str | None]) -> None:
    """Keep what the rate limiter read of KEY for this request's `look`."""
    g.presence_read_ahead = dict(zip(fields, values, strict=True))


def init_app(app: Quart) -> None:
    @app.before_serving
    async def _open() -> None:
        redis: Redis | None = app.extensions.get("redis")
        app.extensions["presence"] = (
            MemoryPresence() if redis is None else RedisPresence(redis, redis_client.breaker(app))
        )


def current() -> Presence:
    store: Presence = current_app.extensions["presence"]
    return store
