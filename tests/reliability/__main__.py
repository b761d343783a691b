"""Load, soak and Redis-outage runs against the real service (not a test; results go to
docs/reliability.md).

    python -m tests.reliability load           # 500 users with 1-3 s think time, 50 SSE listeners
    python -m tests.reliability soak           # 10 minutes: memory, files, clients, connections, tasks
    python -m tests.reliability redis-outage   # API p95 with Redis normal, then frozen, then back

The service runs as production runs it (hypercorn.toml, two workers, APP_ENV=production) on the shared
PostgreSQL (database `reliability`, rebuilt by the migrations at each start) and Redis (database 10,
emptied at each start). Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import uvloop
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from alembic import command
from service import heap
from service.config import Settings

from ..conftest import ROOT, alembic_config
from ..faults.proxy import FaultProxy
from ..faults.switchboard import Switchboard, environment
from ..servers import ensure_database
from . import resources
from .driver import Driver, Sample, Stats, seed, stats, table

DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/reliability"
REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 10
# Production settings, but for the login limit: seeding logs in every operator from one address, which
# RATE_LIMIT_LOGIN (10/minute per address) exists to refuse. Logins are not part of the measured mix.
OVERRIDES = {"RATE_LIMIT_LOGIN": "10000/minute"}
P95_TARGET, FAST_SHARE_TARGET = 2.0, 0.80


@dataclass
class Rig:
    service: Switchboard
    driver: Driver
    redis: Redis
    engine: AsyncEngine
    proxy: FaultProxy | None

    async def sample(self) -> resources.Resources:
        return await resources.sample(
            self.service.url,
            self.service.pids(),
            self.service.worker_pids(),
            self.redis,
            REDIS_DB,
            self.engine,
            "reliability",
        )


def _reset_database(url: str) -> str:
    migrated: str = Settings(database_url=url, _env_file=None).database_url
    config = alembic_config(migrated)
    command.downgrade(config, "base")
    command.upgrade(config, "head")
    return migrated


@asynccontextmanager
async def rig(args: argparse.Namespace, through_proxy: bool) -> AsyncIterator[Rig]:
    await ensure_database(args.database_url)  # a fresh machine has none
    database_url = await asyncio.to_thread(_reset_database, args.database_url)
    redis = Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    await redis.flushdb()  # our own database number, nobody else's
    proxy = FaultProxy(REDIS_PORT).start() if through_proxy else None
    redis_port = proxy.port if proxy else REDIS_PORT
    env = environment(args.database_url, f"redis://{REDIS_HOST}:{redis_port}/{REDIS_DB}", **OVERRIDES)
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-reliability-"))
    service = Switchboard(workdir, env, workers=2)
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        await asyncio.to_thread(service.start)
        await asyncio.to_thread(service.create_admin)
        print(f"service on {service.url} (log {service.log})")
        print(f"seeding {args.operators} operators and {args.agents} agents")
        crowd = await seed(service.url, args.operators, args.agents)
        driver = Driver(crowd, args.users, args.listeners, args.ramp)
        # The driver's own collections paused every request it had in flight and counted as the
        # service's latency (14 full ones of up to 330 ms in one 500-user run): what it has loaded and
        # set up is frozen, as the service freezes its own (service/heap.py).
        heap.freeze_startup_heap()
        try:
            yield Rig(service, driver, redis, engine, proxy)
        finally:
            await driver.close()
    finally:
        await asyncio.to_thread(service.stop)
        if proxy is not None:
            proxy.close()
        await engine.dispose()
        await redis.aclose()


def _cpu(rig_: Rig) -> float:
    return resources.process_usage(rig_.service.pids())[2]


def _report(title: str, samples: list[Sample], seconds: float) -> Stats:
    """Print the per-endpoint table of the API calls (stream opens apart) and return their totals."""
    api = [s for s in samples if not s.label.startswith("GET /events")]
    overall = stats(api)
    print(f"\n### {title}\n")
    print(table(api))
    print(f"\n{overall.count / seconds:.0f} requests/s over {seconds:.0f} s", end="; ")
    # The machine is shared: a load average far above its two cores means the numbers measure that.
    print("load average (1, 5, 15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()), flush=True)
    return overall


def _verdict(overall: Stats) -> bool:
    met = overall.p95 < P95_TARGET and overall.under_200ms >= FAST_SHARE_TARGET and overall.server_errors == 0
    print(
        f"\ntargets: p95 {overall.p95:.3f} s < {P95_TARGET} s, {overall.under_200ms:.1%} < 200 ms "
        f"(>= {FAST_SHARE_TARGET:.0%}), {overall.server_errors} 5xx (0): {'MET' if met else 'MISSED'}"
    )
    return met


async def run_load(args: argparse.Namespace) -> tuple[bool, dict[str, object]]:
    async with rig(args, through_proxy=False) as r:
        r.driver.start()
        await asyncio.sleep(args.ramp)
        start, cpu_start, own_start = time.monotonic(), _cpu(r), _own_cpu()
        await asyncio.sleep(args.duration)
        end, cpu_end, own_end = time.monotonic(), _cpu(r), _own_cpu()
        title = f"{args.users} users, {args.listeners} listeners"
        overall = _report(title, r.driver.recorder.window(start, end), end - start)
        server_cores = round((cpu_end - cpu_start) / (end - start), 2)
        driver_cores = round((own_end - own_start) / (end - start), 2)
        print(f"event streams open at the end: {r.driver.streams_open}", end="; ")
        print(f"events received: {r.driver.events_received}")
        print(f"CPU: service {server_cores} cores, driver {driver_cores} cores")
        result = {
            **asdict(overall),
            "server_cpu_cores": server_cores,
            "driver_cpu_cores": driver_cores,
            "streams_open": r.driver.streams_open,
            "events_received": r.driver.events_received,
        }
        return _verdict(overall), result


async def run_soak(args: argparse.Namespace) -> tuple[bool, dict[str, object]]:
    async with rig(args, through_proxy=False) as r:
        await asyncio.sleep(5)
        baseline = await r.sample()
        r.driver.start()
        began = time.monotonic()
        samples: list[resources.Resources] = []
        print(resources.HEADER)
        print(baseline.row(began) + " baseline, before the load")
        while time.monotonic() - began < args.duration:
            await asyncio.sleep(min(10.0, max(0.0, began + args.duration - time.monotonic())))
            samples.append(await r.sample())
            print(samples[-1].row(began), flush=True)
        api = r.driver.recorder.window(began + args.ramp, time.monotonic())
        await r.driver.stop_users()
        await r.driver.stop_streams()
        # hypercorn notices a client's close of an idle keep-alive connection only at keep_alive_timeout
        # (the socket sits in CLOSE-WAIT until then): "back to baseline" is judged after it.
        settled = _keep_alive_timeout() + 10
        print(f"users and listeners gone; sampling again in {settled:.0f} s")
        await asyncio.sleep(settled)
        after = await r.sample()
        print(after.row(began) + " after the users and listeners left")
        title = f"soak: {args.users} users, {args.listeners} listeners"
        overall = _report(title, api, args.duration - args.ramp)
        warm = next((s for s in samples if s.at - began >= args.warmup), samples[0])
        peak_late = max(s.rss_mib for s in samples if s.at >= warm.at)
        growth = (peak_late - warm.rss_mib) / warm.rss_mib
        late = [s for s in samples if s.at >= warm.at]
        slope = _slope([(s.at - began) / 60 for s in late], [s.rss_mib for s in late])
        # Idle pooled connections stay open by design: the bound is the pools (2 workers x 15), not zero.
        pools = 2 * 15
        tasks_before, tasks_after = sorted(baseline.tasks.values()), sorted(after.tasks.values())
        # Connection pools keep what they opened (redis-py's never shrinks): those sockets are the pools',
        # so they are allowed for in the files, and the pools are held to not growing after warm-up.
        pooled = (after.redis_clients - baseline.redis_clients) + (
            after.database_backends - baseline.database_backends
        )
        redis_peak = max(s.redis_clients for s in late)
        checks = {
            f"RSS growth after warm-up {growth:.1%} (<= 10%)": growth <= 0.10,
            f"open files {after.open_files}, {baseline.open_files} before + {pooled} pooled (+5)": (
                after.open_files <= baseline.open_files + pooled + 5
            ),
            f"Redis clients {after.redis_clients}, {warm.redis_clients} warm, peak {redis_peak} (+5)": (
                redis_peak <= warm.redis_clients + 5
            ),
            f"DB backends {after.database_backends}, {baseline.database_backends} before (<= {pools})": (
                after.database_backends <= pools
            ),
            f"tasks per worker {tasks_after}, {tasks_before} before (+5 each)": (
                sum(tasks_after) <= sum(tasks_before) + 5 * len(tasks_before)
            ),
        }
        print(f"RSS slope after warm-up: {slope:.2f} MiB/min")
        for check, ok in checks.items():
            print(f"{'ok  ' if ok else 'FAIL'} {check}")
        result = {
            **asdict(overall),
            "rss_growth": growth,
            "rss_slope_mib_per_min": slope,
            "checks": checks,
            "baseline": asdict(baseline),
            "after": asdict(after),
            "samples": [asdict(s) for s in samples],
        }
        return all(checks.values()) and _verdict(overall), result


async def run_redis_outage(args: argparse.Namespace) -> tuple[bool, dict[str, object]]:
    async with rig(args, through_proxy=True) as r:
        assert r.proxy is not None
        r.driver.start()
        await asyncio.sleep(args.ramp)
        phases: dict[str, tuple[float, float]] = {}
        start = time.monotonic()
        await asyncio.sleep(args.duration)
        phases["Redis normal"] = (start, time.monotonic())
        r.proxy.freeze()
        start = time.monotonic()
        await asyncio.sleep(args.duration)
        phases["Redis frozen"] = (start, time.monotonic())
        r.proxy.pass_through()
        start = time.monotonic()
        await asyncio.sleep(args.duration)
        phases["Redis back"] = (start, time.monotonic())
        results = {
            name: _report(name, r.driver.recorder.window(a, b), b - a) for name, (a, b) in phases.items()
        }
        normal, frozen = results["Redis normal"].p95, results["Redis frozen"].p95
        within = frozen <= normal * 1.2
        errors = sum(result.server_errors for result in results.values())
        print(
            f"\np95 frozen {frozen:.3f} s vs normal {normal:.3f} s: {'within' if within else 'beyond'} +20%"
        )
        print(f"5xx or no answer over all phases: {errors}")
        return within and errors == 0, {"phases": {name: asdict(result) for name, result in results.items()}}


def _keep_alive_timeout() -> float:
    with (ROOT / "hypercorn.toml").open("rb") as config:
        return float(tomllib.load(config).get("keep_alive_timeout", 5))


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    if len(xs) < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0


MODES = {"load": (run_load, 120.0), "soak": (run_soak, 600.0), "redis-outage": (run_redis_outage, 40.0)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--listeners", type=int, default=50)
    parser.add_argument("--duration", type=float, help="seconds measured (per phase for redis-outage)")
    parser.add_argument("--ramp", type=float, default=30.0, help="seconds over which the users arrive")
    parser.add_argument("--warmup", type=float, default=120.0, help="soak: seconds before memory is compared")
    parser.add_argument("--operators", type=int, default=50, help="operator accounts the users share")
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--database-url", default=DATABASE_URL)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    run, default_duration = MODES[args.mode]
    args.duration = args.duration or default_duration
    # One client process on uvloop is the lightest driver on two cores shared with the service.
    met, result = uvloop.run(run(args))
    if args.json is not None:
        args.json.write_text(json.dumps({"mode": args.mode, "met": met, **result}, indent=1, default=str))
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
