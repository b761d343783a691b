"""Command-line tasks: `quart --app service <command>`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterator

import click
from quart import Quart
from sqlalchemy.exc import DBAPIError

from service import db, errors, identity, redis_client
from service.config import Settings
from service.demo import client as demo_client
from service.demo import simulation
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


async def _demo_account(settings: Settings) -> str:
    """The demo's login: made the first time as create-admin makes an admin, then left as it is."""
    if await _exists(settings, simulation.USERNAME):
        return f"Using the demo account {simulation.USERNAME!r}."
    return await _make_admin(settings, simulation.USERNAME, simulation.EMAIL, simulation.PASSWORD)


def _demo_login(settings: Settings, username: str | None, password: str | None) -> demo_client.Login:
    """The given operator, or the demo account (made once the server answers; never in production)."""
    if username is not None:
        return demo_client.Login(username, password or click.prompt("Password", hide_input=True))
    if settings.app_env == "production":
        raise click.ClickException("no demo account in production (its password is public): pass --username")
    return demo_client.Login(
        simulation.USERNAME, simulation.PASSWORD, functools.partial(_demo_account, settings)
    )


@contextlib.contextmanager
def _explained() -> Iterator[None]:
    """Errors a person can act on become one line and exit code 1, not a traceback."""
    try:
        yield
    except errors.APIError as error:
        details = f" {error.details}" if error.details else ""
        raise click.ClickException(f"{error.message}{details}") from None
    except DBAPIError as error:
        raise click.ClickException(
            f"the database is not ready ({type(error.orig).__name__}); "
            "is it running, and has `alembic upgrade head` been run?"
        ) from None
    except demo_client.DemoError as error:
        raise click.ClickException(str(error)) from None


def init_app(app: Quart, settings: Settings) -> None:
    @app.cli.command("create-admin")
    @click.option("--username", help="Who becomes admin: an existing user is promoted.")
    @click.option("--email", help="The email of a new admin (asked for when needed).")
    @click.option("--password", help="The password of a new admin (asked for, hidden, when needed).")
    def create_admin(username: str | None, email: str | None, password: str | None) -> None:
        """Create an admin, or promote an existing user to admin."""
        name: str = username or click.prompt("Username")
        with _explained():
            if not asyncio.run(_exists(settings, name)):
                email = email or click.prompt("Email")
                password = password or click.prompt("Password", hide_input=True, confirmation_prompt=True)
            click.echo(asyncio.run(_make_admin(settings, name, email, password)))

    @app.cli.command("demo")
    @click.option("--url", default=simulation.DEFAULT_URL, show_default=True, help="The running server.")
    @click.option(
        "--agents",
        type=click.IntRange(1, simulation.MAX_AGENTS),
        default=8,
        show_default=True,
        help="How many demo-NN agents.",
    )
    @click.option(
        "--duration", type=click.FloatRange(0, min_open=True), help="Seconds (default: until Ctrl-C)."
    )
    @click.option("--seed", type=int, help="Make the agents' and the operator's choices repeatable.")
    @click.option("--username", help="Act as this operator or admin instead of the demo account.")
    @click.option("--password", help="Their password (asked for, hidden, when needed).")
    def run_demo(
        url: str,
        agents: int,
        duration: float | None,
        seed: int | None,
        username: str | None,
        password: str | None,
    ) -> None:
        """Demo agents that beat, take work and finish it, against a running server (`make run`)."""
        login = _demo_login(settings, username, password)
        options = simulation.Options(url=url.rstrip("/"), agents=agents, duration=duration, seed=seed)
        tally = simulation.Tally()
        # httpx logs every request at INFO; the demo's own lines say what matters.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        try:
            with _explained():
                asyncio.run(simulation.run(options, login, click.echo, tally))
        except KeyboardInterrupt:
            pass  # Ctrl-C: the summary says what happened
        finally:
            if tally.agents:
                click.echo(tally.summary())
