"""Accounts: registration, login, refresh-token rotation and logout."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import db, errors, identity, passwords, permissions, tokens
from service.config import Settings
from service.models.sessions import LoginSession, RefreshToken
from service.models.users import Role, User
from service.services import audit

# One message for every failed login, whatever the reason: no account enumeration.
BAD_CREDENTIALS = "Invalid username or password."


@dataclass(frozen=True)
class Client:
    """Where a request came from, for session records and the audit log."""

    ip: str | None
    user_agent: str | None


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


async def register(session: AsyncSession, username: str, email: str, password: str, client: Client) -> User:
    """Create a user with the default role.

    Raises:
        ValidationFailed: the password breaks the policy (details name each rule).
        Conflict: the username or email is taken by a live user.
    """
    broken = passwords.policy_violations(password)
    if broken:
        raise errors.ValidationFailed("The password does not meet the policy.", details={"password": broken})
    await ensure_unique(session, username=username, email=email)
    role = (await session.execute(select(Role).where(Role.name == permissions.DEFAULT_ROLE))).scalar_one()
    user = User(username=username, email=email.lower(), password_hash=await passwords.hash_password(password))
    user.roles = [role]
    session.add(user)
    await session.flush()
    audit.record(
        session, audit.REGISTERED, actor_id=user.id, target_type="user", target_id=user.id, ip=client.ip
    )
    return user


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
    session: AsyncSession, settings: Settings, username: str, password: str, client: Client
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
    session: AsyncSession, user_id: uuid.UUID | None, username: str, client: Client, reason: str
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


async def _open_session(session: AsyncSession, settings: Settings, user: User, client: Client) -> TokenPair:
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


async def refresh(session: AsyncSession, settings: Settings, presented: str, client: Client) -> TokenPair:
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
    if login_session.revoked_at is None:
        login_session.revoked_at = datetime.now(UTC)
        login_session.revoked_reason = reason
    identity.forget_session(session, login_session.id)


async def logout(session: AsyncSession, session_id: uuid.UUID, user_id: uuid.UUID, client: Client) -> None:
    login_session = await session.get(LoginSession, session_id)
    if login_session is None or login_session.user_id != user_id:
        raise errors.Unauthorized()
    await revoke_session(session, login_session, "logout")
    audit.record(
        session, audit.LOGOUT, actor_id=user_id, target_type="session", target_id=session_id, ip=client.ip
    )


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None or user.is_deleted:
        raise errors.NotFound("No such user.")
    return user
