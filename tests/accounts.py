"""Conversation helpers: people who register, log in and hold roles, made through the real services."""

from __future__ import annotations

from quart.testing import QuartClient
from sqlalchemy import select

from service import db
from service.application import Switchboard
from service.models.users import Role
from service.services import accounts

PASSWORD = "Sturdy-Lantern-42"


async def register(client: QuartClient, username: str = "ada", email: str | None = None) -> dict[str, object]:
    response = await client.post(
        "/auth/register",
        json={"username": username, "email": email or f"{username}@example.com", "password": PASSWORD},
    )
    assert response.status_code == 201, await response.get_data()
    data: dict[str, object] = (await response.get_json())["data"]
    return data


async def login(client: QuartClient, username: str = "ada", password: str = PASSWORD) -> dict[str, str]:
    response = await client.post("/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, await response.get_data()
    pair: dict[str, str] = (await response.get_json())["data"]
    return pair


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_admin(app: Switchboard, username: str = "root") -> None:
    """The command line's way: create (or promote) an admin."""
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        await accounts.make_admin(session, username, f"{username}@example.com", PASSWORD)
        await db.commit(session)


async def give_role(app: Switchboard, username: str, role: str) -> None:
    """Replace a user's roles with one (what an admin's PATCH does, without the HTTP)."""
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        user = await accounts.find_user(session, username)
        assert user is not None
        user.roles = [(await session.execute(select(Role).where(Role.name == role))).scalar_one()]
        await db.commit(session)


async def signed_in(
    client: QuartClient, username: str, role: str | None = None, app: Switchboard | None = None
) -> dict[str, str]:
    """Register `username` (with `role` when given) and return bearer headers for a fresh login."""
    await register(client, username)
    if role is not None:
        assert app is not None
        await give_role(app, username, role)
    return bearer((await login(client, username))["access_token"])


async def admin_headers(app: Switchboard, client: QuartClient, username: str = "root") -> dict[str, str]:
    await make_admin(app, username)
    return bearer((await login(client, username))["access_token"])
