"""Recording security-relevant actions in the audit log."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service import log, pagination, request_ids
from service.models.audit import AuditEvent
from service.schemas.audit import AuditQuery

logger = log.get(__name__)

LOGIN_SUCCEEDED = "login_succeeded"
LOGIN_FAILED = "login_failed"
LOGOUT = "logout"
REGISTERED = "registered"
TOKEN_REUSE_DETECTED = "token_reuse_detected"
PASSWORD_CHANGED = "password_changed"
PASSWORD_RESET = "password_reset"
ROLES_CHANGED = "roles_changed"
USER_DELETED = "user_deleted"
SESSION_REVOKED = "session_revoked"
EMAIL_VERIFIED = "email_verified"
EMAIL_CHANGED = "email_changed"
USER_CREATED = "user_created"
USER_RESTORED = "user_restored"
USER_DEACTIVATED = "user_deactivated"
USER_ACTIVATED = "user_activated"
API_TOKEN_CREATED = "api_token_created"
API_TOKEN_REVOKED = "api_token_revoked"


def record(
    session: AsyncSession,
    action: str,
    *,
    actor_id: uuid.UUID | None = None,
    target_type: str | None = None,
    target_id: uuid.UUID | str | None = None,
    ip: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Add an audit event to the session's transaction (it commits, or vanishes, with the change)."""
    event = AuditEvent(
        action=action,
        actor_id=actor_id,
        target_type=target_type,
        target_id=str(target_id) if target_id is not None else None,
        ip=ip,
        request_id=request_ids.current(),
        details=details or {},
    )
    session.add(event)
    logger.info(
        "audit",
        action=action,
        actor_id=str(actor_id) if actor_id else None,
        target_type=target_type,
        target_id=event.target_id,
    )


async def list_events(session: AsyncSession, query: AuditQuery) -> tuple[Sequence[AuditEvent], int]:
    """One page of the audit log, newest first, filtered."""
    statement = select(AuditEvent)
    if query.action:
        statement = statement.where(AuditEvent.action == query.action)
    if query.actor_id:
        statement = statement.where(AuditEvent.actor_id == query.actor_id)
    if query.target_id:
        statement = statement.where(AuditEvent.target_id == query.target_id)
    if query.since:
        statement = statement.where(AuditEvent.created_at >= query.since)
    if query.until:
        statement = statement.where(AuditEvent.created_at < query.until)
    statement = statement.order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc())
    return await pagination.fetch_page(session, statement, query.page, query.per_page)
