"""The id that traces one request through logs, responses, errors and the events it causes."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

import structlog

# A caller's id is kept only when it is short and plain, so it cannot inject into logs or headers.
_SANE = re.compile(r"^[A-Za-z0-9._:\-]{8,128}$")

_current: ContextVar[str | None] = ContextVar("request_id", default=None)


def accept_or_make(incoming: str | None) -> str:
    """Keep a sane incoming X-Request-ID; otherwise make a new one."""
    if incoming is not None and _SANE.match(incoming):
        return incoming
    return uuid.uuid4().hex


def bind(request_id: str) -> None:
    """Make `request_id` current for this task: responses, errors and every log line carry it."""
    _current.set(request_id)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)


def current() -> str | None:
    """The id of the request being handled, or None outside a request."""
    return _current.get()
