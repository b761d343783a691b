"""Where a request's time goes, endpoint by endpoint: the workers' CPU per request (user + system, from
/proc) for each endpoint of the load mix, requests sent 8 at a time, including what each sets off in the
background (the outbox relay, notification delivery). Cheap to run, so each change can be weighed
against the mix it serves: requests/s on a saturated machine is about its cores over these numbers.
Beside the CPU, the database statements (the service's db_statements_total) and Redis commands (the
server's commandstats) per request: counts, which this noisy machine does not blur.

The client is httpx on the same machine: requests/s would say little, the CPU figures are the
workers' alone, less what they spend idle (background loops) over the same time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped]
import httpx
from redis.asyncio import Redis

from . import fleet, servers
from .plan import Plan
from .report import Report
from .servers import Backends, Server

PREFIX = "bench-cost-"
CAPABILITY = "bench-cost"  # work for this fleet alone
AGENTS = 50  # more than 8 creators x 5 candidates each locks in older versions
REQUESTS = 400
WARM_UP = 40
CONCURRENCY = 8
# What a request sets off after answering (relay, notifications) is counted once it has run.
SETTLE_SECONDS = 0.5
IDLE_SECONDS = 5.0  # one sweep interval

Step = Callable[[int], Awaitable[httpx.Response]]
Count = Callable[[], int]  # how many requests a step can make (a start needs placed work)


async def _reset(backends: Backends) -> None:
    """Cancel the open work earlier rounds left on the fleet, keeping its counters equal to it."""
    connection = await asyncpg.connect(backends.asyncpg_dsn)
    try:
        async with connection.transaction():
            await connection.execute(
                "UPDATE assignments SET status = 'cancelled', finished_at = now() "
                "WHERE status IN ('pending', 'assigned', 'accepted', 'in_progress') AND title = 'cost'"
            )
            await connection.execute(
                "UPDATE agents SET open_assignments = 0 WHERE name LIKE $1", PREFIX + "%"
            )
    finally:
        await connection.close()


def _steps(
    http: httpx.AsyncClient, operator: dict[str, str], agents: list[fleet.SeededAgent]
) -> list[tuple[str, Step, Count]]:
    placed: list[str] = []  # created and given to an agent: to start
    started: list[str] = []  # to complete

    def beater(index: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {agents[index % AGENTS].token}"}

    async def create(_: int) -> httpx.Response:
        keyed = {**operator, "Idempotency-Key": str(uuid.uuid4())}
        body = {"title": "cost", "required_capabilities": [CAPABILITY]}
        answer = await http.post("/api/v1/assignments", json=body, headers=keyed)
        if answer.json()["data"]["status"] == "assigned":
            placed.append(answer.json()["data"]["id"])
        return answer

    async def start(_: int) -> httpx.Response:
        started.append(placed.pop())
        return await http.post(f"/api/v1/assignments/{started[-1]}/start", headers=operator)

    async def complete(_: int) -> httpx.Response:
        body = {"result": {"ok": True}}
        return await http.post(f"/api/v1/assignments/{started.pop()}/complete", json=body, headers=operator)

    def always() -> int:
        return REQUESTS

    def beat(index: int) -> Awaitable[httpx.Response]:
        path = f"/api/v1/agents/{agents[index % AGENTS].id}/heartbeat"
        return http.post(path, json={"status": "online"}, headers=beater(index))

    return [
        ("GET /health", lambda _: http.get("/health"), always),
        ("POST /agents/{id}/heartbeat, unchanged", beat, always),
        (
            "GET /agents/{id}",
            lambda i: http.get(f"/api/v1/agents/{agents[i % AGENTS].id}", headers=operator),
            always,
        ),
        (
            "GET /agents?per_page=20",
            lambda _: http.get("/api/v1/agents?per_page=20", headers=operator),
            always,
        ),
        ("GET /agents/summary", lambda _: http.get("/api/v1/agents/summary", headers=operator), always),
        (
            "GET /assignments?per_page=20&status=assigned",
            lambda _: http.get("/api/v1/assignments?per_page=20&status=assigned", headers=operator),
            always,
        ),
        ("POST /assignments, keyed, auto-placed", create, always),
        ("POST /assignments/{id}/start", start, lambda: len(placed) - WARM_UP),
        ("POST /assignments/{id}/complete", complete, lambda: len(started) - WARM_UP),
    ]


@dataclass(frozen=True)
class Cost:
    """Per request. statements is None for a service that does not count them (an older checkout)."""

    cpu_ms: float
    statements: float | None
    redis_commands: float


@dataclass(frozen=True)
class _Reading:
    at: float
    cpu: float
    statements: float | None
    redis_commands: float

    def since(self, earlier: _Reading) -> tuple[float, float | None, float]:
        statements = None
        if self.statements is not None and earlier.statements is not None:
            statements = self.statements - earlier.statements
        return self.cpu - earlier.cpu, statements, self.redis_commands - earlier.redis_commands


async def _read(server: Server, http: httpx.AsyncClient, redis: Redis) -> _Reading:
    lines = (await http.get("/metrics")).text.splitlines()
    counted = [float(line.split()[-1]) for line in lines if line.startswith("db_statements_total ")]
    stats = await redis.info("commandstats")
    # Less this reading's own INFO (every reading makes one, so the differences are exact).
    commands = sum(int(value["calls"]) for value in stats.values()) + 1
    return _Reading(time.monotonic(), server.cpu_seconds(), counted[0] if counted else None, commands)


async def _measure(server: Server, http: httpx.AsyncClient, redis: Redis, step: Step, count: int) -> Cost:
    """Worker CPU (ms), database statements and Redis commands per request, less what the workers do
    idle (background loops: the sweeper reads every beating agent each round) over the same time."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(index: int) -> None:
        async with gate:
            answer = await step(index)
            if answer.status_code >= 300:
                raise RuntimeError(f"{answer.status_code}: {answer.text[:300]}")

    for index in range(WARM_UP):
        await one(index)
    idle_start = await _read(server, http, redis)
    await asyncio.sleep(IDLE_SECONDS)
    start = await _read(server, http, redis)
    await asyncio.gather(*(one(index) for index in range(count)))
    await asyncio.sleep(SETTLE_SECONDS)
    end = await _read(server, http, redis)
    share = (end.at - start.at) / (start.at - idle_start.at)  # of the idle window's work, over the run

    def less_idle(spent: float | None, idle: float | None) -> float | None:
        return None if spent is None or idle is None else (spent - idle * share) / count

    cpu, statements, commands = (
        less_idle(spent, idle) for spent, idle in zip(end.since(start), start.since(idle_start), strict=True)
    )
    assert cpu is not None
    assert commands is not None
    return Cost(1000 * cpu, statements, commands)


def _counts(cost: Cost) -> str:
    def shown(value: float) -> str:
        return f"{round(value, 1) + 0.0:.1f}"  # + 0.0: no "-0.0" where the idle share was subtracted

    statements = "n/a" if cost.statements is None else shown(cost.statements)
    return f"{statements} + {shown(cost.redis_commands)}"


async def run(plan: Plan) -> Report:
    agents = await fleet.seed_agents(plan.backends, PREFIX, AGENTS, [CAPABILITY], 1000)
    report = Report("costs: worker CPU per request, by endpoint", plan.compared)
    results: dict[str, dict[str, list[Cost]]] = {}
    labels: list[str] = []
    for _ in range(plan.rounds):
        for app in plan.services():
            await _reset(plan.backends)
            labels = list(dict.fromkeys([*labels, app.label]))
            with servers.running(app, plan.backends) as server:
                async with (
                    httpx.AsyncClient(base_url=server.url, timeout=30) as http,
                    Redis.from_url(plan.backends.redis_url) as redis,
                ):
                    operator = {"Authorization": f"Bearer {await fleet.login(http)}"}
                    steps = _steps(http, operator, agents)
                    for index in range(AGENTS):  # online, so that work is placed on them
                        await steps[1][1](index)
                    for name, step, count in steps:
                        cost = await _measure(server, http, redis, step, count())
                        results.setdefault(name, {}).setdefault(app.label, []).append(cost)
                        print(
                            f"  {app.label:>11}  {name:48} {cost.cpu_ms:6.2f} ms  {_counts(cost)}", flush=True
                        )
    headers = ["endpoint", *(f"{label}: ms of CPU per request (rounds)" for label in labels)]
    rows = [
        [name, *(" / ".join(f"{c.cpu_ms:.2f}" for c in by_label.get(label, [])) for label in labels)]
        for name, by_label in results.items()
    ]
    report.table(headers, rows)
    report.note(
        "Workers' CPU (user + system, both workers, from /proc) over the requests, sent 8 at a time after "
        f"{WARM_UP} warm-up requests, including what they set off in the {SETTLE_SECONDS} s after (outbox "
        "relay, notification delivery), less the idle workers' CPU per second (measured for "
        f"{IDLE_SECONDS:g} s before each endpoint) over the same time. The client runs on the same "
        "machine: only the CPU figures mean anything."
    )
    headers = [
        "endpoint",
        *(f"{label}: statements + Redis commands per request (rounds)" for label in labels),
    ]
    rows = [
        [name, *(" / ".join(_counts(c) for c in by_label.get(label, [])) for label in labels)]
        for name, by_label in results.items()
    ]
    report.table(headers, rows)
    report.note(
        "Database statements (the service's `db_statements_total`; BEGIN and COMMIT not counted) and Redis "
        "commands (the Redis server's commandstats: the commands a Lua script runs count too, so this is "
        "not round trips; the machine's Redis must be otherwise quiet) over the same requests and what "
        "they set off, less the idle rate, per request."
    )
    return report
