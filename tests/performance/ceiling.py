"""The read benchmark's ceiling: bare Quart under the same hypercorn settings, the same SQL as the service's
agent reads run through raw asyncpg (one pool per worker), the same JSON envelope, and nothing else: no
middleware, no authentication, no rate limit, no presence lookup, no ORM, no validation.

Served as `hypercorn --config hypercorn.toml tests/performance/ceiling.py:app` with DATABASE_URL set.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from quart import Quart, request

app = Quart(__name__)
app.json.sort_keys = False  # type: ignore[attr-defined]  # as the service: the envelope's order

_COLUMNS = (
    "id, name, capabilities, max_concurrent, open_assignments, metadata, reported_status, mode, "
    "pause_note, resume_at, status_changed_at, last_heartbeat_at, created_at, updated_at, deleted_at"
)
# What the service's session.get(Agent, id) and its agent list (sorted by name, the default) send.
_ONE = f"SELECT {_COLUMNS} FROM agents WHERE id = $1"  # noqa: S608 - constant text
_COUNT = "SELECT count(*) FROM (SELECT id FROM agents WHERE deleted_at IS NULL) AS anon_1"
_PAGE = (
    f"SELECT {_COLUMNS} FROM agents WHERE deleted_at IS NULL "  # noqa: S608 - constant text
    "ORDER BY lower(name) ASC, id LIMIT $1 OFFSET $2"
)
_BEATING = ("online", "busy", "away")
_pool: asyncpg.Pool | None = None


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _agent(row: asyncpg.Record) -> dict[str, Any]:
    status = row["mode"] if row["mode"] != "active" and row["reported_status"] in _BEATING else None
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "capabilities": row["capabilities"],
        "max_concurrent": row["max_concurrent"],
        "open_assignments": row["open_assignments"],
        "metadata": row["metadata"],
        "status": status or row["reported_status"],
        "reported_status": row["reported_status"],
        "mode": row["mode"],
        "pause_note": row["pause_note"],
        "resume_at": _time(row["resume_at"]),
        "load": None,
        "last_heartbeat_at": _time(row["last_heartbeat_at"]),
        "status_changed_at": _time(row["status_changed_at"]),
        "created_at": _time(row["created_at"]),
        "updated_at": _time(row["updated_at"]),
    }


def _metadata() -> dict[str, Any]:
    return {"timestamp": _time(datetime.now(UTC)), "request_id": uuid.uuid4().hex}


async def _decode_jsonb(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


@app.before_serving
async def _open() -> None:
    global _pool
    dsn = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    # The service's pool: DATABASE_POOL_SIZE (10) + DATABASE_MAX_OVERFLOW (5) per process.
    _pool = await asyncpg.create_pool(dsn, min_size=10, max_size=15, init=_decode_jsonb)


@app.after_serving
async def _close() -> None:
    if _pool is not None:
        await _pool.close()


def _database() -> asyncpg.Pool:
    assert _pool is not None
    return _pool


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/api/v1/agents/<uuid:agent_id>")
async def get_agent(agent_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    row = await _database().fetchrow(_ONE, agent_id)
    if row is None or row["deleted_at"] is not None:
        return {"status": "error", "error": {"code": "NOT_FOUND"}}, 404
    return {"status": "success", "data": _agent(row), "message": None, "metadata": _metadata()}, 200


@app.get("/api/v1/agents")
async def list_agents() -> dict[str, Any]:
    page = int(request.args.get("page", 1))
    per_page = int(request.args.get("per_page", 20))
    async with _database().acquire() as connection:
        total = await connection.fetchval(_COUNT)
        rows = await connection.fetch(_PAGE, per_page, (page - 1) * per_page)
    pages = math.ceil(total / per_page) if total else 0
    return {
        "status": "success",
        "data": [_agent(row) for row in rows],
        "pagination": {
            "page": page,
            "per_page": per_page,
            "total_pages": pages,
            "total_items": total,
            "has_next": page < pages,
            "has_prev": page > 1,
        },
        "metadata": _metadata(),
    }
