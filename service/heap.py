"""The garbage collector of a serving worker: what startup loaded is frozen out of its reach.

A full collection walks every object the collector tracks, and every request and stream of the worker
waits while it does. Measured under the SSE broadcast benchmark (docs/benchmarks.md): a worker's full
collections took 90 ms with no stream open, walking the modules, mappers and schemas loaded at startup,
and 100-240 ms with 1,000-2,000 streams, several a minute while streams were opening. That pause was the
p99 of event delivery.

So, once the app has started: collect, then freeze what is left (gc.freeze: a generation the collector
never walks); and let more objects be allocated between young collections, so what a request holds
across its awaits dies young instead of being promoted and walked by full collections. The frozen
startup heap is never freed; it lives as long as the worker anyway.
"""

from __future__ import annotations

import gc

from quart import Quart

# Allocations between young collections (CPython's default is 700); the older generations keep theirs.
YOUNG_THRESHOLD = 50_000


def init_app(app: Quart) -> None:
    """Register last: the freeze should take in what the other before_serving functions opened."""

    @app.before_serving
    async def _freeze_startup_heap() -> None:
        if app.testing:
            return  # the tests build hundreds of apps in one process: frozen, none would ever be freed
        freeze_startup_heap()


def freeze_startup_heap() -> None:
    """Collect, freeze what is left, and raise the young generation's threshold (see above). Also what
    the load driver does (tests/reliability), whose own pauses would count as the service's latency."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
