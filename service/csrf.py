"""CSRF tokens for the dashboard's cookie session and its login form.

A browser sends quart-auth's cookie with every request to us, whichever site made it, so an unsafe
request (POST, PUT, PATCH, DELETE) that the cookie authenticates must also carry the session's token:
in the `X-CSRF-Token` header (the dashboard's `fetch` calls) or a `csrf_token` form field (its forms).
The token is an HMAC of the login session id under a key derived from SECRET_KEY: nothing is stored,
it ends with the session, and another site can neither read it nor compute it. Bearer-token requests
carry no ambient credentials and need none.

The login form has no session yet. Its token is bound to a random value in a cookie of its own (a
signed double-submit cookie), so another site cannot sign a browser in to the attacker's account.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid

from quart import request

from service import config, errors

HEADER = "X-CSRF-Token"
FIELD = "csrf_token"
LOGIN_COOKIE = "switchboard_login_csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


class CSRFRefused(errors.Forbidden):
    code = "CSRF_FAILED"
    default_message = "A valid CSRF token is required: send the X-CSRF-Token header."


def _token(binding: str) -> str:
    # A key of its own, derived from SECRET_KEY, as tokens.py does for JWTs.
    key = hmac.new(config.current().secret_key.encode(), b"switchboard csrf tokens", hashlib.sha256).digest()
    mac = hmac.new(key, binding.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def session_token(session_id: uuid.UUID) -> str:
    """The token of a login session, which its pages embed."""
    return _token(f"session:{session_id}")


def login_form() -> tuple[str, str | None]:
    """The login form's token, and the cookie value to set when the browser has none yet."""
    held = request.cookies.get(LOGIN_COOKIE)
    nonce = held or secrets.token_urlsafe(32)
    return _token(f"login:{nonce}"), None if held else nonce


async def require_session_token(session_id: uuid.UUID) -> None:
    """Refuse an unsafe request that does not carry the session's token.

    Raises:
        CSRFRefused: the token is missing or wrong (403).
    """
    if request.method not in SAFE_METHODS:
        await _require(session_token(session_id))


async def require_login_token() -> None:
    """Refuse a login form that was not served to this browser.

    Raises:
        CSRFRefused: no login cookie, or the token is missing or wrong (403).
    """
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce:
        raise CSRFRefused("The login form has expired; load it again.")
    await _require(_token(f"login:{nonce}"))


async def _require(expected: str) -> None:
    presented = request.headers.get(HEADER)
    if presented is None and request.mimetype in _FORM_TYPES:
        presented = (await request.form).get(FIELD)
    if presented is None or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise CSRFRefused()
