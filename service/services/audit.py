"""Recording security-relevant actions in the audit log."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service import log, request_ids
from service.models.audit import AuditEvent

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
