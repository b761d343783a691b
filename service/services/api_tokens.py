"""Personal API tokens: long-lived bearer tokens for automation, narrowed to chosen scopes."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service import errors, identity, pagination, permissions, tokens
from service.events import outbox
from service.identity import Identity
from service.models.sessions import ApiToken
from service.services import audit


def _require_login_session(caller: Identity) -> None:
    # A token that could mint tokens would outlive its own revocation: only a real login manages them.
    if caller.session_id is None:
        raise errors.Forbidden("Personal API tokens cannot manage tokens; log in with a password.")


async def create_token(
    session: AsyncSession,
    caller: Identity,
    name: str,
    scopes: list[str],
    expires_in_days: int | None,
    client: identity.Client,
) -> tuple[ApiToken, str]:
    """Make a token for the caller; returns the record and the secret, which is never shown again.

    Raises:
        Forbidden: the caller is itself using a personal token.
        ValidationFailed: a scope that is not a permission, or one the caller does not hold.
    """
    _require_login_session(caller)
    wanted = set(scopes)
    problems = [f"unknown permission {s!r}" for s in sorted(wanted - permissions.ALL)]
    problems += [f"you do not hold {s!r}" for s in sorted((wanted & permissions.ALL) - caller.permissions)]
    if problems:
        raise errors.ValidationFailed("Some scopes cannot be granted.", details={"scopes": problems})
    secret = tokens.new_secret(tokens.API_TOKEN_PREFIX)
    expires_at = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    token = ApiToken(
        user_id=caller.user_id,
        name=name,
        token_hash=tokens.digest(secret),
        scopes=sorted(wanted),
        expires_at=expires_at,
    )
    session.add(token)
    await session.flush()
    audit.record(
        session,
        audit.API_TOKEN_CREATED,
        actor_id=caller.user_id,
        target_type="api_token",
        target_id=token.id,
        ip=client.ip,
        details={"name": name, "scopes": token.scopes},
    )
    return token, secret


async def list_tokens(
    session: AsyncSession, caller: Identity, page: int, per_page: int
) -> tuple[Sequence[ApiToken], int]:
    """The caller's tokens that are not revoked, newest first (expired ones too, so they can be cleaned)."""
    statement = (
        select(ApiToken)
        .where(ApiToken.user_id == caller.user_id, ApiToken.revoked_at.is_(None))
        .order_by(ApiToken.created_at.desc(), ApiToken.id)
    )
    return await pagination.fetch_page(session, statement, page, per_page)


async def revoke_token(
    session: AsyncSession, caller: Identity, token_id: uuid.UUID, client: identity.Client
) -> None:
    """Revoke one of the caller's tokens: refused at once on every instance.

    Raises:
        Forbidden: the caller is itself using a personal token.
        NotFound: no such token of the caller's.
    """
    _require_login_session(caller)
    token = await session.get(ApiToken, token_id)
    if token is None or token.user_id != caller.user_id or token.revoked_at is not None:
        raise errors.NotFound("No such token.")
    _revoke(session, token)
    audit.record(
        session,
        audit.API_TOKEN_REVOKED,
        actor_id=caller.user_id,
        target_type="api_token",
        target_id=token.id,
        ip=client.ip,
    )


async def revoke_all(session: AsyncSession, user_id: uuid.UUID) -> None:
    """Revoke every token of a user who is deleted or deactivated, so none comes back with a restore."""
    live = await session.execute(
        select(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
    )
    for token in live.scalars():
        _revoke(session, token)


def _revoke(session: AsyncSession, token: ApiToken) -> None:
    token.revoked_at = datetime.now(UTC)
    identity.forget_api_token(session, token.token_hash)
    outbox.record(session, outbox.TOKEN_REVOKED, {"token_id": str(token.id)}, outbox.CONTROL_TOPIC)
