"""structlog configuration: JSON lines in production, readable console lines in development.

Named log.py, not logging.py, so it never shadows the standard library.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys whose values never reach a log line, wherever they appear in an event.
_SECRET_KEYS = frozenset(
    {
        "password",
        "current_password",
        "new_password",
        "token",
        "access_token",
        "refresh_token",
        "authorization",
        "secret",
        "secret_key",
        "agent_token",
        "cookie",
        "set-cookie",
        "password_hash",
    }
)
REDACTED = "[redacted]"


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event:
        if key.lower() in _SECRET_KEYS:
            event[key] = REDACTED
    return event


class _StderrLogger:
    """Where structlog's own loggers write: each rendered line to the current `sys.stderr`, looked up at
    every line (a test's captured stream, or a stream swapped after configuration, is the one written)."""

    def __init__(self, name: str = "") -> None:
        self.name = name  # for add_logger_name

    def msg(self, message: str) -> None:
        stream = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    debug = info = warning = error = critical = msg


# structlog's processors, filled by configure(). Loggers cache the chain on first use (the module-level
# ones live across app instances: tests build many), so configure() changes this one list in place.
_PROCESSORS: list[Any] = []
_threshold = logging.INFO
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def _at_threshold(_: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _LEVELS.get(method, logging.INFO) < _threshold:
        raise structlog.DropEvent
    return event


def configure(level: str, fmt: str) -> None:
    """structlog's lines and the standard library's (hypercorn, SQLAlchemy, asyncio) through one chain of
    processors and one renderer: the same JSON (or console) line whoever logs.

    structlog's own loggers (every line the service writes, among them the access line of each request)
    render and write directly: through the standard library's logging, each line cost a LogRecord, a
    copy of it in the formatter, the handler's lock and a second pass of processors - about three times
    as much, on every request.
    """
    global _threshold
    _threshold = logging.getLevelName(level)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    _PROCESSORS[:] = [_at_threshold, *shared, structlog.processors.format_exc_info, renderer]
    structlog.configure(
        processors=_PROCESSORS,
        logger_factory=_StderrLogger,
        # The level is _at_threshold's to check, so that a later configure() changes it for every logger.
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    # Skip what the renderer never prints (the stdlib's documented switches for the caller's thread,
    # process name and source position). The process id stays: hypercorn's own error log prints it.
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Our own access line replaces hypercorn's; quart's default handler would print tracebacks twice.
    for name in ("hypercorn.access", "quart.app", "quart.serving"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = name != "hypercorn.access"


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
