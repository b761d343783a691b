"""The Prometheus objects and the /metrics exposition.

With several hypercorn workers, set PROMETHEUS_MULTIPROC_DIR (an empty directory, wiped at each start)
before Python starts: every worker then writes its samples there and any worker's /metrics sums them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import Engine, event
from sqlalchemy.pool import ConnectionPoolEntry, Pool

# Requests that matched no route share one label, so unknown paths cannot grow the series count.
UNMATCHED = "<unmatched>"

http_requests_total = Counter(
    "http_requests_total", "HTTP requests answered, by route template.", ["method", "endpoint", "status"]
)
http_request_duration_seconds = Histogram(
    "http_request_duration_seconds",
    "Time from the request reaching the app to the response leaving it.",
    ["method", "endpoint"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
db_pool_size = Gauge("db_pool_size", "Configured pool size.", multiprocess_mode="livesum")
db_pool_checked_out = Gauge(
    "db_pool_checked_out", "Database connections in use.", multiprocess_mode="livesum"
)
db_pool_open = Gauge(
    "db_pool_open", "Database connections open (idle or in use).", multiprocess_mode="livesum"
)
db_statements_total = Counter(
    "db_statements_total",
    "Statements sent to the database (a batch of rows sent at once counts one; BEGIN and COMMIT none).",
)

sse_subscribers = Gauge("sse_subscribers", "Open server-sent event streams.", multiprocess_mode="livesum")
events_published_total = Counter("events_published_total", "Events the relay handed to the event log.")
event_delivery_lag_seconds = Histogram(
    "event_delivery_lag_seconds",
    "From the change's recording (in its transaction) to the event's first delivery to a subscriber here.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
# Sampled when /metrics is scraped, per worker process (one series per pid): a count that only grows
# across a soak means a leak (a task per stream or request left behind).
asyncio_tasks = Gauge(
    "asyncio_tasks", "Tasks alive on this worker's event loop when last scraped.", multiprocess_mode="liveall"
)


# The labelled series of each (method, route, status), looked up once: `labels()` validates its values and
# takes a lock on every call, a cost paid on every request. Routes are templates, so the keys are few.
_request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(method: str, endpoint: str, status: int, seconds: float) -> None:
    """Count an answered request and its duration."""
    key = (method, endpoint, status)
    series = _request_series.get(key)
    if series is None:
        series = _request_series[key] = (
            http_requests_total.labels(method, endpoint, str(status)),
            http_request_duration_seconds.labels(method, endpoint),
        )
    series[0].inc()
    series[1].observe(seconds)


def watch_pool(pool: Pool) -> None:
    """Keep the pool gauges current from the pool's own events (no polling, no scrape-time work)."""
    size = getattr(pool, "size", None)
    if callable(size):
        db_pool_size.inc(size())
    event.listen(pool, "checkout", _checked_out)
    event.listen(pool, "checkin", _checked_in)
    event.listen(pool, "connect", lambda *_: db_pool_open.inc())
    event.listen(pool, "close", lambda *_: db_pool_open.dec())
    event.listen(pool, "close_detached", lambda *_: db_pool_open.dec())


# Whether a pool entry's connection is counted as checked out. SQLAlchemy sends "checkin" also for a
# checkout that failed part-way (a request's deadline cancelling an idle connection's ping raised past
# the checkout listeners), so a bare inc/dec pair drifted below zero under load. record_info, unlike
# info, survives the entry's connection being invalidated while it is out.
_COUNTED = "metrics_checked_out"


def _checked_out(_: Any, record: ConnectionPoolEntry, __: Any) -> None:
    counted = record.record_info
    if counted is not None and not counted.get(_COUNTED):
        counted[_COUNTED] = True
        db_pool_checked_out.inc()


def _checked_in(_: Any, record: ConnectionPoolEntry) -> None:
    counted = record.record_info
    if counted is not None and counted.pop(_COUNTED, False):
        db_pool_checked_out.dec()


def watch_statements(engine: Engine) -> None:
    """Count every statement the engine sends: round trips per request, the cost that dominates here."""
    event.listen(engine, "before_cursor_execute", lambda *_: db_statements_total.inc())


def unwatch_pool(pool: Pool) -> None:
    size = getattr(pool, "size", None)
    if callable(size):
        db_pool_size.dec(size())


def exposition() -> tuple[bytes, str]:
    """The metrics text for a scrape, summed over every worker in multiprocess mode."""
    with contextlib.suppress(RuntimeError):  # no running loop: nothing to count
        asyncio_tasks.set(len(asyncio.all_tasks()))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
