"""A closed-model load driver on one asyncio loop: virtual users that act, then think 1-3 s, then act
again, and SSE listeners that hold streams open. Every answer is recorded with its endpoint label."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

TIMEOUT = 30.0
Act = Callable[[httpx.AsyncClient], Awaitable[None]]
PASSWORD = "Sturdy-Lantern-42"


@dataclass(frozen=True)
class Sample:
    label: str
    status: int  # 0: no HTTP answer
    seconds: float
    at: float  # monotonic start


@dataclass
class Crowd:
    """Who the virtual users act as."""

    url: str
    admin: dict[str, str]
    operators: list[dict[str, str]]
    agents: list[tuple[str, dict[str, str]]]


@dataclass
class Recorder:
    samples: list[Sample] = field(default_factory=list)

    def window(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at < end]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def seed(url: str, operators: int, agents: int, admin_password: str = PASSWORD) -> Crowd:
    """Operators (made by the admin, each logged in once: logins are not part of the mix, as clients keep
    their tokens) and agents that beat once; eight at a time."""
    gate = asyncio.Semaphore(8)
    suffix = uuid.uuid4().hex[:6]
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        login = await http.post(f"{url}/auth/login", json={"username": "root", "password": admin_password})
        login.raise_for_status()
        admin = _bearer(login.json()["data"]["access_token"])

        async def operator(n: int) -> dict[str, str]:
            name = f"op{suffix}{n}"
            account = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
            async with gate:
                made = await http.post(
                    f"{url}/api/v1/users", json={**account, "roles": ["operator"]}, headers=admin
                )
                made.raise_for_status()
                token = await http.post(f"{url}/auth/login", json={"username": name, "password": PASSWORD})
                token.raise_for_status()
                return _bearer(token.json()["data"]["access_token"])

        async def agent(n: int) -> tuple[str, dict[str, str]]:
            body = {"name": f"agent-{suffix}-{n}", "capabilities": ["cpu"], "max_concurrent": 3}
            async with gate:
                made = await http.post(f"{url}/api/v1/agents", json=body, headers=admin)
                made.raise_for_status()
                data = made.json()["data"]
                headers = _bearer(data["agent_token"])
                beat = await http.post(
                    f"{url}/api/v1/agents/{data['id']}/heartbeat", json={"status": "online"}, headers=headers
                )
                beat.raise_for_status()
                return data["id"], headers

        made_operators = await asyncio.gather(*(operator(n) for n in range(operators)))
        made_agents = await asyncio.gather(*(agent(n) for n in range(agents)))
    return Crowd(url, admin, list(made_operators), list(made_agents))


class Driver:
    """`users` virtual users (3 operators to 2 agents) and `listeners` SSE clients, until `stop()`."""

    def __init__(self, crowd: Crowd, users: int, listeners: int, ramp_seconds: float, seed: int = 1) -> None:
        self.crowd = crowd
        self.users = users
        self.listeners = listeners
        self.ramp_seconds = ramp_seconds
        self.recorder = Recorder()
        self.events_received = 0
        self.streams_open = 0
        self._random = random.Random(seed)
        self._stopping = asyncio.Event()
        self._streams_stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stream_tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for n in range(self.users):
            delay = self.ramp_seconds * n / max(1, self.users)
            user = self._operator(n) if n % 5 < 3 else self._agent(n)
            self._tasks.append(asyncio.create_task(self._live(delay, user)))
        for n in range(self.listeners):
            delay = self.ramp_seconds * n / max(1, self.listeners)
            self._stream_tasks.append(asyncio.create_task(self._listen(delay, n)))

    async def stop_users(self) -> None:
        self._stopping.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop_streams(self) -> None:
        self._streams_stopping.set()
        for task in self._stream_tasks:
            task.cancel()
        await asyncio.gather(*self._stream_tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.stop_users()
        await self.stop_streams()

    # -- virtual users --------------------------------------------------------------------------------

    async def _live(self, delay: float, act: Act) -> None:
        # A client (one connection) per user, as real clients are: one shared pool of hundreds of
        # connections costs httpx's pool more CPU per request than the service spends answering it.
        if await self._wait(delay):
            return
        async with httpx.AsyncClient(timeout=TIMEOUT, limits=httpx.Limits(max_connections=1)) as http:
            while True:
                await act(http)
                if await self._wait(self._random.uniform(1.0, 3.0)):
                    return

    async def _wait(self, seconds: float) -> bool:
        """Think for `seconds`; True when the run is ending."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def call(
        self,
        http: httpx.AsyncClient,
        label: str,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any = None,
    ) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = await http.request(method, f"{self.crowd.url}{path}", json=body, headers=headers)
        except httpx.HTTPError:
            self.recorder.samples.append(Sample(label, 0, time.monotonic() - started, started))
            return None
        self.recorder.samples.append(Sample(label, response.status_code, time.monotonic() - started, started))
        return response

    def _operator(self, n: int) -> Act:
        headers = self.crowd.operators[n % len(self.crowd.operators)]
        mine: list[str] = []

        async def act(http: httpx.AsyncClient) -> None:
            roll = self._random.random()
            agent_id = self._random.choice(self.crowd.agents)[0]
            if roll < 0.30:
                await self.call(http, "GET /agents", "GET", "/api/v1/agents?per_page=20", headers)
            elif roll < 0.45:
                status = self._random.choice(["pending", "assigned", "in_progress", "completed"])
                await self.call(
                    http,
                    "GET /assignments",
                    "GET",
                    f"/api/v1/assignments?per_page=20&status={status}",
                    headers,
                )
            elif roll < 0.55:
                await self.call(http, "GET /agents/summary", "GET", "/api/v1/agents/summary", headers)
            elif roll < 0.65:
                await self.call(http, "GET /agents/{id}", "GET", f"/api/v1/agents/{agent_id}", headers)
            elif roll < 0.90:
                keyed = {**headers, "Idempotency-Key": str(uuid.uuid4())}
                body = {
                    "title": "load",
                    "required_capabilities": ["cpu"],
                    "priority": self._random.randint(0, 5),
                }
                made = await self.call(http, "POST /assignments", "POST", "/api/v1/assignments", keyed, body)
                if made is not None and made.status_code == 201:
                    mine.append(made.json()["data"]["id"])
                    del mine[:-20]
            elif mine:
                assignment = mine.pop(self._random.randrange(len(mine)))
                await self.call(
                    http,
                    "POST /assignments/{id}/cancel",
                    "POST",
                    f"/api/v1/assignments/{assignment}/cancel",
                    headers,
                    {"reason": "load test"},
                )
            else:
                await self.call(http, "GET /agents", "GET", "/api/v1/agents?per_page=20", headers)

        return act

    def _agent(self, n: int) -> Act:
        """An agent beats; the answer lists its open work, which it starts and completes now and then.

        Agent users are those with n % 5 in (3, 4), each driving seeded agent n % len(agents): with 500
        users and 200 seeded agents that is 80 agents, two or three users each. The other 120 fall
        silent once the run starts and the sweeper marks them offline mid-run, a rack lost at once; kept
        so, since that round is what showed the sweeper holding live agents' rows too long
        (docs/reliability.md).
        """
        agent_id, headers = self.crowd.agents[n % len(self.crowd.agents)]

        async def act(http: httpx.AsyncClient) -> None:
            beat = await self.call(
                http,
                "POST /agents/{id}/heartbeat",
                "POST",
                f"/api/v1/agents/{agent_id}/heartbeat",
                headers,
                {"status": "online", "load": round(self._random.random(), 2)},
            )
            if beat is None or beat.status_code != 200 or self._random.random() < 0.5:
                return
            held = [
                a for a in beat.json()["data"]["assignments"] if a["status"] in ("assigned", "in_progress")
            ]
            if not held:
                return
            work = held[0]
            if work["status"] == "assigned":
                path = f"/api/v1/assignments/{work['id']}/start"
                await self.call(http, "POST /assignments/{id}/start", "POST", path, headers)
            else:
                path = f"/api/v1/assignments/{work['id']}/complete"
                body = {"result": {"ok": True}}
                await self.call(http, "POST /assignments/{id}/complete", "POST", path, headers, body)

        return act

    # -- SSE listeners --------------------------------------------------------------------------------

    async def _listen(self, delay: float, n: int) -> None:
        await asyncio.sleep(delay)
        headers = dict(self.crowd.operators[n % len(self.crowd.operators)])
        timeout = httpx.Timeout(TIMEOUT, read=120.0)
        async with httpx.AsyncClient(timeout=timeout) as http:
            while not self._streams_stopping.is_set():
                started = time.monotonic()
                try:
                    async with http.stream(
                        "GET", f"{self.crowd.url}/api/v1/events", headers=headers
                    ) as stream:
                        self.recorder.samples.append(
                            Sample(
                                "GET /events (open)", stream.status_code, time.monotonic() - started, started
                            )
                        )
                        if stream.status_code == 200:
                            self.streams_open += 1
                            try:
                                async for line in stream.aiter_lines():
                                    if line.startswith("id:"):
                                        self.events_received += 1
                                        headers["Last-Event-ID"] = line[3:].strip()
                            finally:
                                self.streams_open -= 1
                except httpx.HTTPError:
                    self.recorder.samples.append(Sample("GET /events (open)", 0, 0.0, started))
                await asyncio.sleep(1.0)


@dataclass(frozen=True)
class Stats:
    count: int
    p50: float
    p95: float
    p99: float
    under_200ms: float
    server_errors: int
    statuses: dict[int, int]


def stats(samples: list[Sample]) -> Stats:
    seconds = sorted(s.seconds for s in samples if s.status)
    if len(seconds) < 2:
        return Stats(len(samples), 0.0, 0.0, 0.0, 0.0, 0, dict(Counter(s.status for s in samples)))
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return Stats(
        count=len(samples),
        p50=cuts[49],
        p95=cuts[94],
        p99=cuts[98],
        under_200ms=sum(1 for s in seconds if s < 0.2) / len(seconds),
        server_errors=sum(1 for s in samples if s.status >= 500 or s.status == 0),
        statuses=dict(sorted(Counter(s.status for s in samples).items())),
    )


def table(samples: list[Sample]) -> str:
    """A Markdown table: every endpoint, then all of them together."""
    by_label: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_label[sample.label].append(sample)
    lines = [
        "| endpoint | requests | p50 ms | p95 ms | p99 ms | < 200 ms | 5xx / no answer | statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = [*sorted(by_label.items(), key=lambda item: -len(item[1])), ("**all**", samples)]
    for label, group in rows:
        s = stats(group)
        lines.append(
            f"| {label} | {s.count} | {s.p50 * 1000:.0f} | {s.p95 * 1000:.0f} | {s.p99 * 1000:.0f} "
            f"| {s.under_200ms:.1%} | {s.server_errors} | {s.statuses} |"
        )
    return "\n".join(lines)
