"""The data benchmarks share: agents seeded through the service functions (reused while they exist),
users, and access tokens got by logging in over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from service import tokens
from service.config import Settings
from service.identity import Identity
from service.models.agents import Agent
from service.models.users import User
from service.schemas.agents import AgentIn
from service.services import agents as agent_service

from .servers import ADMIN, PASSWORD, Backends

FLEET = "bench-agent-"
CAPACITY_FLEET = "bench-assign-"
CAPACITY_CAPABILITY = "bench-assign"
_BATCH = 500


@dataclass(frozen=True)
class SeededAgent:
    id: str
    token: str


def agent_token(name: str) -> str:
    """A benchmark agent's token, derived from its name so a reused fleet needs no stored secrets.

    Anyone who knows the name can derive it: for the benchmark database only.
    """
    return tokens.AGENT_PREFIX + hashlib.sha256(f"switchboard-bench:{name}".encode()).hexdigest()


async def seed_agents(
    backends: Backends, prefix: str, count: int, capabilities: list[str], max_concurrent: int = 1
) -> list[SeededAgent]:
    """`count` agents named prefix00000…, created through services.agents where missing, in batches."""
    settings = Settings(database_url=backends.database_url)
    engine = create_async_engine(settings.database_url)
    try:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with sessions() as session:
            admin = (await session.execute(select(User.id).where(User.username == ADMIN))).scalar_one()
            existing = dict(
                (
                    await session.execute(
                        select(Agent.name, Agent.id).where(
                            Agent.name.like(f"{prefix}%"), Agent.deleted_at.is_(None)
                        )
                    )
                ).all()
            )
        caller = Identity(admin, None, ("admin",), frozenset())
        names = [f"{prefix}{index:05d}" for index in range(count)]
        missing = [name for name in names if name not in existing]
        for start in range(0, len(missing), _BATCH):
            async with sessions() as session, session.begin():
                for name in missing[start : start + _BATCH]:
                    data = AgentIn(name=name, capabilities=capabilities, max_concurrent=max_concurrent)
                    agent, _ = await agent_service.create_agent(session, caller, data)
                    agent.token_hash = tokens.digest(agent_token(name))
                    existing[name] = agent.id
            print(f"  seeded {min(start + _BATCH, len(missing))}/{len(missing)} {prefix}* agents", flush=True)
        return [SeededAgent(str(existing[name]), agent_token(name)) for name in names]
    finally:
        await engine.dispose()


async def count_agents(backends: Backends) -> int:
    engine = create_async_engine(Settings(database_url=backends.database_url).database_url)
    try:
        async with engine.connect() as connection:
            found = await connection.execute(select(func.count()).select_from(Agent))
            return int(found.scalar_one())
    finally:
        await engine.dispose()


async def login(client: httpx.AsyncClient, username: str = ADMIN, password: str = PASSWORD) -> str:
    """An access token for `username`, through POST /auth/login."""
    answer = await client.post("/auth/login", json={"username": username, "password": password})
    answer.raise_for_status()
    token: str = answer.json()["data"]["access_token"]
    return token


async def viewers(client: httpx.AsyncClient, admin_token: str, count: int) -> list[str]:
    """Access tokens of `count` viewer accounts (created on first use), for runs that need many users."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    names = [f"bench-viewer-{index:03d}" for index in range(count)]
    for name in names:
        body: dict[str, Any] = {
            "username": name,
            "email": f"{name}@example.com",
            "password": PASSWORD,
            "roles": ["viewer"],
        }
        made = await client.post("/api/v1/users", json=body, headers=headers)
        if made.status_code not in (201, 409):
            made.raise_for_status()
    return list(await asyncio.gather(*(login(client, name) for name in names)))


def new_request_id() -> str:
    return uuid.uuid4().hex
