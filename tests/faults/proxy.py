"""A TCP fault proxy on loopback, between the service and PostgreSQL or Redis (a toxiproxy of our own:
toxiproxy, tc netem and iptables are all unavailable here).

It runs its own event loop in a daemon thread, so tests and scripts on any loop (or none) steer it with
plain method calls. Modes:

- `pass_through()`: bytes flow both ways untouched;
- `latency(seconds)`: every chunk waits that long before it is forwarded (order kept);
- `freeze()`: the dependency stops answering: open connections forward nothing, new ones are accepted
  and get nothing; what was sent meanwhile is delivered on `pass_through()`, as a thawed server would;
- `reset()`: every open connection is closed with a TCP RST, and so is every new one until the mode
  changes;
- `refuse()`: the port stops listening (connection refused) and open connections are reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
Mode = Literal["pass", "latency", "freeze", "reset", "refuse"]
_CHUNK = 65536


class FaultProxy:
    """Listens on 127.0.0.1:`port` and forwards to 127.0.0.1:`target_port`."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port
        self.mode: Mode = "pass"
        self.delay = 0.0
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._thawed: asyncio.Event | None = None

    # -- control (any thread) -------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._setup())
        self._call(self._listen())
        return self

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def pass_through(self) -> None:
        self._call(self._set("pass"))

    def latency(self, seconds: float) -> None:
        self.delay = seconds
        self._call(self._set("latency"))

    def freeze(self) -> None:
        self._call(self._set("freeze"))

    def reset(self) -> None:
        self._call(self._set("reset"))

    def refuse(self) -> None:
        self._call(self._set("refuse"))

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    # -- the loop's side ------------------------------------------------------------------------------

    async def _setup(self) -> None:
        self._thawed = asyncio.Event()
        self._thawed.set()

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True, backlog=1024
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _set(self, mode: Mode) -> None:
        assert self._thawed is not None
        self.mode = mode
        if mode == "freeze":
            self._thawed.clear()
        else:
            self._thawed.set()
        if mode in ("reset", "refuse"):
            for connection in list(self._connections):
                connection.reset()
        if mode == "refuse":
            await self._unlisten()
        else:
            await self._listen()

    async def _shutdown(self) -> None:
        await self._unlisten()
        for connection in list(self._connections):
            connection.reset()
        # Connections waiting out a freeze never end by themselves.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        connection = _Connection(writer)
        self._connections.add(connection)
        try:
            if self.mode == "reset":
                connection.reset()
                return
            assert self._thawed is not None
            await self._thawed.wait()  # frozen: the client waits for a server that does not answer
            if self.mode in ("reset", "refuse"):
                connection.reset()
                return
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    "127.0.0.1", self.target_port
                )
            except OSError:
                connection.reset()  # what the client of a dead server sees: the connection goes away
                return
            connection.upstream = upstream_writer
            await asyncio.gather(
                self._pump(reader, upstream_writer, connection),
                self._pump(upstream_reader, writer, connection),
            )
        finally:
            self._connections.discard(connection)
            connection.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, connection: _Connection
    ) -> None:
        assert self._thawed is not None
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while not connection.ended:
                chunk = await source.read(_CHUNK)
                if not chunk:
                    break
                await self._thawed.wait()
                if self.mode == "latency" and self.delay > 0:
                    await asyncio.sleep(self.delay)
                if connection.ended:
                    break
                sink.write(chunk)
                await sink.drain()
        # One side finished: end both, as a real peer's close would.
        connection.close()


class _Connection:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.ended = False

    def reset(self) -> None:
        """Close both sides with RST (SO_LINGER 0) rather than an orderly FIN."""
        self.ended = True
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    def close(self) -> None:
        self.ended = True
        for writer in (self.client, self.upstream):
            if writer is not None and not writer.is_closing():
                writer.close()
