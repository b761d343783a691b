"""Property-based fuzzing of the whole API from its OpenAPI document (schemathesis, in-process over ASGI),
as each role, with every schemathesis check plus our own (no leaks: tests/security/schemathesis_hooks.py).

The live event stream never ends, so it is left to its own tests (tests/blueprints/test_events.py). The
same configuration drives the deeper run against a live server (docs/reliability.md, "Bad input").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.case import Case
from schemathesis.python import asgi

from service import create_app
from service.application import Switchboard
from service.config import Settings

from ..accounts import PASSWORD
from ..conftest import ROOT, empty_tables, make_settings
from . import schemathesis_hooks

ROLES = ("admin", "operator", "viewer")
# Operations that end the session they are called with: each such case logs in afresh, so the role's
# own session lives on for the operations after it.
SESSION_ENDING = frozenset(
    {
        "POST /auth/logout",
        "DELETE /api/v1/users/{user_id}/sessions",
        "DELETE /api/v1/users/{user_id}/sessions/{session_id}",
    }
)


class Forwarder:
    """One ASGI application for the schema, passing each request to this test's app.

    schemathesis starts an application's lifespan on the first request and ends it after the test, and a
    Quart app serves once: each test gets a fresh app (and its own lifespan) behind the same forwarder.
    """

    def __init__(self) -> None:
        self.target: Switchboard | None = None

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        assert self.target is not None
        await self.target(scope, receive, send)  # type: ignore[arg-type]


FORWARDER = Forwarder()
CONFIG = SchemathesisConfig.from_path(ROOT / "tests" / "security" / "schemathesis.toml")
# docs/openapi.json is what the code describes (tests/test_docs.py fails when it drifts).
schema = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.json", config=CONFIG).exclude(
    path="/api/v1/events"
)
schema.app = FORWARDER
public = schema.include(lambda ctx: not ctx.operation.definition.raw.get("security"))
secured = schema.include(lambda ctx: bool(ctx.operation.definition.raw.get("security")))

FUZZ_SETTINGS = settings(
    deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


# The callers' own user records: the fuzzer may learn their ids from answers, but changing, deleting or
# restoring them would change who the later operations run as.
PROTECTED_USERS: set[str] = set()


@secured.hook("filter_case")
def _spare_the_callers(context: Any, case: Case) -> bool:
    user_id = str((case.path_parameters or {}).get("user_id"))
    return not (user_id in PROTECTED_USERS and case.method.upper() != "GET" and "/sessions" not in case.path)


@dataclass
class Caller:
    username: str
    role: str
    access_token: str = ""
    user_id: str = ""
    roles_seen: list[str] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def _login(client: asgi.ASGIClient, username: str) -> str:
    response = client.post("/auth/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    token: str = response.json()["data"]["access_token"]
    return token


def _fuzz_settings(database_url: str) -> Settings:
    # Limits would turn most of the run into 429s; they have their own tests.
    return make_settings(database_url, rate_limits_enabled=False)


def _serve(database_url: str) -> Switchboard:
    app = create_app(_fuzz_settings(database_url))
    FORWARDER.target = app
    schemathesis_hooks.SECRETS.update({app.config["SETTINGS"].secret_key, PASSWORD})
    return app


def _make_callers(database_url: str) -> dict[str, Caller]:
    """root by the command line (as an operator makes the first admin); the others register and get
    their role from root over the API."""
    made = (
        create_app(_fuzz_settings(database_url))
        .test_cli_runner()
        .invoke(
            args=["create-admin", "--username", "root", "--email", "root@example.com", "--password", PASSWORD]
        )
    )
    assert made.exit_code == 0, made.output
    callers = {"admin": Caller("root", "admin")}
    _serve(database_url)
    with asgi.get_client(FORWARDER) as client:
        root = {"Authorization": f"Bearer {_login(client, 'root')}"}
        for role in ("operator", "viewer"):
            username = f"fuzz_{role}"
            registered = client.post(
                "/auth/register",
                json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
            )
            assert registered.status_code == 201, registered.text
            user_id = registered.json()["data"]["id"]
            promoted = client.patch(f"/api/v1/users/{user_id}", json={"roles": [role]}, headers=root)
            assert promoted.status_code == 200, promoted.text
            callers[role] = Caller(username, role)
    asgi.shutdown_lifespans()
    return callers


@pytest.fixture(scope="module")
def callers(database_url: str) -> Iterator[dict[str, Caller]]:
    yield _make_callers(database_url)

    async def empty() -> None:
        app = create_app(_fuzz_settings(database_url))
        async with app.test_app():
            await empty_tables(app)

    asyncio.run(empty())


@pytest.fixture(params=ROLES)
def caller(request: pytest.FixtureRequest, database_url: str, callers: dict[str, Caller]) -> Caller:
    """The role's user, logged in, with this test's app serving."""
    _serve(database_url)
    who = callers[request.param]
    with asgi.get_client(FORWARDER) as client:
        me = client.get("/auth/me", headers=who.headers())
        if me.status_code == 401:  # the first test, or an earlier one ended the session
            who.access_token = _login(client, who.username)
            me = client.get("/auth/me", headers=who.headers())
    assert me.status_code == 200, me.text
    # The fuzzing of an earlier operation must not have changed who this is (a role, a deactivation).
    roles = me.json()["data"]["roles"]
    assert who.role in roles
    assert ("admin" in roles) == (who.role == "admin"), roles
    who.user_id = me.json()["data"]["id"]
    PROTECTED_USERS.add(who.user_id)
    return who


@pytest.fixture
def anonymous(database_url: str, callers: dict[str, Caller]) -> None:
    _serve(database_url)


def _headers_for(case: Case, who: Caller) -> dict[str, str]:
    if f"{case.method.upper()} {case.path}" in SESSION_ENDING:
        with asgi.get_client(FORWARDER) as client:
            return {"Authorization": f"Bearer {_login(client, who.username)}"}
    return who.headers()


@public.parametrize()
@FUZZ_SETTINGS
def test_public_operations(case: Case, anonymous: None) -> None:
    case.call_and_validate()


@secured.parametrize()
@FUZZ_SETTINGS
def test_secured_operations_as_each_role(case: Case, caller: Caller) -> None:
    case.call_and_validate(headers=_headers_for(case, caller))
