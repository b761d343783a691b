"""The audit log: what is recorded, with whom, from where and in which request; who may read it."""

from __future__ import annotations

from quart.testing import QuartClient

from service.application import Switchboard

from ..accounts import admin_headers, bearer, login, register, signed_in

AUDIT = "/api/v1/audit"


async def test_logins_and_failures_are_recorded(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    user = await register(client, "vic")
    failed = await client.post(
        "/auth/login",
        json={"username": "vic", "password": "Wrong-Pass-1"},
        headers={"X-Request-ID": "req-login-f1"},
    )
    assert failed.status_code == 401
    pair = await login(client, "vic")
    await client.post("/auth/logout", headers=bearer(pair["access_token"]))
    response = await client.get(f"{AUDIT}?actor_id={user['id']}", headers=admin)
    assert response.status_code == 200
    events = (await response.get_json())["data"]
    assert [e["action"] for e in events] == ["logout", "login_succeeded", "login_failed", "registered"]
    failure = events[2]
    assert failure["details"] == {"username": "vic", "reason": "wrong_password"}
    assert failure["request_id"] == "req-login-f1"
    assert failure["ip"]
    assert failure["target_id"] == user["id"]


async def test_security_changes_are_recorded(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    user = await register(client, "vic")
    await client.patch(f"/api/v1/users/{user['id']}", json={"roles": ["operator"]}, headers=admin)
    await client.patch(f"/api/v1/users/{user['id']}", json={"password": "Brand-New-Kettle-7"}, headers=admin)
    await client.delete(f"/api/v1/users/{user['id']}", headers=admin)
    response = await client.get(f"{AUDIT}?target_id={user['id']}&per_page=3", headers=admin)
    body = await response.get_json()
    assert [e["action"] for e in body["data"]] == ["user_deleted", "password_changed", "roles_changed"]
    assert body["data"][2]["details"] == {"before": ["viewer"], "after": ["operator"]}
    assert body["pagination"]["total_items"] == 4  # and "registered"
    only = await (await client.get(f"{AUDIT}?action=roles_changed", headers=admin)).get_json()
    assert {e["action"] for e in only["data"]} == {"roles_changed"}


async def test_refresh_reuse_is_recorded(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    await register(client, "vic")
    pair = await login(client, "vic")
    await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    found = await (await client.get(f"{AUDIT}?action=token_reuse_detected", headers=admin)).get_json()
    assert len(found["data"]) == 1


async def test_only_admins_read_the_audit_log(client: QuartClient, app: Switchboard) -> None:
    for role in ("viewer", "operator"):
        headers = await signed_in(client, f"{role}1", role, app)
        response = await client.get(AUDIT, headers=headers)
        assert response.status_code == 403, role
    assert (await client.get(AUDIT)).status_code == 401


async def test_time_filters_need_an_offset(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    naive = await client.get(f"{AUDIT}?since=2026-01-01T00:00:00", headers=admin)
    assert naive.status_code == 422
    future = await client.get(f"{AUDIT}?since=2999-01-01T00:00:00%2B00:00", headers=admin)
    assert (await future.get_json())["data"] == []
    past = await client.get(f"{AUDIT}?until=2000-01-01T00:00:00Z", headers=admin)
    assert (await past.get_json())["data"] == []
