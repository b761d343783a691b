"""The demo: pretend agents that beat and work, and an operator who keeps giving them work, so a newcomer
sees the board move. `quart --app service demo` (service/cli.py) runs it.

It speaks only HTTP to a running server, as real agents do: heartbeat liveness (the presence store) and
the embedded default's event broker live inside the server process, so nothing here may go round them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from service.demo import client

DEFAULT_URL = "http://127.0.0.1:8000"
# The demo's own login, printed for the dashboard. cli.py creates it as create-admin would, and refuses
# to in production: a known password must never open a production server.
USERNAME = "demo"
EMAIL = "demo@example.com"
PASSWORD = "Demo-Switchboard-1"  # noqa: S105 - public on purpose, see above
NAME_PREFIX = "demo-"
MAX_AGENTS = 50

# (capabilities, max_concurrent) of demo-01, demo-02, …: fixed, so another run finds the same fleet.
PROFILES: list[tuple[list[str], int]] = [
    (["docker", "linux"], 2),
    (["gpu", "linux"], 1),
    (["windows"], 1),
    (["arm64", "macos"], 1),
    (["lang:de", "lang:fr"], 3),
    (["arm64", "linux"], 2),
    (["docker", "gpu", "linux"], 2),
    (["lang:en"], 2),
]
# (title, required capabilities): the work the operator hands out.
JOBS: list[tuple[str, list[str]]] = [
    ("Build the web app", ["docker", "linux"]),
    ("Run the nightly tests", ["linux"]),
    ("Train the ranking model", ["gpu"]),
    ("Sign the Windows installer", ["windows"]),
    ("Notarize the macOS app", ["macos"]),
    ("Cross-compile for ARM", ["arm64"]),
    ("Translate the release notes", ["lang:fr"]),
    ("Proofread the changelog", ["lang:en"]),
    ("Resize the product photos", []),
    ("Rotate the log archive", []),
]
FAILURES = ["exit status 1", "out of disk space", "timed out", "checksum mismatch"]
FAILURE_RATE = 0.1
AWAY_RATE = 0.01  # per beat: the agent takes a break (reports `away`) for a few beats


@dataclass(frozen=True)
class Pace:
    """How fast the demo moves, in seconds (the tests run it much faster)."""

    beat: float = 2.0  # between heartbeats; the server's heartbeat_interval when that is shorter
    work: float = 1.5  # mean time between new assignments
    report: float = 10.0  # between progress lines
    first_quiet: float = 15.0  # until the first agent goes quiet
    quiet_every: float = 60.0  # mean time between quiet spells, counted from the last one's end
    quiet_check: float = 2.0  # how often someone looks whether the quiet agent was marked offline
    quiet_linger: float = 5.0  # how long it stays away once it was
    quiet_max: float = 180.0  # it comes back after this long even if never marked offline


@dataclass(frozen=True)
class Options:
    url: str = DEFAULT_URL
    agents: int = 8
    duration: float | None = None  # None: until Ctrl-C
    seed: int | None = None  # makes every actor's choices repeatable (the interleaving still varies)
    pace: Pace = field(default_factory=Pace)


@dataclass
class Tally:
    """What happened, for the progress lines and the closing summary."""

    started: float = field(default_factory=time.monotonic)
    agents: int = 0
    beats: int = 0
    created: int = 0
    completed: int = 0
    failed: int = 0
    offline: int = 0  # quiet agents the server marked offline that came back

    def summary(self) -> str:
        seconds = round(time.monotonic() - self.started)
        return (
            f"Demo over after {seconds // 60}m{seconds % 60:02d}s: {self.agents} agents beat "
            f"{self.beats} times; {self.created} assignments created, {self.completed} completed, "
            f"{self.failed} failed; {self.offline} time(s) an agent went offline and came back."
        )


@dataclass
class DemoAgent:
    id: str
    name: str
    token: str
    capabilities: list[str]
    max_concurrent: int
    rng: random.Random
    held: int = 0  # open assignments in the last heartbeat's answer
    away_beats: int = 0
    work_beats: dict[str, int] = field(default_factory=dict)  # in-progress work → beats still to go
    quiet_requested: bool = False
    retired: bool = False  # its token was refused: someone rotated it or deleted the agent
    back: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Demo:
    """What every actor of a run shares."""

    api: client.Client
    pace: Pace
    tally: Tally
    say: Callable[[str], None]  # a progress line (time-stamped)
    # Set to end the run: each actor finishes the request it is in, then returns.
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def rest(self, seconds: float) -> bool:
        """Sleep, unless the run ends first. True when it is ending."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
        return self.stop.is_set()


def _rng(seed: int | None, actor: str) -> random.Random:
    # One generator per actor: the choices of each stay the same whatever order the tasks run in.
    return random.Random(None if seed is None else f"{seed}:{actor}")  # noqa: S311 - a simulation


def _line(text: str) -> str:
    return f"{time.strftime('%H:%M:%S')}  {text}"


async def run(
    options: Options,
    login: client.Login,
    say: Callable[[str], None],
    tally: Tally | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    until: Callable[[Tally], bool] | None = None,
) -> Tally:
    """Set up the operator and the fleet, then simulate until `options.duration` has passed or `until`
    holds (both end it gracefully: no request is cut off), or the task is cancelled (Ctrl-C).
    `transport` lets tests speak to an app in this process.

    Raises:
        client.DemoError: no server, a refused login, a failed set-up, the server lost: its message
            is for the person.
    """
    tally = tally if tally is not None else Tally()
    async with httpx.AsyncClient(base_url=options.url, transport=transport, timeout=10.0) as http:
        api = client.Client(http, login, lambda text: say(_line(text)))
        fleet = await _set_up(api, login, options, say)
        tally.agents, tally.started = len(fleet), time.monotonic()
        demo = _Demo(api, options.pace, tally, lambda text: say(_line(text)))
        try:
            async with asyncio.TaskGroup() as group:
                for agent in fleet:
                    group.create_task(_live(demo, agent))
                group.create_task(_hand_out_work(demo, fleet, _rng(options.seed, "operator")))
                group.create_task(_report(demo))
                group.create_task(_quiet_spells(demo, fleet, _rng(options.seed, "quiet")))
                group.create_task(_end(demo, options.duration, until))
        except* client.DemoError as failed:
            raise failed.exceptions[0] from None
    return tally


async def _end(demo: _Demo, duration: float | None, until: Callable[[Tally], bool] | None) -> None:
    """Stop the run once `duration` has passed or `until` holds; with neither, it runs until cancelled."""
    deadline = math.inf if duration is None else time.monotonic() + duration
    poll = 0.05 if until is not None else 3600.0
    while time.monotonic() < deadline and not (until is not None and until(demo.tally)):
        await demo.rest(min(poll, deadline - time.monotonic()))
    demo.stop.set()


async def _set_up(
    api: client.Client, login: client.Login, options: Options, say: Callable[[str], None]
) -> list[DemoAgent]:
    await api.check()
    if login.prepare is not None:
        say(await login.prepare())
    await api.log_in()
    shown = f", password {login.password!r}" if login.prepare is not None else ""
    say(f"Dashboard: {api.url}/ (sign in as {login.username!r}{shown})")
    try:
        fleet, created = await _fleet(api, options)
    except client.ApiError as error:
        raise client.DemoError(f"could not set up the demo agents: {error}") from None
    reused = len(fleet) - created
    rotated = " with new tokens" if reused else ""
    say(_line(f"{len(fleet)} agents ready ({created} new, {reused} reused{rotated}); Ctrl-C stops the demo"))
    return fleet


async def _fleet(api: client.Client, options: Options) -> tuple[list[DemoAgent], int]:
    """demo-01 … demo-NN: the ones that exist get a new token (only its hash is kept), the rest are made."""
    found = await api.operator("GET", "/api/v1/agents", params={"q": NAME_PREFIX, "per_page": MAX_AGENTS * 2})
    existing = {agent["name"].lower(): agent for agent in found}
    fleet: list[DemoAgent] = []
    created = 0
    for index in range(options.agents):
        name = f"{NAME_PREFIX}{index + 1:02d}"
        capabilities, capacity = PROFILES[index % len(PROFILES)]
        if name in existing:
            data = await api.operator("POST", f"/api/v1/agents/{existing[name]['id']}/token")
        else:
            body = {"name": name, "capabilities": capabilities, "max_concurrent": capacity}
            data = await api.operator("POST", "/api/v1/agents", {**body, "metadata": {"demo": True}})
            created += 1
        fleet.append(
            DemoAgent(
                id=data["id"],
                name=data["name"],
                token=data["agent_token"],
                capabilities=data["capabilities"],
                max_concurrent=data["max_concurrent"],
                rng=_rng(options.seed, name),
            )
        )
    return fleet, created


async def _live(demo: _Demo, agent: DemoAgent) -> None:
    """One agent: beat, take a step on each piece of its work, wait; now and then go quiet."""
    try:
        if await demo.rest(agent.rng.uniform(0, demo.pace.beat)):  # the fleet comes online one by one
            return
        while True:
            was_offline = await _quiet_spell(demo, agent) if agent.quiet_requested else None
            if demo.stop.is_set():
                return
            try:
                interval = await _beat(demo, agent)
            except client.ApiError as error:
                if error.status == 401:
                    agent.retired = True
                    demo.say(f"{agent.name}: its token was refused (rotated or deleted elsewhere); it stops")
                    return
                demo.say(f"{agent.name}: heartbeat refused ({error})")
                interval = demo.pace.beat
            if was_offline is not None:
                demo.say(f"{agent.name} is back ({await _status_of(demo, agent)})")
                demo.tally.offline += was_offline  # after the line: a watcher may end the run on it
                agent.back.set()
            if await demo.rest(min(demo.pace.beat, interval) * agent.rng.uniform(0.7, 1.0)):
                return
    finally:
        agent.back.set()


def _status(agent: DemoAgent) -> str:
    if agent.away_beats == 0 and agent.rng.random() < AWAY_RATE:
        agent.away_beats = agent.rng.randint(4, 10)
    if agent.away_beats > 0:
        agent.away_beats -= 1
        return "away"
    return "busy" if agent.held >= agent.max_concurrent else "online"


async def _beat(demo: _Demo, agent: DemoAgent) -> float:
    """A heartbeat, then a step on each assignment it answers with. Returns the server's interval."""
    status = _status(agent)
    load = round(min(1.0, agent.held / agent.max_concurrent) * 0.8 + agent.rng.uniform(0, 0.2), 2)
    beat = {"status": status, "load": load}
    answer = await demo.api.agent(agent.token, "POST", f"/api/v1/agents/{agent.id}/heartbeat", beat)
    demo.tally.beats += 1
    work = answer["assignments"]
    agent.held = len(work)
    agent.work_beats = {k: v for k, v in agent.work_beats.items() if k in {each["id"] for each in work}}
    if status != "away":  # on a break nobody works
        for assignment in work:
            try:
                await _step(demo, agent, assignment)
            except client.ApiError as error:
                # 404 or 409: taken back or moved by someone meanwhile; the next answer will not list it.
                if error.status not in (404, 409):
                    demo.say(f"{agent.name}: {assignment['title']!r} refused ({error})")
    return float(answer["heartbeat_interval"])


async def _step(demo: _Demo, agent: DemoAgent, assignment: dict[str, Any]) -> None:
    """Move one assignment a step: accept, start, then after a few beats complete (or fail) it."""
    path = f"/api/v1/assignments/{assignment['id']}"
    if assignment["status"] == "assigned":
        await demo.api.agent(agent.token, "POST", f"{path}/accept")
        return
    if assignment["status"] == "accepted":
        await demo.api.agent(agent.token, "POST", f"{path}/start")
        agent.work_beats[assignment["id"]] = agent.rng.randint(2, 6)
        return
    left = agent.work_beats.setdefault(assignment["id"], agent.rng.randint(1, 3)) - 1
    agent.work_beats[assignment["id"]] = left
    if left > 0:
        return
    if agent.rng.random() < FAILURE_RATE:
        error = agent.rng.choice(FAILURES)
        await demo.api.agent(agent.token, "POST", f"{path}/fail", {"error": error})
        demo.tally.failed += 1
        demo.say(f"{agent.name} failed {assignment['title']!r}: {error}")
    else:
        result = {"result": {"demo": True, "by": agent.name}}
        await demo.api.agent(agent.token, "POST", f"{path}/complete", result)
        demo.tally.completed += 1


async def _quiet_spell(demo: _Demo, agent: DemoAgent) -> bool:
    """Stop beating until the server's sweeper marks the agent offline (its work goes back to pending)
    and a little longer. Returns whether it was marked offline (not when the server takes longer than
    `pace.quiet_max`, or the run ends first)."""
    demo.say(f"{agent.name} goes quiet: no heartbeats until the server marks it offline")
    agent.quiet_requested = False
    began = time.monotonic()
    while time.monotonic() - began < demo.pace.quiet_max:
        if await demo.rest(demo.pace.quiet_check):
            return False
        if await _status_of(demo, agent) == "offline":
            demo.say(f"{agent.name} is offline: silent too long, its work went back to pending")
            await demo.rest(demo.pace.quiet_linger)
            agent.held, agent.work_beats = 0, {}
            return True
    return False


async def _status_of(demo: _Demo, agent: DemoAgent) -> str:
    """The agent's status as the server shows it (`?` when it cannot say)."""
    try:
        status: str = (await demo.api.operator("GET", f"/api/v1/agents/{agent.id}"))["status"]
    except client.ApiError:
        return "?"
    return status


async def _quiet_spells(demo: _Demo, fleet: list[DemoAgent], rng: random.Random) -> None:
    """Now and then one agent (one at a time) goes quiet."""
    if await demo.rest(demo.pace.first_quiet):
        return
    while True:
        present = [agent for agent in fleet if not agent.retired]
        if not present:
            return
        chosen = rng.choice(present)
        chosen.back.clear()
        chosen.quiet_requested = True
        await chosen.back.wait()  # an agent that stops (the run ends, its token is refused) sets it too
        if await demo.rest(rng.expovariate(1 / demo.pace.quiet_every)):
            return


async def _hand_out_work(demo: _Demo, fleet: list[DemoAgent], rng: random.Random) -> None:
    """The operator: new work every few seconds, some needing capabilities, while the backlog is short.

    The backlog counts this run's own work only: what earlier runs left must not stop this one."""
    present = {capability for agent in fleet for capability in agent.capabilities}
    jobs = [job for job in JOBS if set(job[1]) <= present]
    backlog = sum(agent.max_concurrent for agent in fleet) + len(fleet)
    tally = demo.tally
    while not await demo.rest(rng.expovariate(1 / demo.pace.work)):
        if tally.created - tally.completed - tally.failed >= backlog:
            continue
        title, needs = rng.choice(jobs)
        body = {
            "title": f"{title} #{tally.created + 1}",
            "required_capabilities": needs,
            "priority": rng.choice([0, 0, 0, 1, 5]),
            "payload": {"demo": True},
        }
        try:
            # The key makes a retry after a timeout safe: it cannot create the work twice.
            key = {"Idempotency-Key": f"demo-{uuid.uuid4()}"}
            await demo.api.operator("POST", "/api/v1/assignments", body, headers=key)
        except client.ApiError as error:
            demo.say(f"operator: creating work failed ({error})")
            continue
        tally.created += 1


async def _report(demo: _Demo) -> None:
    """A progress line every `pace.report` seconds: the board as the server sees it."""
    while not await demo.rest(demo.pace.report):
        try:
            summary = await demo.api.operator("GET", "/api/v1/agents/summary")
        except client.ApiError as error:
            demo.say(f"board: unavailable ({error})")
            continue
        demo.say(_board(summary, demo.tally))


# The order statuses are shown in on a progress line; any other comes last.
_SHOWN_ORDER = [
    *("online", "busy", "away", "paused", "draining", "offline", "never_contacted", "stale"),
    *("pending", "assigned", "accepted", "in_progress"),
]


def _board(summary: dict[str, Any], tally: Tally) -> str:
    def counts(by_status: dict[str, int]) -> str:
        ordered = sorted(
            by_status.items(),
            key=lambda item: _SHOWN_ORDER.index(item[0]) if item[0] in _SHOWN_ORDER else len(_SHOWN_ORDER),
        )
        shown = [f"{count} {status.replace('_', ' ')}" for status, count in ordered if count]
        return ", ".join(shown) or "none"

    return (
        f"board: agents {counts(summary['agents'])} | open work {counts(summary['assignments'])} | "
        f"{tally.created} created, {tally.completed} completed, {tally.failed} failed"
    )
