"""`python -m tests.performance [BENCHMARK ...] [--compare CHECKOUT]`: run benchmarks against the service
in its production shape and append their results to docs/benchmarks.md (see that document)."""

from __future__ import annotations

import argparse
import resource
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from . import assign, concurrency, costs, heartbeats, login, read, servers, sse
from .plan import Plan
from .report import Report

BENCHMARKS: dict[str, Callable[[Plan], Awaitable[Report]]] = {
    "read": read.run,
    "heartbeats": heartbeats.run,
    "assign": assign.run,
    "sse": sse.run,
    "login": login.run,
    "costs": costs.run,
    "concurrency": concurrency.run,
}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.performance", description=__doc__)
    parser.add_argument("benchmarks", nargs="*", help=f"any of {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--compare", type=Path, help="another checkout whose service runs alternately")
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds (default 2)")
    parser.add_argument(
        "--scale-rounds",
        type=int,
        default=1,
        help="alternated rounds of the SSE scale part (default 1; 0 leaves it out)",
    )
    parser.add_argument("--no-record", action="store_true", help="print only; leave docs/benchmarks.md")
    arguments = parser.parse_args()
    unknown = sorted(set(arguments.benchmarks) - set(BENCHMARKS))
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)}")
    return arguments


def _raise_file_limit() -> None:
    # Thousands of sockets (SSE subscribers) on both sides; servers inherit the limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _main(arguments: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install -y wrk (or run `make bench`)", file=sys.stderr)
        return 2
    plan = Plan(
        servers.Backends.from_environment(), arguments.rounds, arguments.compare, arguments.scale_rounds
    )
    await servers.create_database(plan.backends)
    # This checkout's migrations: a compared checkout must not need newer ones.
    servers.migrate(servers.service(), plan.backends)
    servers.ensure_admin(plan.backends)
    await servers.vacuum(plan.backends)
    for name in arguments.benchmarks or list(BENCHMARKS):
        started = time.monotonic()
        print(f"== {name}", flush=True)
        report = await BENCHMARKS[name](plan)
        if not arguments.no_record:
            report.append_to_document()
        print(f"== {name} took {time.monotonic() - started:.0f} s", flush=True)
    return 0


def _exit_on_terminate(signum: int, frame: object) -> None:
    # As for Ctrl-C: unwind, so every server and client process this run started is stopped.
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_terminate)
    _raise_file_limit()
    sys.exit(uvloop.run(_main(_arguments())))
