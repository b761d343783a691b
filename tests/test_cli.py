"""`quart --app service create-admin`: creates or promotes an admin, asks for what is missing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from service import create_app, db
from service.config import Settings
from service.models.users import User
from service.services import accounts

from .accounts import PASSWORD
from .conftest import empty_database, make_settings

ROOT = Path(__file__).resolve().parents[1]


def _roles(settings: Settings, username: str) -> list[str] | None:
    async def read() -> list[str] | None:
        database = db.open_database(settings)
        try:
            async with database.sessionmaker() as session:
                user = (
                    await session.execute(select(User).where(User.username == username))
                ).scalar_one_or_none()
                return user.role_names if user else None
        finally:
            await database.close()

    return asyncio.run(read())


def _add_viewer(settings: Settings, username: str) -> None:
    async def add() -> None:
        database = db.open_database(settings)
        try:
            async with database.sessionmaker() as session:
                await accounts.new_user(session, username, f"{username}@example.com", PASSWORD)
                await session.commit()
        finally:
            await database.close()

    asyncio.run(add())


def _forget_users(settings: Settings) -> None:
    async def forget() -> None:
        database = db.open_database(settings)
        try:
            await empty_database(database.engine)
        finally:
            await database.close()

    asyncio.run(forget())


def test_the_documented_command_creates_then_promotes(database_url: str) -> None:
    settings = make_settings(database_url)
    env = {**os.environ, "DATABASE_URL": database_url, "APP_ENV": "testing"}
    env.pop("REDIS_URL", None)
    if settings.redis_url:
        env["REDIS_URL"] = settings.redis_url
    command = [sys.executable, "-m", "quart", "--app", "service", "create-admin", "--username", "boss"]
    try:
        created = subprocess.run(
            [*command, "--email", "boss@example.com", "--password", PASSWORD],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stderr
        assert created.stdout.strip() == "Created admin 'boss'."
        assert _roles(settings, "boss") == ["admin", "viewer"]
        again = subprocess.run(
            command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
        )
        assert again.stdout.strip() == "'boss' is already an admin; nothing changed."
    finally:
        _forget_users(settings)


def test_it_asks_for_what_is_missing_and_refuses_weak_passwords(database_url: str) -> None:
    settings = make_settings(database_url)
    runner = create_app(settings).test_cli_runner()
    try:
        weak = runner.invoke(args=["create-admin"], input="ann\nann@example.com\nweak\nweak\n")
        assert weak.exit_code == 1
        assert "does not meet the policy" in weak.output
        assert _roles(settings, "ann") is None
        made = runner.invoke(args=["create-admin"], input=f"ann\nann@example.com\n{PASSWORD}\n{PASSWORD}\n")
        assert made.exit_code == 0, made.output
        assert "Created admin 'ann'." in made.output
        _add_viewer(settings, "dan")
        promoted = runner.invoke(args=["create-admin", "--username", "DAN"])
        assert promoted.exit_code == 0, promoted.output
        assert "Promoted 'dan' to admin." in promoted.output
        assert _roles(settings, "dan") == ["admin", "viewer"]
    finally:
        _forget_users(settings)
