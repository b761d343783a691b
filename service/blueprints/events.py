"""The live event stream (GET /api/v1/events, server-sent events)."""

from __future__ import annotations

import uuid

from quart import Blueprint, Response, current_app, make_response, request
from quart_schema import tag_blueprint, validate_querystring

from service import config, draining, errors, identity, openapi, permissions
from service.events import stream
from service.events.broker import event_id_key
from service.schemas.events import EventQuery

blueprint = Blueprint("events", __name__, url_prefix="/events")
tag_blueprint(blueprint, ["events"])


@blueprint.get("")
@openapi.event_stream
@openapi.request_header(
    "Last-Event-ID",
    "The id of the last event received: the stream resumes after it, with no gap and no duplicate.",
    "1772442847512-0",
    max_length=45,
)
@identity.permission_required(permissions.EVENTS_READ)
@validate_querystring(EventQuery)
async def stream_events(query_args: EventQuery) -> Response:
    """Watch changes live (server-sent events).

    Authenticate with a bearer token, or the dashboard's session cookie. Filter with `agent_id` and `types`
    (comma list). Each message has `id:`, `event:` (the type) and `data:` (the event as JSON: `id`, `type`,
    `time`, `data`, `request_id`). A `: ping` comment comes every 15 seconds. Reconnect with the
    `Last-Event-ID` header (or `last_event_id` in the query) to resume with no gap and no duplicate, on any
    instance, within the retention window; beyond it, or if the stream cannot continue without a gap, an
    `event: reset` says to reload and subscribe afresh. Logging out or revoking the session ends the stream.
    429 beyond the open streams allowed per user.
    """
    caller = await identity.current()
    settings = config.current()
    last_event_id = request.headers.get("Last-Event-ID") or query_args.last_event_id
    if last_event_id is not None:
        try:
            event_id_key(last_event_id)
        except ValueError:
            raise errors.MalformedRequest(
                "Last-Event-ID is not an event id.", {"last_event_id": ["expected 'ms-seq'"]}
            ) from None
    if draining.current(current_app).started:
        # Its streams are ending so that clients move to another instance: no new one starts here.
        raise errors.ServiceUnavailable("This instance is shutting down; reconnect to another.")
    viewer = stream.Viewer.of(caller)
    streams: stream.Streams = current_app.extensions["streams"]
    stream_id = uuid.uuid4().hex
    if not await streams.claim(viewer, stream_id):
        raise errors.RateLimited(
            f"At most {settings.sse_streams_per_user} open event streams per user.",
            headers={"Retry-After": "5"},
        )
    body = stream.frames(
        current_app.extensions["broker"],
        streams,
        viewer,
        settings,
        str(query_args.agent_id) if query_args.agent_id else None,
        query_args.type_set(),
        last_event_id,
        stream_id,
    )
    response = await make_response(
        body,
        200,
        {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.timeout = None  # type: ignore[union-attr]  # else RESPONSE_TIMEOUT (60 s) cuts the stream
    return response  # type: ignore[return-value]
