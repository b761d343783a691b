"""A request's CPU against how many are in flight: the workers' CPU per request for the same requests sent
over 1, 4 and 16 connections (wrk, 10 s each after a warm-up), for `/health` (no I/O), an agent read (two
Redis round trips) and an agent list (PostgreSQL and Redis).

Why it exists: on this machine a request that waits on Redis or PostgreSQL costs the workers more CPU
the fewer requests each worker has in flight, while `/health` costs the same at any concurrency. What
the service spends per request under a light load is not what a saturating benchmark shows.
"""

from __future__ import annotations

import time

import httpx

from . import fleet, servers, wrk
from .plan import Plan
from .report import Report, ms

CONNECTIONS = (1, 4, 16)
SECONDS = 10
WARM_UP_SECONDS = 3
AGENTS = 1000


def _shapes(ids: list[str], bearer: str) -> dict[str, list[wrk.Request]]:
    return {
        "GET /health": [wrk.Request("GET", "/health")],
        "GET /api/v1/agents/{id}": [wrk.Request("GET", f"/api/v1/agents/{i}", bearer) for i in ids],
        "GET /api/v1/agents?per_page=20": [wrk.Request("GET", "/api/v1/agents?per_page=20", bearer)],
    }


async def run(plan: Plan) -> Report:
    seeded = await fleet.seed_agents(plan.backends, fleet.FLEET, AGENTS, ["bench"])
    await servers.vacuum(plan.backends)
    ids = [agent.id for agent in seeded[:200]]
    report = Report("concurrency: workers' CPU per request by connections in flight", plan.compared)
    rows: list[list[str]] = []
    for round_ in range(1, plan.rounds + 1):
        for app in plan.services():
            with servers.running(app, plan.backends) as server:
                async with httpx.AsyncClient(base_url=server.url) as client:
                    bearer = await fleet.login(client)
                for shape, requests in _shapes(ids, bearer).items():
                    await wrk.run(server.url, requests, connections=16, seconds=WARM_UP_SECONDS)
                    for connections in CONNECTIONS:
                        cpu, wall = server.cpu_seconds(), time.monotonic()
                        result = await wrk.run(server.url, requests, connections=connections, seconds=SECONDS)
                        cpu, wall = server.cpu_seconds() - cpu, time.monotonic() - wall
                        per_request = cpu / max(result.requests, 1) * 1000
                        rows.append(
                            [
                                str(round_),
                                app.label,
                                f"`{shape}`",
                                str(connections),
                                f"{result.rate:.0f}",
                                ms(result.p50_ms),
                                f"{cpu / wall:.2f}",
                                f"{per_request:.2f}",
                            ]
                        )
                        print(
                            f"  round {round_} {app.label} {shape} c={connections}: {result.rate:.0f} req/s, "
                            f"{per_request:.2f} ms CPU a request",
                            flush=True,
                        )
    headers = ["round", "server", "request", "connections", "req/s", "p50 ms", "workers' cores"]
    report.table([*headers, "ms of CPU a request"], rows)
    report.note(
        "Workers' CPU (user + system, both workers, from /proc) over each run, divided by the requests wrk "
        "completed; the client shares the machine's two cores."
    )
    return report
