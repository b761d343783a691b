"""Draining: once shutdown begins, streams end with a retry hint, none opens, and readiness says so.

The signals themselves (SIGTERM to the master, or to the whole process group) are tested against a real
hypercorn in tests/test_server.py."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from typing import Any

from quart.testing import QuartClient

from service import draining
from service.application import Switchboard

from .accounts import signed_in
from .sse import watching


async def test_draining_ends_streams_and_refuses_new_ones(client: QuartClient, app: Switchboard) -> None:
    viewer = await signed_in(client, "vera", "viewer", app)
    async with watching(client, viewer) as stream:
        draining.current(app).begin("test")
        parting = await stream.next()
        assert parting.retry is not None
        assert 500 <= parting.retry <= 3000
        assert await stream.ended()

    refused = await client.get("/api/v1/events", headers=viewer)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"]
    ready = await client.get("/readiness")
    assert ready.status_code == 503
    assert (await ready.get_json())["status"] == "draining"


def test_actions_run_once_and_outside_hypercorn_there_is_no_master_to_watch() -> None:
    drain = draining.Drain()
    calls: list[str] = []
    drain.on_start(lambda: calls.append("end streams"))
    assert not drain.started
    drain.begin("first")
    drain.begin("second")
    assert drain.started
    assert calls == ["end streams"]
    assert draining.hypercorn_shutdown_event() is None


def _hold_the_lock_and_wait(event: Any, holding: Any) -> None:  # in the child process
    """A worker stopped inside `Event.is_set`, between taking the event's lock and giving it back."""
    event._cond.acquire()
    holding.set()
    time.sleep(60)


def _answers_within(call: Any, seconds: float) -> list[Any]:
    answers: list[Any] = []
    reader = threading.Thread(target=lambda: answers.append(call()), daemon=True)
    reader.start()
    reader.join(seconds)
    return answers


def test_a_worker_killed_holding_the_shutdown_events_lock_stops_no_one_reading_it_without() -> None:
    context = multiprocessing.get_context("fork")  # the child needs nothing imported; spawn is slower
    shutdown, ready = context.Event(), context.Event()
    killed = context.Process(target=_hold_the_lock_and_wait, args=(shutdown, ready))
    killed.start()
    assert ready.wait(10)
    os.kill(killed.pid or 0, signal.SIGKILL)
    killed.join(10)

    # The hazard: the lock stays taken by the dead process, so the stock `is_set` would wait forever.
    assert not shutdown._cond.acquire(timeout=0.2)

    draining.read_without_lock(shutdown)
    assert _answers_within(shutdown.is_set, 5) == [False]
    # Set as the master does (its lock is free here: only workers were reading under it).
    fresh = context.Event()
    draining.read_without_lock(fresh)
    assert fresh.is_set() is False
    fresh.set()
    assert fresh.is_set() is True


class _FlagWithoutValue:
    """A platform's semaphore that cannot tell its count (macOS has no sem_getvalue)."""

    def get_value(self) -> int:
        raise NotImplementedError


def test_where_the_flag_cannot_be_read_the_stock_read_stays() -> None:
    shutdown = multiprocessing.get_context("spawn").Event()
    stock = shutdown.is_set
    shutdown._flag = _FlagWithoutValue()  # type: ignore[attr-defined]
    draining.read_without_lock(shutdown)
    assert shutdown.is_set == stock
