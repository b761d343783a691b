"""Rate limits over HTTP: login per address and per username, registration per address, the default
per user or address, exempt operations routes, trusted proxies, and the store's expiry and fallback."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from quart.testing import QuartClient
from quart.wrappers import Response
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from service import create_app, rate_limits, redis_client, tokens
from service.application import Switchboard
from service.config import Settings

from .accounts import PASSWORD, admin_headers, bearer, login, register
from .conftest import make_settings
from .fleet import beat, make_agent
from .servers import free_port

# Small enough to reach in a few requests; the default stays above the others so it is never the
# limit a login or registration test runs into.
SMALL_LIMITS: dict[str, object] = {
    "rate_limit_login": "3/minute",
    "rate_limit_login_account": "5/hour",
    "rate_limit_register": "2/minute",
    "rate_limit_default": "6/minute",
}


@pytest.fixture
def settings(database_url: str, request: pytest.FixtureRequest) -> Settings:
    """The shared fixture's settings with small limits; a test may add overrides (indirect)."""
    overrides: dict[str, object] = getattr(request, "param", {})
    return make_settings(database_url, **{**SMALL_LIMITS, **overrides})


def peer(address: str) -> dict[str, object]:
    """scope_base for a request arriving from `address` (the test client sets no peer by default)."""
    return {"client": (address, 40000)}


async def attempt(client: QuartClient, username: str, **options: object) -> Response:
    return await client.post(
        "/auth/login", json={"username": username, "password": "Wrong-Password-1"}, **options
    )


async def assert_rate_limited(response: Response) -> None:
    assert response.status_code == 429
    assert (await response.get_json())["error"]["code"] == "RATE_LIMITED"
    assert int(response.headers["Retry-After"]) > 0


async def test_login_is_limited_per_address(client: QuartClient) -> None:
    remaining = []
    for name in ("ann", "ben", "cat"):
        response = await attempt(client, name)
        assert response.status_code == 401
        remaining.append(response.headers["RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]

    refused = await attempt(client, "dan")
    await assert_rate_limited(refused)
    assert refused.headers["RateLimit-Limit"] == "3"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["RateLimit-Reset"]) > 0
    # Another address still gets through.
    assert (await attempt(client, "dan", scope_base=peer("10.0.0.2"))).status_code == 401


async def test_login_is_limited_per_username_whatever_the_address(client: QuartClient) -> None:
    # Case and surrounding spaces do not make a new username, as login itself ignores them.
    for number, name in enumerate(("ada", "ADA", " Ada "), start=1):
        assert (await attempt(client, name, scope_base=peer(f"10.0.0.{number}"))).status_code == 401
    await assert_rate_limited(await attempt(client, "ada", scope_base=peer("10.0.0.4")))
    assert (await attempt(client, "bob", scope_base=peer("10.0.0.5"))).status_code == 401


@pytest.mark.parametrize("settings", [{"rate_limit_login": "100/minute"}], indirect=True)
async def test_one_account_gets_few_attempts_an_hour(client: QuartClient) -> None:
    """The per-minute limits could be kept under all day; the hourly one per account cannot."""
    for number in range(5):
        assert (await attempt(client, "ada", scope_base=peer(f"10.0.1.{number}"))).status_code == 401
    await assert_rate_limited(await attempt(client, "ada", scope_base=peer("10.0.1.9")))
    assert (await attempt(client, "bob", scope_base=peer("10.0.1.9"))).status_code == 401


async def test_a_login_body_without_a_username_is_limited_by_address(client: QuartClient) -> None:
    json_headers = {"Content-Type": "application/json"}
    for body in (b"{not json", b"[1, 2]", b'{"username": 5}'):
        response = await client.post("/auth/login", data=body, headers=json_headers)
        assert 400 <= response.status_code < 500
        assert response.status_code != 429
    await assert_rate_limited(await client.post("/auth/login", data=b"{}", headers=json_headers))


async def test_registration_is_limited_per_address(client: QuartClient) -> None:
    await register(client, "ann")
    await register(client, "ben")
    refused = await client.post(
        "/auth/register", json={"username": "cat", "email": "cat@example.com", "password": "x"}
    )
    await assert_rate_limited(refused)
    assert refused.headers["RateLimit-Limit"] == "2"
    other = await client.post(
        "/auth/register",
        json={"username": "cat", "email": "cat@example.com", "password": PASSWORD},
        scope_base=peer("10.0.0.2"),
    )
    assert other.status_code == 201


async def test_default_limit_is_per_user(client: QuartClient) -> None:
    await register(client, "ann")
    await register(client, "ben")
    ann = bearer((await login(client, "ann"))["access_token"])
    ben = bearer((await login(client, "ben"))["access_token"])
    for _ in range(6):
        assert (await client.get("/auth/me", headers=ann)).status_code == 200
    refused = await client.get("/auth/me", headers=ann)
    await assert_rate_limited(refused)
    assert refused.headers["RateLimit-Limit"] == "6"
    # Same address, another user: a bucket of its own.
    allowed = await client.get("/auth/me", headers=ben)
    assert allowed.status_code == 200
    assert allowed.headers["RateLimit-Remaining"] == "5"


async def test_agents_are_limited_per_agent_not_per_address(app: Switchboard, client: QuartClient) -> None:
    admin = await admin_headers(app, client)
    first, first_token = await make_agent(client, admin, "a1")
    second, second_token = await make_agent(client, admin, "a2")
    for _ in range(6):
        await beat(client, first, first_token)
    refused = await client.post(
        f"/api/v1/agents/{first}/heartbeat", json={"status": "online"}, headers=first_token
    )
    await assert_rate_limited(refused)
    # Same address, another agent: a bucket of its own (a fleet behind one NAT is not one client).
    await beat(client, second, second_token)


async def test_default_limit_is_per_address_when_anonymous(client: QuartClient) -> None:
    for _ in range(6):
        assert (await client.get("/auth/me", scope_base=peer("10.0.0.1"))).status_code == 401
    await assert_rate_limited(await client.get("/auth/me", scope_base=peer("10.0.0.1")))
    assert (await client.get("/auth/me", scope_base=peer("10.0.0.2"))).status_code == 401


async def test_an_outage_while_identifying_the_caller_stays_a_503() -> None:
    """The limiter resolves the caller for its key; a dead database must still give the 503 envelope."""
    settings = make_settings(
        "postgresql://nobody@127.0.0.1:9/none", redis_url=None, database_connect_timeout=1.0
    )
    token = tokens.issue_access_token(settings.secret_key, uuid.uuid4(), uuid.uuid4(), ["viewer"], 600)
    app = create_app(settings)
    async with app.test_app():
        response = await app.test_client().get("/auth/me", headers=bearer(token))
    assert response.status_code == 503
    assert (await response.get_json())["error"]["code"] == "SERVICE_UNAVAILABLE"


async def test_operations_routes_are_never_limited(client: QuartClient) -> None:
    paths = ("/health", "/readiness", "/metrics", "/docs", "/_docs/swagger/swagger-ui.css", "/openapi.json")
    for path in paths:
        for _ in range(8):
            response = await client.get(path)
            assert response.status_code == 200, path
            assert "RateLimit-Limit" not in response.headers, path


async def test_limits_can_be_turned_off(database_url: str) -> None:
    app = create_app(make_settings(database_url, **SMALL_LIMITS, rate_limits_enabled=False, redis_url=None))
    async with app.test_app():
        client = app.test_client()
        for _ in range(5):
            response = await attempt(client, "ann")
            assert response.status_code == 401
            assert "RateLimit-Limit" not in response.headers


async def test_forged_forwarded_for_is_ignored_without_trusted_proxies(client: QuartClient) -> None:
    for number in range(1, 4):
        forged = {"X-Forwarded-For": f"203.0.113.{number}"}
        assert (await attempt(client, f"user{number}", headers=forged)).status_code == 401
    await assert_rate_limited(await attempt(client, "user4", headers={"X-Forwarded-For": "203.0.113.4"}))


@pytest.mark.parametrize("settings", [{"trusted_proxy_hops": 1}], indirect=True)
async def test_forwarded_for_names_the_client_behind_a_trusted_proxy(client: QuartClient) -> None:
    # The proxy appends the address it saw; what the client wrote further left is not trusted.
    for number in range(1, 4):
        header = {"X-Forwarded-For": f"203.0.113.{number}, 198.51.100.7"}
        assert (await attempt(client, f"user{number}", headers=header)).status_code == 401
    await assert_rate_limited(
        await attempt(client, "user4", headers={"X-Forwarded-For": "203.0.113.4, 198.51.100.7"})
    )
    other = await attempt(client, "user5", headers={"X-Forwarded-For": "198.51.100.8"})
    assert other.status_code == 401


@pytest.mark.parametrize(
    "settings", [{"trusted_proxy_hops": 1, "trusted_proxies": "10.0.0.0/8, 2001:db8::/32"}], indirect=True
)
async def test_forwarded_for_counts_only_from_the_listed_proxies(client: QuartClient) -> None:
    # Through the proxy: each client behind it has its own allowance.
    for number in range(1, 5):
        through = {"headers": {"X-Forwarded-For": f"203.0.113.{number}"}, "scope_base": peer("10.1.2.3")}
        assert (await attempt(client, f"user{number}", **through)).status_code == 401
    # Around it: whatever the client writes, its own address is counted (3 a minute).
    for number in range(5, 8):
        around = {"headers": {"X-Forwarded-For": f"203.0.113.{number}"}, "scope_base": peer("198.51.100.9")}
        assert (await attempt(client, f"user{number}", **around)).status_code == 401
    forged = {"headers": {"X-Forwarded-For": "203.0.113.99"}, "scope_base": peer("198.51.100.9")}
    await assert_rate_limited(await attempt(client, "user8", **forged))


def test_trusted_proxies_must_be_networks(database_url: str) -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        make_settings(database_url, trusted_proxies="10.0.0.0/8, nginx")


async def test_stored_limits_expire(app: Switchboard, client: QuartClient) -> None:
    """Redis keys carry a TTL; the memory store (embedded mode) forgets entries whose time has passed."""
    await attempt(client, "ann")
    redis: Redis | None = app.extensions.get("redis")
    if redis is not None:
        keys = [key async for key in redis.scan_iter(match=rate_limits.KEY_PREFIX + "*")]
        # Login per address, per username each minute and each hour; the default.
        assert len(keys) == 4
        for key in keys:
            assert 0 < await redis.pttl(key) <= 3_600_000
    else:
        memory = app.extensions["rate_limiter"].store.memory
        assert len(memory) == 4
        memory.sweep(datetime.now(UTC))
        assert len(memory) == 4
        memory.sweep(datetime.now(UTC) + timedelta(minutes=1))
        assert len(memory) == 1  # the hourly count per account
        memory.sweep(datetime.now(UTC) + timedelta(hours=1))
        assert len(memory) == 0


async def test_redis_failure_falls_back_to_memory_and_still_limits(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = make_settings(database_url, **SMALL_LIMITS, redis_url="redis://127.0.0.1:1/0", log_format="json")
    app = create_app(dead)
    async with app.test_app():
        client = app.test_client()
        for _ in range(2):
            response = await client.post("/auth/register", json={})  # invalid: nothing is written
            assert response.status_code == 422
        await assert_rate_limited(await client.post("/auth/register", json={}))
        # A signed token for a session nobody has: the auth cache is asked (Redis, skipped now), then
        # the database, which knows no such session.
        token = tokens.issue_access_token(dead.secret_key, uuid.uuid4(), uuid.uuid4(), ["viewer"], 600)
        refused = await client.get("/api/v1/agents", headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 401
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    # One warning for the outage: the limiter and the auth cache share the app's one breaker, and the
    # requests after the first failure do not ask Redis at all.
    warnings = [line for line in lines if line["event"] == "redis_unavailable"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"


@asynccontextmanager
async def _redis_server(port: int, directory: Path) -> AsyncIterator[None]:
    """A throwaway redis-server on `port`: the test decides when Redis comes back."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed")
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe = Redis(host="127.0.0.1", port=port)
    try:
        for _ in range(200):
            try:
                await probe.ping()
                break
            except RedisConnectionError:
                await asyncio.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not start")
        yield
    finally:
        await probe.aclose()
        process.terminate()
        process.wait(timeout=10)


async def test_store_goes_back_to_redis_once_it_answers(tmp_path: Path) -> None:
    port = free_port()
    # from_url, as the app builds its client: without the retries Redis(host=…) adds by default.
    client = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=1, socket_connect_timeout=1)
    breaker = redis_client.Breaker("redis", retry_seconds=0, probe=client.ping)
    store = rate_limits.Store(lambda: client, breaker)
    # Two requests a minute: a second request passes, a third is refused.
    checks = [rate_limits.Check("down", inverse=30.0, max_interval=30.0)]
    now = time.time()
    try:
        # Nothing listens on the port yet: memory counts.
        assert (await store.acquire(checks, now)).refused is None
        assert len(store.memory) == 1
        async with _redis_server(port, tmp_path):
            # No request waits on Redis while it is down: a probe in the background finds it back.
            for _ in range(100):
                if breaker.allows():
                    break
                await asyncio.sleep(0.05)
            up = [rate_limits.Check("up", inverse=30.0, max_interval=30.0)]
            first = await store.acquire(up, now)
            assert first.refused is None
            assert abs(first.tats[0] - now - 30.0) < 1e-3
            assert len(store.memory) == 1  # written to Redis, not to memory
            assert 0 < await client.pttl(rate_limits.KEY_PREFIX + "up") <= 30_000
            assert (await store.acquire(up, now)).refused is None
            refused = await store.acquire(up, now)
            assert refused.refused == 0
            assert abs(refused.tats[0] - now - 60.0) < 1e-3  # a refusal counts nothing
    finally:
        await client.aclose()


async def test_redis_and_memory_decide_alike(app: Switchboard) -> None:
    """The Lua script and decide() are one algorithm: the same requests get the same answers."""
    redis: Redis | None = app.extensions.get("redis")
    if redis is None:
        pytest.skip("needs Redis: runs in the PostgreSQL + Redis configuration")
    in_redis = rate_limits.Store(lambda: redis)
    in_memory = rate_limits.Store(lambda: None)
    checks = [
        rate_limits.Check("fast", inverse=1.0, max_interval=2.0),
        rate_limits.Check("slow", inverse=10.0, max_interval=40.0),
    ]
    now = 1_000_000.0
    for step in range(12):
        at = now + step * 0.5
        ours, theirs = await in_redis.acquire(checks, at), await in_memory.acquire(checks, at)
        assert ours.refused == theirs.refused
        assert ours.tats == theirs.tats  # the same arithmetic in doubles
