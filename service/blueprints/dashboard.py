"""The operator dashboard: server-rendered pages at / (the fleet summary and the live agent board) and
/assignments, kept live by static/dashboard.js through GET /api/v1/events and acting through the JSON
API.

Signing in opens a login session, as POST /auth/login does, held in quart-auth's cookie; signing out
ends it, which closes its event streams too. The forms and the script's API calls carry the session's
CSRF token (service/csrf.py). A page shows actions only to those who may take them, and the API refuses
the rest anyway. Hidden from the OpenAPI document: these are pages, not API.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from quart import Blueprint, make_response, redirect, render_template, request, url_for
from quart.typing import ResponseReturnValue
from quart_auth import login_user, logout_user
from quart_schema import hide

from service import (
    agent_cache,
    config,
    csrf,
    db,
    errors,
    identity,
    permissions,
    presence,
    rate_limits,
    tokens,
)
from service.schemas.agents import AgentOut, AgentQuery, SummaryOut
from service.schemas.assignments import AssignmentOut, AssignmentQuery
from service.schemas.users import LoginIn
from service.services import accounts, agents, assignments

blueprint = Blueprint("dashboard", __name__)

# One page of each list; the script keeps them current (the API paginates beyond).
SHOWN = 100


@blueprint.get("/login")
@hide
async def get_login() -> ResponseReturnValue:
    if await _caller() is not None:
        return _redirect("dashboard.get_board")
    return await _login_page()


@blueprint.post("/login")
@rate_limits.login_limits
@hide
async def post_login() -> ResponseReturnValue:
    await csrf.require_login_token()
    form = await request.form
    username = form.get("username", "")
    try:
        data = LoginIn(username=username, password=form.get("password", ""))
    except ValidationError:
        return await _login_page("Enter your username and password.", 400, username)
    settings = config.current()
    try:
        pair = await accounts.login(db.session(), settings, data.username, data.password, identity.client())
    except errors.Unauthorized as refused:
        return await _login_page(refused.message, 401, username)
    # The access token names the login session just opened; the browser holds that id, signed, instead.
    session_id = tokens.decode_access_token(settings.secret_key, pair.access_token).session_id
    login_user(identity.Principal(str(session_id)))
    return _redirect("dashboard.get_board")


@blueprint.post("/logout")
@hide
async def post_logout() -> ResponseReturnValue:
    if await _caller() is not None:
        caller = await identity.current()  # refuses a form without the session's CSRF token
        await accounts.logout(db.session(), caller, identity.client())
    logout_user()
    return _redirect("dashboard.get_login")


@blueprint.get("/")
@hide
async def get_board() -> ResponseReturnValue:
    caller = await _caller()
    if caller is None:
        return _redirect("dashboard.get_login")
    _require(caller, permissions.AGENTS_READ)
    return await render_template(
        "dashboard/board.html",
        agents=await _agents(),
        summary=SummaryOut(**await agents.summary(db.session())),
        **await _context(caller),
    )


@blueprint.get("/assignments")
@hide
async def get_assignments() -> ResponseReturnValue:
    caller = await _caller()
    if caller is None:
        return _redirect("dashboard.get_login")
    _require(caller, permissions.ASSIGNMENTS_READ)
    found, _ = await assignments.list_assignments(db.session(), AssignmentQuery(per_page=SHOWN))
    shown = await _agents() if caller.can(permissions.AGENTS_READ) else []
    return await render_template(
        "dashboard/assignments.html",
        assignments=[AssignmentOut.model_validate(assignment) for assignment in found],
        agents=shown,
        names={agent.id: agent.name for agent in shown},
        **await _context(caller),
    )


async def _caller() -> identity.Identity | None:
    return await identity.current_principal().identity()


def _redirect(endpoint: str) -> ResponseReturnValue:
    # 303: after a form's POST the browser follows with a GET.
    return redirect(url_for(endpoint), 303)


def _require(caller: identity.Identity, permission: str) -> None:
    if not caller.can(permission):
        raise errors.Forbidden(details={"missing_permissions": [permission]})


async def _agents() -> list[AgentOut]:
    query = AgentQuery(per_page=SHOWN)
    views, _ = await agents.list_views(db.session(), presence.current(), agent_cache.current(), query)
    return views


async def _context(caller: identity.Identity) -> dict[str, Any]:
    user = await accounts.get_user(db.session(), caller.user_id)
    return {
        "user": user,
        "csrf_token": csrf.session_token(caller.session_id) if caller.session_id else "",
        "can_write_agents": caller.can(permissions.AGENTS_WRITE),
        "can_write_assignments": caller.can(permissions.ASSIGNMENTS_WRITE),
    }


async def _login_page(error: str | None = None, status: int = 200, username: str = "") -> ResponseReturnValue:
    token, new_cookie = csrf.login_form()
    page = await render_template("dashboard/login.html", csrf_token=token, error=error, username=username)
    response = await make_response(page, status)
    if new_cookie is not None:
        response.set_cookie(
            csrf.LOGIN_COOKIE,
            new_cookie,
            path=url_for("dashboard.get_login"),
            httponly=True,
            secure=config.current().is_production,
            samesite="Strict",
        )
    return response
