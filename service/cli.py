"""Command-line tasks: `quart --app service <command>`."""

from __future__ import annotations

import asyncio

import click
from quart import Quart
from sqlalchemy.exc import DBAPIError

from service import db, errors, identity, redis_client
from service.config import Settings
from service.services import accounts


async def _make_admin(settings: Settings, username: str, email: str | None, password: str | None) -> str:
    database = db.open_database(settings)
    try:
        async with database.sessionmaker() as session:
            user, outcome = await accounts.make_admin(session, username, email, password)
            await db.commit(session)
    finally:
        await database.close()
    if settings.redis_url is not None:
        # Running servers cache what each user may do; drop the entry so the promotion counts at once.
        redis = redis_client.open_client(settings)
        try:
            await redis.delete(identity.user_key(user.id))
        finally:
            await redis.aclose()
    return {
        "created": f"Created admin {user.username!r}.",
        "promoted": f"Promoted {user.username!r} to admin.",
        "unchanged": f"{user.username!r} is already an admin; nothing changed.",
    }[outcome]


async def _exists(settings: Settings, username: str) -> bool:
    database = db.open_database(settings)
    try:
        async with database.sessionmaker() as session:
            return await accounts.find_user(session, username) is not None
    finally:
        await database.close()


def init_app(app: Quart, settings: Settings) -> None:
    @app.cli.command("create-admin")
    @click.option("--username", help="Who becomes admin: an existing user is promoted.")
    @click.option("--email", help="The email of a new admin (asked for when needed).")
    @click.option("--password", help="The password of a new admin (asked for, hidden, when needed).")
    def create_admin(username: str | None, email: str | None, password: str | None) -> None:
        """Create an admin, or promote an existing user to admin."""
        name: str = username or click.prompt("Username")
        try:
            if not asyncio.run(_exists(settings, name)):
                email = email or click.prompt("Email")
                password = password or click.prompt("Password", hide_input=True, confirmation_prompt=True)
            click.echo(asyncio.run(_make_admin(settings, name, email, password)))
        except errors.APIError as error:
            details = f" {error.details}" if error.details else ""
            raise click.ClickException(f"{error.message}{details}") from None
        except DBAPIError as error:
            raise click.ClickException(
                f"the database is not ready ({type(error.orig).__name__}); "
                "is it running, and has `alembic upgrade head` been run?"
            ) from None
