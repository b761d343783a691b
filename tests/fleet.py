"""Conversation helpers for agents and assignments, through the real API."""

from __future__ import annotations

from typing import Any

from quart.testing import QuartClient

from .accounts import bearer


async def make_agent(
    client: QuartClient,
    operator: dict[str, str],
    name: str,
    capabilities: list[str] | None = None,
    max_concurrent: int = 1,
) -> tuple[str, dict[str, str]]:
    """Register an agent; returns its id and the headers it authenticates with."""
    response = await client.post(
        "/api/v1/agents",
        json={"name": name, "capabilities": capabilities or [], "max_concurrent": max_concurrent},
        headers=operator,
    )
    assert response.status_code == 201, await response.get_data()
    data = (await response.get_json())["data"]
    return data["id"], bearer(data["agent_token"])


async def beat(
    client: QuartClient, agent_id: str, token: dict[str, str], status: str = "online", **extra: Any
) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/agents/{agent_id}/heartbeat", json={"status": status, **extra}, headers=token
    )
    assert response.status_code == 200, await response.get_data()
    data: dict[str, Any] = (await response.get_json())["data"]
    return data


async def online_agent(
    client: QuartClient,
    operator: dict[str, str],
    name: str,
    capabilities: list[str] | None = None,
    max_concurrent: int = 1,
) -> tuple[str, dict[str, str]]:
    agent_id, token = await make_agent(client, operator, name, capabilities, max_concurrent)
    await beat(client, agent_id, token)
    return agent_id, token


async def make_work(
    client: QuartClient, operator: dict[str, str], title: str = "job", **fields: Any
) -> dict[str, Any]:
    response = await client.post("/api/v1/assignments", json={"title": title, **fields}, headers=operator)
    assert response.status_code == 201, await response.get_data()
    data: dict[str, Any] = (await response.get_json())["data"]
    return data
