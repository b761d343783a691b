"""Accounts: registration, login, refresh-token rotation and logout."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import db, errors, identity, passwords, permissions, tokens
from service.config import Settings
from service.events import outbox
from service.models.sessions import LoginSession, RefreshToken
from service.models.users import Role, User
from service.services import audit

# One message for every failed login, whatever the reason: no account enumeration.
BAD_CREDENTIALS = "Invalid username or password."


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


async def register(
    session: AsyncSession, username: str, email: str, password: str, client: identity.Client
) -> User:
    """Someone signs up: a user with the default role.

    Raises:
        WeakPassword: the password breaks the policy (details name each rule).
        Conflict: the username or email is taken by a live user.
    """
    user = await new_user(session, username, email, password)
    audit.record(
        session, audit.REGISTERED, actor_id=user.id, target_type="user", target_id=user.id, ip=client.ip
    )
    return user


async def new_user(session: AsyncSession, username: str, email: str, password: str) -> User:
    """Add a user with the default role (flushed, so it has its id).

    Raises:
        WeakPassword: the password breaks the policy (details name each rule).
        Conflict: the username or email is taken by a live user.
    """
    require_strong(password)
    await ensure_unique(session, username=username, email=email)
    role = (await session.execute(select(Role).where(Role.name == permissions.DEFAULT_ROLE))).scalar_one()
    user = User(username=username, email=email.lower(), password_hash=await passwords.hash_password(password))
    user.roles = [role]
    session.add(user)
    await session.flush()
    return user


async def make_admin(
    session: AsyncSession, username: str, email: str | None, password: str | None
) -> tuple[User, str]:
    """Promote the live user with this username to admin, or create them.

    Returns the user and what happened: "created", "promoted" or "unchanged" (already an active admin).
    Bootstrapping: the first admin comes from here, never from a default account.

    Raises:
        ValidationFailed: a new user needs an email and a password.
        WeakPassword / Conflict: as new_user.
    """
    user = await find_user(session, username)
    outcome = "promoted"
    if user is None:
        if not email or not password:
            raise errors.ValidationFailed("A new admin needs an email and a password.")
        user = await new_user(session, username, email, password)
        # The operator vouches for the address; an admin must not be locked out by verification.
        user.email_verified_at = datetime.now(UTC)
        outcome = "created"
    elif permissions.ADMIN in user.role_names and user.is_active:
        return user, "unchanged"
    admin = (await session.execute(select(Role).where(Role.name == permissions.ADMIN))).scalar_one()
    if admin not in user.roles:
        user.roles = [*user.roles, admin]
    user.is_active = True
    audit.record(
        session,
        audit.ROLES_CHANGED,
        target_type="user",
        target_id=user.id,
        details={"after": user.role_names, "by": "command line"},
    )
    return user, outcome


async def find_user(session: AsyncSession, username: str) -> User | None:
    """The live user with this username (case-insensitive)."""
    query = select(User).where(func.lower(User.username) == username.lower(), User.deleted_at.is_(None))
    return (await session.execute(query)).scalar_one_or_none()


def require_strong(password: str) -> None:
    """Raises WeakPassword naming every rule of the policy the password breaks."""
    broken = passwords.policy_violations(password)
    if broken:
        raise errors.WeakPassword(broken)


async def ensure_unique(
    session: AsyncSession,
    *,
    username: str | None = None,
    email: str | None = None,
    ignore: uuid.UUID | None = None,
) -> None:
    """Raises Conflict naming the field when a live user already has this username or email."""
    for field, value in (("username", username), ("email", email)):
        if value is None:
            continue
        column = User.username if field == "username" else User.email
        query = select(User.id).where(func.lower(column) == value.lower(), User.deleted_at.is_(None))
        if ignore is not None:
            query = query.where(User.id != ignore)
        if (await session.execute(query.limit(1))).first() is not None:
            raise errors.Conflict(f"That {field} is already taken.", details={"field": field})


async def login(
    session: AsyncSession, settings: Settings, username: str, password: str, client: identity.Client
) -> TokenPair:
    """Check the credentials and open a login session.

    Raises:
        Unauthorized: the same error, in about the same time, for any failure.
    """
    login_key = username.strip().lower()
    user = (
        await session.execute(
            select(User).where(
                (func.lower(User.username) == login_key) | (func.lower(User.email) == login_key),
                User.deleted_at.is_(None),
            )
        )
    ).scalar_one_or_none()
    if user is None:
        await passwords.verify_dummy(password)  # the same cost as a wrong password
        return await _refuse(session, None, username, client, "unknown_user")
    if not await passwords.verify_password(user.password_hash, password):
        return await _refuse(session, user.id, username, client, "wrong_password")
    if not user.is_active:
        return await _refuse(session, user.id, username, client, "inactive")
    if settings.require_email_verification and user.email_verified_at is None:
        return await _refuse(session, user.id, username, client, "email_unverified")
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = await passwords.hash_password(password)
    audit.record(
        session, audit.LOGIN_SUCCEEDED, actor_id=user.id, target_type="user", target_id=user.id, ip=client.ip
    )
    return await _open_session(session, settings, user, client)


async def _refuse(
    session: AsyncSession, user_id: uuid.UUID | None, username: str, client: identity.Client, reason: str
) -> TokenPair:
    audit.record(
        session,
        audit.LOGIN_FAILED,
        actor_id=user_id,
        target_type="user",
        target_id=user_id,
        ip=client.ip,
        details={"username": username[:80], "reason": reason},
    )
    await db.commit(session)  # the failure is recorded even though the request fails
    raise errors.Unauthorized(BAD_CREDENTIALS)


async def _open_session(
    session: AsyncSession, settings: Settings, user: User, client: identity.Client
) -> TokenPair:
    now = datetime.now(UTC)
    login_session = LoginSession(
        user_id=user.id,
        ip=client.ip,
        user_agent=(client.user_agent or "")[:256] or None,
        expires_at=now + timedelta(days=settings.refresh_token_ttl_days),
    )
    session.add(login_session)
    await session.flush()
    return _issue(session, settings, user, login_session)


def _issue(session: AsyncSession, settings: Settings, user: User, login_session: LoginSession) -> TokenPair:
    refresh = tokens.new_secret(tokens.REFRESH_PREFIX)
    session.add(
        RefreshToken(
            session_id=login_session.id,
            token_hash=tokens.digest(refresh),
            expires_at=login_session.expires_at,
        )
    )
    access = tokens.issue_access_token(
        settings.secret_key, user.id, login_session.id, user.role_names, settings.access_token_ttl_seconds
    )
    return TokenPair(access, refresh, settings.access_token_ttl_seconds)


async def refresh(
    session: AsyncSession, settings: Settings, presented: str, client: identity.Client
) -> TokenPair:
    """Rotate a refresh token: the presented one is spent and a new pair is issued.

    Presenting a token that was already spent means it was copied: the whole login session ends.

    Raises:
        Unauthorized: unknown, expired, spent or revoked token.
    """
    now = datetime.now(UTC)
    stored = (
        await session.execute(
            select(RefreshToken).where(RefreshToken.token_hash == tokens.digest(presented)).with_for_update()
        )
    ).scalar_one_or_none()
    if stored is None:
        raise errors.Unauthorized("Invalid refresh token.")
    login_session = await session.get(LoginSession, stored.session_id)
    assert login_session is not None  # cascades keep tokens from outliving their session
    if stored.used_at is not None:
        await revoke_session(session, login_session, "token_reuse")
        audit.record(
            session,
            audit.TOKEN_REUSE_DETECTED,
            actor_id=login_session.user_id,
            target_type="session",
            target_id=login_session.id,
            ip=client.ip,
        )
        await db.commit(session)
        raise errors.Unauthorized("Invalid refresh token.")
    user = await session.get(User, login_session.user_id)
    if (
        not login_session.is_live(now)
        or stored.expires_at <= now
        or user is None
        or not user.is_active
        or user.is_deleted
    ):
        raise errors.Unauthorized("Invalid refresh token.")
    # Spend the token only if no concurrent refresh spent it first.
    spent = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == stored.id, RefreshToken.used_at.is_(None))
        .values(used_at=now)
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        raise errors.Unauthorized("Invalid refresh token.")
    login_session.last_used_at = now
    return _issue(session, settings, user, login_session)


async def revoke_session(session: AsyncSession, login_session: LoginSession, reason: str) -> None:
    """End a login session: its tokens and its open event streams stop, on every instance."""
    if login_session.revoked_at is None:
        login_session.revoked_at = datetime.now(UTC)
        login_session.revoked_reason = reason
    identity.forget_session(session, login_session.id)
    outbox.record(session, outbox.SESSION_ENDED, {"session_id": str(login_session.id)}, outbox.CONTROL_TOPIC)


async def end_sessions(
    session: AsyncSession, user_id: uuid.UUID, reason: str, keep: uuid.UUID | None = None
) -> int:
    """Revoke every live login session of the user (but `keep`); returns how many ended."""
    now = datetime.now(UTC)
    query = select(LoginSession).where(
        LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None), LoginSession.expires_at > now
    )
    if keep is not None:
        query = query.where(LoginSession.id != keep)
    ended = (await session.execute(query)).scalars().all()
    for login_session in ended:
        await revoke_session(session, login_session, reason)
    identity.forget_user(session, user_id)
    return len(ended)


async def logout(session: AsyncSession, caller: identity.Identity, client: identity.Client) -> None:
    """End the caller's login session.

    Raises:
        Forbidden: the caller uses a personal API token, which has no login session to end.
    """
    if caller.session_id is None:
        raise errors.Forbidden("A personal API token has no login session; revoke the token instead.")
    login_session = await session.get(LoginSession, caller.session_id)
    if login_session is None or login_session.user_id != caller.user_id:
        raise errors.Unauthorized()
    await revoke_session(session, login_session, "logout")
    audit.record(
        session,
        audit.LOGOUT,
        actor_id=caller.user_id,
        target_type="session",
        target_id=login_session.id,
        ip=client.ip,
    )


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None or user.is_deleted:
        raise errors.NotFound("No such user.")
    return user
