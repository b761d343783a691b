"""Reading a server-sent event stream from the test client, frame by frame."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from quart.testing import QuartClient
from quart.testing.connections import TestHTTPConnection


@dataclass
class Frame:
    id: str | None = None
    event: str | None = None
    data: Any = None
    comment: str | None = None
    retry: int | None = None
    wire: bytes = b""  # the message as sent, its closing blank line included


def parse_frame(lines: list[str]) -> Frame:
    """One SSE message, from its lines (the blank line that ends it excluded)."""
    frame = Frame()
    for line in lines:
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            frame.comment = value
        elif name == "data":
            frame.data = json.loads(value)
        elif name == "retry":
            frame.retry = int(value)
        elif name in ("id", "event"):
            setattr(frame, name, value)
    return frame


@dataclass
class Stream:
    connection: TestHTTPConnection
    buffer: bytes = b""
    frames: list[Frame] = field(default_factory=list)

    async def next(self, timeout: float = 5.0) -> Frame:
        """The next frame, waiting for it."""
        while b"\n\n" not in self.buffer:
            self.buffer += await asyncio.wait_for(self.connection.receive(), timeout)
        raw, self.buffer = self.buffer.split(b"\n\n", 1)
        frame = parse_frame(raw.decode().splitlines())
        frame.wire = raw + b"\n\n"
        self.frames.append(frame)
        return frame

    async def ended(self, timeout: float = 5.0) -> bool:
        """Whether the server ends the response (its last body message is empty) within `timeout`."""
        while True:
            chunk = await asyncio.wait_for(self.connection.receive(), timeout)
            if chunk == b"":
                return True
            self.buffer += chunk

    async def next_event(self, timeout: float = 5.0) -> Frame:
        """The next frame that is an event (skipping pings and the retry hint)."""
        while True:
            frame = await self.next(timeout)
            if frame.event is not None:
                return frame

    async def events(self, count: int, timeout: float = 5.0) -> list[Frame]:
        return [await self.next_event(timeout) for _ in range(count)]


@asynccontextmanager
async def watching(
    client: QuartClient, headers: dict[str, str], query: str = "", **extra_headers: str
) -> AsyncIterator[Stream]:
    """An open stream on /api/v1/events (after its status and headers were checked)."""
    async with client.request(f"/api/v1/events{query}", headers={**headers, **extra_headers}) as connection:
        await connection.send_complete()
        stream = Stream(connection)
        first = await stream.next()
        assert first.retry == 3000
        try:
            yield stream
        finally:
            await connection.disconnect()
