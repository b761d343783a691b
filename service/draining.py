"""Draining: knowing the moment the server starts shutting down, not only when it has finished.

Hypercorn tells the app it is shutting down (the ASGI lifespan) only after every connection has closed or
its graceful timeout ran out. An open event stream never closes by itself, so without this each shutdown
would wait the full timeout and then cut the streams. Draining starts as soon as the shutdown does:
streams end (their clients reconnect, to another instance, with Last-Event-ID), readiness answers 503
so load balancers stop sending new work, and in-flight requests finish.

How the start is seen, in a hypercorn worker process (every worker, `--workers 1` included):
- the master sets a shared shutdown event on SIGTERM/SIGINT; the worker function receives it as an
  argument, and we watch it;
- a SIGTERM sent to the worker itself (a whole process group or cgroup signalled, as systemd and
  `kill -- -PGID` do) would kill the worker at once, dropping its requests: it starts draining instead,
  and the master's event then ends the worker gracefully. Signalled alone (the master heard nothing), the
  worker waits a few seconds for it and then ends as the signal meant.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from collections.abc import AsyncGenerator, Callable
from typing import Any

from quart import Quart

from service import log

logger = log.get(__name__)

_POLL_SECONDS = 0.2
# How long a worker signalled on its own waits for the master's shutdown before it ends regardless.
_ALONE_SECONDS = 5.0


class Drain:
    """`app.extensions["drain"]`: whether the server is shutting down, and what to do when it starts."""

    def __init__(self) -> None:
        self._started = False
        self._actions: list[Callable[[], None]] = []

    @property
    def started(self) -> bool:
        return self._started

    def on_start(self, action: Callable[[], None]) -> None:
        self._actions.append(action)

    def begin(self, reason: str) -> None:
        """Start draining (once): run every action registered."""
        if self._started:
            return
        self._started = True
        logger.info("draining", reason=reason)
        for action in self._actions:
            action()


def hypercorn_shutdown_event() -> Any | None:
    """The master's shutdown event when this process is a hypercorn worker, else None.

    Hypercorn passes it to its worker function as a keyword argument of the worker Process (spawned, so the
    child holds the same Process object): there is no public way to read it.
    """
    kwargs = getattr(multiprocessing.current_process(), "_kwargs", None)
    event = kwargs.get("shutdown_event") if isinstance(kwargs, dict) else None
    return event if callable(getattr(event, "is_set", None)) else None


def read_without_lock(event: Any) -> None:
    """Make this process read the master's shutdown event without taking the event's lock.

    `multiprocessing.Event.is_set` takes a lock shared by every process (a POSIX semaphore). A worker
    SIGKILLed while holding it (hypercorn polls the event 10 times a second, the drain watcher 5) never
    releases it: the master's `set()` and the surviving workers' polls then block forever, so the
    instance hangs with its requests instead of exiting to be restarted (seen once in CI). Reading the
    flag's count needs no lock, and the master alone ever sets or clears it, so a worker reads it thus.
    """
    flag = event._flag  # the event's flag: a semaphore at 1 while set, 0 while clear
    try:
        flag.get_value()
    except NotImplementedError:  # macOS has no sem_getvalue: keep the stock read there
        return
    event.is_set = lambda: flag.get_value() > 0


def current(app: Quart) -> Drain:
    drain: Drain = app.extensions["drain"]
    return drain


def init_app(app: Quart) -> Drain:
    drain = app.extensions["drain"] = Drain()

    @app.while_serving
    async def _watch() -> AsyncGenerator[None, None]:
        shutdown = hypercorn_shutdown_event()
        watcher: asyncio.Task[None] | None = None
        if shutdown is not None:
            read_without_lock(shutdown)  # before hypercorn's own poll starts (after the lifespan's start)
            watcher = asyncio.create_task(_watch_master(drain, shutdown), name="drain-watch")
            _take_sigterm(drain, shutdown)
        yield
        # Lifespan shutdown: whatever did not drain yet (no hypercorn master, as under the test client).
        drain.begin("lifespan_shutdown")
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    return drain


async def _watch_master(drain: Drain, shutdown: Any) -> None:
    while not shutdown.is_set():  # noqa: ASYNC110 - a multiprocessing event cannot be awaited
        await asyncio.sleep(_POLL_SECONDS)
    drain.begin("server_shutdown")


def _take_sigterm(drain: Drain, shutdown: Any) -> None:
    loop = asyncio.get_running_loop()
    ending: list[asyncio.Task[None]] = []

    def on_sigterm() -> None:
        drain.begin("sigterm")
        if not ending:
            ending.append(loop.create_task(_end_if_alone(shutdown), name="drain-alone"))

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)


async def _end_if_alone(shutdown: Any) -> None:
    for _ in range(int(_ALONE_SECONDS / _POLL_SECONDS)):
        if shutdown.is_set():
            return  # the master is shutting every worker down, gracefully
        await asyncio.sleep(_POLL_SECONDS)
    logger.warning("sigterm_without_server_shutdown")
    asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
