"""Several real hypercorn processes on one PostgreSQL and one Redis: events cross instances, resume on
another instance with Last-Event-ID, and survive a Redis outage in the outbox.

These need PostgreSQL and Redis (TEST_DATABASE_URL, TEST_REDIS_URL); the embedded run skips them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.events.broker import event_id_key

from ..accounts import PASSWORD
from ..conftest import ROOT, empty_database
from ..servers import create_admin, free_port, server_environment, stop_group
from ..sse import Frame, parse_frame

SECRET_KEY = "e2e-secret-key-shared-by-every-instance-0123456789"
# Generous: a loaded machine must not turn a slow answer into a failure (no timing is asserted).
WAIT = 20.0


@pytest.fixture
def backends(database_url: str) -> tuple[str, str]:
    """(DATABASE_URL, REDIS_URL) of the real PostgreSQL and Redis, or skip in the embedded run."""
    redis_url = os.environ.get("TEST_REDIS_URL")
    if not database_url.startswith("postgresql") or not redis_url:
        pytest.skip("several instances need PostgreSQL + Redis: the PostgreSQL + Redis run covers them")
    return database_url, redis_url


# -- processes ---------------------------------------------------------------------------------------


def _environment(database_url: str, redis_url: str) -> dict[str, str]:
    return server_environment(database_url, redis_url, SECRET_KEY, APP_ENV="development")


@dataclass
class Instance:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _start(tmp_path: Path, name: str, env: dict[str, str]) -> Instance:
    port = free_port()
    log = tmp_path / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hypercorn",
                "--config",
                "hypercorn.toml",
                "--workers",
                "1",
                "--bind",
                f"127.0.0.1:{port}",
                "service:create_app()",
            ],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            # Its own process group: hypercorn's worker is a child, and it must end with the parent.
            start_new_session=True,
        )
    return Instance(name, process, f"http://127.0.0.1:{port}", log)


def _wait_ready(instance: Instance) -> None:
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        if instance.process.poll() is not None:
            break
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{instance.url}/readiness", timeout=3).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"instance {instance.name} did not become ready:\n{instance.output()[-4000:]}")


@contextlib.contextmanager
def _instances(tmp_path: Path, env: dict[str, str], *names: str) -> Iterator[list[Instance]]:
    started: list[Instance] = []
    try:
        for name in names:
            started.append(_start(tmp_path, name, env))
        for instance in started:
            _wait_ready(instance)
        yield started
    finally:
        for instance in started:
            stop_group(instance.process)


class ThrowawayRedis:
    """A redis-server of our own on a free loopback port, with nothing saved: killing it loses the log."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.dir = tmp_path / "redis"
        self.dir.mkdir()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen(
            [
                binary,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    if client.ping():
                        return
                time.sleep(0.1)
        finally:
            client.close()
        pytest.fail("the throwaway redis-server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None


# -- data --------------------------------------------------------------------------------------------


async def _login(http: httpx.AsyncClient, instance: Instance) -> dict[str, str]:
    response = await http.post(f"{instance.url}/auth/login", json={"username": "root", "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['data']['access_token']}"}


async def _create_agent(
    http: httpx.AsyncClient, instance: Instance, headers: dict[str, str], name: str
) -> dict[str, Any]:
    response = await http.post(f"{instance.url}/api/v1/agents", json={"name": name}, headers=headers)
    assert response.status_code == 201, response.text
    agent: dict[str, Any] = response.json()["data"]
    return agent


@dataclass
class Outbox:
    """Reads outbox_events straight from PostgreSQL, through its own async engine."""

    database_url: str
    engine: AsyncEngine = field(init=False)

    async def __aenter__(self) -> Outbox:
        self.engine = create_async_engine(self.database_url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.dispose()

    async def last_id(self) -> int:
        async with self.engine.connect() as connection:
            found = await connection.scalar(text("SELECT coalesce(max(id), 0) FROM outbox_events"))
            return int(found)

    async def rows_after(self, after: int) -> list[dict[str, Any]]:
        """Client-visible rows (internal `_` types left out) above `after`, in row order."""
        async with self.engine.connect() as connection:
            result = await connection.execute(
                text(
                    "SELECT id, type, event_ms || '-' || event_seq AS event_id, published_at "
                    "FROM outbox_events WHERE id > :after AND type NOT LIKE '\\_%' ORDER BY id"
                ),
                {"after": after},
            )
            return [dict(row._mapping) for row in result]

    async def wait_published(self, after: int, timeout: float = WAIT) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = await self.rows_after(after)
            if all(row["published_at"] is not None for row in rows) or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.2)

    async def empty(self) -> None:
        await empty_database(self.engine)


def _flush(redis_url: str) -> None:
    client = Redis.from_url(redis_url, socket_timeout=2)
    try:
        client.flushdb()
    finally:
        client.close()


# -- SSE over a real socket --------------------------------------------------------------------------


@dataclass
class Watcher:
    """One open /api/v1/events stream, read by a background task into a queue of frames."""

    status: int = 0
    frames: asyncio.Queue[Frame | None] = field(default_factory=asyncio.Queue)
    seen: list[Frame] = field(default_factory=list)

    async def next(self, timeout: float = WAIT) -> Frame:
        frame = await asyncio.wait_for(self.frames.get(), timeout)
        if frame is None:
            raise AssertionError(f"the stream ended; frames so far: {self.seen}")
        self.seen.append(frame)
        return frame

    async def next_event(self, timeout: float = WAIT) -> Frame:
        """The next frame with an `event:` (pings and the retry hint skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.next(max(0.1, deadline - time.monotonic()))
            if frame.event is not None:
                return frame

    async def events(self, count: int, timeout: float = WAIT) -> list[Frame]:
        return [await self.next_event(timeout) for _ in range(count)]


@contextlib.asynccontextmanager
async def watching(
    instance: Instance, headers: dict[str, str], last_event_id: str | None = None
) -> AsyncIterator[Watcher]:
    """An open stream whose subscription is registered (its `retry:` frame came), closed on exit."""
    request_headers = dict(headers)
    if last_event_id is not None:
        request_headers["Last-Event-ID"] = last_event_id
    watcher = Watcher()
    opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def read() -> None:
        try:
            timeout = httpx.Timeout(10.0, read=None)
            async with (
                httpx.AsyncClient(timeout=timeout) as http,
                http.stream("GET", f"{instance.url}/api/v1/events", headers=request_headers) as response,
            ):
                watcher.status = response.status_code
                if not opened.done():
                    opened.set_result(None)
                if response.status_code != 200:
                    return
                lines: list[str] = []
                async for line in response.aiter_lines():
                    if line == "":
                        if lines:
                            watcher.frames.put_nowait(parse_frame(lines))
                        lines = []
                    else:
                        lines.append(line)
        except Exception as error:
            if not opened.done():
                opened.set_exception(error)
        finally:
            watcher.frames.put_nowait(None)

    task = asyncio.create_task(read())
    try:
        await asyncio.wait_for(asyncio.shield(opened), WAIT)
        assert watcher.status == 200, watcher.status
        first = await watcher.next()
        assert first.retry == 3000, first
        yield watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


# -- tests -------------------------------------------------------------------------------------------


async def test_events_cross_instances_and_resume_on_another(
    tmp_path: Path, backends: tuple[str, str]
) -> None:
    """A stream on A hears what B changed; reconnecting to B with Last-Event-ID gets exactly the rest."""
    database_url, redis_url = backends
    env = _environment(database_url, redis_url)
    _flush(redis_url)
    async with Outbox(database_url) as outbox, httpx.AsyncClient(timeout=WAIT) as http:
        try:
            with _instances(tmp_path, env, "a", "b") as (a, b):
                create_admin(env)
                headers = await _login(http, b)
                before = await outbox.last_id()
                received: list[Frame] = []

                async with watching(a, headers) as on_a:
                    first = [await _create_agent(http, b, headers, f"first-{n}") for n in range(3)]
                    heard = await on_a.events(3)
                    assert [f.event for f in heard] == ["agent.registered"] * 3
                    assert [f.data["data"]["agent"]["name"] for f in heard] == [x["name"] for x in first]
                    received += heard
                last_seen = received[-1].id
                assert last_seen is not None

                # Missed while away: relayed (published) before the client comes back.
                missed = [await _create_agent(http, b, headers, f"missed-{n}") for n in range(3)]
                rows = await outbox.wait_published(before)
                assert all(row["published_at"] is not None for row in rows), rows

                async with watching(b, headers, last_event_id=last_seen) as on_b:
                    replayed = await on_b.events(3)
                    assert [f.data["data"]["agent"]["name"] for f in replayed] == [x["name"] for x in missed]
                    received += replayed
                    live = await _create_agent(http, a, headers, "live-on-a")
                    (heard_live,) = await on_b.events(1)
                    assert heard_live.data["data"]["agent"]["name"] == live["name"]
                    # Anything repeated would come before the next live event.
                    after = await _create_agent(http, b, headers, "live-on-b")
                    (heard_after,) = await on_b.events(1)
                    assert heard_after.data["data"]["agent"]["name"] == after["name"]
                    received += [heard_live, heard_after]

                ids = [frame.id for frame in received]
                assert all(i is not None for i in ids)
                assert len(set(ids)) == len(ids), ids  # nothing twice
                assert [event_id_key(i) for i in ids] == sorted(event_id_key(i) for i in ids)  # type: ignore[arg-type]
                for frame in received:
                    assert frame.data["id"] == frame.id
                    assert {"id", "type", "time", "data", "request_id"} <= frame.data.keys()

                rows = await outbox.wait_published(before)
                assert [row["event_id"] for row in rows] == ids, rows  # nothing missing, same order
        finally:
            await outbox.empty()
            _flush(redis_url)


async def test_the_outbox_holds_events_while_redis_is_down(tmp_path: Path, backends: tuple[str, str]) -> None:
    """Redis killed: the API answers and rows wait unpublished; Redis back (empty): they are published."""
    database_url, _ = backends
    redis = ThrowawayRedis(tmp_path)
    redis.start()
    env = _environment(database_url, redis.url)
    observed: dict[str, Any] = {}
    # What Redis being down broke that it should not have: asserted last, after everything is observed.
    failures: list[str] = []
    async with Outbox(database_url) as outbox, httpx.AsyncClient(timeout=WAIT) as http:
        try:
            with _instances(tmp_path, env, "solo") as (solo,):
                create_admin(env)
                headers = await _login(http, solo)
                minted = await http.post(
                    f"{solo.url}/api/v1/agents/registration-tokens", json={"name": "fleet"}, headers=headers
                )
                assert minted.status_code == 201, minted.text
                registration = minted.json()["data"]["token"]
                before = await outbox.last_id()

                async with watching(solo, headers) as watcher:
                    veteran = await _create_agent(http, solo, headers, "before-outage")
                    (seen,) = await watcher.events(1)
                    old_id = seen.id
                    assert old_id is not None

                    redis.kill()
                    made: list[str] = []
                    calls: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]] = [
                        ("POST", "/api/v1/agents", {"name": "during-outage-operator"}, headers),
                        ("GET", "/api/v1/agents", None, headers),
                        (
                            "POST",
                            f"/api/v1/agents/{veteran['id']}/heartbeat",
                            {"status": "online"},
                            {"Authorization": f"Bearer {veteran['agent_token']}"},
                        ),
                    ] + [
                        (
                            "POST",
                            "/api/v1/agents/register",
                            {"token": registration, "name": f"during-outage-{n}"},
                            {},
                        )
                        for n in range(3)
                    ]
                    answers = []
                    for method, path, body, call_headers in calls:
                        response = await http.request(
                            method, f"{solo.url}{path}", json=body, headers=call_headers
                        )
                        answers.append(f"{method} {path} -> {response.status_code}")
                        if not response.is_success:
                            failures.append(f"{method} {path} -> {response.status_code} {response.text}")
                        elif method == "POST" and body is not None and "name" in body:
                            made.append(body["name"])
                    observed["answers_during_outage"] = answers
                    assert made, f"no change could be made while Redis was down: {failures}"
                    pending = [row for row in await outbox.rows_after(before) if row["published_at"] is None]
                    observed["unpublished_during_outage"] = len(pending)
                    assert len(pending) >= len(made), pending

                    redis.start()  # same port, empty: a fresh log
                    back = time.monotonic()
                    rows = await outbox.wait_published(before, timeout=15)
                    observed["seconds_until_published"] = round(time.monotonic() - back, 1)  # reported only
                    if not all(row["published_at"] is not None for row in rows):
                        failures.append(f"not all rows published 15 s after Redis came back: {rows}")
                        # Wake the relay with one more change, to see whether it was only backing off.
                        await _create_agent(http, solo, headers, "wake-the-relay")
                        made.append("wake-the-relay")
                        rows = await outbox.wait_published(before)
                    assert all(row["published_at"] is not None for row in rows), rows
                    assert all(row["event_id"] is not None for row in rows), rows
                    new_ids = [row["event_id"] for row in rows[1:]]
                    observed["ids"] = {"before": old_id, "after_restart": new_ids}
                    assert all(event_id_key(i) > event_id_key(old_id) for i in new_ids), new_ids
                    # The stream left open: the process's listener reads the new log from its old cursor.
                    carried = await watcher.events(len(new_ids))
                    observed["open_stream_got"] = [(f.id, f.data["data"]["agent"]["name"]) for f in carried]
                    assert [f.id for f in carried] == new_ids

                # Reconnecting with the id from the lost log: record what comes, up to a live event.
                async with watching(solo, headers, last_event_id=old_id) as resumed:
                    await _create_agent(http, solo, headers, "after-outage-1")
                    got = [await resumed.next_event()]
                    while (
                        got[-1].event != "reset" and got[-1].data["data"]["agent"]["name"] != "after-outage-1"
                    ):
                        got.append(await resumed.next_event())
                    observed["resume_with_old_id"] = [(f.event, f.id) for f in got]
                    # The new log does not hold old_id, but the outbox does: exactly what came after it.
                    assert [f.id for f in got[:-1]] == new_ids, observed["resume_with_old_id"]
                # A fresh stream hears live events again.
                async with watching(solo, headers) as fresh:
                    await _create_agent(http, solo, headers, "after-outage-2")
                    (live,) = await fresh.events(1)
                    assert live.data["data"]["agent"]["name"] == "after-outage-2"
                    assert event_id_key(live.id or "") > event_id_key(old_id)
        finally:
            print("OBSERVED", json.dumps(observed, default=str, indent=1))
            redis.kill()
            await outbox.empty()
    assert not failures, "\n".join(failures)
