"""An app worker killed with SIGKILL mid-load loses nothing it acknowledged and leaves the database
consistent; SIGTERM under load lets in-flight requests finish, ends streams with a retry hint and exits
in time. (The single-worker SIGTERM cases are in tests/test_server.py.)"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import httpx

from .conftest import Stack
from .load import HANG_SECONDS, MixedLoad
from .verdicts import (
    assert_nothing_lost,
    retry_unacknowledged,
    summary,
    wait_readiness,
)

# hypercorn.toml's graceful_timeout, and the slack to notice the exit.
GRACEFUL_SECONDS = 10.0


def _exit_code(stack: Stack, timeout: float) -> int | None:
    assert stack.service.process is not None
    try:
        return stack.service.process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


async def test_a_worker_killed_mid_load_loses_nothing_acknowledged(faults: Stack) -> None:
    service = faults.service
    async with MixedLoad(faults.fleet) as load:
        await asyncio.sleep(2)
        killed_at = time.monotonic()
        service.kill_worker()
        # hypercorn does not replace a dead worker: its master stops the other one and exits non-zero,
        # for the supervisor (systemd, the container runtime) to restart the instance. Play that part.
        exited = await asyncio.to_thread(_exit_code, faults, 20)
        print(f"master exit code after a worker's SIGKILL: {exited}")
        if exited is None:
            # Seen once in CI (3 December): the surviving worker did not exit within 20 s and requests
            # hung 10 s meanwhile. What the service logged then, less the access log, for the next look.
            said = [
                line
                for line in service.log.read_text(errors="replace").splitlines()
                if '"request"' not in line
            ]
            print("\n".join(said[-80:]))
        await asyncio.to_thread(service.stop)
        await asyncio.to_thread(service.start)
        restarted_at = time.monotonic()
        await asyncio.sleep(2)
        await load.quiesce()
        print(summary(load.answers))

        # Cut-off requests may get no answer; what did answer is never a 500 or a hang.
        answered = [a for a in load.answers if a.status]
        assert not [a for a in answered if a.status >= 500 and a.status != 503], summary(load.answers)
        assert not [a for a in load.answers if a.error == "ReadTimeout"], summary(load.answers)
        after = load.between(restarted_at + 0.5, time.monotonic())
        assert after, "no requests after the restart"
        assert all(a.status and a.status < 500 for a in after), summary(after)
        assert load.between(killed_at, restarted_at), "the kill happened outside the load"

        await retry_unacknowledged(load)
        # Every stream was cut off with its server; each resumed with Last-Event-ID (checked below).
        assert all(listener.connects > 1 for listener in load.listeners)
        await assert_nothing_lost(faults.engine(), load)


async def test_sigterm_under_load_finishes_in_flight_requests_and_exits_in_time(faults: Stack) -> None:
    service = faults.service
    # Every database round trip a quarter second slower: requests are surely in flight at the signal.
    await asyncio.to_thread(faults.postgres_proxy.latency, 0.25)
    url = service.url
    async with MixedLoad(faults.fleet, concurrency=0, listeners=3) as streams:
        async with httpx.AsyncClient(timeout=HANG_SECONDS) as http:
            await asyncio.sleep(1)  # the listeners' streams are open
            in_flight = [
                asyncio.create_task(
                    http.get(f"{url}/api/v1/assignments?per_page=5", headers=faults.fleet.operator)
                )
                for _ in range(8)
            ]
            await asyncio.sleep(0.3)
            assert not any(task.done() for task in in_flight)
            signalled = time.monotonic()
            service.signal_master(signal.SIGTERM)
            answers = await asyncio.gather(*in_flight, return_exceptions=True)
            exit_code = await asyncio.to_thread(_exit_code, faults, GRACEFUL_SECONDS + 5)
            exit_seconds = time.monotonic() - signalled
        await streams.stop()
    print(f"exit {exit_code} after {exit_seconds:.1f} s; in flight: {answers}")
    assert [getattr(a, "status_code", a) for a in answers] == [200] * len(answers)
    assert exit_code == 0
    for listener in streams.listeners:
        # The opening hint (3000 ms), then the parting one, spread over 0.5-3 s, before the stream ends.
        assert len(listener.retries) >= 2, listener.retries
        assert 500 <= listener.retries[1] <= 3000, listener.retries
    await asyncio.to_thread(faults.postgres_proxy.pass_through)
    await asyncio.to_thread(service.stop)
    await asyncio.to_thread(service.start)
    await wait_readiness(url, 200, timeout=20)
