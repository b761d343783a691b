"""A small HTTP/1.1 client on raw asyncio streams for what wrk cannot do: send each request exactly once,
and drive an open loop (requests start on a fixed schedule whatever the answers do, and latency counts
from the scheduled start, so a stalled server cannot hide its queue behind a slowed client)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .percentiles import percentile


def http_request(
    url: str, method: str, path: str, bearer: str | None = None, body: object | None = None, **headers: str
) -> bytes:
    """The bytes of one keep-alive request."""
    host = urlsplit(url).netloc
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if bearer is not None:
        lines.append(f"Authorization: Bearer {bearer}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


class Connection:
    """One keep-alive connection that exchanges one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer)

    async def exchange(self, raw: bytes) -> tuple[int, bytes]:
        """Send a request; the status and body of its answer."""
        self._writer.write(raw)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self._reader.readexactly(length)

    def close(self) -> None:
        self._writer.close()


async def each_once(url: str, requests: Sequence[bytes], concurrency: int = 32) -> Counter[int]:
    """Send every request once, `concurrency` at a time; the count of each status (0: the server closed
    the connection instead of answering; the next request goes on a new one)."""
    statuses: Counter[int] = Counter()
    queue = list(reversed(requests))

    async def worker() -> None:
        connection = await Connection.open(url)
        try:
            while queue:
                try:
                    status, _ = await connection.exchange(queue.pop())
                except (asyncio.IncompleteReadError, ConnectionError):
                    status = 0
                    connection.close()
                    connection = await Connection.open(url)
                statuses[status] += 1
        finally:
            connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


@dataclass
class OpenLoopResult:
    rate: float
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    # How late the client started requests against their schedule: large values mean the client, not the
    # server, was the bottleneck.
    start_lag: list[float] = field(default_factory=list)
    # The status of each request by its place in the schedule (0: no answer).
    outcomes: list[int] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def succeeded(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def failed(self) -> int:
        """Requests answered with an error, or not answered at all."""
        return len(self.outcomes) - self.succeeded

    @property
    def achieved(self) -> float:
        """Successful answers per second, over the time from the first start to the last answer."""
        return self.succeeded / max(self.seconds, self.elapsed)

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    def lag_p(self, q: float) -> float:
        return percentile(self.start_lag, q) * 1000


async def open_loop(
    url: str, requests: Sequence[bytes], *, rate: float, seconds: float, connections: int = 64
) -> OpenLoopResult:
    """Start requests at `rate` per second for `seconds`, cycling over `requests`, on up to
    `connections` connections; each latency counts from the request's scheduled start."""
    loop = asyncio.get_running_loop()
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for connection in await asyncio.gather(*(Connection.open(url) for _ in range(connections))):
        pool.put_nowait(connection)
    result = OpenLoopResult(rate, seconds)
    total = int(rate * seconds)
    result.outcomes = [0] * total
    pending: set[asyncio.Task[None]] = set()

    async def one(index: int, scheduled: float, raw: bytes) -> None:
        connection = await pool.get()
        try:
            status, _ = await connection.exchange(raw)
        except (OSError, asyncio.IncompleteReadError):
            status = 0
            connection = await Connection.open(url)
        finally:
            pool.put_nowait(connection)
        result.statuses[status] += 1
        result.outcomes[index] = status
        result.latencies.append(loop.time() - scheduled)
        result.elapsed = loop.time() - start

    start = loop.time() + 0.05
    sent = 0
    while sent < total:
        now = loop.time()
        due = min(total, int((now - start) * rate) + 1)
        while sent < due:
            scheduled = start + sent / rate
            result.start_lag.append(max(0.0, now - scheduled))
            task = asyncio.create_task(one(sent, scheduled, requests[sent % len(requests)]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        await asyncio.sleep(0.001)
    if pending:
        # Still unanswered after this long: counted as failed (status 0), not waited for.
        await asyncio.wait(pending, timeout=30)
        for task in list(pending):
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    while not pool.empty():
        pool.get_nowait().close()
    return result
