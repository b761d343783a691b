"""Watching the SQL an engine runs and the commands a Redis client sends, for tests that pin how many
statements and round trips a path costs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from quart import Quart
from redis.asyncio import Redis
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL the engine runs meanwhile."""
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", note)


@contextmanager
def commands(app: Quart) -> Iterator[Counter[str]]:
    """The Redis commands the app sends meanwhile, by name (a script is one EVALSHA, whatever it runs)."""
    redis: Redis = app.extensions["redis"]
    seen: Counter[str] = Counter()
    original = redis.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        seen[str(args[0]).upper()] += 1
        return await original(*args, **options)

    redis.execute_command = counting  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        redis.execute_command = original  # type: ignore[method-assign]
