"""A blueprint of probe routes that exercise the cross-cutting machinery (errors, sessions, bodies).

Registered only by the tests that need it, on their own app; never part of the service."""

from __future__ import annotations

import asyncio
import contextlib

from pydantic import BaseModel, Field
from quart import Blueprint, current_app
from quart_schema import validate_request
from sqlalchemy import text

from service import db, errors, identity

blueprint = Blueprint("probes", __name__, url_prefix="/_probe")


class EchoIn(BaseModel):
    name: str = Field(min_length=1, max_length=20)
    count: int = Field(ge=0)


@blueprint.post("/echo")
@validate_request(EchoIn)
async def post_echo(data: EchoIn) -> dict[str, object]:
    return {"name": data.name, "count": data.count}


@blueprint.get("/boom")
async def get_boom() -> dict[str, object]:
    raise RuntimeError("secret internals: password=hunter2 at /srv/app.py line 3")


@blueprint.get("/conflict")
async def get_conflict() -> dict[str, object]:
    raise errors.Conflict("Username taken.", details={"field": "username"})


@blueprint.get("/query")
async def get_query() -> dict[str, object]:
    value = (await db.session().execute(text("SELECT 41 + 1"))).scalar_one()
    return {"value": value}


@blueprint.route("/untouched", methods=["GET", "POST"])
async def untouched() -> dict[str, object]:
    """Opens the request's sessions, as a view served from a cache does, and sends nothing."""
    db.session()
    db.read_session()
    return {}


@blueprint.route("/transaction", methods=["GET", "POST"])
async def transaction() -> dict[str, object]:
    """Whether this request's statements run inside a transaction block (opened by a BEGIN)."""
    session = db.session()
    if not db.is_postgres(session):
        connection = await session.connection()
        options = connection.sync_connection.get_execution_options()  # type: ignore[union-attr]
        return {"autocommit": options.get("isolation_level") == "AUTOCOMMIT"}
    # now() is the time the transaction began: one block gives two statements the same now().
    first = (await session.execute(text("SELECT now()"))).scalar_one()
    await asyncio.sleep(0.005)
    second = (await session.execute(text("SELECT now()"))).scalar_one()
    return {"autocommit": first != second}


@blueprint.post("/notes/<note>")
async def post_note(note: str) -> dict[str, object]:
    await db.session().execute(text("INSERT INTO probe_notes (body) VALUES (:body)"), {"body": note})
    return {"stored": note}


@blueprint.post("/notes/<note>/held")
async def post_note_held(note: str) -> dict[str, object]:
    """Write, then wait for the test (PROBE_HOLD: events "reached" and "release") before answering."""
    await db.session().execute(text("INSERT INTO probe_notes (body) VALUES (:body)"), {"body": note})
    reached, release = current_app.config["PROBE_HOLD"]
    reached.set()
    await release.wait()
    return {"stored": note}


@blueprint.post("/notes/<note>/swallowed")
async def post_note_past_a_swallowed_deadline(note: str) -> dict[str, object]:
    """Write, then wait past the request's deadline and swallow its cancellation, as a library that
    loses a cancellation leaves a request: it goes on to its commit with the deadline's scope spent."""
    await db.session().execute(text("INSERT INTO probe_notes (body) VALUES (:body)"), {"body": note})
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(10 * current_app.extensions["db"].request_timeout)
    return {"stored": note}


@blueprint.post("/notes/<note>/fail")
async def post_note_then_fail(note: str) -> dict[str, object]:
    await db.session().execute(text("INSERT INTO probe_notes (body) VALUES (:body)"), {"body": note})
    # A test may break the database here, between the write and the rollback of the failed request.
    before_rollback = current_app.config.get("PROBE_BEFORE_ROLLBACK")
    if before_rollback is not None:
        before_rollback()
    raise errors.Conflict("Refused after writing.")


@blueprint.get("/needs-permission")
@identity.permission_required("users:write")
async def get_needs_permission() -> dict[str, object]:
    return {"ok": True}


@blueprint.get("/needs-role")
@identity.role_required("admin")
async def get_needs_role() -> dict[str, object]:
    return {"ok": True}


@blueprint.get("/needs-viewer")
@identity.role_required("viewer")
async def get_needs_viewer() -> dict[str, object]:
    return {"ok": True}


@blueprint.get("/deadlock")
async def get_deadlock() -> dict[str, object]:
    """Two transactions that wait for each other: PostgreSQL breaks the deadlock by failing one."""
    engine = current_app.extensions["db"].engine
    async with engine.connect() as first, engine.connect() as second:
        await first.begin()
        await second.begin()
        await first.execute(text("SELECT pg_advisory_xact_lock(1)"))
        await second.execute(text("SELECT pg_advisory_xact_lock(2)"))
        outcomes = await asyncio.gather(
            first.execute(text("SELECT pg_advisory_xact_lock(2)")),
            second.execute(text("SELECT pg_advisory_xact_lock(1)")),
            return_exceptions=True,
        )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return {"deadlocked": False}
