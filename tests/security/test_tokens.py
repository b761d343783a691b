"""Token attacks the API must refuse: forged, re-signed, tampered, out-of-time and misused tokens, and the
tokens of users who are gone.

Elsewhere already, and not repeated here: revoked, expired and deleted owners' personal tokens
(tests/blueprints/test_api_tokens.py), a deleted or deactivated user's session tokens and a password
change ending other sessions (tests/blueprints/test_users.py), a rotated agent token and an agent token
on another agent (tests/blueprints/test_agents.py), logout and refresh-token reuse
(tests/blueprints/test_auth.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from quart.testing import QuartClient

from service import tokens
from service.application import Switchboard

from ..accounts import admin_headers, bearer, login, register, signed_in
from ..fleet import make_agent


def _forge(claims: dict[str, object], key: bytes | str, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signed_under_header(header: dict[str, str], payload: str, key: bytes) -> str:
    """A token whose signature is a true HMAC-SHA256 under our key, whatever algorithm its header names."""
    head = _b64(json.dumps(header).encode())
    signature = hmac.new(key, f"{head}.{payload}".encode(), hashlib.sha256).digest()
    return f"{head}.{payload}.{_b64(signature)}"


async def _assert_unauthorized(client: QuartClient, path: str, token: str, name: str) -> None:
    response = await client.get(path, headers=bearer(token))
    assert response.status_code == 401, name
    assert response.headers["WWW-Authenticate"] == "Bearer", name
    assert (await response.get_json())["error"]["code"] == "UNAUTHORIZED", name


# Our 32-byte key is short for HS384/HS512 on purpose: the attacker signs with it under those algorithms.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_forged_and_misused_access_tokens_are_refused(client: QuartClient, app: Switchboard) -> None:
    await register(client)
    pair = await login(client)
    real = jwt.decode(pair["access_token"], options={"verify_signature": False})
    key = tokens._signing_key(app.config["SETTINGS"].secret_key)
    now = datetime.now(UTC)
    header, payload, signature = pair["access_token"].split(".")
    tampered_payload = _b64(json.dumps({**real, "roles": ["admin"]}).encode())
    unsigned = _b64(b'{"alg":"none","typ":"JWT"}')
    capitalised = _b64(b'{"alg":"None","typ":"JWT"}')
    attacks = {
        "alg none": f"{unsigned}.{payload}.",
        "alg None, signature kept": f"{capitalised}.{payload}.{signature}",
        "tampered payload": f"{header}.{tampered_payload}.{signature}",
        "other key": _forge(real, "another-secret-key-that-is-long-enough-1234"),
        "the raw secret key, not the derived one": _forge(real, app.config["SETTINGS"].secret_key),
        # The right key under another algorithm: only HS256 is accepted, whatever the header says.
        "HS512 with our key": _forge(real, key, "HS512"),
        "HS384 with our key": _forge(real, key, "HS384"),
        # Algorithm confusion: an asymmetric algorithm named, an HMAC under our key as the signature.
        "RS256 header, HMAC signature": _signed_under_header({"alg": "RS256", "typ": "JWT"}, payload, key),
        "ES256 header, HMAC signature": _signed_under_header({"alg": "ES256", "typ": "JWT"}, payload, key),
        "expired": _forge({**real, "iat": now - timedelta(hours=2), "exp": now - timedelta(hours=1)}, key),
        "not yet valid": _forge({**real, "nbf": now + timedelta(hours=1)}, key),
        "issued by another service": _forge({**real, "iss": "elsewhere"}, key),
        "for another audience": _forge({**real, "aud": "another-api"}, key),
        "no expiry": _forge({k: v for k, v in real.items() if k != "exp"}, key),
        "refresh as access": pair["refresh_token"],
        "wrong type": _forge({**real, "typ": "refresh"}, key),
        "garbage": "not.a.jwt",
        "unknown session": _forge({**real, "jti": str(uuid.uuid4())}, key),
        "another user on this session": _forge({**real, "sub": str(uuid.uuid4())}, key),
    }
    for name, token in attacks.items():
        await _assert_unauthorized(client, "/auth/me", token, name)
    # The control: the real token still works, so each refusal above is the attack's doing.
    assert (await client.get("/auth/me", headers=bearer(pair["access_token"]))).status_code == 200
    access_as_refresh = await client.post("/auth/refresh", json={"refresh_token": pair["access_token"]})
    assert access_as_refresh.status_code == 401


async def test_a_deleted_users_refresh_and_personal_tokens_are_refused(
    client: QuartClient, app: Switchboard
) -> None:
    admin = await admin_headers(app, client)
    user = await register(client, "gone")
    pair = await login(client, "gone")
    created = await client.post(
        "/auth/tokens", json={"name": "ci", "scopes": ["agents:read"]}, headers=bearer(pair["access_token"])
    )
    personal = (await created.get_json())["data"]["token"]
    assert (await client.delete(f"/api/v1/users/{user['id']}", headers=admin)).status_code == 200
    await _assert_unauthorized(client, "/auth/me", pair["access_token"], "access")
    await _assert_unauthorized(client, "/api/v1/agents", personal, "personal")
    refreshed = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 401


async def test_agent_tokens_open_no_user_route(client: QuartClient, app: Switchboard) -> None:
    admin = await admin_headers(app, client)
    agent_id, agent = await make_agent(client, admin, "runner")
    for method, path, body in (
        ("GET", "/auth/me", None),
        ("GET", "/auth/tokens", None),
        ("POST", "/auth/tokens", {"name": "x", "scopes": ["agents:read"]}),
        ("POST", "/auth/logout", None),
        ("GET", "/api/v1/users", None),
        ("GET", f"/api/v1/agents/{agent_id}", None),
        ("PATCH", f"/api/v1/agents/{agent_id}", {"max_concurrent": 5}),
        ("POST", "/api/v1/assignments", {"title": "self-assigned"}),
        ("GET", "/api/v1/assignments", None),
        ("GET", "/api/v1/events", None),
        ("GET", "/api/v1/audit", None),
    ):
        response = await client.open(path, method=method, json=body, headers=agent)
        assert response.status_code == 401, (method, path)


async def test_user_tokens_open_no_agent_only_route(client: QuartClient, app: Switchboard) -> None:
    """Heartbeats take the agent's own token: not an admin's session, nor a personal token."""
    admin = await admin_headers(app, client)
    agent_id, _ = await make_agent(client, admin, "runner")
    created = await client.post(
        "/auth/tokens", json={"name": "ci", "scopes": ["agents:write"]}, headers=admin
    )
    personal = bearer((await created.get_json())["data"]["token"])
    viewer = await signed_in(client, "vic")
    for name, headers in (("admin session", admin), ("personal token", personal), ("viewer", viewer)):
        response = await client.post(
            f"/api/v1/agents/{agent_id}/heartbeat", json={"status": "online"}, headers=headers
        )
        assert response.status_code == 401, name
    agent = await client.get(f"/api/v1/agents/{agent_id}", headers=admin)
    assert (await agent.get_json())["data"]["last_heartbeat_at"] is None
