"""Benchmark 4, SSE fan-out, against the naive reference (naive_fanout.py) in the same run:
(a) broadcast: N subscribers of every event on ONE worker, 20 events/s, N raised until the p99 from publish
to receive passes 250 ms;
(b) scale: 10,000 subscribers each filtered to its own agent plus 100 watching everything, on 2 workers,
200 events/s. Events are status changes caused by heartbeats whose request ids the subscribers look for;
publish-to-receive runs from the event's append to the log (its id is Redis's clock) to its arrival, and
change-to-receive from the event's own `time` (stamped when the change is recorded)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
from redis.asyncio import Redis

from . import fleet, loadgen, servers
from .fleet import SeededAgent
from .percentiles import median, percentile
from .plan import Plan
from .report import Report, ms
from .servers import App, Server
from .subscribers import REQUEST_ID_PREFIX, Spec, client_main

LEVELS = (50, 100, 250, 500, 750, 1000, 1500, 2000, 3000, 4000)
BROADCAST_RATE = 20
SCALE_FILTERED = 10_000
SCALE_WATCHERS = 100
SCALE_RATE = 200
WINDOW_SECONDS = 8
DRAIN_SECONDS = 4
LIMIT_MS = 250
VIEWERS = 12
STREAMS_PER_VIEWER = 900  # under SSE_STREAMS_PER_USER (1000)
# Before each measurement: the servers used less than QUIET_CPU_SECONDS in half a second (10 % of a core).
QUIET_SECONDS = 60.0
QUIET_CPU_SECONDS = 0.05
# Streams not started by then count as refused: a loaded machine must not stretch a run without bound.
CONNECT_SECONDS = 150
_EVERYTHING = "/api/v1/events"


@dataclass(frozen=True)
class Outcome:
    label: str
    subscribers: int
    refused: int
    # From the change being recorded (the event's `time`), and from its append to the log (its id).
    p50_ms: float
    p99_ms: float
    log_p50_ms: float
    log_p99_ms: float
    expected: int
    lost: int
    duplicates: int
    resets: int
    deliveries_per_worker: float
    client_lag_p99_ms: float
    connect_seconds: float
    # Status changes the publisher asked for, and how many the service accepted in the window.
    planned: int
    published: int
    memory_per_subscriber: float | None = None

    def row(self) -> list[str]:
        memory = "-" if self.memory_per_subscriber is None else f"{self.memory_per_subscriber / 1024:.1f}"
        return [
            self.label,
            str(self.subscribers),
            str(self.refused),
            f"{self.published}/{self.planned}",
            ms(self.log_p50_ms),
            ms(self.log_p99_ms),
            ms(self.p50_ms),
            ms(self.p99_ms),
            f"{self.lost}/{self.expected}",
            f"{self.duplicates}/{self.resets}",
            f"{self.deliveries_per_worker:.0f}",
            ms(self.client_lag_p99_ms),
            f"{self.connect_seconds:.1f}",
            memory,
        ]


HEADERS = [
    "server",
    "subscribers",
    "refused",
    "events published/planned",
    "publish→receive p50 ms",
    "publish→receive p99 ms",
    "change→receive p50 ms",
    "change→receive p99 ms",
    "lost/expected",
    "dup/resets",
    "deliveries/s per worker",
    "client lag p99 ms",
    "connect s",
    "KiB per idle subscriber",
]


@dataclass
class Arrivals:
    """What every client process saw."""

    latencies: list[float] = field(default_factory=list)
    from_log: list[float] = field(default_factory=list)
    received: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    resets: int = 0
    lag: list[float] = field(default_factory=list)


class Clients:
    """Client processes holding the streams, `specs` shared among them."""

    def __init__(self, url: str, specs: list[Spec], processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes: list[Any] = []
        for index in range(processes):
            parent, child = context.Pipe()
            share = specs[index::processes]
            process = context.Process(target=client_main, args=(child, url, share, CONNECT_SECONDS))
            process.start()
            self._pipes.append(parent)
            self._processes.append(process)

    async def connected(self) -> tuple[Counter[int], Counter[str]]:
        """The answers to the stream requests, and the paths of those that did not open."""
        statuses: Counter[int] = Counter()
        missing: Counter[str] = Counter()
        for pipe in self._pipes:
            _, found, paths = await asyncio.to_thread(pipe.recv)
            statuses.update(found)
            missing.update(paths)
        return statuses, missing

    def measure(self) -> None:
        for pipe in self._pipes:
            pipe.send("measure")

    async def stop(self) -> Arrivals:
        for pipe in self._pipes:
            pipe.send("stop")
        arrivals = Arrivals()
        for pipe in self._pipes:
            _, latencies, from_log, received, duplicates, resets, lag = await asyncio.to_thread(pipe.recv)
            arrivals.latencies += latencies
            arrivals.from_log += from_log
            arrivals.received.update(received)
            arrivals.duplicates += duplicates
            arrivals.resets += resets
            arrivals.lag += lag
        for process in self._processes:
            process.join(30)
        return arrivals

    def kill(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.kill()
                process.join(5)


class Publisher:
    """Heartbeats that move agents between online and busy: each one a status-change event whose request
    id (X-Request-ID) the subscribers look for."""

    def __init__(self, agents: list[SeededAgent]) -> None:
        self.agents = agents
        self._status: dict[str, str] = {}
        self._next = 0

    async def load(self, backends: servers.Backends) -> None:
        """Each agent's reported status now, so that every beat sent is a change."""
        connection = await asyncpg.connect(backends.asyncpg_dsn)
        try:
            rows = await connection.fetch(
                "SELECT id::text, reported_status FROM agents WHERE id = ANY($1::uuid[])",
                [agent.id for agent in self.agents],
            )
        finally:
            await connection.close()
        self._status = {row["id"]: row["reported_status"] for row in rows}

    async def publish(self, url: str, rate: float, seconds: float) -> dict[str, str]:
        """Flip agents at `rate` for `seconds`; the request ids that caused an event, with their agent."""
        planned: list[tuple[str, str]] = []
        beats = []
        for _ in range(int(rate * seconds)):
            agent = self.agents[self._next % len(self.agents)]
            self._next += 1
            status = "busy" if self._status[agent.id] == "online" else "online"
            self._status[agent.id] = status
            request_id = f"{REQUEST_ID_PREFIX}{uuid.uuid4().hex}"
            planned.append((request_id, agent.id))
            beats.append(_beat(url, agent, status, request_id))
        result = await loadgen.open_loop(url, beats, rate=rate, seconds=seconds, connections=64)
        if set(result.statuses) != {200}:
            # Beats that failed publish nothing: say how (0: no answer, or the connection failed).
            print(f"  publisher: answers by status {dict(result.statuses)}", flush=True)
        outcomes = zip(planned, result.outcomes, strict=True)
        return {request_id: agent for (request_id, agent), status in outcomes if status == 200}


def _beat(url: str, agent: SeededAgent, status: str, request_id: str | None) -> bytes:
    extra = {"X_Request_ID": request_id} if request_id else {}
    path = f"/api/v1/agents/{agent.id}/heartbeat"
    return loadgen.http_request(url, "POST", path, agent.token, {"status": status}, **extra)


async def _forget_stream_slots(plan: Plan) -> None:
    """Stream slots a killed server left in Redis would count against the viewers' caps for a minute."""
    redis = Redis.from_url(plan.backends.redis_url)
    try:
        async for key in redis.scan_iter("sb:streams:*"):
            await redis.delete(key)
    finally:
        await redis.aclose()


async def _measure(
    plan: Plan,
    label: str,
    server: Server,
    publisher_url: str,
    publisher: Publisher,
    specs: list[Spec],
    expected_for: dict[str, int],
    watchers: int,
    rate: float,
    processes: int,
) -> Outcome:
    """Connect `specs` to `server`, publish for the window, and count what arrived.

    `expected_for` maps an agent id to how many filtered streams follow it; every event also goes to
    `watchers` unfiltered streams.
    """
    await _forget_stream_slots(plan)
    memory_before = server.worker_rss()
    loop = asyncio.get_running_loop()
    started = loop.time()
    clients = Clients(server.url, specs, processes)
    try:
        statuses, missing = await clients.connected()
        connect_seconds = loop.time() - started
        await asyncio.sleep(1.0)
        memory_after = server.worker_rss()
        clients.measure()
        caused = await publisher.publish(publisher_url, rate, WINDOW_SECONDS)
        await asyncio.sleep(DRAIN_SECONDS)
        arrivals = await clients.stop()
    finally:
        clients.kill()
    connected = statuses.get(200, 0)
    expected = lost = 0
    # Only the streams that opened can be expected to receive anything.
    watchers -= missing.get(_EVERYTHING, 0)
    expected_for = dict(expected_for)
    for path in missing:
        agent = path.partition("agent_id=")[2]
        if agent:
            expected_for[agent] = 0
    for request_id, agent in caused.items():
        wanted = watchers + expected_for.get(agent, 0)
        expected += wanted
        lost += max(0, wanted - arrivals.received.get(request_id, 0))
    return Outcome(
        label=label,
        subscribers=len(specs),
        refused=len(specs) - connected,
        p50_ms=percentile(arrivals.latencies, 50) * 1000,
        p99_ms=percentile(arrivals.latencies, 99) * 1000,
        log_p50_ms=percentile(arrivals.from_log, 50) * 1000,
        log_p99_ms=percentile(arrivals.from_log, 99) * 1000,
        expected=expected,
        lost=lost,
        duplicates=arrivals.duplicates,
        resets=arrivals.resets,
        deliveries_per_worker=sum(arrivals.received.values()) / WINDOW_SECONDS / server.workers,
        client_lag_p99_ms=percentile(arrivals.lag, 99) * 1000,
        connect_seconds=connect_seconds,
        planned=int(rate * WINDOW_SECONDS),
        published=len(caused),
        memory_per_subscriber=(memory_after - memory_before) / connected if connected else None,
    )


async def _quiet(running: list[Server]) -> None:
    """Wait (up to QUIET_SECONDS) until every server of the run is idle. The servers of one run all stay
    up, and one that fell behind (the naive reference past its limit queues millions of deliveries) goes
    on working off its backlog after its clients left: measured meanwhile, the next side would share
    the cores with it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + QUIET_SECONDS
    used = sum(server.cpu_seconds() for server in running)
    while loop.time() < deadline:
        await asyncio.sleep(0.5)
        now = sum(server.cpu_seconds() for server in running)
        if now - used < QUIET_CPU_SECONDS:
            return
        used = now
    print(f"  the servers were still busy after {QUIET_SECONDS:.0f} s; measuring anyway", flush=True)


@contextlib.contextmanager
def _pair(plan: Plan, workers: int) -> Iterator[list[tuple[App, Server]]]:
    """Each service under test and the naive reference, all running; the first service also publishes."""
    with contextlib.ExitStack() as stack:
        started = [
            (app, stack.enter_context(servers.running(app, plan.backends, workers=workers)))
            for app in plan.services()
        ]
        naive = stack.enter_context(servers.running(servers.NAIVE, plan.backends, workers=workers))
        yield [*started, (servers.NAIVE, naive)]


async def _viewer_tokens(server: Server, count: int) -> list[str]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        admin = await fleet.login(client)
        return await fleet.viewers(client, admin, count)


def _specs(tokens: list[str], paths: list[str]) -> list[Spec]:
    return [Spec(path, tokens[index // STREAMS_PER_VIEWER]) for index, path in enumerate(paths)]


async def _broadcast(plan: Plan, seeded: list[SeededAgent], report: Report) -> None:
    # Enough agents that no agent is flipped again while its last flip may still be in flight: two beats
    # of one agent racing would make one of them no change, and its event would seem lost.
    publisher = Publisher(seeded[:1000])
    rows: list[list[str]] = []
    best: dict[str, float] = {}
    outcomes: dict[tuple[str, int], list[Outcome]] = {}
    with _pair(plan, workers=1) as targets:
        publishing = targets[0][1]
        tokens = {
            app.label: await _viewer_tokens(server, VIEWERS) for app, server in targets if app.is_service
        }
        await publisher.load(plan.backends)
        passed = set[str]()
        for level in LEVELS:
            for round_ in range(plan.rounds):
                order = targets if round_ % 2 == 0 else list(reversed(targets))
                for app, server in order:
                    if app.label in passed:
                        continue
                    viewer = tokens.get(app.label, tokens[targets[0][0].label])
                    specs = _specs(viewer, [_EVERYTHING] * level)
                    await _quiet([running for _, running in targets])
                    outcome = await _measure(
                        plan,
                        app.label,
                        server,
                        publishing.url,
                        publisher,
                        specs,
                        {},
                        level,
                        BROADCAST_RATE,
                        processes=1 if level <= 500 else 2,
                    )
                    rows.append([str(round_ + 1), *outcome.row()[:-1]])
                    print(f"  broadcast {rows[-1]}", flush=True)
                    outcomes.setdefault((app.label, level), []).append(outcome)
            for app, _ in targets:
                mine = outcomes.get((app.label, level), [])
                if not mine:
                    continue
                # The level counts by the median of its rounds, as the ladder stops by it.
                if median([o.log_p99_ms for o in mine]) > LIMIT_MS or any(o.lost for o in mine):
                    passed.add(app.label)
                else:
                    best[app.label] = median([o.deliveries_per_worker for o in mine])
            if len(passed) == len(targets):
                break
    report.note(f"(a) Broadcast: every subscriber watches everything, one worker, {BROADCAST_RATE} events/s.")
    report.table(["round", *HEADERS[:-1]], rows)
    naive = best.get(servers.NAIVE.label, 0.0)
    for app, _ in targets:
        if app.is_service:
            found = best.get(app.label, 0.0)
            ratio = (
                f"{found / naive:.2f}x the naive reference"
                if naive
                else "the naive reference passed no level"
            )
            report.note(
                f"Highest deliveries/s per worker with publish→receive p99 ≤ {LIMIT_MS} ms and nothing lost "
                f"(0: no level): {app.label} {found:.0f}, naive {naive:.0f} ({ratio})."
            )


async def _scale(plan: Plan, seeded: list[SeededAgent], report: Report) -> None:
    agents = seeded[:SCALE_FILTERED]
    publisher = Publisher(agents)
    paths = [f"/api/v1/events?agent_id={agent.id}" for agent in agents]
    paths += [_EVERYTHING] * SCALE_WATCHERS
    following = dict.fromkeys((agent.id for agent in agents), 1)
    rows: list[list[str]] = []
    with _pair(plan, workers=2) as targets:
        publishing = targets[0][1]
        tokens = {
            app.label: await _viewer_tokens(server, VIEWERS) for app, server in targets if app.is_service
        }
        await publisher.load(plan.backends)
        for round_ in range(plan.scale_rounds):
            order = targets if round_ % 2 == 0 else list(reversed(targets))
            for app, server in order:
                viewer = tokens.get(app.label, tokens[targets[0][0].label])
                await _quiet([running for _, running in targets])
                outcome = await _measure(
                    plan,
                    app.label,
                    server,
                    publishing.url,
                    publisher,
                    _specs(viewer, paths),
                    following,
                    SCALE_WATCHERS,
                    SCALE_RATE,
                    processes=4,
                )
                rows.append([str(round_ + 1), *outcome.row()])
                print(f"  scale {rows[-1]}", flush=True)
    report.note(
        f"(b) Scale: {SCALE_FILTERED:,} subscribers each filtered to its own agent and {SCALE_WATCHERS} "
        f"watching everything, two workers, {SCALE_RATE} events/s."
    )
    report.table(["round", *HEADERS], rows)


async def run(plan: Plan) -> Report:
    seeded = await fleet.seed_agents(plan.backends, fleet.FLEET, SCALE_FILTERED, ["bench"])
    report = Report("sse: fan-out against the naive reference", plan.compared)
    await _broadcast(plan, seeded, report)
    if plan.scale_rounds > 0:  # 0: the broadcast part alone
        await _scale(plan, seeded, report)
    report.note(
        "Publish→receive runs from the event's append to the log (the milliseconds of its id, Redis's "
        "clock) to its arrival at the subscriber: the fan-out, as the naive reference does it too. "
        "Change→receive runs from the event's `time` (stamped when the change is recorded, before the "
        "commit): it adds the commit and the relay. "
        "Lost: events a subscriber should have had (its agent's, or all for a watcher) that never came. "
        "Client lag p99: how late the subscribers' own event loops ran; tens of ms means the client, "
        "not the server, was saturated. Memory: the workers' RSS after connecting the idle subscribers "
        "less before, per subscriber."
    )
    return report
