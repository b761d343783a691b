"""Benchmark 1, the read path: GET /api/v1/agents/{id} over 1000 agents and GET /api/v1/agents?per_page=20,
authenticated, every middleware on, at 64 connections; beside it the bare-Quart ceiling (ceiling.py),
alternated round by round."""

from __future__ import annotations

import httpx

from . import fleet, servers, wrk
from .percentiles import median
from .plan import Plan
from .report import Report, ms

CONNECTIONS = 64
SECONDS = 10
WARM_UP_SECONDS = 3
SHAPES = ("GET /api/v1/agents/{id}", "GET /api/v1/agents?per_page=20")


def _requests(ids: list[str], bearer: str | None) -> dict[str, list[wrk.Request]]:
    return {
        SHAPES[0]: [wrk.Request("GET", f"/api/v1/agents/{agent_id}", bearer) for agent_id in ids],
        SHAPES[1]: [wrk.Request("GET", "/api/v1/agents?per_page=20", bearer)],
    }


async def run(plan: Plan) -> Report:
    seeded = await fleet.seed_agents(plan.backends, fleet.FLEET, 10_000, ["bench"])
    ids = [agent.id for agent in seeded[:1000]]
    targets = [*plan.services(), servers.CEILING]
    results: dict[tuple[str, str], list[wrk.Result]] = {}
    report = Report("read: agent reads, authenticated, against the bare-Quart ceiling", plan.compared)
    rows: list[list[str]] = []
    for round_ in range(1, plan.rounds + 1):
        for app in targets:
            with servers.running(app, plan.backends) as server:
                bearer = None
                if app.is_service:
                    async with httpx.AsyncClient(base_url=server.url) as client:
                        bearer = await fleet.login(client)
                for shape, requests in _requests(ids, bearer).items():
                    await wrk.run(server.url, requests, connections=CONNECTIONS, seconds=WARM_UP_SECONDS)
                    result = await wrk.run(server.url, requests, connections=CONNECTIONS, seconds=SECONDS)
                    results.setdefault((app.label, shape), []).append(result)
                    errors = result.status_errors + result.socket_errors
                    rows.append(
                        [
                            str(round_),
                            app.label,
                            f"`{shape}`",
                            f"{result.rate:.0f}",
                            ms(result.p50_ms),
                            ms(result.p99_ms),
                            str(errors),
                        ]
                    )
                    print(f"  round {round_} {app.label} {shape}: {result.rate:.0f} req/s", flush=True)
    report.table(["round", "server", "request", "req/s", "p50 ms", "p99 ms", "errors"], rows)
    summary = []
    for shape in SHAPES:
        ceiling = median([r.rate for r in results[(servers.CEILING.label, shape)]])
        for app in targets:
            found = results[(app.label, shape)]
            rate = median([r.rate for r in found])
            summary.append(
                [
                    f"`{shape}`",
                    app.label,
                    f"{rate:.0f}",
                    ms(median([r.p99_ms for r in found])),
                    f"{rate / ceiling:.2f}x",
                ]
            )
    report.table(["request", "server", "median req/s", "median p99 ms", "of ceiling"], summary)
    return report
