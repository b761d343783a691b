"""The APIError family and the one place that turns every error into the error envelope."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import redis.exceptions
import sqlalchemy.exc
from pydantic import ValidationError
from quart import Quart, Response, current_app, jsonify
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

from service import db, log
from service.schemas.envelope import ErrorBody, ErrorOut

logger = log.get(__name__)

# Seconds a client should wait before retrying when a dependency is down.
RETRY_AFTER_UNAVAILABLE = "5"


class APIError(Exception):
    """An error a caller can act on: status and code are on the class, the message on the instance."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "BAD_REQUEST"
    default_message: ClassVar[str] = "The request could not be handled."

    def __init__(
        self,
        message: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = details
        self.headers = headers or {}
        super().__init__(self.message)


class ValidationFailed(APIError):
    status = 422
    code = "VALIDATION_ERROR"
    default_message = "The request is not valid."


class MalformedRequest(ValidationFailed):
    status = 400
    default_message = "The request is malformed."


class WeakPassword(APIError):
    """The password breaks the policy: the details list every rule it breaks."""

    status = 400
    code = "WEAK_PASSWORD"
    default_message = "The password does not meet the policy."

    def __init__(self, broken: list[str]) -> None:
        super().__init__(None, {"password": broken})


class FieldsNotAllowed(APIError):
    """Fields the caller may not set (no mass assignment): the details name them."""

    status = 400
    code = "FIELDS_NOT_ALLOWED"
    default_message = "The request sets fields that are not allowed."

    def __init__(self, fields: list[str], message: str | None = None) -> None:
        super().__init__(message, {"fields": sorted(fields)})


class Unauthorized(APIError):
    status = 401
    code = "UNAUTHORIZED"
    default_message = "Authentication is required."

    def __init__(self, message: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details, {"WWW-Authenticate": "Bearer"})


class Forbidden(APIError):
    status = 403
    code = "FORBIDDEN"
    default_message = "You do not have permission to do this."


class NotFound(APIError):
    status = 404
    code = "NOT_FOUND"
    default_message = "No such resource."


class MethodNotAllowed(APIError):
    status = 405
    code = "METHOD_NOT_ALLOWED"
    default_message = "This method is not allowed on this resource."


class Conflict(APIError):
    status = 409
    code = "CONFLICT"
    default_message = "The request conflicts with the current state."


class PayloadTooLarge(APIError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"
    default_message = "The request body is too large."


class UnsupportedMediaType(APIError):
    status = 415
    code = "UNSUPPORTED_MEDIA_TYPE"
    default_message = "Send the request body as application/json."


class RateLimited(APIError):
    status = 429
    code = "RATE_LIMITED"
    default_message = "Too many requests; retry later."


class ServiceUnavailable(APIError):
    status = 503
    code = "SERVICE_UNAVAILABLE"
    default_message = "A dependency of the service is unavailable; retry shortly."

    def __init__(self, message: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details, {"Retry-After": RETRY_AFTER_UNAVAILABLE})


class InternalError(APIError):
    status = 500
    code = "INTERNAL_ERROR"
    default_message = "An unexpected error occurred; it has been logged with the request id."


# Werkzeug's HTTP errors (routing, body size, Quart internals) mapped onto our family by status.
_BY_STATUS: dict[int, type[APIError]] = {
    cls.status: cls
    for cls in (
        MalformedRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        RateLimited,
        ServiceUnavailable,
        InternalError,
    )
}
# Only the headers that mean something to an API client survive the translation.
_KEPT_HEADERS = frozenset({"allow", "retry-after", "www-authenticate"})

# Errors that mean the database or Redis cannot be reached or answered too slowly.
_UNAVAILABLE = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
    OSError,
)


def render(error: APIError) -> Response:
    body = ErrorOut(error=ErrorBody(code=error.code, message=error.message, details=error.details))
    response = jsonify(body.model_dump(mode="json"))
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def field_details(error: ValidationError) -> dict[str, list[str]]:
    """Per-field messages: {"email": ["value is not a valid email address"], "body": [...]}."""
    details: dict[str, list[str]] = {}
    for item in error.errors(include_url=False, include_context=False, include_input=False):
        field = ".".join(str(part) for part in item["loc"]) or "body"
        details.setdefault(field, []).append(str(item["msg"]).removeprefix("Value error, "))
    return details


# PostgreSQL aborted the transaction for a reason a plain retry cures: a serialization failure, a
# deadlock it broke, a lock it could not get, or a statement cancelled at the statement timeout. Or it
# cannot serve at all for now: shutting down, restarting after a crash (57P01-57P03; asyncpg raises
# those as plain errors, not connection errors), out of connection slots (53300), or any connection
# exception (class 08).
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03", "53300"})


def is_unavailable(error: BaseException) -> bool:
    """Whether the error means "retry shortly" (503 with Retry-After), not a fault of ours (500)."""
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        if error.connection_invalidated:
            return True
        sqlstate = str(getattr(error.orig, "sqlstate", None))
        if sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith("08"):
            return True
    return isinstance(error, _UNAVAILABLE)


async def _on_api_error(error: APIError) -> Response:
    return render(error)


async def _on_schema_error(error: RequestSchemaValidationError) -> Response:
    cause = error.validation_error
    if isinstance(cause, ValidationError):
        problems = cause.errors(include_url=False, include_context=False, include_input=False)
        if problems and all(item["type"] == "extra_forbidden" for item in problems):
            # Unknown or read-only fields (id, password_hash, …) are refused by name, not merely invalid.
            return render(FieldsNotAllowed([".".join(str(p) for p in item["loc"]) for item in problems]))
        return render(ValidationFailed(details=field_details(cause)))
    return render(ValidationFailed(details={"body": [str(cause)]}))


async def _on_http_error(error: HTTPException) -> Response:
    status = error.code or 500
    kind = _BY_STATUS.get(status)
    if kind is None:
        code = error.name.upper().replace(" ", "_")
        kind = type(
            "HTTPError",
            (APIError,),
            {"status": status, "code": code, "default_message": error.description or error.name},
        )
    translated = kind()
    translated.headers.update({k: v for k, v in error.get_headers() if k.lower() in _KEPT_HEADERS})
    return render(translated)


# character_not_in_repertoire (a NUL in text) and untranslatable_character (a \u0000 in JSONB).
_NUL_SQLSTATES = frozenset({"22021", "22P05"})


async def _on_unexpected(error: Exception) -> Response:
    if (
        isinstance(error, sqlalchemy.exc.DBAPIError)
        and getattr(error.orig, "sqlstate", None) in _NUL_SQLSTATES
    ):
        # PostgreSQL text and JSON cannot hold a NUL character (SQLite can): the caller's input, not a fault.
        return render(MalformedRequest("Text may not contain NUL (\\u0000) characters."))
    if is_unavailable(error):
        logger.warning("dependency_unavailable", error=type(error).__name__, detail=str(error)[:200])
        db.abandon_request_session()
        return render(ServiceUnavailable())
    logger.error("unhandled_exception", exc_info=error)
    if current_app.extensions.get("sentry"):
        import sentry_sdk

        sentry_sdk.capture_exception(error)
    return render(InternalError())


def init_app(app: Quart) -> None:
    app.register_error_handler(APIError, _on_api_error)
    app.register_error_handler(RequestSchemaValidationError, _on_schema_error)
    app.register_error_handler(HTTPException, _on_http_error)
    app.register_error_handler(Exception, _on_unexpected)
