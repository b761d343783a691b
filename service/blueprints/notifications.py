"""The notification queue: what went out, what is waiting and what failed (operators and admins;
prefix /api/v1/notifications)."""

from __future__ import annotations

import uuid

from quart import Blueprint
from quart_schema import tag_blueprint, validate_querystring, validate_response

from service import db, identity, permissions
from service.schemas.envelope import Page, Success
from service.schemas.notifications import NotificationOut, NotificationQuery
from service.services import notifications

blueprint = Blueprint("notifications", __name__, url_prefix="/notifications")
tag_blueprint(blueprint, ["notifications"])


@blueprint.get("")
@identity.permission_required(permissions.AGENTS_WRITE)
@validate_querystring(NotificationQuery)
@validate_response(Page[NotificationOut])
async def list_notifications(query_args: NotificationQuery) -> Page[NotificationOut]:
    """List notifications.

    Work assigned and agents gone offline, per channel, newest first, filtered by `status`, `kind` and
    `channel`. `status=failed` lists those given up on, with the last error of each.
    """
    found, total = await notifications.list_notifications(db.session(), query_args)
    return Page[NotificationOut].of(
        [NotificationOut.model_validate(item) for item in found], query_args, total
    )


@blueprint.post("/<uuid:notification_id>/retry")
@identity.permission_required(permissions.AGENTS_WRITE)
@validate_response(Success[NotificationOut])
async def retry_notification(notification_id: uuid.UUID) -> Success[NotificationOut]:
    """Retry a failed notification.

    It is queued again, due now, with a fresh set of attempts. 409 `CONFLICT` when it has not failed.
    """
    notification = await notifications.retry(db.session(), notification_id)
    return Success[NotificationOut](
        data=NotificationOut.model_validate(notification), message="Notification queued again."
    )
