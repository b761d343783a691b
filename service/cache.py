"""A small shared key-value cache with expiry: Redis when configured, a dict in the embedded mode. And
`Lru`, the bounded in-process map that per-process caches keep their entries in.

It holds derived state only (which sessions are live, what each user may do); PostgreSQL stays the
truth, so a flushed or restarted Redis costs a database read, never a wrong answer.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

from redis.asyncio import Redis

from service import redis_client

PREFIX = "sb:"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    """At most `size` values by key, the least recently used dropped first; none kept when `size` ≤ 0."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if self._size <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()


class Cache(Protocol):
    async def get_many(self, keys: list[str]) -> list[str | None]: ...
    async def set(self, key: str, value: str, ttl_seconds: int) -> None: ...
    async def delete(self, *keys: str) -> None: ...


class MemoryCache:
    """One process only: the embedded default."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[str, float]] = {}

    async def get_many(self, keys: list[str]) -> list[str | None]:
        now = time.monotonic()
        found: list[str | None] = []
        for key in keys:
            entry = self._values.get(key)
            if entry is not None and entry[1] <= now:
                del self._values[key]
                entry = None
            found.append(entry[0] if entry else None)
        return found

    async def set(self, key: str, value: str, ttl_seconds: int) -> None:
        if len(self._values) > 100_000:  # bounded: drop everything expired before growing further
            now = time.monotonic()
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
        self._values[key] = (value, time.monotonic() + ttl_seconds)

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._values.pop(key, None)


class RedisCache:
    """Shared by every worker and instance, so an invalidation is seen everywhere at once.

    Redis down: reads miss (the database answers), writes are skipped, and deletions that failed are
    kept and retried before the next command that reaches Redis, so an invalidation is late, never lost.
    After a failure Redis is left alone for a few seconds but for one probe (`redis_client.Breaker`, the
    app's one), so a frozen Redis does not cost every request a socket timeout.
    """

    def __init__(self, client: Redis, breaker: redis_client.Breaker | None = None) -> None:
        self._client = client
        self._breaker = breaker or redis_client.Breaker("redis", probe=client.ping)
        self._undeleted: set[str] = set()

    async def get_many(self, keys: list[str]) -> list[str | None]:
        async def read() -> list[bytes | str | None]:
            await self._retry_deletes()
            values: list[bytes | str | None] = await self._client.mget([PREFIX + key for key in keys])
            return values

        try:
            values = await self._breaker.run(read)
        except redis_client.FAILURES:
            return [None] * len(keys)
        return [None if value is None else redis_client.text(value) for value in values]

    def keys_to_read_elsewhere(self, keys: list[str]) -> list[str] | None:
        """The Redis keys of these entries, for another caller to read in its own Redis call (the rate
        limiter reads the caller's entries in its script); None when they must be read here: a deletion
        is waiting to be retried (reading around it could see a revoked session), or Redis just failed."""
        if self._undeleted or self._breaker.down:
            return None
        return [PREFIX + key for key in keys]

    async def set(self, key: str, value: str, ttl_seconds: int) -> None:
        async def write() -> None:
            await self._retry_deletes()
            await self._client.set(PREFIX + key, value, ex=ttl_seconds)

        with contextlib.suppress(*redis_client.FAILURES):
            await self._breaker.run(write)

    async def delete(self, *keys: str) -> None:
        self._undeleted.update(PREFIX + key for key in keys)
        with contextlib.suppress(*redis_client.FAILURES):
            await self._breaker.run(self._retry_deletes)

    async def _retry_deletes(self) -> None:
        if self._undeleted:
            pending = list(self._undeleted)
            await self._client.delete(*pending)
            self._undeleted.difference_update(pending)
