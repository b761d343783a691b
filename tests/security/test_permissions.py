"""The role-by-operation matrix: every role gets exactly the answer its permissions (the roles table the
migrations seed) call for, on every operation of the OpenAPI document; and no `{id}` route serves another
user's or another agent's objects."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from quart.testing import QuartClient
from sqlalchemy import select

from service import permissions
from service.application import Switchboard
from service.models.users import Role

from ..accounts import PASSWORD, admin_headers, bearer, login, register, signed_in
from ..fleet import beat, make_agent, make_work

PUBLIC = "public"  # no credentials at all
LOGIN = "login"  # any signed-in user, acting on their own things
AGENT = "agent"  # an agent's own token only: users are 401
# What each operation asks of a user: one of the above or a permission. Written out by hand, so that
# removing a route's guard makes the matrix fail rather than follow it.
GUARDS: dict[str, str] = {
    "GET /health": PUBLIC,
    "GET /readiness": PUBLIC,
    "POST /auth/register": PUBLIC,
    "POST /auth/login": PUBLIC,
    "POST /auth/refresh": PUBLIC,
    "POST /auth/password/forgot": PUBLIC,
    "POST /auth/password/reset": PUBLIC,
    "POST /auth/verify": PUBLIC,
    "POST /auth/verify/resend": PUBLIC,
    "POST /api/v1/agents/register": PUBLIC,
    "POST /auth/logout": LOGIN,
    "GET /auth/me": LOGIN,
    "POST /auth/tokens": LOGIN,
    "GET /auth/tokens": LOGIN,
    "DELETE /auth/tokens/{token_id}": LOGIN,
    "GET /api/v1/users": LOGIN,
    "POST /api/v1/users": permissions.USERS_WRITE,
    "GET /api/v1/users/{user_id}": LOGIN,
    "PATCH /api/v1/users/{user_id}": LOGIN,
    "PUT /api/v1/users/{user_id}": LOGIN,
    "DELETE /api/v1/users/{user_id}": permissions.USERS_WRITE,
    "POST /api/v1/users/{user_id}/restore": permissions.USERS_WRITE,
    "GET /api/v1/users/{user_id}/sessions": LOGIN,
    "DELETE /api/v1/users/{user_id}/sessions": LOGIN,
    "DELETE /api/v1/users/{user_id}/sessions/{session_id}": LOGIN,
    "GET /api/v1/audit": permissions.AUDIT_READ,
    "POST /api/v1/agents": permissions.AGENTS_WRITE,
    "GET /api/v1/agents": permissions.AGENTS_READ,
    "GET /api/v1/agents/summary": permissions.AGENTS_READ,
    "POST /api/v1/agents/registration-tokens": permissions.AGENTS_WRITE,
    "GET /api/v1/agents/registration-tokens": permissions.AGENTS_WRITE,
    "DELETE /api/v1/agents/registration-tokens/{token_id}": permissions.AGENTS_WRITE,
    "GET /api/v1/agents/{agent_id}": permissions.AGENTS_READ,
    "PATCH /api/v1/agents/{agent_id}": permissions.AGENTS_WRITE,
    "DELETE /api/v1/agents/{agent_id}": permissions.AGENTS_WRITE,
    "POST /api/v1/agents/{agent_id}/token": permissions.AGENTS_WRITE,
    "POST /api/v1/agents/{agent_id}/heartbeat": AGENT,
    "GET /api/v1/agents/{agent_id}/assignments": permissions.AGENTS_READ,
    "POST /api/v1/assignments": permissions.ASSIGNMENTS_WRITE,
    "GET /api/v1/assignments": permissions.ASSIGNMENTS_READ,
    "GET /api/v1/assignments/{assignment_id}": permissions.ASSIGNMENTS_READ,
    "POST /api/v1/assignments/{assignment_id}/accept": permissions.ASSIGNMENTS_WRITE,
    "POST /api/v1/assignments/{assignment_id}/start": permissions.ASSIGNMENTS_WRITE,
    "POST /api/v1/assignments/{assignment_id}/complete": permissions.ASSIGNMENTS_WRITE,
    "POST /api/v1/assignments/{assignment_id}/fail": permissions.ASSIGNMENTS_WRITE,
    "POST /api/v1/assignments/{assignment_id}/cancel": permissions.ASSIGNMENTS_WRITE,
    "POST /api/v1/assignments/{assignment_id}/reassign": permissions.ASSIGNMENTS_WRITE,
    "GET /api/v1/events": permissions.EVENTS_READ,
    "GET /api/v1/notifications": permissions.AGENTS_WRITE,
    "POST /api/v1/notifications/{notification_id}/retry": permissions.AGENTS_WRITE,
}
# Served but not part of the JSON API: the docs, the metrics scrape and the cookie-session dashboard
# (whose guards tests/blueprints/test_dashboard.py covers).
OUTSIDE_THE_API = ("static", "openapi", "health.get_metrics", "docs.", "dashboard.")

_names = (f"n{number}" for number in itertools.count())


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_names)}"


@dataclass
class World:
    """The caller under test and an admin who makes the objects each request acts on."""

    client: QuartClient
    admin: dict[str, str]
    caller: dict[str, str]
    username: str
    user_id: str

    async def fresh_login(self) -> dict[str, str]:
        """Another session of the caller, for requests that end the session they use."""
        return bearer((await login(self.client, self.username))["access_token"])

    async def created(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        response = await self.client.post(path, json=body, headers=headers or self.admin)
        assert response.status_code == 201, await response.get_data()
        return (await response.get_json())["data"]

    async def victim(self, deleted: bool = False) -> str:
        user_id: str = (await register(self.client, unique("victim")))["id"]
        if deleted:
            gone = await self.client.delete(f"/api/v1/users/{user_id}", headers=self.admin)
            assert gone.status_code == 200
        return user_id

    async def agent(self) -> str:
        agent_id, _ = await make_agent(self.client, self.admin, unique("agent"))
        return agent_id

    async def work(self, started: bool = False) -> str:
        """Work assigned to an online agent (and started, when asked)."""
        agent_id, token = await make_agent(self.client, self.admin, unique("worker"), max_concurrent=50)
        await beat(self.client, agent_id, token)
        work_id: str = (await make_work(self.client, self.admin, agent_id=agent_id))["id"]
        if started:
            moved = await self.client.post(f"/api/v1/assignments/{work_id}/start", headers=self.admin)
            assert moved.status_code == 200
        return work_id


@dataclass
class Call:
    path: str
    body: dict[str, Any] | None = None
    headers: dict[str, str] | None = None  # instead of the caller's usual ones
    success: int = 200  # what a caller who may do it gets for this request


Prepare = Callable[[World], Awaitable[Call]]


async def _token_of_my_own(world: World) -> Call:
    token = await world.created(
        "/auth/tokens", {"name": unique("t"), "scopes": ["agents:read"]}, world.caller
    )
    return Call(f"/auth/tokens/{token['id']}")


async def _one_of_my_sessions(world: World) -> Call:
    other = await world.fresh_login()
    session_id = jwt.decode(
        other["Authorization"].removeprefix("Bearer "), options={"verify_signature": False}
    )
    return Call(f"/api/v1/users/{world.user_id}/sessions/{session_id['jti']}")


async def _registration_token(world: World) -> Call:
    token = await world.created("/api/v1/agents/registration-tokens", {"name": unique("reg")})
    return Call(f"/api/v1/agents/registration-tokens/{token['id']}")


def _on_agent(suffix: str = "", body: dict[str, Any] | None = None) -> Prepare:
    async def prepare(world: World) -> Call:
        return Call(f"/api/v1/agents/{await world.agent()}{suffix}", body)

    return prepare


def _on_work(suffix: str, body: dict[str, Any] | None = None, started: bool = False) -> Prepare:
    async def prepare(world: World) -> Call:
        return Call(f"/api/v1/assignments/{await world.work(started)}{suffix}", body)

    return prepare


def _on_victim(suffix: str = "", deleted: bool = False) -> Prepare:
    async def prepare(world: World) -> Call:
        return Call(f"/api/v1/users/{await world.victim(deleted)}{suffix}")

    return prepare


def _fixed(call: Callable[[World], Call]) -> Prepare:
    async def prepare(world: World) -> Call:
        return call(world)

    return prepare


async def _logout(world: World) -> Call:
    return Call("/auth/logout", headers=await world.fresh_login())


async def _end_my_sessions(world: World) -> Call:
    return Call(f"/api/v1/users/{world.user_id}/sessions", headers=await world.fresh_login())


# How to make a request of each guarded operation that a caller allowed to make it gets `success` for.
REQUESTS: dict[str, Prepare] = {
    "POST /auth/logout": _logout,
    "GET /auth/me": _fixed(lambda w: Call("/auth/me")),
    "POST /auth/tokens": _fixed(
        lambda w: Call("/auth/tokens", {"name": unique("t"), "scopes": ["agents:read"]}, success=201)
    ),
    "GET /auth/tokens": _fixed(lambda w: Call("/auth/tokens")),
    "DELETE /auth/tokens/{token_id}": _token_of_my_own,
    "GET /api/v1/users": _fixed(lambda w: Call("/api/v1/users")),
    "POST /api/v1/users": _fixed(
        lambda w: Call(
            "/api/v1/users",
            {"username": (name := unique("made")), "email": f"{name}@example.com", "password": PASSWORD},
            success=201,
        )
    ),
    "GET /api/v1/users/{user_id}": _fixed(lambda w: Call(f"/api/v1/users/{w.user_id}")),
    "PATCH /api/v1/users/{user_id}": _fixed(
        lambda w: Call(f"/api/v1/users/{w.user_id}", {"username": w.username})
    ),
    "PUT /api/v1/users/{user_id}": _fixed(
        lambda w: Call(
            f"/api/v1/users/{w.user_id}", {"username": w.username, "email": f"{w.username}@example.com"}
        )
    ),
    "DELETE /api/v1/users/{user_id}": _on_victim(),
    "POST /api/v1/users/{user_id}/restore": _on_victim("/restore", deleted=True),
    "GET /api/v1/users/{user_id}/sessions": _fixed(lambda w: Call(f"/api/v1/users/{w.user_id}/sessions")),
    "DELETE /api/v1/users/{user_id}/sessions": _end_my_sessions,
    "DELETE /api/v1/users/{user_id}/sessions/{session_id}": _one_of_my_sessions,
    "GET /api/v1/audit": _fixed(lambda w: Call("/api/v1/audit")),
    "POST /api/v1/agents": _fixed(lambda w: Call("/api/v1/agents", {"name": unique("agent")}, success=201)),
    "GET /api/v1/agents": _fixed(lambda w: Call("/api/v1/agents")),
    "GET /api/v1/agents/summary": _fixed(lambda w: Call("/api/v1/agents/summary")),
    "POST /api/v1/agents/registration-tokens": _fixed(
        lambda w: Call("/api/v1/agents/registration-tokens", {"name": unique("reg")}, success=201)
    ),
    "GET /api/v1/agents/registration-tokens": _fixed(lambda w: Call("/api/v1/agents/registration-tokens")),
    "DELETE /api/v1/agents/registration-tokens/{token_id}": _registration_token,
    "GET /api/v1/agents/{agent_id}": _on_agent(),
    "PATCH /api/v1/agents/{agent_id}": _on_agent(body={"max_concurrent": 2}),
    "DELETE /api/v1/agents/{agent_id}": _on_agent(),
    "POST /api/v1/agents/{agent_id}/token": _on_agent("/token"),
    "POST /api/v1/agents/{agent_id}/heartbeat": _on_agent("/heartbeat", {"status": "online"}),
    "GET /api/v1/agents/{agent_id}/assignments": _on_agent("/assignments"),
    "POST /api/v1/assignments": _fixed(lambda w: Call("/api/v1/assignments", {"title": "job"}, success=201)),
    "GET /api/v1/assignments": _fixed(lambda w: Call("/api/v1/assignments")),
    "GET /api/v1/assignments/{assignment_id}": _on_work(""),
    "POST /api/v1/assignments/{assignment_id}/accept": _on_work("/accept"),
    "POST /api/v1/assignments/{assignment_id}/start": _on_work("/start"),
    "POST /api/v1/assignments/{assignment_id}/complete": _on_work("/complete", {}, started=True),
    "POST /api/v1/assignments/{assignment_id}/fail": _on_work("/fail", {"error": "disk full"}, started=True),
    "POST /api/v1/assignments/{assignment_id}/cancel": _on_work("/cancel", {}),
    "POST /api/v1/assignments/{assignment_id}/reassign": _on_work("/reassign", {}),
    "GET /api/v1/events": _fixed(lambda w: Call("/api/v1/events")),
    "GET /api/v1/notifications": _fixed(lambda w: Call("/api/v1/notifications")),
    # No failed notification to retry: a caller who may retry learns there is no such one.
    "POST /api/v1/notifications/{notification_id}/retry": _fixed(
        lambda w: Call(f"/api/v1/notifications/{uuid.uuid4()}/retry", success=404)
    ),
}


async def _operations(client: QuartClient) -> set[str]:
    document = await (await client.get("/openapi.json")).get_json()
    return {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }


async def test_the_matrix_covers_every_route(app: Switchboard, client: QuartClient) -> None:
    """Every operation of the document is in the table, and every route of the app is in the document."""
    operations = await _operations(client)
    assert operations == set(GUARDS)
    assert set(GUARDS) - {op for op, guard in GUARDS.items() if guard == PUBLIC} == set(REQUESTS) - {
        op for op in REQUESTS if GUARDS[op] == PUBLIC
    }
    routes = {
        f"{method} {rule.rule.replace('<uuid:', '{').replace('<', '{').replace('>', '}')}"
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"} and not rule.endpoint.startswith(OUTSIDE_THE_API)
    }
    assert routes == operations


async def _role_permissions(app: Switchboard) -> dict[str, frozenset[str]]:
    async with app.extensions["db"].sessionmaker() as session:
        roles = (await session.execute(select(Role))).scalars().all()
    return {role.name: frozenset(role.permissions) for role in roles}


@pytest.mark.parametrize("role", [permissions.ADMIN, permissions.OPERATOR, permissions.VIEWER])
async def test_every_role_gets_exactly_what_its_permissions_allow(
    app: Switchboard, client: QuartClient, role: str
) -> None:
    granted = (await _role_permissions(app))[role]
    admin = await admin_headers(app, client)
    username = f"the_{role}"
    caller = await signed_in(client, username, role, app)
    user_id = (await (await client.get("/auth/me", headers=caller)).get_json())["data"]["id"]
    world = World(client, admin, caller, username, user_id)
    wrong: list[str] = []
    for operation, prepare in REQUESTS.items():
        method, _ = operation.split(" ", 1)
        call = await prepare(world)
        guard = GUARDS[operation]
        if operation == "GET /api/v1/events":
            status = await _stream_status(client, call.headers or world.caller)
            code = None
        else:
            response = await client.open(
                call.path, method=method, json=call.body, headers=call.headers or world.caller
            )
            status = response.status_code
            code = (
                (await response.get_json() or {}).get("error", {}).get("code") if response.is_json else None
            )
        if guard == AGENT:
            expected, expected_code = 401, "UNAUTHORIZED"
        elif guard == LOGIN or guard in granted:
            expected, expected_code = call.success, None
        else:
            expected, expected_code = 403, "FORBIDDEN"
        if status != expected or (expected_code is not None and code != expected_code):
            wrong.append(f"{operation}: {status} {code}, expected {expected}")
        if operation == "DELETE /api/v1/users/{user_id}/sessions" and status == 200:
            world.caller = await world.fresh_login()  # every session of the caller ended, this one too
    assert not wrong, "\n".join(wrong)


async def _stream_status(client: QuartClient, headers: dict[str, str]) -> int:
    """The stream's status (it never ends, so the first bytes are all this waits for)."""
    async with client.request("/api/v1/events", headers=headers) as connection:
        await connection.send_complete()
        await asyncio.wait_for(connection.receive(), 5)
        await connection.disconnect()
    assert connection.status_code is not None
    return connection.status_code


async def test_id_routes_refuse_another_users_objects(app: Switchboard, client: QuartClient) -> None:
    """A viewer and an operator (who may read users, not change them) reach none of another user's things."""
    await admin_headers(app, client)
    owner = await signed_in(client, "owner")
    owner_id = (await (await client.get("/auth/me", headers=owner)).get_json())["data"]["id"]
    owner_session = jwt.decode(owner["Authorization"][7:], options={"verify_signature": False})["jti"]
    token = await client.post("/auth/tokens", json={"name": "ci", "scopes": ["agents:read"]}, headers=owner)
    token_id = (await token.get_json())["data"]["id"]
    for role, readable in ((permissions.VIEWER, 404), (permissions.OPERATOR, 200)):
        other = await signed_in(client, f"nosy_{role}", role, app)
        other_id = (await (await client.get("/auth/me", headers=other)).get_json())["data"]["id"]
        # Users who may read users see them; changing them needs users:write (403, the user being
        # visible), and the rest of a stranger's things stay out of sight (404).
        changing = 404 if readable == 404 else 403
        attempts = [
            ("GET", f"/api/v1/users/{owner_id}", None, readable),
            ("PATCH", f"/api/v1/users/{owner_id}", {"username": "taken_over"}, changing),
            ("PUT", f"/api/v1/users/{owner_id}", {"username": "taken", "email": "t@example.com"}, changing),
            ("GET", f"/api/v1/users/{owner_id}/sessions", None, changing),
            ("DELETE", f"/api/v1/users/{owner_id}/sessions", None, changing),
            ("DELETE", f"/api/v1/users/{owner_id}/sessions/{owner_session}", None, changing),
            ("DELETE", f"/api/v1/users/{other_id}/sessions/{owner_session}", None, 404),
            ("DELETE", f"/auth/tokens/{token_id}", None, 404),
        ]
        for method, path, body, expected in attempts:
            response = await client.open(path, method=method, json=body, headers=other)
            assert response.status_code == expected, (role, method, path, await response.get_data())
    assert (await client.get("/auth/me", headers=owner)).status_code == 200  # nothing was ended
    listed = await client.get("/auth/tokens", headers=owner)
    assert [item["id"] for item in (await listed.get_json())["data"]] == [token_id]


async def test_id_routes_refuse_another_agents_objects(app: Switchboard, client: QuartClient) -> None:
    """An agent's token reaches its own record and work only: another agent's are not found."""
    admin = await admin_headers(app, client)
    _, my_token = await make_agent(client, admin, "mine")
    theirs, their_token = await make_agent(client, admin, "theirs", max_concurrent=10)
    await beat(client, theirs, their_token)
    works = [(await make_work(client, admin, agent_id=theirs))["id"] for _ in range(5)]
    attempts = [
        ("POST", f"/api/v1/agents/{theirs}/heartbeat", {"status": "away"}, 404),
        ("POST", f"/api/v1/assignments/{works[0]}/accept", None, 404),
        ("POST", f"/api/v1/assignments/{works[1]}/start", None, 404),
        ("POST", f"/api/v1/assignments/{works[2]}/complete", {}, 404),
        ("POST", f"/api/v1/assignments/{works[3]}/fail", {"error": "not mine"}, 404),
        ("POST", f"/api/v1/assignments/{works[4]}/cancel", {}, 404),
    ]
    for method, path, body, expected in attempts:
        response = await client.open(path, method=method, json=body, headers=my_token)
        assert response.status_code == expected, (method, path, await response.get_data())
    listed = await client.get("/api/v1/assignments", headers=admin)
    assert {item["status"] for item in (await listed.get_json())["data"]} == {"assigned"}
    agent = await client.get(f"/api/v1/agents/{theirs}", headers=admin)
    assert (await agent.get_json())["data"]["status"] == "online"
