"""Background loops (outbox relay, heartbeat sweeper, notification delivery): started in before_serving,
stopped in after_serving, each a round repeated on an interval that survives its own failures.

A round returns whether it did a full batch; then the next round starts at once instead of sleeping, so
a backlog drains at full speed and an idle loop costs one query per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

from quart import Quart

from service import log

logger = log.get(__name__)

Round = Callable[[], Awaitable[bool]]


@dataclass
class Loop:
    name: str
    round: Round
    interval: float
    # The longest wait between failing rounds (a dependency is down).
    max_backoff: float = 30.0
    # Set to run the next round now rather than after the interval (e.g. an event was just written).
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    # Set by Loops.stop before it cancels the task: a cancellation swallowed on the way (Python 3.11's
    # asyncio.wait_for loses one that races with its awaitable finishing, and libraries' awaits may too)
    # still ends the loop at its next turn instead of leaving stop() waiting forever.
    stopping: bool = False
    # Housekeeping waits one interval before its first round: nothing is urgent at start, and instances
    # started together do not all do it at once.
    wait_first: bool = False
    # After a wake, how long to let more work arrive before the round: for loops whose every round costs
    # a fixed few statements whatever it carries, and whose work is not in a hurry (notifications).
    gather: float = 0.0

    async def run(self) -> None:
        failures = 0
        if self.wait_first:
            await self._rest(self.interval)
        while not self.stopping:
            # Cleared before the round, not after: a wake that comes while the round runs (an event
            # committed just after the round read the outbox) runs the next round at once.
            self.wake.clear()
            try:
                busy = await self.round()
                if failures:
                    logger.info("background_recovered", loop=self.name)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                busy = False
                if failures == 1 or failures % 60 == 0:
                    logger.warning("background_round_failed", loop=self.name, error=repr(error)[:300])
            if busy:
                await asyncio.sleep(0)
                continue
            # Back off while failing (a dependency is down), up to max_backoff; otherwise the interval.
            delay = (
                min(self.max_backoff, self.interval * 2 ** min(failures, 5)) if failures else self.interval
            )
            if await self._rest(delay) and self.gather:
                await asyncio.sleep(self.gather)

    async def _rest(self, seconds: float) -> bool:
        """Wait `seconds` or until woken; whether woken. asyncio.timeout rather than wait_for, which in
        Python 3.11 can swallow a cancellation that comes as the wake does."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.wake.wait()
        return self.wake.is_set()


class Loops:
    """The app's background loops: `app.extensions["loops"]`."""

    def __init__(self) -> None:
        self._loops: dict[str, Loop] = {}

    def add(
        self,
        name: str,
        round_: Round,
        interval: float,
        max_backoff: float = 30.0,
        *,
        wait_first: bool = False,
        gather: float = 0.0,
    ) -> None:
        self._loops[name] = Loop(name, round_, interval, max_backoff, wait_first=wait_first, gather=gather)

    def wake(self, name: str) -> None:
        loop = self._loops.get(name)
        if loop is not None:
            loop.wake.set()

    def start(self) -> None:
        for loop in self._loops.values():
            loop.wake = asyncio.Event()  # bound to the serving loop
            loop.stopping = False
            loop.task = asyncio.get_running_loop().create_task(loop.run(), name=f"background:{loop.name}")

    async def stop(self) -> None:
        tasks = [loop.task for loop in self._loops.values() if loop.task is not None]
        for loop in self._loops.values():
            loop.stopping = True
        for task in tasks:
            task.cancel()
        # gather, not a suppressed CancelledError per task: that would also swallow a cancellation of
        # the caller itself.
        await asyncio.gather(*tasks, return_exceptions=True)
        for loop in self._loops.values():
            loop.task = None


def init_app(app: Quart) -> Loops:
    """Create the registry; modules add their loops to it before serving starts.

    while_serving, not before/after_serving: the loops start once every before_serving hook has opened
    the database and Redis, and stop before any after_serving hook closes them.
    """
    loops = Loops()
    app.extensions["loops"] = loops

    @app.while_serving
    async def _run() -> AsyncGenerator[None, None]:
        loops.start()
        yield
        await loops.stop()

    return loops


def loops_of(app: Quart) -> Loops:
    loops: Loops = app.extensions["loops"]
    return loops
