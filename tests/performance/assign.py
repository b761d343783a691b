"""Benchmark 3, auto-assignment under contention: 50 concurrent creators POST /api/v1/assignments with no
agent named, against 100 online agents with room for every assignment a round makes; then the capacity
invariant, checked in SQL."""

from __future__ import annotations

import json

import asyncpg  # type: ignore[import-untyped]
import httpx

from . import fleet, loadgen, servers, wrk
from .plan import Plan
from .report import Report, ms
from .servers import Backends

AGENTS = 100
# Room for every assignment of a round (100 x 100 = 10,000 > rate x SECONDS here), so placement, not a
# full fleet, is measured; a full agent is skipped by the conditional update all the same.
CAPACITY = 100
CREATORS = 50
SECONDS = 10
WARM_UP_SECONDS = 2

_OPEN = "('assigned', 'accepted', 'in_progress')"
# An agent holding more open work than it may, or whose counter disagrees with the work it holds.
_VIOLATIONS = f"""
SELECT a.name, a.max_concurrent, a.open_assignments, count(s.id) AS held
FROM agents a LEFT JOIN assignments s ON s.agent_id = a.id AND s.status IN {_OPEN}
GROUP BY a.id
HAVING count(s.id) > a.max_concurrent OR count(s.id) <> a.open_assignments
"""  # noqa: S608 - constant text


async def _reset(backends: Backends) -> None:
    """Free the capacity fleet's slots before a round: cancel the open work earlier rounds left.

    Straight SQL on the benchmark's own database, keeping the counters equal to the work held: every
    open assignment of the database is cancelled (other benchmarks' too), so every counter goes to 0.
    """
    connection = await asyncpg.connect(backends.asyncpg_dsn)
    try:
        async with connection.transaction():
            await connection.execute(
                f"UPDATE assignments SET status = 'cancelled', finished_at = now() "  # noqa: S608
                f"WHERE status IN {_OPEN} OR (status = 'pending' AND required_capabilities::jsonb ? $1)",
                fleet.CAPACITY_CAPABILITY,
            )
            await connection.execute("UPDATE agents SET open_assignments = 0 WHERE open_assignments <> 0")
    finally:
        await connection.close()


async def _tally(backends: Backends, since: str) -> tuple[int, int, list[asyncpg.Record]]:
    connection = await asyncpg.connect(backends.asyncpg_dsn)
    try:
        placed = await connection.fetchval(
            "SELECT count(*) FROM assignments WHERE title = $1 AND agent_id IS NOT NULL", since
        )
        pending = await connection.fetchval(
            "SELECT count(*) FROM assignments WHERE title = $1 AND agent_id IS NULL", since
        )
        violations = await connection.fetch(_VIOLATIONS)
    finally:
        await connection.close()
    return placed, pending, violations


async def run(plan: Plan) -> Report:
    seeded = await fleet.seed_agents(
        plan.backends, fleet.CAPACITY_FLEET, AGENTS, [fleet.CAPACITY_CAPABILITY], CAPACITY
    )
    report = Report("assign: automatic placement, 50 creators, 100 agents", plan.compared)
    rows: list[list[str]] = []
    for round_ in range(1, plan.rounds + 1):
        for app in plan.services():
            await _reset(plan.backends)
            with servers.running(app, plan.backends) as server:
                online = [
                    loadgen.http_request(
                        server.url, "POST", f"/api/v1/agents/{a.id}/heartbeat", a.token, {"status": "online"}
                    )
                    for a in seeded
                ]
                await loadgen.each_once(server.url, online, concurrency=8)
                async with httpx.AsyncClient(base_url=server.url) as client:
                    bearer = await fleet.login(client)
                title = f"bench round {round_} {app.label} {fleet.new_request_id()}"
                body = json.dumps({"title": title, "required_capabilities": [fleet.CAPACITY_CAPABILITY]})
                warm = json.dumps({"title": "warm-up", "required_capabilities": [fleet.CAPACITY_CAPABILITY]})
                await wrk.run(
                    server.url,
                    [wrk.Request("POST", "/api/v1/assignments", bearer, warm)],
                    connections=CREATORS,
                    seconds=WARM_UP_SECONDS,
                )
                result = await wrk.run(
                    server.url,
                    [wrk.Request("POST", "/api/v1/assignments", bearer, body)],
                    connections=CREATORS,
                    seconds=SECONDS,
                )
            placed, pending, violations = await _tally(plan.backends, title)
            for violation in violations:
                print(f"  VIOLATION {dict(violation)}", flush=True)
            rows.append(
                [
                    str(round_),
                    app.label,
                    f"{result.rate:.0f}",
                    ms(result.p50_ms),
                    ms(result.p99_ms),
                    str(result.status_errors + result.socket_errors),
                    str(placed),
                    str(pending),
                    str(len(violations)),
                ]
            )
            print(f"  {rows[-1]}", flush=True)
    report.table(
        [
            "round",
            "server",
            "assignments/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "placed",
            "left pending",
            "capacity violations",
        ],
        rows,
    )
    report.note(
        "Violations: agents holding more open assignments than `max_concurrent`, or whose "
        "`open_assignments` counter differs from the work they hold, over the whole database (must be 0)."
    )
    return report
