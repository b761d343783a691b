"""Draining: once shutdown begins, streams end with a retry hint, none opens, and readiness says so.

The signals themselves (SIGTERM to the master, or to the whole process group) are tested against a real
hypercorn in tests/test_server.py."""

from __future__ import annotations

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
