"""What a soak samples: the server processes' memory, open files and CPU, Redis clients on our database,
PostgreSQL backends on our database, and each worker's asyncio task count (from /metrics)."""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

_TASKS = re.compile(r'^asyncio_tasks\{pid="(\d+)"\} ([0-9.e+]+)$', re.MULTILINE)
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Resources:
    at: float
    rss_mib: float  # summed over the master and its workers
    open_files: int
    cpu_seconds: float
    redis_clients: int
    database_backends: int
    tasks: dict[int, int]  # worker pid -> asyncio tasks

    def row(self, since: float) -> str:
        tasks = ", ".join(f"{n}" for _, n in sorted(self.tasks.items()))
        return (
            f"| {self.at - since:6.0f} | {self.rss_mib:7.1f} | {self.open_files:5d} "
            f"| {self.redis_clients:3d} | {self.database_backends:3d} | {tasks} |"
        )


HEADER = (
    "| s | RSS MiB | fds | Redis clients | DB backends | tasks per worker |\n|---:|---:|---:|---:|---:|---|"
)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def process_usage(pids: list[int]) -> tuple[float, int, float]:
    """(RSS MiB, open files, CPU seconds) summed over `pids` (gone ones count nothing)."""
    rss, files, cpu = 0.0, 0, 0.0
    for pid in pids:
        try:
            rss += _rss_mib(pid)
            files += len(os.listdir(f"/proc/{pid}/fd"))
            cpu += _cpu_seconds(pid)
        except OSError:
            continue
    return rss, files, cpu


async def redis_clients(redis: Redis, db: int) -> int:
    """Clients connected to our database number only (the server is shared), our sampler excluded."""
    clients = await redis.client_list()
    return sum(1 for client in clients if int(client.get("db", -1)) == db) - 1


async def database_backends(engine: AsyncEngine, database: str) -> int:
    async with engine.connect() as connection:
        # Our own sampling connection excluded.
        found = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"
            ),
            {"db": database},
        )
        return int(found or 0)


async def worker_tasks(url: str, workers: list[int], rounds: int = 3, at_once: int = 8) -> dict[int, int]:
    """Each worker's task count. The gauge holds each worker's value from the last scrape it answered,
    so scrape several times at once over new connections: one after another, the same idle worker would
    accept them all and the other's value would be stale."""
    values: dict[int, int] = {}

    async def scrape(http: httpx.AsyncClient) -> str:
        return (await http.get(f"{url}/metrics", headers={"Connection": "close"})).text

    for _ in range(rounds):
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            texts = await asyncio.gather(*(scrape(http) for _ in range(at_once)))
        values = {int(pid): int(float(n)) for pid, n in _TASKS.findall(texts[-1])}
    return {pid: n for pid, n in values.items() if pid in workers}


async def sample(
    url: str, pids: list[int], workers: list[int], redis: Redis, db: int, engine: AsyncEngine, database: str
) -> Resources:
    rss, files, cpu = process_usage(pids)
    return Resources(
        at=time.monotonic(),
        rss_mib=rss,
        open_files=files,
        cpu_seconds=cpu,
        redis_clients=await redis_clients(redis, db),
        database_backends=await database_backends(engine, database),
        tasks=await worker_tasks(url, workers),
    )
