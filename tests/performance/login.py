"""Benchmark 5, login: 32 concurrent logins for 20 s (argon2id in the hashing pool), and meanwhile
/health probed every 20 ms from a second wrk (one connection), against the same probe with no load."""

from __future__ import annotations

import asyncio
import json

from . import servers, wrk
from .plan import Plan
from .report import Report, ms
from .servers import ADMIN, PASSWORD

LOGINS = 32
SECONDS = 20
PROBE_EVERY_MS = 20


async def _probe(url: str, seconds: float) -> wrk.Result:
    health = [wrk.Request("GET", "/health")]
    return await wrk.run(url, health, connections=1, threads=1, seconds=seconds, delay_ms=PROBE_EVERY_MS)


async def run(plan: Plan) -> Report:
    body = json.dumps({"username": ADMIN, "password": PASSWORD})
    logins = [wrk.Request("POST", "/auth/login", None, body)]
    report = Report("login: logins/s, and /health while logins saturate the hashing pool", plan.compared)
    rows: list[list[str]] = []
    for round_ in range(1, plan.rounds + 1):
        for app in plan.services():
            with servers.running(app, plan.backends) as server:
                await wrk.run(server.url, logins, connections=LOGINS, seconds=3)  # warm-up
                quiet = await _probe(server.url, 10)
                burst, during = await asyncio.gather(
                    wrk.run(server.url, logins, connections=LOGINS, seconds=SECONDS),
                    _probe(server.url, SECONDS),
                )
            rows.append(
                [
                    str(round_),
                    app.label,
                    f"{burst.rate:.1f}",
                    ms(burst.p50_ms),
                    ms(burst.p99_ms),
                    str(burst.status_errors + burst.socket_errors),
                    ms(quiet.p50_ms),
                    ms(quiet.p99_ms),
                    ms(during.p50_ms),
                    ms(during.p99_ms),
                    ms(during.max_ms),
                ]
            )
            print(f"  {rows[-1]}", flush=True)
    report.table(
        [
            "round",
            "server",
            "logins/s",
            "login p50 ms",
            "login p99 ms",
            "errors",
            "/health idle p50",
            "idle p99",
            "during logins p50",
            "during p99",
            "during max",
        ],
        rows,
    )
    return report
