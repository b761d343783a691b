"""Register, log in, refresh and log out (the token attacks are in tests/security/test_tokens.py)."""

from __future__ import annotations

import jwt
import pytest
from quart.testing import QuartClient
from sqlalchemy import select

from service import create_app, passwords
from service.application import Switchboard
from service.config import Settings
from service.models.audit import AuditEvent

from .. import probes
from ..accounts import PASSWORD, bearer, login, register
from ..conftest import AppMaker, empty_tables


async def test_register_returns_the_user_without_secrets(client: QuartClient) -> None:
    user = await register(client)
    assert set(user) == {
        "id",
        "username",
        "email",
        "is_active",
        "roles",
        "created_at",
        "updated_at",
        "deleted_at",
    }
    assert user["roles"] == ["viewer"]
    assert user["is_active"] is True


@pytest.mark.parametrize(
    ("password", "rule"),
    [("Sh0rt", "at least 8"), ("alllowercase42", "upper-case"), ("NoDigitsHere", "digit")],
)
async def test_register_says_which_password_rule_failed(
    client: QuartClient, password: str, rule: str
) -> None:
    response = await client.post(
        "/auth/register", json={"username": "bob", "email": "bob@example.com", "password": password}
    )
    assert response.status_code == 400
    body = await response.get_json()
    assert body["error"]["code"] == "WEAK_PASSWORD"
    assert any(rule in message for message in body["error"]["details"]["password"])


async def test_register_refuses_taken_names_case_insensitively(client: QuartClient) -> None:
    await register(client, "ada")
    for username, email, field in (
        ("ADA", "other@example.com", "username"),
        ("other", "ADA@example.com", "email"),
    ):
        response = await client.post(
            "/auth/register", json={"username": username, "email": email, "password": PASSWORD}
        )
        assert response.status_code == 409
        body = await response.get_json()
        assert body["error"]["code"] == "CONFLICT"
        assert body["error"]["details"] == {"field": field}


async def test_register_rejects_bad_input_and_unknown_fields(client: QuartClient) -> None:
    response = await client.post(
        "/auth/register",
        json={"username": "a b", "email": "not-an-email", "password": PASSWORD, "roles": ["admin"]},
    )
    assert response.status_code == 422
    details = (await response.get_json())["error"]["details"]
    assert {"username", "email", "roles"} <= set(details)


async def test_login_me_and_token_shape(client: QuartClient, app: Switchboard) -> None:
    await register(client)
    pair = await login(client, "ADA@example.com")  # the email works as the login name too
    assert pair["token_type"] == "bearer"
    assert pair["expires_in"] == 3600
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert claims["typ"] == "access"
    assert isinstance(claims["sub"], str)
    assert claims["roles"] == ["viewer"]
    assert claims["exp"] - claims["iat"] == 3600
    me = await client.get("/auth/me", headers=bearer(pair["access_token"]))
    assert me.status_code == 200
    data = (await me.get_json())["data"]
    assert data["username"] == "ada"
    assert "agents:read" in data["permissions"]
    assert "users:write" not in data["permissions"]


async def test_wrong_user_and_wrong_password_look_the_same(client: QuartClient, app: Switchboard) -> None:
    await register(client)
    unknown = await client.post("/auth/login", json={"username": "nobody", "password": PASSWORD})
    wrong = await client.post("/auth/login", json={"username": "ada", "password": "Wrong-Password-1"})
    assert unknown.status_code == wrong.status_code == 401
    first, second = await unknown.get_json(), await wrong.get_json()
    assert first["error"] == second["error"]
    assert unknown.headers["WWW-Authenticate"] == "Bearer"
    async with app.extensions["db"].sessionmaker() as session:
        actions = (await session.execute(select(AuditEvent.action))).scalars().all()
    assert actions.count("login_failed") == 2


async def test_wrong_user_and_wrong_password_cost_the_same(
    client: QuartClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same work, not merely the same answer: one argon2id verification with the same parameters,
    so timing does not reveal which usernames exist (a benchmark measures the times themselves)."""
    await register(client)
    verified: list[str] = []
    real = passwords._hasher

    class Spy:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def verify(self, stored_hash: str, password: str) -> bool:
            verified.append(stored_hash.rsplit("$", 2)[0])  # the algorithm and its parameters, no salt
            return real.verify(stored_hash, password)

    monkeypatch.setattr(passwords, "_hasher", Spy())
    await client.post("/auth/login", json={"username": "nobody", "password": PASSWORD})
    unknown_user = list(verified)
    verified.clear()
    await client.post("/auth/login", json={"username": "ada", "password": "Wrong-Password-1"})
    assert unknown_user == verified == ["$argon2id$v=19$m=19456,t=2,p=1"]


async def test_refresh_rotates_and_reuse_ends_the_session(client: QuartClient) -> None:
    await register(client)
    first = await login(client)
    second = (
        await (await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})).get_json()
    )["data"]
    assert second["refresh_token"] != first["refresh_token"]
    assert (await client.get("/auth/me", headers=bearer(second["access_token"]))).status_code == 200
    # The spent token comes back: theft. The whole session ends, newest tokens included.
    reused = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401
    assert (
        await client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
    ).status_code == 401
    assert (await client.get("/auth/me", headers=bearer(second["access_token"]))).status_code == 401


async def test_logout_refuses_both_tokens(client: QuartClient) -> None:
    await register(client)
    pair = await login(client)
    assert (await client.post("/auth/logout", headers=bearer(pair["access_token"]))).status_code == 200
    assert (await client.get("/auth/me", headers=bearer(pair["access_token"]))).status_code == 401
    refused = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refused.status_code == 401


async def test_logout_holds_on_another_instance(client: QuartClient, app: Switchboard) -> None:
    """A second app (another instance) sharing PostgreSQL and Redis refuses the token too."""
    if app.config["SETTINGS"].redis_url is None:
        pytest.skip("the embedded mode is one process by design; the PostgreSQL + Redis run covers this")
    await register(client)
    pair = await login(client)
    other = create_app(app.config["SETTINGS"])
    async with other.test_app():
        other_client = other.test_client()
        assert (await other_client.get("/auth/me", headers=bearer(pair["access_token"]))).status_code == 200
        assert (await client.post("/auth/logout", headers=bearer(pair["access_token"]))).status_code == 200
        assert (await other_client.get("/auth/me", headers=bearer(pair["access_token"]))).status_code == 401


async def test_me_without_credentials_is_401(client: QuartClient) -> None:
    response = await client.get("/auth/me")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_email_verification_can_be_required(make_app: AppMaker) -> None:
    app = await make_app(require_email_verification=True)
    client = app.test_client()
    await register(client, "eve")
    response = await client.post("/auth/login", json={"username": "eve", "password": PASSWORD})
    assert response.status_code == 401


async def test_names_are_unique_among_live_users_only(client: QuartClient, app: Switchboard) -> None:
    from sqlalchemy import update
    from sqlalchemy.exc import IntegrityError

    from service.models.entity import utcnow
    from service.models.users import User

    await register(client, "ada")
    maker = app.extensions["db"].sessionmaker
    async with maker() as session:
        # The database itself refuses a live duplicate that differs only in case.
        session.add(User(username="ADA", email="x@example.com", password_hash="x"))
        with pytest.raises(IntegrityError):
            await session.commit()
    async with maker() as session:
        await session.execute(update(User).values(deleted_at=utcnow()))
        await session.commit()
    again = await register(client, "Ada", "ada@example.com")
    assert again["username"] == "Ada"


async def test_permission_and_role_guards(settings: Settings) -> None:
    app = create_app(settings)
    app.register_blueprint(probes.blueprint)
    async with app.test_app():
        client = app.test_client()
        await register(client, "vic")
        token = (await login(client, "vic"))["access_token"]
        for path in ("/_probe/needs-permission", "/_probe/needs-role"):
            assert (await client.get(path)).status_code == 401
            denied = await client.get(path, headers=bearer(token))
            assert denied.status_code == 403
            assert (await denied.get_json())["error"]["code"] == "FORBIDDEN"
        allowed = await client.get("/_probe/needs-viewer", headers=bearer(token))
        assert allowed.status_code == 200
        await empty_tables(app)
