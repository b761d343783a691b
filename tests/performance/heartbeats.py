"""Benchmark 2, heartbeats: 10,000 agents beating an unchanged status as fast as the service takes them
(wrk, 64 connections), then at a steady 2,000/s (an open loop, see loadgen.py); database writes per beat
from pg_stat_database around each phase."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped]

from . import fleet, loadgen, servers, wrk
from .plan import Plan
from .report import Report, ms
from .servers import Backends

AGENTS = 10_000
CONNECTIONS = 64
SECONDS = 15
STEADY_RATE = 2000
BODY = {"status": "online"}
WARM_UP_SECONDS = 3
WARM_UP_PASSES = 2


@dataclass(frozen=True)
class Activity:
    commits: int
    writes: int  # rows inserted, updated and deleted
    by_table: dict[str, int]


async def activity(backends: Backends) -> Activity:
    """The bench database's counters (PostgreSQL publishes a backend's counts within a second or so)."""
    connection = await asyncpg.connect(backends.asyncpg_dsn)
    try:
        row = await connection.fetchrow(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted AS writes "
            "FROM pg_stat_database WHERE datname = current_database()"
        )
        tables = await connection.fetch(
            "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS writes FROM pg_stat_user_tables"
        )
    finally:
        await connection.close()
    assert row is not None
    return Activity(row["xact_commit"], row["writes"], {t["relname"]: t["writes"] for t in tables})


async def settled_activity(backends: Backends) -> Activity:
    await asyncio.sleep(1.5)  # let every backend flush its pending statistics
    return await activity(backends)


async def background(backends: Backends, seconds: float) -> tuple[float, float]:
    """Commits and writes per second of the idle service (relay, sweeper and other loops)."""
    before = await settled_activity(backends)
    await asyncio.sleep(seconds)
    after = await settled_activity(backends)
    elapsed = seconds + 1.5
    return (after.commits - before.commits) / elapsed, (after.writes - before.writes) / elapsed


def _per_beat(
    before: Activity, after: Activity, idle: tuple[float, float], seconds: float, beats: int
) -> str:
    commits = (after.commits - before.commits - idle[0] * seconds) / beats
    writes = (after.writes - before.writes - idle[1] * seconds) / beats
    tables = sorted(
        (name, count - before.by_table.get(name, 0))
        for name, count in after.by_table.items()
        if count != before.by_table.get(name, 0)
    )
    written = ", ".join(f"{name} {count}" for name, count in tables) or "none"
    return f"{commits:.3f} / {writes:.3f} | {written}"


async def run(plan: Plan) -> Report:
    seeded = await fleet.seed_agents(plan.backends, fleet.FLEET, AGENTS, ["bench"])
    body = json.dumps(BODY, separators=(",", ":"))
    beats = [
        wrk.Request("POST", f"/api/v1/agents/{agent.id}/heartbeat", agent.token, body) for agent in seeded
    ]
    report = Report("heartbeats: 10,000 agents, unchanged status", plan.compared)
    rows: list[list[str]] = []
    for round_ in range(1, plan.rounds + 1):
        for app in plan.services():
            with servers.running(app, plan.backends) as server:
                raw = [
                    loadgen.http_request(
                        server.url, "POST", f"/api/v1/agents/{a.id}/heartbeat", a.token, BODY
                    )
                    for a in seeded
                ]
                # Every agent online before measuring, so that every measured beat changes nothing; and
                # every agent seen by the workers as in a fleet beating every few seconds, whose views
                # each worker's agent cache holds (two passes: most agents reach both workers).
                warm: Counter[int] = Counter()
                for _ in range(WARM_UP_PASSES):
                    warm += await loadgen.each_once(server.url, raw)
                await wrk.run(server.url, beats, connections=CONNECTIONS, seconds=WARM_UP_SECONDS)
                idle = await background(plan.backends, 5)
                before = await settled_activity(plan.backends)
                saturated = await wrk.run(server.url, beats, connections=CONNECTIONS, seconds=SECONDS)
                after = await settled_activity(plan.backends)
                accepted = saturated.requests - saturated.status_errors
                rows.append(
                    [
                        str(round_),
                        app.label,
                        f"saturation, {CONNECTIONS} connections",
                        f"{saturated.rate:.0f}",
                        ms(saturated.p50_ms),
                        ms(saturated.p99_ms),
                        str(saturated.status_errors + saturated.socket_errors),
                        "-",
                        _per_beat(before, after, idle, saturated.seconds + 1.5, accepted),
                    ]
                )
                before = await settled_activity(plan.backends)
                steady = await loadgen.open_loop(server.url, raw, rate=STEADY_RATE, seconds=SECONDS)
                after = await settled_activity(plan.backends)
                ok, failed = steady.succeeded, steady.failed
                rows.append(
                    [
                        str(round_),
                        app.label,
                        f"open loop at {STEADY_RATE}/s",
                        f"{steady.achieved:.0f}",
                        ms(steady.p(50)),
                        ms(steady.p(99)),
                        str(failed),
                        ms(steady.lag_p(99)),
                        _per_beat(before, after, idle, SECONDS + 3, ok),
                    ]
                )
                print(f"  round {round_} {app.label}: warm-up {dict(warm)}", flush=True)
                print(f"  {rows[-2]}\n  {rows[-1]}", flush=True)
    report.table(
        [
            "round",
            "server",
            "load",
            "beats/s accepted",
            "p50 ms",
            "p99 ms",
            "errors",
            "client lag p99 ms",
            "commits / row writes per beat",
            "rows written in the phase, by table",
        ],
        rows,
    )
    report.note(
        "Commits and row writes per beat come from `pg_stat_database` before and after each phase, less what "
        "the idle service does in the same time (relay, sweeper and notification loops, measured for 5 s "
        "before). Read-only transactions count as commits too. The last column is not corrected for the idle "
        "service: the once-a-minute retention round deletes old events in batches, for instance."
    )
    return report
