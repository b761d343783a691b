"""A bounded mixed load for the fault tests: reads, keyed writes, heartbeats, the assignment lifecycle and
a few SSE listeners that resume with Last-Event-ID. It records every answer and every event id, and
asserts nothing itself: the tests judge the record."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..accounts import PASSWORD

# A client-side bound on every request: an answer slower than this counts as a hang.
HANG_SECONDS = 10.0


@dataclass(frozen=True)
class Agent:
    id: str
    headers: dict[str, str]


@dataclass
class Fleet:
    """What the load acts as: an operator (the admin) and some online agents."""

    url: str
    operator: dict[str, str]
    agents: list[Agent]


@dataclass
class Answer:
    op: str
    status: int  # 0: no HTTP answer (connection error or client timeout; see `error`)
    seconds: float
    at: float  # monotonic start time
    body: Any
    request_id: str | None
    retry_after: str | None
    error: str | None = None
    key: str | None = None  # the Idempotency-Key of a create


def readiness(response: httpx.Response) -> tuple[int, str | None]:
    """A /readiness answer: its status code and its body's status ("ready", "degraded", "not_ready"…)."""
    try:
        body = response.json()
    except ValueError:
        return response.status_code, None
    return response.status_code, body.get("status") if isinstance(body, dict) else None


async def login(url: str, username: str = "root", password: str = PASSWORD) -> dict[str, str]:
    async with httpx.AsyncClient(timeout=HANG_SECONDS) as http:
        response = await http.post(f"{url}/auth/login", json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['data']['access_token']}"}


async def seed(url: str, agents: int = 6, capacity: int = 4) -> Fleet:
    """Log the admin in and register `agents` agents that beat once (so they are online)."""
    operator = await login(url)
    fleet = Fleet(url, operator, [])
    async with httpx.AsyncClient(timeout=HANG_SECONDS) as http:
        for n in range(agents):
            made = await http.post(
                f"{url}/api/v1/agents",
                json={"name": f"fault-agent-{uuid.uuid4().hex[:8]}-{n}", "max_concurrent": capacity},
                headers=operator,
            )
            assert made.status_code == 201, made.text
            data = made.json()["data"]
            agent = Agent(data["id"], {"Authorization": f"Bearer {data['agent_token']}"})
            beat = await http.post(
                f"{url}/api/v1/agents/{agent.id}/heartbeat", json={"status": "online"}, headers=agent.headers
            )
            assert beat.status_code == 200, beat.text
            fleet.agents.append(agent)
    return fleet


@dataclass
class Listener:
    """One SSE client that reconnects with Last-Event-ID whenever its stream ends or breaks."""

    ids: list[str] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)
    connects: int = 0
    refused: list[int] = field(default_factory=list)
    retries: list[int] = field(default_factory=list)  # every `retry:` hint, the opening ones included

    @property
    def last(self) -> str | None:
        return self.ids[-1] if self.ids else None


class MixedLoad:
    """`concurrency` callers with a short think time, plus `listeners` SSE clients, until `stop()`."""

    def __init__(self, fleet: Fleet, concurrency: int = 30, listeners: int = 3, seed: int = 7) -> None:
        self.fleet = fleet
        self.concurrency = concurrency
        self.answers: list[Answer] = []
        self.listeners = [Listener() for _ in range(listeners)]
        # Acknowledged creates: key -> the assignment as answered.
        self.created: dict[str, dict[str, Any]] = {}
        self.unacknowledged: dict[str, dict[str, Any]] = {}  # key -> body sent, for retries
        self._random = random.Random(seed)
        self._stopping = asyncio.Event()
        self._callers: list[asyncio.Task[None]] = []
        self._background: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None
        # (monotonic time, status, the body's status) of /readiness, polled through the whole run;
        # 0 and None: no answer.
        self.readiness: list[tuple[float, int, str | None]] = []

    # -- running --------------------------------------------------------------------------------------

    async def __aenter__(self) -> MixedLoad:
        limits = httpx.Limits(
            max_connections=self.concurrency + 10, max_keepalive_connections=self.concurrency
        )
        self._http = httpx.AsyncClient(timeout=HANG_SECONDS, limits=limits)
        self._callers = [asyncio.create_task(self._caller()) for _ in range(self.concurrency)]
        self._background = [asyncio.create_task(self._listen(listener)) for listener in self.listeners]
        self._background.append(asyncio.create_task(self._probe()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def quiesce(self) -> None:
        """Stop the callers (each finishes the request it is in); listeners and the probe go on."""
        self._stopping.set()
        await asyncio.wait_for(asyncio.gather(*self._callers, return_exceptions=True), HANG_SECONDS + 5)
        self._callers = []

    async def stop(self) -> None:
        await self.quiesce()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _probe(self) -> None:
        async with httpx.AsyncClient(timeout=HANG_SECONDS) as http:
            while True:
                try:
                    status, state = readiness(await http.get(f"{self.fleet.url}/readiness"))
                except httpx.HTTPError:
                    status, state = 0, None
                self.readiness.append((time.monotonic(), status, state))
                await asyncio.sleep(0.25)

    async def _caller(self) -> None:
        ops = (
            [self._read] * 8
            + [self._create] * 5
            + [self._heartbeat] * 4
            + [self._finish] * 2
            + [self._cancel] * 1
        )
        while not self._stopping.is_set():
            await self._random.choice(ops)()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._random.uniform(0.02, 0.1))

    async def request(
        self,
        op: str,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any = None,
        key: str | None = None,
    ) -> Answer:
        assert self._http is not None
        sent = dict(headers)
        if key is not None:
            sent["Idempotency-Key"] = key
        started = time.monotonic()
        try:
            response = await self._http.request(method, f"{self.fleet.url}{path}", json=body, headers=sent)
        except httpx.HTTPError as error:
            answer = Answer(
                op, 0, time.monotonic() - started, started, None, None, None, type(error).__name__
            )
        else:
            try:
                parsed: Any = response.json()
            except ValueError:
                parsed = response.text[:2000]
            answer = Answer(
                op,
                response.status_code,
                time.monotonic() - started,
                started,
                parsed,
                response.headers.get("x-request-id"),
                response.headers.get("retry-after"),
            )
        answer.key = key
        self.answers.append(answer)
        return answer

    # -- the operations -------------------------------------------------------------------------------

    async def _read(self) -> None:
        path = self._random.choice(
            [
                "/api/v1/agents?per_page=20",
                "/api/v1/assignments?per_page=20",
                f"/api/v1/agents/{self._random.choice(self.fleet.agents).id}",
            ]
        )
        await self.request("read", "GET", path, self.fleet.operator)

    async def _create(self) -> None:
        key = str(uuid.uuid4())
        body = {"title": f"load-{key}", "payload": {"key": key}}
        answer = await self.request("create", "POST", "/api/v1/assignments", self.fleet.operator, body, key)
        if answer.status == 201:
            self.created[key] = answer.body["data"]
        else:
            self.unacknowledged[key] = body

    async def _heartbeat(self) -> None:
        agent = self._random.choice(self.fleet.agents)
        path = f"/api/v1/agents/{agent.id}/heartbeat"
        await self.request("heartbeat", "POST", path, agent.headers, {"status": "online"})

    def _held(self) -> tuple[str, Agent] | None:
        by_id = {agent.id: agent for agent in self.fleet.agents}
        held = [a for a in self.created.values() if a.get("agent_id") in by_id and a["status"] == "assigned"]
        if not held:
            return None
        chosen = self._random.choice(held)
        chosen["status"] = "taken"  # one caller works it
        return chosen["id"], by_id[chosen["agent_id"]]

    async def _finish(self) -> None:
        """The agent's side of the lifecycle: start the work it was given, then complete it."""
        held = self._held()
        if held is None:
            return await self._read()
        assignment_id, agent = held
        started = await self.request(
            "lifecycle", "POST", f"/api/v1/assignments/{assignment_id}/start", agent.headers
        )
        if started.status == 200:
            await self.request(
                "lifecycle",
                "POST",
                f"/api/v1/assignments/{assignment_id}/complete",
                agent.headers,
                {"result": {"ok": True}},
            )
        return None

    async def _cancel(self) -> None:
        held = self._held()
        if held is None:
            return await self._read()
        path = f"/api/v1/assignments/{held[0]}/cancel"
        await self.request("lifecycle", "POST", path, self.fleet.operator, {"reason": "load"})
        return None

    # -- event listeners ------------------------------------------------------------------------------

    async def _listen(self, listener: Listener) -> None:
        timeout = httpx.Timeout(HANG_SECONDS, read=60.0)
        async with httpx.AsyncClient(timeout=timeout) as http:
            while True:
                headers = dict(self.fleet.operator)
                if listener.last is not None:
                    headers["Last-Event-ID"] = listener.last
                listener.connects += 1
                with contextlib.suppress(httpx.HTTPError):
                    async with http.stream(
                        "GET", f"{self.fleet.url}/api/v1/events", headers=headers
                    ) as stream:
                        if stream.status_code != 200:
                            listener.refused.append(stream.status_code)
                        else:
                            await self._read_stream(stream, listener)
                await asyncio.sleep(0.3)  # the client's retry delay, short so tests stay short

    @staticmethod
    async def _read_stream(stream: httpx.Response, listener: Listener) -> None:
        event_id: str | None = None
        event: str | None = None
        data: str | None = None
        async for line in stream.aiter_lines():
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line.startswith("retry:"):
                listener.retries.append(int(line[6:].strip()))
            elif line == "":
                if event == "reset":
                    listener.resets.append(json.loads(data or "{}").get("reason", "?"))
                elif event_id is not None:
                    listener.ids.append(event_id)
                event_id = event = data = None

    # -- reading the record ---------------------------------------------------------------------------

    def between(self, start: float, end: float) -> list[Answer]:
        return [a for a in self.answers if start <= a.at < end]
