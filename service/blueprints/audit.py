"""The audit log of security-relevant actions (admins; prefix /api/v1/audit)."""

from __future__ import annotations

from quart import Blueprint
from quart_schema import tag_blueprint, validate_querystring, validate_response

from service import db, identity, permissions
from service.schemas.audit import AuditEventOut, AuditQuery
from service.schemas.envelope import Page
from service.services import audit

blueprint = Blueprint("audit", __name__, url_prefix="/audit")
tag_blueprint(blueprint, ["audit"])


@blueprint.get("")
@identity.permission_required(permissions.AUDIT_READ)
@validate_querystring(AuditQuery)
@validate_response(Page[AuditEventOut])
async def list_audit_events(query_args: AuditQuery) -> Page[AuditEventOut]:
    """List the audit log.

    Who did what to whom, from where and in which request: logins and their failures, logouts, refresh-token
    reuse, password changes and resets, role changes, deletions. Newest first, filtered by `action`,
    `actor_id`, `target_id`, `since` and `until`.
    """
    found, total = await audit.list_events(db.session(), query_args)
    return Page[AuditEventOut].of([AuditEventOut.model_validate(event) for event in found], query_args, total)
