"""User management: listing, creating, changing, deleting and restoring users, and their sessions.

Object-level rules: callers with `users:read` see everyone, others only themselves (anyone else is a
404, as if it did not exist); changing someone else, their roles or their activity needs `users:write`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from service import errors, identity, mail, pagination, passwords
from service.config import Settings
from service.identity import Identity
from service.models.sessions import LoginSession
from service.models.users import Role, User
from service.permissions import ADMIN, USERS_READ, USERS_WRITE
from service.schemas.users import UserCreateIn, UserQuery
from service.services import account_mail, accounts, api_tokens, audit

_SORT_COLUMNS: dict[str, Any] = {
    "created_at": User.created_at,
    "username": func.lower(User.username),
    "email": User.email,
}
# Changing these on your own account proves you hold it first: a stolen access token is not enough.
_NEEDS_CURRENT_PASSWORD = frozenset({"email", "password"})
_ADMIN_ONLY_FIELDS = frozenset({"roles", "is_active"})


def _audit(
    session: AsyncSession,
    action: str,
    caller: Identity,
    user: User,
    client: identity.Client,
    details: dict[str, Any] | None = None,
) -> None:
    audit.record(
        session,
        action,
        actor_id=caller.user_id,
        target_type="user",
        target_id=user.id,
        ip=client.ip,
        details=details,
    )


async def _lock_out(session: AsyncSession, user: User, reason: str) -> None:
    """End every session and revoke every API token: a deleted or deactivated user is out at once, and
    nothing of theirs comes back if they are restored."""
    await accounts.end_sessions(session, user.id, reason)
    await api_tokens.revoke_all(session, user.id)


async def list_users(session: AsyncSession, caller: Identity, query: UserQuery) -> tuple[Sequence[User], int]:
    """One page of the users the caller may see, filtered and sorted.

    Raises:
        Forbidden: `include_deleted` without `users:write`.
    """
    statement: Select[User] = select(User)
    if not caller.can(USERS_READ):
        statement = statement.where(User.id == caller.user_id)
    if query.include_deleted and not caller.can(USERS_WRITE):
        raise errors.Forbidden("Only admins may list deleted users.", {"missing_permissions": [USERS_WRITE]})
    if not query.include_deleted:
        statement = statement.where(User.deleted_at.is_(None))
    if query.q:
        statement = statement.where(
            or_(pagination.contains(User.username, query.q), pagination.contains(User.email, query.q))
        )
    if query.role:
        statement = statement.where(User.roles.any(Role.name == query.role))
    if query.is_active is not None:
        statement = statement.where(User.is_active.is_(query.is_active))
    statement = statement.order_by(pagination.sort_order(_SORT_COLUMNS, query.sort), User.id)
    return await pagination.fetch_page(session, statement, query.page, query.per_page)


async def visible_user(session: AsyncSession, caller: Identity, user_id: uuid.UUID) -> User:
    """A live user the caller may read.

    Raises:
        NotFound: no such live user, or one the caller may not see.
    """
    user = await session.get(User, user_id)
    if user is None or user.is_deleted or (user.id != caller.user_id and not caller.can(USERS_READ)):
        raise errors.NotFound("No such user.")
    return user


async def _changeable_user(session: AsyncSession, caller: Identity, user_id: uuid.UUID) -> User:
    """A live user the caller may change: themselves, or anyone with `users:write`.

    Raises:
        NotFound: as visible_user.
        Forbidden: the caller may see the user but not change them.
    """
    user = await visible_user(session, caller, user_id)
    if user.id != caller.user_id and not caller.can(USERS_WRITE):
        raise errors.Forbidden(details={"missing_permissions": [USERS_WRITE]})
    return user


async def _roles_named(session: AsyncSession, names: list[str]) -> list[Role]:
    """Raises ValidationFailed naming the roles that do not exist."""
    wanted = set(names)
    found = (await session.execute(select(Role).where(Role.name.in_(wanted)))).scalars().all()
    unknown = wanted - {role.name for role in found}
    if unknown:
        raise errors.ValidationFailed(
            details={"roles": [f"unknown role {name!r}" for name in sorted(unknown)]}
        )
    return sorted(found, key=lambda role: role.name)


async def _keep_an_admin(session: AsyncSession, user: User) -> None:
    """Raises Conflict when `user` is the last live, active admin (the service would lose its keys)."""
    if ADMIN not in user.role_names or not user.is_active or user.is_deleted:
        return
    others = select(func.count(User.id)).where(
        User.id != user.id,
        User.deleted_at.is_(None),
        User.is_active.is_(True),
        User.roles.any(Role.name == ADMIN),
    )
    if (await session.execute(others)).scalar_one() == 0:
        raise errors.Conflict("This is the last active admin; make another admin first.")


async def create_user(
    session: AsyncSession,
    settings: Settings,
    mailer: mail.Mailer,
    caller: Identity,
    data: UserCreateIn,
    client: identity.Client,
) -> User:
    """An admin creates an account, with roles and activity chosen at once.

    Raises:
        WeakPassword: the password breaks the policy.
        ValidationFailed: an unknown role.
        Conflict: username or email taken by a live user.
    """
    user = await accounts.new_user(session, data.username, str(data.email), data.password)
    if data.roles is not None:
        user.roles = await _roles_named(session, data.roles)
    user.is_active = data.is_active
    await account_mail.send_verification(session, settings, mailer, user)
    _audit(session, audit.USER_CREATED, caller, user, client, {"roles": user.role_names})
    return user


async def update_user(
    session: AsyncSession,
    settings: Settings,
    mailer: mail.Mailer,
    caller: Identity,
    user_id: uuid.UUID,
    changes: dict[str, Any],
    client: identity.Client,
) -> User:
    """Apply the given fields (PATCH: those present; PUT: all editable ones).

    Raises:
        NotFound / Forbidden: see _changeable_user.
        FieldsNotAllowed: `roles` or `is_active` without `users:write`.
        ValidationFailed: missing or wrong `current_password`, unknown role.
        WeakPassword: the new password breaks the policy.
        Conflict: username or email taken; demoting, deactivating the last admin.
    """
    user = await _changeable_user(session, caller, user_id)
    refused = _ADMIN_ONLY_FIELDS & {k for k, v in changes.items() if v is not None}
    if refused and not caller.can(USERS_WRITE):
        raise errors.FieldsNotAllowed(sorted(refused), "Only admins may change roles or activity.")
    if user.id == caller.user_id:
        await _check_current_password(user, changes)
    await accounts.ensure_unique(
        session, username=changes.get("username"), email=changes.get("email"), ignore=user.id
    )
    if changes.get("username") is not None:
        user.username = changes["username"]
    if changes.get("email") is not None:
        await _change_email(session, settings, mailer, caller, user, str(changes["email"]), client)
    if changes.get("password") is not None:
        await _change_password(session, caller, user, changes["password"], client)
    if changes.get("roles") is not None:
        await _change_roles(session, caller, user, changes["roles"], client)
    if changes.get("is_active") is not None:
        await _change_activity(session, caller, user, changes["is_active"], client)
    identity.forget_user(session, user.id)
    user.updated_at = datetime.now(UTC)
    await session.flush()
    return user


async def _check_current_password(user: User, changes: dict[str, Any]) -> None:
    """Raises ValidationFailed unless changing one's own email or password comes with the current one."""
    changing = [
        field
        for field in sorted(_NEEDS_CURRENT_PASSWORD)
        if changes.get(field) is not None
        and not (field == "email" and changes["email"].lower() == user.email)
    ]
    if not changing:
        return
    current = changes.get("current_password")
    if current is None:
        raise errors.ValidationFailed(
            f"Changing your {' and '.join(changing)} needs your current password.",
            details={"current_password": ["required"]},
        )
    if not await passwords.verify_password(user.password_hash, current):
        raise errors.ValidationFailed(
            "The current password is wrong.", details={"current_password": ["wrong password"]}
        )


async def _change_email(
    session: AsyncSession,
    settings: Settings,
    mailer: mail.Mailer,
    caller: Identity,
    user: User,
    email: str,
    client: identity.Client,
) -> None:
    email = email.lower()
    if email == user.email:
        return
    _audit(session, audit.EMAIL_CHANGED, caller, user, client)
    user.email = email
    user.email_verified_at = None  # the new address is unproven until its link is opened
    await account_mail.send_verification(session, settings, mailer, user)


async def _change_password(
    session: AsyncSession, caller: Identity, user: User, password: str, client: identity.Client
) -> None:
    accounts.require_strong(password)
    user.password_hash = await passwords.hash_password(password)
    # Every other login ends: whoever knew the old password is out. The caller's own session stays.
    keep = caller.session_id if caller.user_id == user.id else None
    await accounts.end_sessions(session, user.id, "password_changed", keep=keep)
    _audit(session, audit.PASSWORD_CHANGED, caller, user, client)


async def _change_roles(
    session: AsyncSession, caller: Identity, user: User, names: list[str], client: identity.Client
) -> None:
    roles = await _roles_named(session, names)
    before = user.role_names
    after = sorted(role.name for role in roles)
    if before == after:
        return
    if ADMIN not in after:
        await _keep_an_admin(session, user)
    user.roles = roles
    _audit(session, audit.ROLES_CHANGED, caller, user, client, {"before": before, "after": after})


async def _change_activity(
    session: AsyncSession, caller: Identity, user: User, active: bool, client: identity.Client
) -> None:
    if active == user.is_active:
        return
    if not active:
        await _keep_an_admin(session, user)
        await _lock_out(session, user, "deactivated")
    user.is_active = active
    _audit(session, audit.USER_ACTIVATED if active else audit.USER_DEACTIVATED, caller, user, client)


async def delete_user(
    session: AsyncSession, caller: Identity, user_id: uuid.UUID, client: identity.Client
) -> None:
    """Soft-delete a user: they vanish from lists, cannot log in, and every session ends at once.

    Raises:
        NotFound: no such live user.
        Conflict: the last active admin.
    """
    user = await visible_user(session, caller, user_id)
    await _keep_an_admin(session, user)
    user.soft_delete()
    await _lock_out(session, user, "user_deleted")
    _audit(session, audit.USER_DELETED, caller, user, client)


async def restore_user(
    session: AsyncSession, caller: Identity, user_id: uuid.UUID, client: identity.Client
) -> User:
    """Bring back a soft-deleted user (their old sessions stay ended).

    Raises:
        NotFound: no such deleted user.
        Conflict: a live user has taken the username or email meanwhile.
    """
    user = await session.get(User, user_id)
    if user is None or not user.is_deleted:
        raise errors.NotFound("No such deleted user.")
    await accounts.ensure_unique(session, username=user.username, email=user.email, ignore=user.id)
    user.restore()
    identity.forget_user(session, user.id)
    _audit(session, audit.USER_RESTORED, caller, user, client)
    return user


async def list_sessions(
    session: AsyncSession, caller: Identity, user_id: uuid.UUID, page: int, per_page: int
) -> tuple[Sequence[LoginSession], int]:
    """The user's live login sessions, most recently used first."""
    user = await _changeable_user(session, caller, user_id)
    statement = (
        select(LoginSession)
        .where(
            LoginSession.user_id == user.id,
            LoginSession.revoked_at.is_(None),
            LoginSession.expires_at > datetime.now(UTC),
        )
        .order_by(LoginSession.last_used_at.desc(), LoginSession.id)
    )
    return await pagination.fetch_page(session, statement, page, per_page)


async def revoke_sessions(
    session: AsyncSession,
    caller: Identity,
    user_id: uuid.UUID,
    session_id: uuid.UUID | None,
    client: identity.Client,
) -> int:
    """End one of the user's sessions, or all of them when `session_id` is None; returns how many.

    Raises:
        NotFound: no such user or session.
    """
    user = await _changeable_user(session, caller, user_id)
    if session_id is None:
        ended = await accounts.end_sessions(session, user.id, "revoked")
    else:
        login_session = await session.get(LoginSession, session_id)
        if login_session is None or login_session.user_id != user.id:
            raise errors.NotFound("No such session.")
        await accounts.revoke_session(session, login_session, "revoked")
        ended = 1
    _audit(
        session,
        audit.SESSION_REVOKED,
        caller,
        user,
        client,
        {"session_id": str(session_id) if session_id else "all", "ended": ended},
    )
    return ended
