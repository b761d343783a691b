"""Server-sent event streams: one bounded subscription per client, resumed with Last-Event-ID, closed
when the client's session ends (on any instance) or the server shuts down, capped per user.

Frames: `retry:` once, then `id:`/`event:`/`data:` per event (data is the whole event as JSON), a
`: ping` comment every heartbeat, and an `event: reset` (no id) when the stream cannot go on without a
gap — the client then reloads the state it shows and subscribes again.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from quart import Quart
from redis.asyncio import Redis

from service import draining, log, metrics, redis_client
from service.config import Settings
from service.events import outbox
from service.events.broker import (
    Broker,
    BrokerUnavailable,
    Event,
    SubscriberLagged,
    Subscription,
    event_id_key,
)
from service.identity import Identity

logger = log.get(__name__)

RETRY_MS = 3000
_RECONNECT_SPREAD_MS = (500, 3000)
# A stream counts toward its user's cap for this long after its last heartbeat: a crashed process's
# streams stop counting by themselves.
_SLOT_TTL = 60.0


@dataclass(frozen=True)
class Viewer:
    """Who holds a stream, for its cap and for closing it when their session or token ends."""

    user_id: uuid.UUID
    session_id: uuid.UUID | None
    api_token_id: uuid.UUID | None

    @classmethod
    def of(cls, caller: Identity) -> Viewer:
        return cls(caller.user_id, caller.session_id, caller.api_token_id)


def reset_frame(reason: str) -> bytes:
    return f"event: reset\ndata: {json.dumps({'reason': reason})}\n\n".encode()


class Streams:
    """This process's open streams, and the per-user cap shared by every instance through Redis."""

    def __init__(self, redis: Redis | None, per_user: int) -> None:
        self._redis = redis
        self._per_user = per_user
        self._local: dict[uuid.UUID, set[str]] = {}
        self._open: dict[str, tuple[Viewer, Subscription]] = {}

    async def claim(self, viewer: Viewer, stream_id: str) -> bool:
        """Take one of the user's stream slots; False when they hold the maximum already."""
        if self._redis is None:
            mine = self._local.setdefault(viewer.user_id, set())
            if len(mine) >= self._per_user:
                return False
            mine.add(stream_id)
            return True
        key, now = f"sb:streams:{viewer.user_id}", time.time()
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(key, 0, now)
                pipe.zadd(key, {stream_id: now + _SLOT_TTL})
                pipe.zcard(key)
                pipe.expire(key, int(_SLOT_TTL) + 1)
                held = (await pipe.execute())[2]
            if held > self._per_user:
                await self._redis.zrem(key, stream_id)
                return False
        except redis_client.FAILURES as error:
            # The cap protects memory; without Redis it cannot be counted across instances, so this
            # process lets the stream open rather than refuse everyone.
            logger.warning("stream_cap_unavailable", error=type(error).__name__)
        return True

    async def keep(self, viewer: Viewer, stream_id: str) -> None:
        if self._redis is not None:
            # On failure the slot lapses by itself; counting resumes with Redis.
            with contextlib.suppress(*redis_client.FAILURES):
                await self._redis.zadd(f"sb:streams:{viewer.user_id}", {stream_id: time.time() + _SLOT_TTL})

    async def release(self, viewer: Viewer, stream_id: str) -> None:
        self._open.pop(stream_id, None)
        metrics.sse_subscribers.set(len(self._open))
        if self._redis is None:
            self._local.get(viewer.user_id, set()).discard(stream_id)
            return
        with contextlib.suppress(*redis_client.FAILURES):  # else it lapses after _SLOT_TTL
            await self._redis.zrem(f"sb:streams:{viewer.user_id}", stream_id)

    def track(self, stream_id: str, viewer: Viewer, subscription: Subscription) -> None:
        self._open[stream_id] = (viewer, subscription)
        metrics.sse_subscribers.set(len(self._open))

    def end_all(self) -> None:
        """Shutting down: every stream ends now, so clients reconnect (to another instance)."""
        for _, subscription in list(self._open.values()):
            subscription.interrupt()


def _ends(viewer: Viewer, event: Event) -> bool:
    """Whether a control event ends this viewer's streams."""
    if event.type == outbox.SESSION_ENDED:
        return viewer.session_id is not None and event.data["data"].get("session_id") == str(
            viewer.session_id
        )
    if event.type == outbox.TOKEN_REVOKED:
        return viewer.api_token_id is not None and event.data["data"].get("token_id") == str(
            viewer.api_token_id
        )
    return False


_first_seen: tuple[int, int] = (0, 0)


def _observe_lag(event: Event) -> None:
    # Every stream of this process sees events in one order: the first to see one measures it.
    global _first_seen
    if event.key > _first_seen:
        _first_seen = event.key
        with_time = event.data.get("time")
        if isinstance(with_time, str):
            lag = (datetime.now(UTC) - datetime.fromisoformat(with_time)).total_seconds()
            metrics.event_delivery_lag_seconds.observe(max(0.0, lag))


def beyond_retention(last_event_id: str, settings: Settings) -> bool:
    ms, _ = event_id_key(last_event_id)
    return ms < (time.time() - settings.event_retention_hours * 3600) * 1000


async def frames(
    broker: Broker,
    streams: Streams,
    viewer: Viewer,
    settings: Settings,
    agent_id: str | None,
    types: frozenset[str] | None,
    last_event_id: str | None,
    stream_id: str,
) -> AsyncIterator[bytes]:
    """The bytes of one client's stream (whose slot `streams.claim` took), until the client leaves,
    its session ends or the server stops."""
    topics = frozenset({agent_id, outbox.CONTROL_TOPIC}) if agent_id else None
    subscription = broker.subscribe(topics, maxsize=settings.sse_queue_size)
    streams.track(stream_id, viewer, subscription)
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        if last_event_id is not None and beyond_retention(last_event_id, settings):
            yield reset_frame("beyond_retention")
            return
        async for event in subscription.events(last_event_id, settings.sse_heartbeat_seconds):
            if event is None:
                await streams.keep(viewer, stream_id)
                yield b": ping\n\n"
            elif event.type.startswith("_"):
                if _ends(viewer, event):
                    yield reset_frame("session_ended")
                    return
            elif types is None or event.type in types:
                _observe_lag(event)
                yield event.frame
        if subscription.interrupted:
            # The server is going away: come back soon (another instance), spread over a few seconds so
            # the clients of a draining instance do not all reconnect in the same instant.
            yield f"retry: {random.randint(*_RECONNECT_SPREAD_MS)}\n\n".encode()  # noqa: S311
    except SubscriberLagged:
        yield reset_frame("beyond_retention")
    except BrokerUnavailable:
        yield reset_frame("unavailable")
    finally:
        subscription.close()
        await streams.release(viewer, stream_id)


def init_app(app: Quart, settings: Settings) -> None:
    @app.before_serving
    async def _open() -> None:
        streams = app.extensions["streams"] = Streams(
            app.extensions.get("redis"), settings.sse_streams_per_user
        )
        # Shutting down: every stream ends now, so its client reconnects to another instance.
        draining.current(app).on_start(streams.end_all)
