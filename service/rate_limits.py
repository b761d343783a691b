"""Rate limits (quart-rate-limiter): a default per caller on every route, stricter ones on login (the API's
and the dashboard's, counted together) and registration, kept in Redis so every worker and instance
counts together.

A request over a limit gets `429 RATE_LIMITED` with `Retry-After`; responses of limited routes carry
`RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`. The operations routes (health, metrics,
docs, the OpenAPI document) are never limited: probes and scrapers must not be refused.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network, IPv6Network
from typing import Any, TypeVar

from flask.sansio.blueprints import Blueprint as SansioBlueprint
from hypercorn.middleware import ProxyFixMiddleware
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Quart, Response, current_app, g, request
from quart_rate_limiter import KeyCallable, RateLimit, RateLimiter, RateLimitExceeded
from quart_rate_limiter.store import RateLimiterStoreABC
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from werkzeug.exceptions import HTTPException

from service import identity, log, presence, redis_client
from service.config import Settings, parse_rate

logger = log.get(__name__)

V = TypeVar("V", bound=Callable[..., Any])

# Beside the cache's "sb:" keys; one prefix makes the limits easy to find, count and drop.
KEY_PREFIX = "sb:rl:"
# Blueprints and endpoints never limited: probes, scrapers and the docs must always get through.
EXEMPT_BLUEPRINTS = frozenset({"health", "docs"})
EXEMPT_ENDPOINTS = frozenset({"openapi", "static"})

_NAMED_LIMITS_ATTRIBUTE = "_switchboard_rate_limits"
# The memory store sweeps when it has doubled since the last sweep, never below this many entries.
_MIN_SWEEP = 10_000


def login_limits(view: V) -> V:
    """Limit a login route per client address and per username (RATE_LIMIT_LOGIN each), and per
    username over a longer window (RATE_LIMIT_LOGIN_ACCOUNT).

    Place it directly under the route decorator.
    """
    return _name_limits(view, "login")


def register_limits(view: V) -> V:
    """Limit a registration route per client address (RATE_LIMIT_REGISTER).

    Place it directly under the route decorator.
    """
    return _name_limits(view, "register")


def _name_limits(view: V, name: str) -> V:
    # The view only carries a name: the limits themselves are built per app from its settings, so two
    # apps in one process (tests) neither share counters nor each other's configured rates.
    setattr(view, _NAMED_LIMITS_ATTRIBUTE, (*getattr(view, _NAMED_LIMITS_ATTRIBUTE, ()), name))
    return view


class MemoryTats:
    """Theoretical arrival times held in this process.

    A TAT in the past means the same as no entry (the limiter takes the later of the TAT and now), so
    sweeping those out loses nothing; sweeping when the table has doubled keeps each write cheap.
    """

    def __init__(self) -> None:
        self._tats: dict[str, float] = {}
        self._sweep_at = _MIN_SWEEP

    def __len__(self) -> int:
        return len(self._tats)

    def get(self, key: str) -> float:
        return self._tats.get(key, 0.0)

    def set(self, key: str, tat: float) -> None:
        self._tats[key] = tat
        if len(self._tats) >= self._sweep_at:
            self.sweep(datetime.now(UTC))

    def sweep(self, now: datetime) -> None:
        """Drop every entry whose TAT is not after `now`."""
        cutoff = now.timestamp()
        self._tats = {key: tat for key, tat in self._tats.items() if tat > cutoff}
        self._sweep_at = max(_MIN_SWEEP, 2 * len(self._tats))


@dataclass(frozen=True)
class Check:
    """One limit to pass: its stored key, the seconds each request costs, and how far ahead of now a
    TAT may run before requests are refused (the period less one request)."""

    key: str
    inverse: float
    max_interval: float


@dataclass(frozen=True)
class Decision:
    """The outcome for one request: the TAT of each check (moved on when allowed) and, when refused,
    the index of the first check that refused."""

    tats: tuple[float, ...]
    refused: int | None
    # The values of the keys and hash fields the caller asked to have read in the same call (see
    # Store.acquire); None when they were not read (Redis is down and the limits were counted in memory).
    reads: tuple[str | None, ...] | None = None
    hash_reads: tuple[bytes | str | None, ...] | None = None


def decide(stored: list[float], checks: list[Check], now: float) -> Decision:
    """GCRA over every check at once: refused if any check refuses, and then nothing is counted.

    _GCRA_SCRIPT is this same function for Redis; the two must stay in step.
    """
    tats = [max(tat, now) for tat in stored]
    for index, (tat, check) in enumerate(zip(tats, checks, strict=True)):
        if tat - now > check.max_interval:
            return Decision(tuple(tats), index)
    return Decision(tuple(tat + check.inverse for tat, check in zip(tats, checks, strict=True)), None)


# decide() in Lua, so reading and moving every TAT is one atomic round trip: workers and instances
# cannot both pass the last allowance, and a request costs one Redis call however many limits it has.
# The same call reads what the request needs next: the caller's auth cache entries (identity.prefetch)
# and the fields of the presence hash its view will look at (presence.looks_at).
# KEYS: the checks' keys, the keys to GET, then the hash to HMGET when there are fields to read.
# ARGV: now, the number of checks, inverse and max_interval of each check, then the hash's fields.
_GCRA_SCRIPT = """
local now = tonumber(ARGV[1])
local checks = tonumber(ARGV[2])
local fields = #ARGV - 2 - 2 * checks
local gets = #KEYS - checks
if fields > 0 then gets = gets - 1 end
local tats = {}
local refused = 0
for i = 1, checks do
  tats[i] = math.max(tonumber(redis.call('GET', KEYS[i]) or '0'), now)
  if refused == 0 and tats[i] - now > tonumber(ARGV[2 * i + 2]) then refused = i end
end
local out = {tostring(refused)}
for i = 1, checks do
  if refused == 0 then
    tats[i] = tats[i] + tonumber(ARGV[2 * i + 1])
    local ttl = math.max(1, math.ceil((tats[i] - now) * 1000))
    redis.call('SET', KEYS[i], string.format('%.17g', tats[i]), 'PX', ttl)
  end
  out[#out + 1] = string.format('%.17g', tats[i])
end
for i = checks + 1, checks + gets do
  out[#out + 1] = redis.call('GET', KEYS[i])
end
if fields > 0 then
  -- HMGET answers false (nil to the caller) for a missing field, which keeps its place in out.
  for _, value in ipairs(redis.call('HMGET', KEYS[#KEYS], unpack(ARGV, 3 + 2 * checks))) do
    out[#out + 1] = value
  end
end
return out
"""


class Store(RateLimiterStoreABC):
    """Redis when the app has a client, this process's memory otherwise.

    Redis keys expire once their TAT has passed (quart-rate-limiter's RedisStore never expires them).
    When Redis fails the limits carry on in memory rather than letting every request through (not
    fail-open); the breaker (the app's one, `redis_client.Breaker`) logs the outage once and finds Redis
    back.
    """

    def __init__(
        self, redis: Callable[[], Redis | None], breaker: redis_client.Breaker | None = None
    ) -> None:
        # A callable, not a client: the app's client only exists once before_serving has run.
        self._redis = redis
        self._breaker = breaker or redis_client.Breaker("redis", probe=self._ping)
        self._script: AsyncScript | None = None
        self.memory = MemoryTats()

    async def before_serving(self) -> None:
        """Nothing to open: the Redis client belongs to service.redis_client."""

    async def after_serving(self) -> None:
        """Nothing to close, for the same reason."""

    async def acquire(
        self,
        checks: list[Check],
        now: float,
        reads: Sequence[str] = (),
        hash_read: tuple[str, Sequence[str]] | None = None,
    ) -> Decision:
        """Count one request against every check, unless one of them refuses it; and read, in the same
        call, the Redis keys `reads` (Decision.reads) and the fields of the hash `hash_read` names
        (Decision.hash_reads), neither read when Redis is down."""
        client = self._redis()
        if client is not None:
            if self._script is None or self._script.registered_client is not client:
                self._script = client.register_script(_GCRA_SCRIPT)
            limits = (value for check in checks for value in (check.inverse, check.max_interval))
            hash_key, fields = hash_read if hash_read is not None and hash_read[1] else (None, ())
            arguments: list[str | float] = [now, len(checks), *limits, *fields]
            keys = [*(KEY_PREFIX + check.key for check in checks), *reads]
            if hash_key is not None:
                keys.append(hash_key)
            script = self._script
            try:
                raw = await self._breaker.run(lambda: script(keys=keys, args=arguments))
            except redis_client.FAILURES:
                pass  # counted in memory below
            else:
                refused = int(raw[0])
                got = len(checks) + 1
                tats, values, hashed = raw[1:got], raw[got : got + len(reads)], raw[got + len(reads) :]
                return Decision(
                    tuple(float(tat) for tat in tats),
                    refused - 1 if refused else None,
                    tuple(None if value is None else redis_client.text(value) for value in values),
                    tuple(hashed) if hash_key is not None else None,
                )
        decision = decide([self.memory.get(check.key) for check in checks], checks, now)
        if decision.refused is None:
            for check, tat in zip(checks, decision.tats, strict=True):
                self.memory.set(check.key, tat)
        return decision

    # The library's store interface; the limiter itself only calls acquire().
    async def get(self, key: str, default: datetime) -> datetime:
        raise NotImplementedError("the limiter uses Store.acquire")

    async def set(self, key: str, tat: datetime) -> None:
        raise NotImplementedError("the limiter uses Store.acquire")

    async def _ping(self) -> None:
        client = self._redis()
        if client is not None:
            await client.ping()


class _Limiter(RateLimiter):
    """quart-rate-limiter with this service's exemptions, per-app named limits, and one store call per
    request (the library reads the store three times and writes once)."""

    store: Store

    def __init__(self, named: dict[str, list[RateLimit]], **options: Any) -> None:
        self._named = named
        self._group = {id(limit): name for name, limits in named.items() for limit in limits}
        super().__init__(**options)

    async def _before_request(self) -> None:
        if not current_app.config["QUART_RATE_LIMITER_ENABLED"]:
            return
        view_func = current_app.view_functions.get(request.endpoint or "")
        limits = self._get_limits_for_view_function(
            view_func, current_app.blueprints.get(request.blueprint or "")
        )
        limits = [limit for limit in limits if not await self._should_skip(limit)]
        if not limits:
            return
        # Who is calling, as far as the credential says without any I/O: the caller's key, and the auth
        # cache entries the request needs next, read in the same Redis call as the limits (so is the
        # agent a view looks at, presence.looks_at).
        prefetch = identity.prefetch()
        if prefetch is not None:
            g.rate_limit_caller = prefetch.caller
        checks = [
            Check(
                await self._create_key(request.endpoint or "", limit),
                limit.inverse,
                limit.period.total_seconds() - limit.inverse,
            )
            for limit in limits
        ]
        fields = presence.fields_to_read_ahead(view_func, request.view_args)
        now = time.time()
        decision = await self.store.acquire(
            checks,
            now,
            prefetch.redis_keys if prefetch is not None else (),
            (presence.KEY, fields) if fields else None,
        )
        if prefetch is not None and decision.reads is not None:
            identity.current_principal().prime(dict(zip(prefetch.keys, decision.reads, strict=True)))
        if fields and decision.hash_reads is not None:
            presence.read_ahead(fields, decision.hash_reads)
        g.rate_limit_state = (limits, decision, now)
        if decision.refused is not None:
            tat = decision.tats[decision.refused]
            retry_after = tat - checks[decision.refused].max_interval - now
            raise RateLimitExceeded(math.ceil(retry_after))

    async def _after_request(self, response: Response) -> Response:
        state: tuple[list[RateLimit], Decision, float] | None = g.get("rate_limit_state")
        if state is None:
            return response
        limits, decision, now = state
        # The headers describe the limit with the shortest period, as the library's do.
        index = min(range(len(limits)), key=lambda i: limits[i].period.total_seconds())
        limit, separation = limits[index], decision.tats[index] - now
        remaining = int((limit.period.total_seconds() - separation) / limit.inverse)
        response.headers["RateLimit-Limit"] = str(limit.count)
        response.headers["RateLimit-Remaining"] = str(max(0, remaining))
        response.headers["RateLimit-Reset"] = str(math.ceil(separation))
        return response

    async def _create_key(self, endpoint: str, rate_limit: RateLimit) -> str:
        # The library counts per endpoint; a named limit counts per name instead, so every route that
        # carries it shares one count (the API's and the dashboard's login: one allowance, two doors).
        return await super()._create_key(self._group.get(id(rate_limit), endpoint), rate_limit)

    def _get_limits_for_view_function(
        self, view_func: Callable[..., Any] | None, blueprint: SansioBlueprint | None
    ) -> list[RateLimit]:
        # Exemption by endpoint here, because the library marks exemptions on view functions: these are
        # registered after init_app, and the OpenAPI view is a bound method that takes no attributes.
        # No route (404, 405) and CORS preflights run no view code, so they are not counted either.
        if (
            view_func is None
            or request.method == "OPTIONS"
            or request.blueprint in EXEMPT_BLUEPRINTS
            or request.endpoint in EXEMPT_ENDPOINTS
        ):
            return []
        names: tuple[str, ...] = getattr(view_func, _NAMED_LIMITS_ATTRIBUTE, ())
        named = [limit for name in names for limit in self._named[name]]
        return named + super()._get_limits_for_view_function(view_func, blueprint)


def client_address() -> str:
    """The caller's address as the key of its limits.

    It is the peer address, or the one the trusted proxies report (TRUSTED_PROXY_HOPS): never a
    header the client itself can set. An IPv6 caller is keyed by its /64, since one subscriber usually
    holds the whole /64 and could otherwise take a fresh address per request.
    """
    raw = request.remote_addr or "unknown"
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return raw[:100]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network((address, 64), strict=False))
    return str(address)


async def _caller_key() -> str:
    # The limiter asks again after the response is made: answer from g rather than resolve twice.
    key: str | None = g.get("rate_limit_caller")
    if key is not None:
        return key
    principal = identity.current_principal()
    try:
        caller = await principal.identity()
        agent = await principal.agent() if caller is None else None
    except Exception:
        # In practice the database or cache is down, and the request ends in that error's 503. Remember
        # a key first, so the limiter's after-request call neither waits on the dead dependency again
        # nor raises, which would turn the 503 into a bare 500.
        g.rate_limit_caller = f"ip:{client_address()}"
        raise
    # The key names its kind, so a user id and an address can never share a counter. Agents count by
    # their own id: a fleet behind one NAT address must not share one allowance.
    if caller is not None:
        key = f"user:{caller.user_id}"
    elif agent is not None:
        key = f"agent:{agent.agent_id}"
    else:
        key = f"ip:{client_address()}"
    g.rate_limit_caller = key
    return key


async def _login_address_key() -> str:
    return f"login-ip:{client_address()}"


async def _login_username_key() -> str:
    """The username being tried, so a password guesser cannot reset its count by changing address.

    From the JSON body (the API) or the form (the dashboard): both logins share one count.
    """
    try:
        if request.mimetype == "application/x-www-form-urlencoded":
            body: object = await request.form
        else:
            body = await request.get_json(silent=True)
    except (ValueError, HTTPException):
        # Not UTF-8, too large or too slow: the route itself answers 400, 413 or 408 next.
        body = None
    username = body.get("username") if isinstance(body, dict) else None
    if not isinstance(username, str) or not username.strip():
        return f"login-nameless:{client_address()}"
    # Normalised as accounts.login matches it; hashed so the key has a fixed length and the store
    # never holds usernames or e-mail addresses in clear.
    digest = hashlib.sha256(username.strip().lower().encode()).hexdigest()
    return f"login-username:{digest}"


async def _register_address_key() -> str:
    return f"register-ip:{client_address()}"


def _limit(rate: str, key_function: KeyCallable | None = None) -> RateLimit:
    count, seconds = parse_rate(rate)
    return RateLimit(count, timedelta(seconds=seconds), key_function=key_function)


def init_app(app: Quart, settings: Settings) -> None:
    """Build this app's limiter and store, and trust the configured proxies for the client address."""
    named = {
        "login": [
            _limit(settings.rate_limit_login, _login_address_key),
            _limit(settings.rate_limit_login, _login_username_key),
            _limit(settings.rate_limit_login_account, _login_username_key),
        ],
        "register": [_limit(settings.rate_limit_register, _register_address_key)],
    }
    app.extensions["rate_limiter"] = _Limiter(
        named,
        app=app,
        key_function=_caller_key,
        store=Store(lambda: app.extensions.get("redis"), redis_client.breaker(app)),
        default_limits=[_limit(settings.rate_limit_default)],
        enabled=settings.rate_limits_enabled,
    )
    if settings.trusted_proxy_hops > 0:
        # Each trusted proxy appends the address it saw to X-Forwarded-For, so the Nth entry from the
        # end was written by the outermost one and anything further left came from the client itself.
        # hypercorn puts that entry into the ASGI scope, making request.remote_addr (limits, access
        # log, audit rows) the real client. With 0 hops the header is ignored: the peer address counts.
        proxied = ProxyFixMiddleware(app.asgi_app, mode="legacy", trusted_hops=settings.trusted_proxy_hops)
        app.asgi_app = (  # type: ignore[method-assign]
            _FromTrustedPeers(proxied, app.asgi_app, settings.trusted_proxies)
            if settings.trusted_proxies
            else proxied
        )


Network = IPv4Network | IPv6Network


class _FromTrustedPeers:
    """Honour X-Forwarded-For only on connections from the proxies listed in TRUSTED_PROXIES: a client
    that reaches the service around its proxy is known by its own address, whatever it writes."""

    def __init__(self, proxied: ASGIFramework, direct: ASGIFramework, proxies: list[Network]) -> None:
        self._proxied = proxied
        self._direct = direct
        self._proxies = proxies

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        client: tuple[str, int] | None = scope.get("client")  # type: ignore[assignment]
        try:
            peer = ipaddress.ip_address(client[0]) if client else None
        except ValueError:
            peer = None
        trusted = peer is not None and any(peer in network for network in self._proxies)
        await (self._proxied if trusted else self._direct)(scope, receive, send)
