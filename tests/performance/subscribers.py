"""SSE subscribers for the fan-out benchmark, run in client processes of their own: each process holds
thousands of streams on raw asyncio sockets, notes when each benchmark event arrives, and reports back
through a pipe. Only events caused by the benchmark's publisher (request ids starting `bench`) count."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from typing import cast
from urllib.parse import urlsplit

import uvloop

REQUEST_ID_PREFIX = "bench"
_REQUEST_ID = re.compile(rb'"request_id": ?"([^"]*)"')
_TIME = re.compile(rb'"time": ?"([^"]+)"')
_CONNECTING = 100


@dataclass(frozen=True)
class Spec:
    """One stream to open: the path (with its filter) and the viewer's token."""

    path: str
    bearer: str | None


@dataclass
class Tally:
    # From the change being recorded (the event's `time`) to arrival.
    latencies: list[float] = field(default_factory=list)
    # From the event's append to the log (its id's milliseconds, Redis's clock) to arrival: the fan-out
    # alone, without the commit and the relay.
    from_log: list[float] = field(default_factory=list)
    received: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    resets: int = 0


class Subscriber(asyncio.Protocol):
    """One stream: undoes the chunked transfer coding, splits frames, notes each benchmark event once."""

    def __init__(self, request: bytes, tally: Tally, answered: asyncio.Future[int]) -> None:
        self._request = request
        self._tally = tally
        self._answered = answered
        self._head = b""
        self._raw = bytearray()
        self._body = bytearray()
        self._chunk_left = 0
        self._seen: set[str] = set()
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.WriteTransport, transport)  # uvloop's is not an asyncio.Transport
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._answered.done():
            self._answered.set_result(0)

    def data_received(self, data: bytes) -> None:
        if not self._answered.done():
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = int(self._head[9:12])
            self._answered.set_result(status)
            if status != 200:
                assert self.transport is not None
                self.transport.close()
                return
            data, self._head = self._head[end + 4 :], b""
        self._raw += data
        self._dechunk()
        while (end := self._body.find(b"\n\n")) >= 0:
            frame = bytes(self._body[:end])
            del self._body[: end + 2]
            self._frame(frame)

    def _dechunk(self) -> None:
        raw = self._raw
        while raw:
            if self._chunk_left == 0:
                line_end = raw.find(b"\r\n")
                if line_end < 0:
                    return
                line = bytes(raw[:line_end])
                del raw[: line_end + 2]
                if line:  # an empty line is the CRLF that closes a chunk's data
                    self._chunk_left = int(line.split(b";")[0], 16)
                continue
            take = min(self._chunk_left, len(raw))
            self._body += raw[:take]
            del raw[:take]
            self._chunk_left -= take

    def _frame(self, frame: bytes) -> None:
        if frame.startswith(b"event: reset"):
            self._tally.resets += 1
            return
        if not frame.startswith(b"id: "):
            return
        found = _REQUEST_ID.search(frame)
        if found is None or not found.group(1).startswith(REQUEST_ID_PREFIX.encode()):
            return
        request_id = found.group(1).decode()
        if request_id in self._seen:
            self._tally.duplicates += 1
            return
        self._seen.add(request_id)
        now = time.time()
        stamped = _TIME.search(frame)
        if stamped is not None:
            published = datetime.fromisoformat(stamped.group(1).decode().replace("Z", "+00:00")).timestamp()
            self._tally.latencies.append(now - published)
        appended_ms = frame[4 : frame.index(b"-", 4)]
        self._tally.from_log.append(now - int(appended_ms) / 1000)
        self._tally.received[request_id] += 1


async def _open(
    url: str, specs: list[Spec], tally: Tally, deadline: float
) -> tuple[list[asyncio.BaseTransport], Counter[int], list[str]]:
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    gate = asyncio.Semaphore(_CONNECTING)
    transports: list[asyncio.BaseTransport] = []
    statuses: Counter[int] = Counter()
    missing: list[str] = []  # the paths of streams that did not open

    async def one(spec: Spec) -> None:
        auth = f"Authorization: Bearer {spec.bearer}\r\n" if spec.bearer else ""
        request = (
            f"GET {spec.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{auth}Accept: text/event-stream\r\n\r\n"
        )
        answered: asyncio.Future[int] = loop.create_future()
        async with gate:
            if loop.time() > deadline:
                statuses[-1] += 1  # not tried: connecting took too long already
                missing.append(spec.path)
                return
            try:
                transport, _ = await loop.create_connection(
                    lambda: Subscriber(request.encode(), tally, answered), host, port
                )
                status = await asyncio.wait_for(answered, 30)
            except (OSError, TimeoutError):
                status = 0
            else:
                transports.append(transport)
        statuses[status] += 1
        if status != 200:
            missing.append(spec.path)

    await asyncio.gather(*(one(spec) for spec in specs))
    return transports, statuses, missing


async def _lag_probe(samples: list[float]) -> None:
    """How late this process's loop wakes: large values mean the client, not the server, is saturated."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(0.01)
        samples.append(loop.time() - before - 0.01)


async def _client(pipe: Connection, url: str, specs: list[Spec], connect_seconds: float) -> None:
    tally = Tally()
    deadline = asyncio.get_running_loop().time() + connect_seconds
    transports, statuses, missing = await _open(url, specs, tally, deadline)
    pipe.send(("connected", dict(statuses), missing))
    lag: list[float] = []
    # A thread waits on the pipe: handing its descriptor to the loop would make it non-blocking.
    command = await asyncio.to_thread(pipe.recv)
    if command == "measure":
        tally.latencies.clear()
        tally.from_log.clear()
        probe = asyncio.create_task(_lag_probe(lag))
        command = await asyncio.to_thread(pipe.recv)
        probe.cancel()
    for transport in transports:
        transport.close()
    received = dict(tally.received)
    pipe.send(("results", tally.latencies, tally.from_log, received, tally.duplicates, tally.resets, lag))


def client_main(pipe: Connection, url: str, specs: list[Spec], connect_seconds: float) -> None:
    """A client process: open `specs` on `url` (those it could start within `connect_seconds`), then
    `measure` and `stop` on command."""
    uvloop.run(_client(pipe, url, specs, connect_seconds))
