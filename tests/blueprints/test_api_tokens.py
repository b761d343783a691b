"""Personal API tokens: shown once, narrowed to their scopes, never above their owner, revocable."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from quart.testing import QuartClient
from sqlalchemy import select, update

from service import db
from service.application import Switchboard
from service.models.sessions import ApiToken

from ..accounts import admin_headers, bearer, signed_in

TOKENS = "/auth/tokens"


async def _create(
    client: QuartClient, headers: dict[str, str], scopes: list[str], **extra: object
) -> dict[str, str]:
    response = await client.post(TOKENS, json={"name": "ci", "scopes": scopes, **extra}, headers=headers)
    assert response.status_code == 201, await response.get_data()
    created: dict[str, str] = (await response.get_json())["data"]
    return created


async def test_a_token_works_within_its_scopes(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    created = await _create(client, admin, ["agents:read"])
    assert created["token"].startswith("sbp_")
    token = bearer(created["token"])
    me = await (await client.get("/auth/me", headers=token)).get_json()
    assert me["data"]["username"] == "root"
    # The owner may read users; the token, scoped to agents:read, may not.
    assert (await client.get("/api/v1/audit", headers=admin)).status_code == 200
    denied = await client.get("/api/v1/audit", headers=token)
    assert denied.status_code == 403
    assert (await denied.get_json())["error"]["details"] == {"missing_permissions": ["audit:read"]}
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        stored = (await session.execute(select(ApiToken))).scalar_one()
    assert stored.token_hash != created["token"]
    assert stored.last_used_at is not None


async def test_scopes_never_exceed_the_owner(client: QuartClient, app: Switchboard) -> None:
    viewer = await signed_in(client, "vic")
    response = await client.post(
        TOKENS,
        json={"name": "x", "scopes": ["users:write", "agents:read", "root:everything"]},
        headers=viewer,
    )
    assert response.status_code == 422
    problems = (await response.get_json())["error"]["details"]["scopes"]
    assert problems == ["unknown permission 'root:everything'", "you do not hold 'users:write'"]


async def test_tokens_are_listed_without_secrets_and_revoked(client: QuartClient, app: Switchboard) -> None:
    viewer = await signed_in(client, "vic")
    created = await _create(client, viewer, ["agents:read"])
    listing = await (await client.get(TOKENS, headers=viewer)).get_json()
    assert [t["name"] for t in listing["data"]] == ["ci"]
    assert "token" not in listing["data"][0]
    other = await signed_in(client, "olga")
    assert (await client.delete(f"{TOKENS}/{created['id']}", headers=other)).status_code == 404
    token = bearer(created["token"])
    assert (await client.get("/auth/me", headers=token)).status_code == 200
    # A token cannot manage tokens: a stolen one could otherwise mint more.
    assert (
        await client.post(TOKENS, json={"name": "y", "scopes": ["agents:read"]}, headers=token)
    ).status_code == 403
    assert (await client.delete(f"{TOKENS}/{created['id']}", headers=token)).status_code == 403
    assert (await client.post("/auth/logout", headers=token)).status_code == 403
    assert (await client.delete(f"{TOKENS}/{created['id']}", headers=viewer)).status_code == 200
    assert (await client.get("/auth/me", headers=token)).status_code == 401
    assert (await (await client.get(TOKENS, headers=viewer)).get_json())["data"] == []


async def test_expired_tokens_and_deleted_owners_are_refused(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    viewer = await signed_in(client, "vic")
    lasting = bearer((await _create(client, viewer, ["agents:read"], expires_in_days=None))["token"])
    brief = await _create(client, viewer, ["agents:read"], expires_in_days=1)
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        await session.execute(
            update(ApiToken)
            .where(ApiToken.id == uuid.UUID(brief["id"]))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
    assert (await client.get("/auth/me", headers=bearer(brief["token"]))).status_code == 401
    assert (await client.get("/auth/me", headers=lasting)).status_code == 200
    vic = (await (await client.get("/auth/me", headers=viewer)).get_json())["data"]["id"]
    await client.delete(f"/api/v1/users/{vic}", headers=admin)
    assert (await client.get("/auth/me", headers=lasting)).status_code == 401
    await client.post(f"/api/v1/users/{vic}/restore", headers=admin)
    assert (await client.get("/auth/me", headers=lasting)).status_code == 401  # revoked, not merely hidden


async def test_unknown_personal_tokens_are_401(client: QuartClient) -> None:
    response = await client.get("/auth/me", headers=bearer("sbp_not-a-token"))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
