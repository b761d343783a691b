"""The error responses of each operation: which errors a route can answer with, and how they are shown.

Every status answers in the error envelope (`Error`), with an example of each error code it can carry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, TypeAdapter
from quart_schema import conversion
from quart_schema.openapi import QUART_SCHEMA_SECURITY_ATTRIBUTE
from quart_schema.validation import (
    QUART_SCHEMA_QUERYSTRING_ATTRIBUTE,
    QUART_SCHEMA_REQUEST_ATTRIBUTE,
    QUART_SCHEMA_RESPONSE_ATTRIBUTE,
    DataSource,
)
from werkzeug.routing import Rule

from service import errors, passwords, rate_limits
from service.openapi import source
from service.schemas.envelope import METADATA_EXAMPLE, ErrorOut

APIErrorType = type[errors.APIError]

# Our schemas join quart-schema's in the components: refer to them the way it refers to its own.
_REF = conversion.PYDANTIC_REF_TEMPLATE
_ERROR_REF = {"$ref": _REF.format(model="Error")}
# Whatever else may come (a 405, an unexpected 500), each with an example.
_CATCH_ALL: dict[str, tuple[str, APIErrorType]] = {
    "4XX": ("Another client error, in the error envelope.", errors.MethodNotAllowed),
    "5XX": ("A server or dependency error, in the error envelope.", errors.InternalError),
}
# What any JSON body can be answered with: not JSON (415), too large (413), malformed (400), invalid (422).
_BODY_ERRORS: frozenset[APIErrorType] = frozenset(
    {errors.UnsupportedMediaType, errors.PayloadTooLarge, errors.MalformedRequest, errors.ValidationFailed}
)
# Typical `details` of the errors that carry them, for the examples.
_DETAILS_EXAMPLES: dict[APIErrorType, dict[str, Any]] = {
    errors.ValidationFailed: {"name": ["String should have at least 1 character"]},
    errors.FieldsNotAllowed: {"fields": ["password_hash"]},
    errors.WeakPassword: {"password": [passwords.NO_UPPER, passwords.NO_DIGIT]},
    errors.Forbidden: {"missing_permissions": ["agents:write"]},
}
_HEADER_DESCRIPTIONS = {
    "WWW-Authenticate": "`Bearer`: authenticate with a bearer token.",
    "Retry-After": "Seconds to wait before trying again.",
}


def schemas() -> dict[str, Any]:
    """The schema components of the error envelope: `Error` and the schemas it refers to."""
    error_schema = TypeAdapter(ErrorOut).json_schema(ref_template=_REF)
    return {**error_schema.pop("$defs", {}), "Error": error_schema}


class Components:
    """The error responses and examples operations refer to, declared once each in the components."""

    def __init__(self) -> None:
        self.responses: dict[str, Any] = {}
        self.examples: dict[str, Any] = {}

    def add_responses(self, operation: dict[str, Any], rule: Rule, view: Callable[..., Any]) -> None:
        """Add the operation's error statuses, unless it documents them itself, then the catch-alls."""
        for status, kinds in errors_of(rule, view).items():
            operation["responses"].setdefault(str(status), self._response(status, kinds))
        for pattern, (description, kind) in _CATCH_ALL.items():
            operation["responses"][pattern] = self._catch_all(description, kind)

    def _catch_all(self, description: str, kind: APIErrorType) -> dict[str, Any]:
        # Inline rather than a reference, so every operation shows the error schema where it is read.
        examples = {kind.code: self._example_ref(kind)}
        return {
            "description": description,
            "content": {"application/json": {"schema": _ERROR_REF, "examples": examples}},
        }

    def _example_ref(self, kind: APIErrorType) -> dict[str, str]:
        self.examples.setdefault(kind.__name__, _example(kind))
        return {"$ref": f"#/components/examples/{kind.__name__}"}

    def _response(self, status: int, kinds: list[APIErrorType]) -> dict[str, str]:
        """A reference to the response of one error status with these errors, declared once."""
        name = "Or".join(kind.__name__ for kind in kinds)
        if name not in self.responses:
            self.responses[name] = self._status(status, kinds)
        return {"$ref": f"#/components/responses/{name}"}

    def _status(self, status: int, kinds: list[APIErrorType]) -> dict[str, Any]:
        """The response of one error status: the envelope, with an example of each error code."""
        examples: dict[str, Any] = {}
        for kind in kinds:
            examples.setdefault(kind.code, self._example_ref(kind))
        codes = ", ".join(f"`{code}`" for code in examples)
        response: dict[str, Any] = {
            "description": f"{HTTPStatus(status).phrase}: {codes}.",
            "content": {"application/json": {"schema": _ERROR_REF, "examples": examples}},
        }
        headers = _headers_of(kinds)
        if headers:
            response["headers"] = headers
        return response


def errors_of(rule: Rule, view: Callable[..., Any]) -> dict[int, list[APIErrorType]]:
    """The errors a route can answer with, by status: what its code raises and what its route implies.

    Statuses the view documents itself (readiness's 503 carries its own body) are left to it.
    """
    found = set(source.raised_by(view))
    if getattr(view, QUART_SCHEMA_SECURITY_ATTRIBUTE, None):
        found.add(errors.Unauthorized)
    body = getattr(view, QUART_SCHEMA_REQUEST_ATTRIBUTE, None)
    if body is not None:
        found |= _BODY_ERRORS if body[1] == DataSource.JSON else _BODY_ERRORS - {errors.UnsupportedMediaType}
        found |= _extra_fields_errors(body[0])
    query = getattr(view, QUART_SCHEMA_QUERYSTRING_ATTRIBUTE, None)
    if query is not None:
        found |= {errors.ValidationFailed, *_extra_fields_errors(query)}
    if rule.arguments:
        found.add(errors.NotFound)  # a malformed or unknown id
    if is_rate_limited(rule):
        # The limiter resolves the caller (database, cache) before the view runs.
        found |= {errors.RateLimited, errors.ServiceUnavailable}
    documented = {int(status) for status in getattr(view, QUART_SCHEMA_RESPONSE_ATTRIBUTE, {})}
    by_status: dict[int, list[APIErrorType]] = {}
    for kind in sorted(found, key=lambda kind: (kind.status, kind.code, kind.__name__)):
        if kind.status not in documented:
            by_status.setdefault(kind.status, []).append(kind)
    return by_status


def is_rate_limited(rule: Rule) -> bool:
    """Whether the default limits apply to the route (everything but the operations routes)."""
    blueprint = rule.endpoint.rpartition(".")[0]
    return (
        blueprint not in rate_limits.EXEMPT_BLUEPRINTS and rule.endpoint not in rate_limits.EXEMPT_ENDPOINTS
    )


def _extra_fields_errors(model: Any) -> set[APIErrorType]:
    forbids = (
        isinstance(model, type)
        and issubclass(model, BaseModel)
        and model.model_config.get("extra") == "forbid"
    )
    return {errors.FieldsNotAllowed} if forbids else set()


def _example(kind: APIErrorType) -> dict[str, Any]:
    body = {"code": kind.code, "message": kind.default_message, "details": _DETAILS_EXAMPLES.get(kind)}
    return {
        "summary": f"{kind.status} {kind.code}: {kind.default_message}",
        "value": {"status": "error", "error": body, "metadata": METADATA_EXAMPLE},
    }


def _headers_of(kinds: list[APIErrorType]) -> dict[str, Any]:
    names: set[str] = set()
    for kind in kinds:
        with contextlib.suppress(TypeError):  # errors that need arguments carry no headers
            names |= set(kind().headers)
        if issubclass(kind, errors.RateLimited):
            names.add("Retry-After")  # set by the rate limiter, or with the error
    return {
        name: {"description": _HEADER_DESCRIPTIONS.get(name, ""), "schema": {"type": "string"}}
        for name in sorted(names)
    }
