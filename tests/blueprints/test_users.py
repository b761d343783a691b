"""User management under /api/v1/users: listing, object-level rules, mass assignment, deletion, sessions."""

from __future__ import annotations

from quart.testing import QuartClient
from sqlalchemy import select

from service import db
from service.application import Switchboard
from service.models.users import User

from ..accounts import PASSWORD, admin_headers, bearer, login, register, signed_in
from ..statements import statements

USERS = "/api/v1/users"


async def _user_id(client: QuartClient, headers: dict[str, str]) -> str:
    user_id: str = (await (await client.get("/auth/me", headers=headers)).get_json())["data"]["id"]
    return user_id


async def _stored(app: Switchboard, username: str) -> User:
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        return (await session.execute(select(User).where(User.username == username))).scalar_one()


async def test_admin_lists_pages_filters_and_sorts(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    for name in ("carol", "bob", "alice"):
        await register(client, name)
    response = await client.get(f"{USERS}?per_page=2&sort=username", headers=admin)
    body = await response.get_json()
    assert response.status_code == 200
    assert [u["username"] for u in body["data"]] == ["alice", "bob"]
    assert body["pagination"] == {
        "page": 1,
        "per_page": 2,
        "total_pages": 2,
        "total_items": 4,
        "has_next": True,
        "has_prev": False,
    }
    second = await (await client.get(f"{USERS}?per_page=2&page=2&sort=username", headers=admin)).get_json()
    assert [u["username"] for u in second["data"]] == ["carol", "root"]
    # A page past the end has no rows, and still the total.
    beyond = await (await client.get(f"{USERS}?per_page=2&page=3&sort=username", headers=admin)).get_json()
    assert beyond["data"] == []
    assert (beyond["pagination"]["total_items"], beyond["pagination"]["has_prev"]) == (4, True)
    descending = await (await client.get(f"{USERS}?sort=-username", headers=admin)).get_json()
    assert [u["username"] for u in descending["data"]] == ["root", "carol", "bob", "alice"]
    found = await (await client.get(f"{USERS}?q=AR", headers=admin)).get_json()
    assert [u["username"] for u in found["data"]] == ["carol"]
    admins = await (await client.get(f"{USERS}?role=admin", headers=admin)).get_json()
    assert [u["username"] for u in admins["data"]] == ["root"]
    inactive = await (await client.get(f"{USERS}?is_active=false", headers=admin)).get_json()
    assert inactive["data"] == []


async def test_a_page_and_its_total_come_in_one_statement(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    for name in ("carol", "bob"):
        await register(client, name)
    with statements(app.extensions["db"].engine) as seen:
        page = await (await client.get(f"{USERS}?per_page=2&sort=username", headers=admin)).get_json()
    assert page["pagination"]["total_items"] == 3
    counts = [s.lower() for s in seen if "count(*)" in s.lower()]
    assert len(counts) == 1
    assert "limit" in counts[0]


async def test_list_query_is_bounded_and_checked(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    for query in ("per_page=101", "page=0", "sort=password_hash", "is_active=maybe"):
        response = await client.get(f"{USERS}?{query}", headers=admin)
        assert response.status_code == 422, query
        assert (await response.get_json())["error"]["code"] == "VALIDATION_ERROR"
    wildcard = await (await client.get(f"{USERS}?q=%25", headers=admin)).get_json()
    assert wildcard["data"] == []  # a literal %, not "match everything"


async def test_viewer_sees_only_themself(client: QuartClient, app: Switchboard) -> None:
    viewer = await signed_in(client, "vic")
    other = await register(client, "olga")
    listing = await (await client.get(USERS, headers=viewer)).get_json()
    assert [u["username"] for u in listing["data"]] == ["vic"]
    assert (await client.get(f"{USERS}/{other['id']}", headers=viewer)).status_code == 404
    patched = await client.patch(f"{USERS}/{other['id']}", json={"username": "x_x"}, headers=viewer)
    assert patched.status_code == 404
    own = await client.get(f"{USERS}/{await _user_id(client, viewer)}", headers=viewer)
    assert own.status_code == 200


async def test_operator_reads_others_but_cannot_change_them(client: QuartClient, app: Switchboard) -> None:
    operator = await signed_in(client, "opal", "operator", app)
    other = await register(client, "olga")
    assert (await client.get(f"{USERS}/{other['id']}", headers=operator)).status_code == 200
    listing = await (await client.get(USERS, headers=operator)).get_json()
    assert {u["username"] for u in listing["data"]} == {"opal", "olga"}
    patched = await client.patch(f"{USERS}/{other['id']}", json={"username": "x_x"}, headers=operator)
    assert patched.status_code == 403
    deleted = await client.delete(f"{USERS}/{other['id']}", headers=operator)
    assert deleted.status_code == 403
    created = await client.post(
        USERS, json={"username": "new", "email": "new@example.com", "password": PASSWORD}, headers=operator
    )
    assert created.status_code == 403


async def test_admin_creates_users_with_roles(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    response = await client.post(
        USERS,
        json={"username": "opal", "email": "opal@example.com", "password": PASSWORD, "roles": ["operator"]},
        headers=admin,
    )
    assert response.status_code == 201
    assert (await response.get_json())["data"]["roles"] == ["operator"]
    unknown = await client.post(
        USERS,
        json={"username": "xyz", "email": "xyz@example.com", "password": PASSWORD, "roles": ["wizard"]},
        headers=admin,
    )
    assert unknown.status_code == 422
    assert "roles" in (await unknown.get_json())["error"]["details"]


async def test_mass_assignment_is_refused_by_name(client: QuartClient, app: Switchboard) -> None:
    viewer = await signed_in(client, "vic")
    me = await _user_id(client, viewer)
    before = await _stored(app, "vic")
    for body, fields in (
        ({"roles": ["admin"]}, ["roles"]),
        ({"is_active": False}, ["is_active"]),
        ({"password_hash": "x", "id": "y", "created_at": "z"}, ["created_at", "id", "password_hash"]),
    ):
        response = await client.patch(f"{USERS}/{me}", json=body, headers=viewer)
        assert response.status_code == 400, body
        error = (await response.get_json())["error"]
        assert error["code"] == "FIELDS_NOT_ALLOWED"
        assert error["details"] == {"fields": fields}
    after = await _stored(app, "vic")
    assert (after.role_names, after.is_active, after.password_hash) == (
        before.role_names,
        before.is_active,
        before.password_hash,
    )


async def test_own_email_and_password_need_the_current_password(
    client: QuartClient, app: Switchboard
) -> None:
    viewer = await signed_in(client, "vic")
    me = await _user_id(client, viewer)
    missing = await client.patch(f"{USERS}/{me}", json={"email": "v2@example.com"}, headers=viewer)
    assert missing.status_code == 422
    assert "current_password" in (await missing.get_json())["error"]["details"]
    wrong = await client.patch(
        f"{USERS}/{me}", json={"email": "v2@example.com", "current_password": "Not-The-One-1"}, headers=viewer
    )
    assert wrong.status_code == 422
    renamed = await client.patch(f"{USERS}/{me}", json={"username": "victor"}, headers=viewer)
    assert renamed.status_code == 200  # the username alone needs no password
    changed = await client.patch(
        f"{USERS}/{me}", json={"email": "V2@example.com", "current_password": PASSWORD}, headers=viewer
    )
    assert changed.status_code == 200
    assert (await changed.get_json())["data"]["email"] == "v2@example.com"
    me_now = await (await client.get("/auth/me", headers=viewer)).get_json()
    assert me_now["data"]["email_verified"] is False  # the new address must be confirmed again


async def test_password_change_ends_other_sessions(client: QuartClient, app: Switchboard) -> None:
    await register(client, "vic")
    here = await login(client, "vic")
    elsewhere = await login(client, "vic")
    headers = bearer(here["access_token"])
    me = await _user_id(client, headers)
    weak = await client.patch(
        f"{USERS}/{me}", json={"password": "password", "current_password": PASSWORD}, headers=headers
    )
    assert weak.status_code == 400
    assert (await weak.get_json())["error"]["code"] == "WEAK_PASSWORD"
    changed = await client.patch(
        f"{USERS}/{me}",
        json={"password": "Brand-New-Kettle-7", "current_password": PASSWORD},
        headers=headers,
    )
    assert changed.status_code == 200
    assert (await client.get("/auth/me", headers=headers)).status_code == 200
    assert (await client.get("/auth/me", headers=bearer(elsewhere["access_token"]))).status_code == 401
    refused = await client.post("/auth/refresh", json={"refresh_token": elsewhere["refresh_token"]})
    assert refused.status_code == 401
    await login(client, "vic", "Brand-New-Kettle-7")


async def test_role_change_counts_on_the_next_request(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    viewer = await signed_in(client, "vic")
    vic = await _user_id(client, viewer)
    assert (await client.post(USERS, json={}, headers=viewer)).status_code == 403
    promoted = await client.patch(f"{USERS}/{vic}", json={"roles": ["admin"]}, headers=admin)
    assert promoted.status_code == 200
    # The same access token, whose claims still say "viewer": the server's view is what counts.
    assert (await client.get(f"{USERS}?include_deleted=true", headers=viewer)).status_code == 200
    root = await _user_id(client, admin)
    demoted = await client.patch(f"{USERS}/{root}", json={"roles": ["viewer"]}, headers=viewer)
    assert demoted.status_code == 200
    assert (await client.get(f"{USERS}?include_deleted=true", headers=admin)).status_code == 403


async def test_the_last_admin_stays(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    root = await _user_id(client, admin)
    for response in (
        await client.patch(f"{USERS}/{root}", json={"roles": ["viewer"]}, headers=admin),
        await client.patch(f"{USERS}/{root}", json={"is_active": False}, headers=admin),
        await client.delete(f"{USERS}/{root}", headers=admin),
    ):
        assert response.status_code == 409
        assert (await response.get_json())["error"]["code"] == "CONFLICT"


async def test_delete_ends_sessions_and_hides_the_user(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    viewer = await signed_in(client, "vic")
    vic = await _user_id(client, viewer)
    assert (await client.delete(f"{USERS}/{vic}", headers=admin)).status_code == 200
    assert (await client.get("/auth/me", headers=viewer)).status_code == 401
    refused = await client.post("/auth/login", json={"username": "vic", "password": PASSWORD})
    assert refused.status_code == 401
    assert (await client.get(f"{USERS}/{vic}", headers=admin)).status_code == 404
    assert (await client.delete(f"{USERS}/{vic}", headers=admin)).status_code == 404
    listing = await (await client.get(USERS, headers=admin)).get_json()
    assert [u["username"] for u in listing["data"]] == ["root"]
    with_deleted = await (await client.get(f"{USERS}?include_deleted=true", headers=admin)).get_json()
    deleted = [u for u in with_deleted["data"] if u["username"] == "vic"]
    assert [u["deleted_at"] is not None for u in deleted] == [True]
    restored = await client.post(f"{USERS}/{vic}/restore", headers=admin)
    assert restored.status_code == 200
    assert (await client.get("/auth/me", headers=viewer)).status_code == 401  # old sessions stay ended
    await login(client, "vic")


async def test_restore_refuses_a_name_taken_meanwhile(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    old = await register(client, "vic")
    await client.delete(f"{USERS}/{old['id']}", headers=admin)
    await register(client, "vic", "vic2@example.com")
    response = await client.post(f"{USERS}/{old['id']}/restore", headers=admin)
    assert response.status_code == 409
    assert (await response.get_json())["error"]["details"] == {"field": "username"}
    viewer = await signed_in(client, "val")
    assert (await client.get(f"{USERS}?include_deleted=true", headers=viewer)).status_code == 403
    assert (await client.post(f"{USERS}/{old['id']}/restore", headers=viewer)).status_code == 403


async def test_deactivated_users_are_out_at_once(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    viewer = await signed_in(client, "vic")
    vic = await _user_id(client, viewer)
    response = await client.patch(f"{USERS}/{vic}", json={"is_active": False}, headers=admin)
    assert (await response.get_json())["data"]["is_active"] is False
    assert (await client.get("/auth/me", headers=viewer)).status_code == 401
    assert (
        await client.post("/auth/login", json={"username": "vic", "password": PASSWORD})
    ).status_code == 401
    await client.patch(f"{USERS}/{vic}", json={"is_active": True}, headers=admin)
    await login(client, "vic")


async def test_put_replaces_and_requires_the_whole_user(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    vic = await register(client, "vic")
    partial = await client.put(f"{USERS}/{vic['id']}", json={"username": "victor"}, headers=admin)
    assert partial.status_code == 422
    whole = await client.put(
        f"{USERS}/{vic['id']}",
        json={"username": "victor", "email": "victor@example.com", "roles": ["operator"]},
        headers=admin,
    )
    data = (await whole.get_json())["data"]
    assert (data["username"], data["email"], data["roles"]) == ("victor", "victor@example.com", ["operator"])


async def test_sessions_are_listed_and_revoked(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    await register(client, "vic")
    first = bearer((await login(client, "vic"))["access_token"])
    second = bearer((await login(client, "vic"))["access_token"])
    vic = await _user_id(client, first)
    own = await (await client.get(f"{USERS}/{vic}/sessions", headers=first)).get_json()
    assert own["pagination"]["total_items"] == 2
    assert {"ip", "user_agent", "last_used_at", "expires_at"} <= set(own["data"][0])
    other = await signed_in(client, "olga")
    assert (await client.get(f"{USERS}/{vic}/sessions", headers=other)).status_code == 404
    listed = await (await client.get(f"{USERS}/{vic}/sessions", headers=admin)).get_json()
    target = listed["data"][0]["id"]
    revoked = await client.delete(f"{USERS}/{vic}/sessions/{target}", headers=admin)
    assert revoked.status_code == 200
    alive = [h for h in (first, second) if (await client.get("/auth/me", headers=h)).status_code == 200]
    assert len(alive) == 1
    assert (await client.delete(f"{USERS}/{vic}/sessions", headers=admin)).status_code == 200
    assert (await client.get("/auth/me", headers=alive[0])).status_code == 401
    missing = await client.delete(
        f"{USERS}/{vic}/sessions/{target.replace(target[-4:], '0000')}", headers=admin
    )
    assert missing.status_code == 404


async def test_user_routes_need_credentials(client: QuartClient) -> None:
    response = await client.get(USERS)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert (await client.get(f"{USERS}/not-a-uuid", headers=bearer("x"))).status_code == 404
