"""The OpenAPI document: what quart-schema's decorators declare, completed from what the code says.

Each operation also gets:
- the errors it can answer with, each status in the error envelope with an example per error code. They
  are found by reading the view, its decorators and the service functions it calls for the `errors.*`
  they raise, plus what the route implies: 401 behind the bearer requirement, 400/413/415/422 for a JSON
  body, 400/422 for a query, 404 for a path with an id, 429 and 503 where rate limits (which resolve the
  caller) apply. The catch-all 4XX and 5XX stay for the rest (error_responses.py, from source.py);
- an example of its request and response bodies, from the examples in service/schemas (examples.py);
- for the live stream (`@event_stream`), a `text/event-stream` answer with one message schema per event
  (stream.py).

This package's own face is here, because the app and the blueprints import it as `openapi`: the provider
and the docs-only decorators the blueprints use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from quart_schema.openapi import OpenAPIProvider
from werkzeug.routing import Rule, UUIDConverter

from service import tokens
from service.openapi import error_responses, examples, stream

V = TypeVar("V", bound=Callable[..., Any])

BEARER_DESCRIPTION = (
    "A user's access token (the JWT from `POST /auth/login`) or personal API token "
    f"(`{tokens.API_TOKEN_PREFIX}…`); for heartbeats and assignment transitions, an agent's own token "
    f"(`{tokens.AGENT_PREFIX}…`). Send it as `Authorization: Bearer <token>`."
)

_EVENT_STREAM_ATTRIBUTE = "_switchboard_event_stream"
_HEADERS_ATTRIBUTE = "_switchboard_request_headers"


def event_stream(view: V) -> V:
    """Document the view's 200 answer as the live event stream (`text/event-stream`).

    Place it directly under the route decorator.
    """
    setattr(view, _EVENT_STREAM_ATTRIBUTE, True)
    return view


def request_header(name: str, description: str, example: str, max_length: int) -> Callable[[V], V]:
    """Document an optional request header the view reads itself (it checks `max_length` itself).

    Place it directly under the route decorator.
    """

    def document(view: V) -> V:
        # The example goes in the schema: Swagger UI would send a parameter's own example by default.
        schema = {"type": "string", "maxLength": max_length, "examples": [example]}
        parameter = {"name": name, "in": "header", "description": description, "schema": schema}
        headers = [*getattr(view, _HEADERS_ATTRIBUTE, ()), parameter]
        setattr(view, _HEADERS_ATTRIBUTE, headers)
        return view

    return document


class Provider(OpenAPIProvider):
    """quart-schema's provider, with errors, examples and the event stream filled in (see the module)."""

    def schema(self) -> dict[str, Any]:
        # Fresh for each document: build_paths, called from the provider's schema(), fills it.
        self._errors = error_responses.Components()
        document = super().schema()
        document["components"]["responses"] = dict(sorted(self._errors.responses.items()))
        document["components"]["examples"] = dict(sorted(self._errors.examples.items()))
        document["components"]["schemas"].update(error_responses.schemas())
        bearer = document["components"].get("securitySchemes", {}).get("bearerAuth")
        if bearer is not None:
            bearer.setdefault("description", BEARER_DESCRIPTION)
        return document

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        view = self._app.view_functions[rule.endpoint]
        streams = getattr(view, _EVENT_STREAM_ATTRIBUTE, False)
        if streams:
            components.update(stream.schemas())
        for path_item in paths.values():
            for operation in path_item.values():
                _describe(operation)
                _uuid_path_parameters(operation, rule)
                operation["parameters"] = [*operation["parameters"], *getattr(view, _HEADERS_ATTRIBUTE, ())]
                # quart-schema shares one responses dict between the methods of a rule: replace it.
                operation["responses"] = {str(status): r for status, r in operation["responses"].items()}
                examples.complete_request(operation, view)
                examples.complete_responses(operation, view)
                if streams:
                    operation["responses"]["200"] = stream.response()
                self._errors.add_responses(operation, rule, view)
        return paths, components


def _uuid_path_parameters(operation: dict[str, Any], rule: Rule) -> None:
    """quart-schema writes every path parameter as a bare string; a `<uuid:...>` one only matches a UUID."""
    converters = rule._converters  # werkzeug keeps no public map of a rule's converters
    for parameter in operation["parameters"]:
        if parameter["in"] == "path" and isinstance(converters.get(parameter["name"]), UUIDConverter):
            parameter["schema"] = {"type": "string", "format": "uuid"}


def _describe(operation: dict[str, Any]) -> None:
    """quart-schema's description is the docstring after its first line: drop the blank line before it."""
    description = operation.pop("description", "").strip()
    if description:
        operation["description"] = description
