"""The live event stream's documentation: a message schema per event type, `reset`, and their union.

OpenAPI has no words for server-sent events, so the stream is described as `text/event-stream` whose
schema, `ServerSentEvent`, is one message by its SSE fields (`id:`, `event:`, `data:`). A field is text on
the wire, so `data:` is a string whose JSON content `contentSchema` describes (what schemathesis and
other SSE-aware tools validate).
"""

from __future__ import annotations

import inspect
import json
import textwrap
from copy import deepcopy
from typing import Any

from pydantic import BaseModel, TypeAdapter
from quart_schema import conversion

from service.openapi import examples
from service.schemas import events
from service.schemas.envelope import METADATA_EXAMPLE

# Our schemas join quart-schema's in the components: refer to them the way it refers to its own.
_REF = conversion.PYDANTIC_REF_TEMPLATE

_EVENT_ID_EXAMPLE_MS = 1772442847512  # 2026-03-02T09:14:07.512Z, as the examples' timestamps
_WIRE_EXAMPLE = (
    "retry: 3000\n\n"
    "id: 1772442847512-0\n"
    "event: agent.status_changed\n"
    'data: {"id":"1772442847512-0","type":"agent.status_changed","time":"2026-03-02T09:14:07.509Z",'
    '"data":{"agent":{…},"from":"online","to":"busy"},"request_id":"3d8db43e…"}\n\n'
    ": ping\n\n"
)


def schemas() -> dict[str, Any]:
    """The components of the stream: each event type's data and message, and the union of messages."""
    components: dict[str, Any] = {}
    envelope = TypeAdapter(events.EventOut).json_schema(mode="serialization", ref_template=_REF)
    mapping: dict[str, str] = {}
    for type_, model in events.EVENT_DATA.items():
        data = model.model_json_schema(mode="serialization", ref_template=_REF)
        components.update(data.pop("$defs", {}))
        components[model.__name__] = data
        name = _message_name(type_)
        components[name] = _message_schema(type_, model, envelope)
        mapping[type_] = _REF.format(model=name)
    reset = events.ResetData.model_json_schema(mode="serialization", ref_template=_REF)
    components["ResetData"] = reset
    components["ResetMessage"] = {
        "title": events.RESET,
        "description": inspect.getdoc(events.ResetData) or "",
        "type": "object",
        "properties": {
            "event": {"const": events.RESET, "description": "`event:` always `reset`; there is no `id:`."},
            "data": _json_text({"$ref": _REF.format(model="ResetData")}, "`data:` why the stream ends."),
        },
        "required": ["event", "data"],
    }
    mapping[events.RESET] = _REF.format(model="ResetMessage")
    components["ServerSentEvent"] = {
        "title": "ServerSentEvent",
        "description": "One message of the stream, by its SSE fields: `id:`, `event:`, `data:` (JSON text).",
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "event", "mapping": mapping},
    }
    return components


def response() -> dict[str, Any]:
    """The stream's 200 answer: how it behaves on the wire, its headers, and an example of each message."""
    description = (
        "The live stream. It opens with `retry:`, then sends one message per event, a `: ping` comment "
        "when idle, and `event: reset` when it cannot go on without a gap. On the wire:\n\n"
        + textwrap.indent(_WIRE_EXAMPLE, "    ")
        + "\nThe schema describes one message by its fields; `data:` is a line of JSON, described by its "
        "`contentSchema`."
    )
    return {
        "description": description,
        "headers": {
            "Cache-Control": {"description": "`no-cache`.", "schema": {"type": "string"}},
            "X-Accel-Buffering": {
                "description": "`no`: proxies pass events on at once.",
                "schema": {"type": "string"},
            },
        },
        "content": {
            "text/event-stream": {
                "schema": {"$ref": _REF.format(model="ServerSentEvent")},
                "examples": _message_examples(),
            }
        },
    }


def _message_schema(type_: str, model: type[BaseModel], envelope: dict[str, Any]) -> dict[str, Any]:
    """One event type's message: its SSE fields, `data:` the event envelope around the model."""
    event = deepcopy(envelope)
    event["title"] = f"{type_} event"
    event["properties"]["type"] = {"const": type_, "description": "The event type."}
    event["properties"]["data"] = {"$ref": _REF.format(model=model.__name__)}
    return {
        "title": type_,
        "description": inspect.getdoc(model) or "",
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "`id:` the event id, for Last-Event-ID."},
            "event": {"const": type_, "description": "`event:` the event type."},
            "data": _json_text(event, "`data:` the event."),
        },
        "required": ["id", "event", "data"],
    }


def _json_text(content: dict[str, Any], description: str) -> dict[str, Any]:
    """An SSE field holding JSON: a string on the wire, its decoded value described by `content`."""
    return {
        "type": "string",
        "description": description,
        "contentMediaType": "application/json",
        "contentSchema": content,
    }


def _message_name(type_: str) -> str:
    """`agent.status_changed` → `AgentStatusChangedMessage`."""
    words = type_.replace(".", "_").split("_")
    return "".join(word.capitalize() for word in words) + "Message"


def _message_examples() -> dict[str, Any]:
    """One example message per event type, then `reset`."""
    messages: dict[str, Any] = {}
    for index, (type_, model) in enumerate(events.EVENT_DATA.items()):
        event_id = f"{_EVENT_ID_EXAMPLE_MS + index}-0"
        message = {
            "id": event_id,
            "event": type_,
            "data": _json(
                {
                    "id": event_id,
                    "type": type_,
                    "time": "2026-03-02T09:14:07.509000Z",
                    "data": examples.model_examples(model)[0],
                    "request_id": METADATA_EXAMPLE["request_id"],
                }
            ),
        }
        messages[type_] = {"summary": type_, "value": message}
    reset = {"event": events.RESET, "data": _json(examples.model_examples(events.ResetData)[0])}
    messages[events.RESET] = {"summary": events.RESET, "value": reset}
    return messages


def _json(value: Any) -> str:
    """A value as the stream writes it in `data:`: compact JSON, on one line."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
