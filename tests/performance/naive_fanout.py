"""The SSE benchmark's naive reference: a small Quart app with one Redis listener per process (following the
service's event stream, `sb:events`) feeding one asyncio.Queue per subscriber, each event encoded to JSON
again for each subscriber. No authentication, replay or caps: only the fan-out the service is compared on.

Served as `hypercorn --config hypercorn.toml tests/performance/naive_fanout.py:app` with REDIS_URL set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from quart import Quart, Response, make_response, request
from redis.asyncio import Redis

app = Quart(__name__)
STREAM = "sb:events"
QUEUE_SIZE = 256  # as SSE_QUEUE_SIZE: a slow subscriber loses events rather than growing memory

_subscribers: dict[asyncio.Queue[bytes], str | None] = {}
_listener: asyncio.Task[None] | None = None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _listen(redis: Redis) -> None:
    cursor = "$"
    while True:
        found: list[tuple[Any, list[tuple[bytes, dict[bytes, bytes]]]]] = await redis.xread(  # type: ignore[assignment]
            {STREAM: cursor}, block=2000, count=1000
        )
        for _, entries in found:
            for entry_id, fields in entries:
                cursor = _text(entry_id)
                values = {_text(k): _text(v) for k, v in fields.items()}
                if values["type"].startswith("_"):
                    continue  # the service's internal control events
                event = {"id": cursor, "type": values["type"], **json.loads(values["data"])}
                topic = values.get("topic")
                for queue, wanted in list(_subscribers.items()):
                    if wanted is not None and wanted != topic:
                        continue
                    # The naive part: every subscriber gets its own encoding of the same event.
                    frame = f"id: {cursor}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(frame)


@app.before_serving
async def _open() -> None:
    global _listener
    redis = Redis.from_url(os.environ["REDIS_URL"])
    app.extensions["redis"] = redis
    _listener = asyncio.create_task(_listen(redis))


@app.after_serving
async def _close() -> None:
    if _listener is not None:
        _listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _listener
    await app.extensions["redis"].aclose()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/api/v1/events")
async def events() -> Response:
    queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_SIZE)
    _subscribers[queue] = request.args.get("agent_id")

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 3000\n\n"
            while True:
                try:
                    yield await asyncio.wait_for(queue.get(), 15)
                except TimeoutError:
                    yield b": ping\n\n"
        finally:
            _subscribers.pop(queue, None)

    headers: dict[str, Any] = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    response = await make_response(frames(), 200, headers)
    response.timeout = None  # type: ignore[union-attr]
    return response  # type: ignore[return-value]
