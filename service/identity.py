"""Who is calling: quart-auth's `current_user`, resolved from a bearer JWT (API clients) or quart-auth's
signed cookie (the dashboard), and the `permission_required` / `role_required` decorators.

Route code never parses tokens: it uses the decorators and `current()`, which also refuses an unsafe
request the cookie authenticates unless it carries the session's CSRF token (service/csrf.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps
from typing import Any, ParamSpec, TypeVar, cast

from quart import Quart, current_app, g, request
from quart_auth import Action, AuthUser, QuartAuth, current_user
from quart_schema import security_scheme
from sqlalchemy import select

from service import config, csrf, db, errors, redis_client, tokens
from service.cache import Cache, Lru, MemoryCache, RedisCache
from service.config import Settings
from service.models.agents import Agent
from service.models.sessions import ApiToken, LoginSession
from service.models.users import User

P = ParamSpec("P")
T = TypeVar("T")

# How long what a user may do is cached; any change to the user deletes the entry at once.
GRANTS_TTL_SECONDS = 300
# Agent tokens each process remembers the agent of, for the rate limiter's key (see _known_agents).
KNOWN_AGENT_TOKENS = 50_000


@dataclass(frozen=True)
class Identity:
    user_id: uuid.UUID
    session_id: uuid.UUID | None
    roles: tuple[str, ...]
    permissions: frozenset[str]
    # Set when the caller uses a personal API token rather than a login session.
    api_token_id: uuid.UUID | None = None

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


@dataclass(frozen=True)
class Client:
    """Where a request came from, for session records and the audit log."""

    ip: str | None
    user_agent: str | None


def client() -> Client:
    """The current request's client (its address as the trusted proxy settings resolve it)."""
    return Client(ip=request.remote_addr, user_agent=request.headers.get("User-Agent"))


@dataclass(frozen=True)
class AgentIdentity:
    agent_id: uuid.UUID


@dataclass(frozen=True)
class Prefetch:
    """What a request's credential needs from the auth cache, known without any I/O, so that the rate
    limiter can read it in the same Redis call as the limits; and the caller's key for those limits."""

    keys: list[str]  # the cache's names for the entries
    redis_keys: list[str]  # the same entries' Redis keys
    caller: str


class Principal(AuthUser):
    """quart-auth's user: authenticated only while its session is live and its user active."""

    def __init__(
        self, auth_id: str | None, action: Action = Action.PASS, *, bearer: str | None = None
    ) -> None:
        super().__init__(auth_id, action)
        self._bearer = bearer
        # Auth cache entries already read for this request (by the rate limiter's call), by cache key.
        self._primed: dict[str, str | None] = {}
        self._resolved = False
        self._identity: Identity | None = None
        self._agent_resolved = False
        self._agent: AgentIdentity | None = None

    @property
    async def is_authenticated(self) -> bool:
        return await self.identity() is not None

    @property
    def by_cookie(self) -> bool:
        """Whether the browser's cookie (sent whichever site asked) is the credential, not a bearer."""
        return self._bearer is None and self.auth_id is not None

    @property
    def bearer(self) -> str | None:
        return self._bearer

    def prime(self, entries: dict[str, str | None]) -> None:
        """Auth cache entries read for this request elsewhere: used instead of reading them again."""
        self._primed.update(entries)

    async def identity(self) -> Identity | None:
        """The user behind the credentials; None for an agent's token or none at all."""
        if not self._resolved:
            self._identity = await _resolve(self._bearer, self.auth_id, self._primed)
            self._resolved = True
        return self._identity

    async def agent(self) -> AgentIdentity | None:
        """The agent whose token this is (agents authenticate with their own bearer token)."""
        if self._bearer is None or not self._bearer.startswith(tokens.AGENT_PREFIX):
            return None
        # Resolved once per request: the rate limiter asks before the view does.
        if not self._agent_resolved:
            self._agent = await _resolve_agent(self._bearer, self._primed)
            self._agent_resolved = True
        return self._agent


class Auth(QuartAuth):
    user_class = Principal

    def resolve_user(self) -> Principal:
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer":
            return Principal(None, bearer=credential.strip())
        return Principal(self.load_cookie())


def _cache() -> Cache:
    cache: Cache = current_app.extensions["auth_cache"]
    return cache


def prefetch() -> Prefetch | None:
    """For the rate limiter: the current request's caller key and the auth cache entries it will need,
    when the credential tells them without any I/O (a signed access token names its user and session;
    an agent token this process has resolved before names its agent). None otherwise, or when the cache
    must be read through itself (see RedisCache.keys_to_read_elsewhere): the request resolves as usual."""
    cache = _cache()
    bearer = current_principal().bearer
    if not isinstance(cache, RedisCache) or bearer is None or bearer.startswith(tokens.API_TOKEN_PREFIX):
        return None
    if bearer.startswith(tokens.AGENT_PREFIX):
        token_hash = tokens.digest(bearer)
        agent_id = _known_agents().get(token_hash)
        if agent_id is None:
            return None
        # A hint for the limit's key only: whether the token still works is what the cache entry says.
        keys, caller = [agent_token_key(token_hash)], f"agent:{agent_id}"
    else:
        try:
            claims = tokens.decode_access_token(config.current().secret_key, bearer)
        except tokens.InvalidToken:
            return None
        keys, caller = [_session_key(claims.session_id), user_key(claims.user_id)], f"user:{claims.user_id}"
    redis_keys = cache.keys_to_read_elsewhere(keys)
    return None if redis_keys is None else Prefetch(keys, redis_keys, caller)


async def _cached(keys: list[str], primed: dict[str, str | None]) -> list[str | None]:
    """The cache entries, from what was read for the request already when it holds them all."""
    if all(key in primed for key in keys):
        return [primed[key] for key in keys]
    return await _cache().get_many(keys)


def _known_agents() -> Lru[str, uuid.UUID]:
    """Agent tokens this process has resolved, by hash: the agent each names, as the rate limiter's key
    (a stale hint only counts a request against the agent it last named)."""
    known: Lru[str, uuid.UUID] = current_app.extensions["auth_known_agents"]
    return known


async def _resolve(
    bearer: str | None, cookie_session: str | None, primed: dict[str, str | None]
) -> Identity | None:
    settings = config.current()
    if bearer is not None and bearer.startswith(tokens.API_TOKEN_PREFIX):
        return await _resolve_api_token(bearer)
    if bearer is not None and bearer.startswith(tokens.AGENT_PREFIX):
        return None
    if bearer is not None:
        try:
            claims = tokens.decode_access_token(settings.secret_key, bearer)
        except tokens.InvalidToken:
            return None
        user_id: uuid.UUID | None = claims.user_id
        session_id = claims.session_id
        # The token names the user, so the session and the user's grants come in one cache round trip.
        cached_session, cached_grants = await _cached(
            [_session_key(session_id), user_key(claims.user_id)], primed
        )
    elif cookie_session is not None:
        try:
            session_id = uuid.UUID(cookie_session)
        except ValueError:
            return None
        user_id = None
        (cached_session,) = await _cache().get_many([_session_key(session_id)])
        cached_grants = None
    else:
        return None
    live_user = await _live_session_user(session_id, settings, cached_session)
    if live_user is None or (user_id is not None and live_user != user_id):
        return None
    grants = await grants_for(live_user, cached_grants if user_id is not None else None)
    if grants is None:
        return None
    roles, permissions = grants
    return Identity(live_user, session_id, roles, permissions)


async def _resolve_api_token(secret: str) -> Identity | None:
    token_hash = tokens.digest(secret)
    (cached,) = await _cache().get_many([f"apitok:{token_hash}"])
    if cached is not None:
        value = json.loads(cached)
    else:
        token = (
            await db.session().execute(select(ApiToken).where(ApiToken.token_hash == token_hash))
        ).scalar_one_or_none()
        if token is None or token.revoked_at is not None:
            return None
        # Written once per cache period, not per request: "last used" to within a few minutes is enough.
        token.last_used_at = datetime.now(UTC)
        value = {
            "id": str(token.id),
            "user_id": str(token.user_id),
            "scopes": token.scopes,
            "expires_at": token.expires_at.isoformat() if token.expires_at else None,
        }
        await _cache().set(f"apitok:{token_hash}", json.dumps(value), GRANTS_TTL_SECONDS)
    if value["expires_at"] is not None and datetime.fromisoformat(value["expires_at"]) <= datetime.now(UTC):
        return None
    user_id = uuid.UUID(value["user_id"])
    grants = await grants_for(user_id)
    if grants is None:
        return None
    roles, held = grants
    return Identity(user_id, None, roles, held & frozenset(value["scopes"]), uuid.UUID(value["id"]))


def agent_token_key(token_hash: str) -> str:
    return f"agenttok:{token_hash}"


async def _resolve_agent(secret: str, primed: dict[str, str | None]) -> AgentIdentity | None:
    token_hash = tokens.digest(secret)
    (cached,) = await _cached([agent_token_key(token_hash)], primed)
    if cached is not None:
        _known_agents().put(token_hash, uuid.UUID(cached))
        return AgentIdentity(uuid.UUID(cached))
    found = (
        await db.session().execute(
            select(Agent.id).where(Agent.token_hash == token_hash, Agent.deleted_at.is_(None))
        )
    ).scalar_one_or_none()
    if found is None:
        return None
    await _cache().set(agent_token_key(token_hash), str(found), GRANTS_TTL_SECONDS)
    _known_agents().put(token_hash, found)
    return AgentIdentity(found)


def forget_agent_token(session: Any, token_hash: str) -> None:
    """After the commit, the agent's old token (rotated, or the agent deleted) is refused everywhere."""
    cache = _cache()
    db.after_commit(session, lambda: cache.delete(agent_token_key(token_hash)))


def _session_key(session_id: uuid.UUID) -> str:
    return f"sess:{session_id}"


async def _live_session_user(
    session_id: uuid.UUID, settings: Settings, cached: str | None
) -> uuid.UUID | None:
    """The user of a live login session; `cached` is what the cache held for it, if anything."""
    if cached is not None:
        return uuid.UUID(cached)
    login = await db.session().get(LoginSession, session_id)
    if login is None or not login.is_live(datetime.now(UTC)):
        return None
    await _cache().set(_session_key(session_id), str(login.user_id), settings.access_token_ttl_seconds)
    return login.user_id


async def grants_for(
    user_id: uuid.UUID, cached: str | None = None
) -> tuple[tuple[str, ...], frozenset[str]] | None:
    """The roles and permissions of a live, active user; None when the user may not act.

    `cached` is the user's cache entry when the caller already fetched it.
    """
    if cached is None:
        (cached,) = await _cache().get_many([user_key(user_id)])
    if cached is not None:
        value = json.loads(cached)
    else:
        user = (await db.session().execute(select(User).where(User.id == user_id))).scalar_one_or_none()
        allowed = user is not None and user.is_active and not user.is_deleted
        value = {
            "allowed": allowed,
            "roles": user.role_names if user else [],
            "permissions": sorted(user.permissions) if user else [],
        }
        await _cache().set(user_key(user_id), json.dumps(value), GRANTS_TTL_SECONDS)
    if not value["allowed"]:
        return None
    return tuple(value["roles"]), frozenset(value["permissions"])


def forget_session(session: Any, session_id: uuid.UUID) -> None:
    """After the commit, every worker and instance stops accepting this session's tokens."""
    cache = _cache()
    db.after_commit(session, lambda: cache.delete(_session_key(session_id)))


def user_key(user_id: uuid.UUID) -> str:
    """The cache key of what a user may do."""
    return f"user:{user_id}"


def forget_api_token(session: Any, token_hash: str) -> None:
    """After the commit, the revoked personal token is refused everywhere."""
    cache = _cache()
    db.after_commit(session, lambda: cache.delete(f"apitok:{token_hash}"))


def forget_user(session: Any, user_id: uuid.UUID) -> None:
    """After the commit, the user's next request reloads roles, activity and deletion."""
    cache = _cache()
    db.after_commit(session, lambda: cache.delete(user_key(user_id)))


def current_principal() -> Principal:
    """quart-auth's user for this request, with its lazily resolved identity."""
    return cast(Principal, current_user._get_current_object())  # type: ignore[attr-defined]


async def current() -> Identity:
    """The caller's identity.

    Raises:
        Unauthorized: no valid, live credentials.
        CSRFRefused: an unsafe request authenticated by the cookie, without the session's CSRF token.
    """
    principal = current_principal()
    found = await principal.identity()
    if found is None:
        raise errors.Unauthorized()
    if principal.by_cookie and found.session_id is not None:
        await csrf.require_session_token(found.session_id)
    g.user_id = str(found.user_id)
    return found


async def current_agent() -> AgentIdentity:
    """The calling agent.

    Raises:
        Unauthorized: no valid agent token.
    """
    principal = current_principal()
    found = await principal.agent()
    if found is None:
        raise errors.Unauthorized()
    return found


async def current_actor(permission: str) -> Identity | AgentIdentity:
    """A user holding `permission`, or an agent (whose own rules the service applies).

    Raises:
        Unauthorized: neither valid user credentials nor an agent token.
        Forbidden: a user without `permission`.
    """
    principal = current_principal()
    agent = await principal.agent()
    if agent is not None:
        return agent
    caller = await current()
    if not caller.can(permission):
        raise errors.Forbidden(details={"missing_permissions": [permission]})
    return caller


def _guard(
    refusal: Callable[[Identity], errors.Forbidden | None],
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """A view decorator: 401 unauthenticated, the refusal's 403 when it returns one."""

    def decorate(view: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @wraps(view)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            refused = refusal(await current())
            if refused is not None:
                raise refused
            return await view(*args, **kwargs)

        return cast(Callable[P, Awaitable[T]], security_scheme([{"bearerAuth": []}])(guarded))

    return decorate


def permission_required(
    *permissions: str,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Refuse callers without every permission listed."""

    def refusal(caller: Identity) -> errors.Forbidden | None:
        missing = [p for p in permissions if not caller.can(p)]
        return errors.Forbidden(details={"missing_permissions": missing}) if missing else None

    return _guard(refusal)


def login_required(view: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    return permission_required()(view)


def role_required(*roles: str) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Refuse callers who hold none of the roles listed."""

    def refusal(caller: Identity) -> errors.Forbidden | None:
        held = set(roles) & set(caller.roles)
        return None if held else errors.Forbidden(details={"required_roles": list(roles)})

    return _guard(refusal)


def init_app(app: Quart, settings: Settings) -> None:
    app.config["QUART_AUTH_COOKIE_SECURE"] = settings.is_production
    Auth(app)

    @app.before_serving
    async def _open_cache() -> None:
        redis = app.extensions.get("redis")
        app.extensions["auth_cache"] = (
            MemoryCache() if redis is None else RedisCache(redis, redis_client.breaker(app))
        )
        app.extensions["auth_known_agents"] = Lru[str, uuid.UUID](KNOWN_AGENT_TOKENS)
