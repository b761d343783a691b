"""The operator dashboard: signing in and out with the cookie session, CSRF on forms and on the API calls
the cookie authenticates, what viewers see, the shared login limits, and a strict CSP on every page."""

from __future__ import annotations

import re

import pytest
from quart.testing import QuartClient
from quart.wrappers import Response

from service.application import Switchboard

from ..accounts import PASSWORD, admin_headers, bearer, give_role, login, register
from ..conftest import AppMaker
from ..fleet import beat, make_agent, make_work
from ..sse import watching

AUTH_COOKIE = "QUART_AUTH"
PAGES = ("/", "/assignments")


async def html(response: Response) -> str:
    return (await response.get_data()).decode()


def hidden_token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


def meta_token(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert found is not None, page
    return found.group(1)


def auth_cookie(client: QuartClient) -> str | None:
    assert client.cookie_jar is not None
    return next((cookie.value for cookie in client.cookie_jar if cookie.name == AUTH_COOKIE), None)


async def submit_login(
    client: QuartClient, username: str, password: str = PASSWORD, **options: object
) -> Response:
    """Load the login form, then post it back with its token, as a browser does."""
    form = await client.get("/login", **options)
    token = hidden_token(await html(form))
    return await client.post(
        "/login", form={"username": username, "password": password, "csrf_token": token}, **options
    )


async def sign_in(client: QuartClient, username: str) -> str:
    """Sign in through the form; returns the session's CSRF token from the board's meta tag."""
    response = await submit_login(client, username)
    assert response.status_code == 303, await html(response)
    assert response.headers["Location"] == "/"
    assert auth_cookie(client) is not None
    board = await client.get("/")
    assert board.status_code == 200
    return meta_token(await html(board))


async def person(client: QuartClient, app: Switchboard, username: str, role: str) -> None:
    await register(client, username)
    await give_role(app, username, role)


async def test_pages_send_a_stranger_to_the_login_form(client: QuartClient) -> None:
    for path in PAGES:
        response = await client.get(path)
        assert response.status_code == 303
        assert response.headers["Location"] == "/login"
    page = await client.get("/login")
    assert page.status_code == 200
    assert 'name="password"' in await html(page)


async def test_an_operator_signs_in_and_sees_the_fleet(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    agent_id, token = await make_agent(client, admin, "runner-1", max_concurrent=2)
    await beat(client, agent_id, token, load=0.4)
    await make_work(client, admin, "transcode")
    await person(client, app, "opal", "operator")

    await sign_in(client, "opal")
    board = await html(await client.get("/"))
    assert "runner-1" in board
    assert 'data-status="online"' in board
    assert "0.40" in board  # the load of its last heartbeat
    assert 'data-summary="total_agents">1<' in board
    assert 'data-summary="open_assignments">1<' in board
    assert 'data-action="toggle-mode"' in board
    assignments = await html(await client.get("/assignments"))
    assert "transcode" in assignments
    assert 'id="new-assignment"' in assignments
    assert 'data-action="cancel"' in assignments
    # Already signed in: the login form sends the operator on to the board.
    again = await client.get("/login")
    assert (again.status_code, again.headers["Location"]) == (303, "/")


async def test_a_wrong_password_shows_the_form_again(client: QuartClient) -> None:
    await register(client, "ada")
    response = await submit_login(client, "ada", "Wrong-Password-1")
    assert response.status_code == 401
    page = await html(response)
    assert "Invalid username or password." in page
    assert 'value="ada"' in page
    assert auth_cookie(client) is None
    empty = await submit_login(client, "ada", "")
    assert empty.status_code == 400


@pytest.mark.parametrize("token", [None, "forged", "other-browser"])
async def test_the_login_form_needs_its_own_token(app: Switchboard, token: str | None) -> None:
    client, stranger = app.test_client(), app.test_client()
    await register(client, "ada")
    await client.get("/login")  # the browser holds the form's cookie
    form = {"username": "ada", "password": PASSWORD}
    if token == "forged":
        form["csrf_token"] = "x" * 43
    elif token == "other-browser":
        form["csrf_token"] = hidden_token(await html(await stranger.get("/login")))
    response = await client.post("/login", form=form)
    assert response.status_code == 403
    assert (await response.get_json())["error"]["code"] == "CSRF_FAILED"
    assert auth_cookie(client) is None


async def test_the_login_form_needs_the_cookie_it_was_served_with(app: Switchboard) -> None:
    client = app.test_client()
    await register(client, "ada")
    token = hidden_token(await html(await client.get("/login")))
    fresh = app.test_client()  # another site's form carries a token but not the browser's cookie
    response = await fresh.post("/login", form={"username": "ada", "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 403
    assert (await response.get_json())["error"]["code"] == "CSRF_FAILED"


async def test_api_calls_the_cookie_authenticates_need_the_csrf_token(
    client: QuartClient, app: Switchboard
) -> None:
    await person(client, app, "opal", "operator")
    csrf = await sign_in(client, "opal")
    work = {"title": "build"}

    assert (await client.get("/api/v1/assignments")).status_code == 200  # reading needs no token
    for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": ""}):
        refused = await client.post("/api/v1/assignments", json=work, headers=headers)
        assert refused.status_code == 403
        assert (await refused.get_json())["error"]["code"] == "CSRF_FAILED"
    created = await client.post("/api/v1/assignments", json=work, headers={"X-CSRF-Token": csrf})
    assert created.status_code == 201
    assignment_id = (await created.get_json())["data"]["id"]

    cancel = f"/api/v1/assignments/{assignment_id}/cancel"
    assert (await client.post(cancel, json={})).status_code == 403
    cancelled = await client.post(cancel, json={}, headers={"X-CSRF-Token": csrf})
    assert (await cancelled.get_json())["data"]["status"] == "cancelled"
    agent = await client.post("/api/v1/agents", json={"name": "a1"})
    assert (await agent.get_json())["error"]["code"] == "CSRF_FAILED"


async def test_bearer_calls_need_no_csrf_token(client: QuartClient, app: Switchboard) -> None:
    await person(client, app, "opal", "operator")
    await sign_in(client, "opal")  # the cookie is there too, but the bearer token is the credential
    token = bearer((await login(client, "opal"))["access_token"])
    created = await client.post("/api/v1/assignments", json={"title": "build"}, headers=token)
    assert created.status_code == 201


async def test_a_viewer_sees_everything_and_can_do_nothing(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    agent_id, _ = await make_agent(client, admin, "runner-1")
    work = await make_work(client, admin, "transcode")
    await register(client, "vic")  # new accounts are viewers

    csrf = await sign_in(client, "vic")
    board = await html(await client.get("/"))
    assignments = await html(await client.get("/assignments"))
    assert "runner-1" in board
    assert "transcode" in assignments
    for page in (board, assignments):
        assert "data-action" not in page
        assert "<th>Actions</th>" not in page
    assert 'id="new-assignment"' not in assignments

    with_token = {"X-CSRF-Token": csrf}
    for path, body in (
        ("/api/v1/assignments", {"title": "sneaky"}),
        (f"/api/v1/assignments/{work['id']}/cancel", {}),
        ("/api/v1/agents", {"name": "sneaky"}),
    ):
        refused = await client.post(path, json=body, headers=with_token)
        assert refused.status_code == 403, path
        assert (await refused.get_json())["error"]["code"] == "FORBIDDEN"
    paused = await client.patch(f"/api/v1/agents/{agent_id}", json={"mode": "paused"}, headers=with_token)
    assert paused.status_code == 403


async def test_signing_out_ends_the_session_and_its_streams(client: QuartClient, app: Switchboard) -> None:
    await person(client, app, "opal", "operator")
    csrf = await sign_in(client, "opal")
    cookie = auth_cookie(client)
    assert cookie is not None

    refused = await client.post("/logout", form={})
    assert refused.status_code == 403
    assert (await refused.get_json())["error"]["code"] == "CSRF_FAILED"

    async with watching(client, {}) as stream:  # the dashboard's EventSource: the cookie, no header
        response = await client.post("/logout", form={"csrf_token": csrf})
        assert (response.status_code, response.headers["Location"]) == (303, "/login")
        frame = await stream.next_event()
    assert (frame.event, frame.data) == ("reset", {"reason": "session_ended"})
    assert auth_cookie(client) is None

    client.set_cookie("localhost", AUTH_COOKIE, cookie)  # a copy of the cookie no longer works
    assert (await client.get("/")).headers["Location"] == "/login"
    assert (await client.get("/api/v1/agents")).status_code == 401


async def test_dashboard_and_api_logins_share_their_limits(make_app: AppMaker) -> None:
    app = await make_app(rate_limit_login="2/minute")
    client = app.test_client()
    await register(client, "ann")
    await register(client, "bob")
    first = {"scope_base": {"client": ("10.0.0.1", 40000)}}
    second = {"scope_base": {"client": ("10.0.0.2", 40000)}}
    for _ in range(2):
        failed = await client.post("/auth/login", json={"username": "ann", "password": "Wrong-1a"}, **first)
        assert failed.status_code == 401

    # The same username from another address: the API's failures count on the dashboard's form.
    limited = await submit_login(client, "ann", **second)
    assert limited.status_code == 429
    assert (await limited.get_json())["error"]["code"] == "RATE_LIMITED"
    assert int(limited.headers["Retry-After"]) > 0
    # The same address with another username: its count is shared too.
    assert (await submit_login(client, "bob", **first)).status_code == 429
    # Neither used up: a wrong password is just a wrong password.
    assert (await submit_login(client, "bob", "Wrong-1a", **second)).status_code == 401


async def test_every_page_keeps_a_strict_csp_and_no_inline_code(
    client: QuartClient, app: Switchboard
) -> None:
    await person(client, app, "opal", "operator")
    pages = [await client.get("/login")]
    await sign_in(client, "opal")
    pages += [await client.get(path) for path in PAGES]
    for response in pages:
        assert response.status_code == 200
        policy = dict(
            part.strip().split(" ", 1) for part in response.headers["Content-Security-Policy"].split(";")
        )
        assert policy["script-src"] == "'self'"
        assert "'unsafe-inline'" not in response.headers["Content-Security-Policy"]
        assert policy["frame-ancestors"] == "'none'"
        page = await html(response)
        assert not re.search(r"<script(?![^>]*\bsrc=)", page), "no inline script"
        assert not re.search(r"\son[a-z]+\s*=", page), "no inline event handler"
        assert not re.search(r"\sstyle\s*=", page), "no inline style"
        assert not re.search(r"(src|href)=\"(https?:)?//", page), "nothing from another origin"
        for asset in re.findall(r"(?:src|href)=\"(/static/[^\"]+)\"", page):
            assert (await client.get(asset)).status_code == 200, asset


async def test_the_dashboard_is_not_in_the_openapi_document(client: QuartClient) -> None:
    paths = set((await (await client.get("/openapi.json")).get_json())["paths"])
    assert not paths & {"/", "/login", "/logout", "/assignments"}
