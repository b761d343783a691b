"""What every request passes through: request id, content-type check, security headers, CORS, the
access log line and the request metrics."""

from __future__ import annotations

import secrets
import time

from quart import Quart, Response, current_app, g, request
from quart_cors import cors
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE, DataSource

from service import errors, log, metrics, request_ids
from service.config import Settings

logger = log.get("service.access")

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
EXPOSED_HEADERS = ["X-Request-ID", "Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"]
ALLOWED_HEADERS = [
    "Authorization",
    "Content-Type",
    "X-Request-ID",
    "Idempotency-Key",
    "Last-Event-ID",
    "X-CSRF-Token",
]


def csp_nonce() -> str:
    """The nonce for this response's inline scripts; the CSP header names it only when one was taken."""
    nonce: str | None = g.get("csp_nonce")
    if nonce is None:
        nonce = g.csp_nonce = secrets.token_urlsafe(16)
    return nonce


def _content_security_policy(nonce: str | None) -> str:
    script = f"'self' 'nonce-{nonce}'" if nonce else "'self'"
    # No 'unsafe-inline' at all: the docs UI and the dashboard load scripts and styles from files (Swagger
    # UI sets styles through the CSSOM, which the policy allows).
    return (
        f"default-src 'self'; script-src {script}; style-src 'self'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


async def _start() -> None:
    g.started = time.perf_counter()
    request_ids.bind(request_ids.accept_or_make(request.headers.get("X-Request-ID")))
    if request.method in _BODY_METHODS and not request.is_json:
        view = current_app.view_functions.get(request.endpoint or "")
        expects = getattr(view, QUART_SCHEMA_REQUEST_ATTRIBUTE, None)
        if expects is not None and expects[1] == DataSource.JSON:
            raise errors.UnsupportedMediaType()


def security_headers(production: bool) -> list[tuple[str, str]]:
    """The headers every response gets but its Content-Security-Policy (which names a nonce when one was
    taken); only this module sets any of them."""
    headers = [
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "strict-origin-when-cross-origin"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
        # The legacy XSS auditor is itself exploitable; "0" turns it off as current guidance says.
        ("X-XSS-Protection", "0"),
    ]
    if production:
        headers.append(("Strict-Transport-Security", "max-age=31536000; includeSubDomains"))
    return headers


_PLAIN_POLICY = _content_security_policy(None)


def _secure(response: Response, fixed: list[tuple[str, str]]) -> None:
    headers = response.headers
    nonce: str | None = g.get("csp_nonce")
    policy = _PLAIN_POLICY if nonce is None else _content_security_policy(nonce)
    # Added, not set: a response never has them yet, and setting each one searched the whole list.
    headers.extend([("Content-Security-Policy", policy), *fixed])
    if response.mimetype == "application/json" and "Cache-Control" not in headers:
        headers["Cache-Control"] = "no-store"


def _observe(response: Response) -> None:
    started: float | None = g.get("started")
    elapsed = time.perf_counter() - started if started is not None else 0.0
    endpoint = request.url_rule.rule if request.url_rule is not None else metrics.UNMATCHED
    metrics.observe_request(request.method, endpoint, response.status_code, elapsed)
    logger.info(
        "request",
        method=request.method,
        path=request.path,
        route=endpoint,
        status=response.status_code,
        duration_ms=round(elapsed * 1000, 2),
        user_id=g.get("user_id"),
        remote_addr=request.remote_addr,
    )


def init_app(app: Quart, settings: Settings) -> None:
    app.before_request(_start)
    fixed = security_headers(settings.is_production)

    @app.after_request
    async def _finish(response: Response) -> Response:
        request_id = request_ids.current()
        if request_id is not None:
            response.headers["X-Request-ID"] = request_id
        _secure(response, fixed)
        _observe(response)
        return response

    if settings.allowed_origins:
        wildcard = "*" in settings.allowed_origins
        cors(
            app,
            allow_origin=settings.allowed_origins,
            # Credentials are never allowed together with a wildcard origin.
            allow_credentials=not wildcard,
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
