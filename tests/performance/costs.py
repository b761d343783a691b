"""Where a request's time goes, endpoint by endpoint: the workers' CPU per request (user + system, from
/proc) for each endpoint of the load mix, requests sent 8 at a time, including what each sets off in the
background (the outbox relay, notification delivery). Cheap to run, so each change can be weighed
against the mix it serves: requests/s on a saturated machine is about its cores over these numbers.

The client is httpx on the same machine: requests/s would say little, the CPU figures are the
workers' alone, less what they spend idle (background loops) over the same time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg  # type: ignore[import-untyped]
import httpx

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


async def _idle_rate(server: Server) -> float:
    """The workers' CPU per second with no request (background loops: the sweeper reads every beating
    agent each round, thousands on the benchmark database), subtracted from each measurement."""
    before, started = server.cpu_seconds(), time.monotonic()
    await asyncio.sleep(IDLE_SECONDS)
    return (server.cpu_seconds() - before) / (time.monotonic() - started)


async def _measure(server: Server, step: Step, count: int) -> float:
    """Milliseconds of worker CPU per request."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(index: int) -> None:
        async with gate:
            answer = await step(index)
            if answer.status_code >= 300:
                raise RuntimeError(f"{answer.status_code}: {answer.text[:300]}")

    for index in range(WARM_UP):
        await one(index)
    idle = await _idle_rate(server)
    before, started = server.cpu_seconds(), time.monotonic()
    await asyncio.gather(*(one(index) for index in range(count)))
    await asyncio.sleep(SETTLE_SECONDS)
    spent = server.cpu_seconds() - before - idle * (time.monotonic() - started)
    return 1000 * spent / count


async def run(plan: Plan) -> Report:
    agents = await fleet.seed_agents(plan.backends, PREFIX, AGENTS, [CAPABILITY], 1000)
    report = Report("costs: worker CPU per request, by endpoint", plan.compared)
    results: dict[str, dict[str, list[float]]] = {}
    labels: list[str] = []
    for _ in range(plan.rounds):
        for app in plan.services():
            await _reset(plan.backends)
            labels = list(dict.fromkeys([*labels, app.label]))
            with servers.running(app, plan.backends) as server:
                async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                    operator = {"Authorization": f"Bearer {await fleet.login(http)}"}
                    steps = _steps(http, operator, agents)
                    for index in range(AGENTS):  # online, so that work is placed on them
                        await steps[1][1](index)
                    for name, step, count in steps:
                        cost = await _measure(server, step, count())
                        results.setdefault(name, {}).setdefault(app.label, []).append(cost)
                        print(f"  {app.label:>11}  {name:48} {cost:6.2f} ms", flush=True)
    headers = ["endpoint", *(f"{label}: ms of CPU per request (rounds)" for label in labels)]
    rows = [
        [name, *(" / ".join(f"{value:.2f}" for value in by_label.get(label, [])) for label in labels)]
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
    return report
