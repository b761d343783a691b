"""Access tokens (JWT, PyJWT) and opaque secrets (refresh, API and mail tokens), stored only as hashes."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

# Pinned: the algorithm is never taken from the token's header.
ALGORITHM = "HS256"
ISSUER = "switchboard"
AUDIENCE = "switchboard-api"
LEEWAY_SECONDS = 10

REFRESH_PREFIX = "sbr_"
API_TOKEN_PREFIX = "sbp_"
MAIL_PREFIX = "sbm_"
AGENT_PREFIX = "sba_"
REGISTRATION_PREFIX = "sbg_"


class InvalidToken(Exception):
    """The token is malformed, tampered, expired, of the wrong type or signed with another key."""


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    roles: tuple[str, ...]
    expires_at: datetime
    not_before: datetime


def _signing_key(secret_key: str) -> bytes:
    # A key of its own, derived from SECRET_KEY, so JWTs and signed cookies never share a key.
    return hmac.new(secret_key.encode(), b"switchboard access tokens", hashlib.sha256).digest()


def issue_access_token(
    secret_key: str, user_id: uuid.UUID, session_id: uuid.UUID, roles: list[str], ttl_seconds: int
) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "jti": str(session_id),
        "roles": roles,
        "typ": "access",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(seconds=ttl_seconds),
    }
    return jwt.encode(claims, _signing_key(secret_key), algorithm=ALGORITHM)


def decode_access_token(secret_key: str, token: str) -> AccessClaims:
    """Verify signature, expiry, issuer, audience and type.

    Raises:
        InvalidToken: for any reason the token cannot be trusted.
    """
    claims = _verified_claims(secret_key, token)
    # The signature and the fixed claims were verified once (and cached); the clock moves on, so the
    # time claims are checked on every use, with the same leeway PyJWT applies.
    now = datetime.now(UTC)
    if now >= claims.expires_at + _LEEWAY:
        raise InvalidToken("Signature has expired")
    if now < claims.not_before - _LEEWAY:
        raise InvalidToken("The token is not yet valid (nbf)")
    return claims


_LEEWAY = timedelta(seconds=LEEWAY_SECONDS)


# Verifying an HMAC and parsing the JSON costs more than the rest of authentication on a cached path, and
# a client sends the same token for its whole life: remember the verified claims of recent tokens.
# Failures are not cached (lru_cache does not keep exceptions), so a bad token is checked every time.
@functools.lru_cache(maxsize=4096)
def _verified_claims(secret_key: str, token: str) -> AccessClaims:
    try:
        claims = jwt.decode(
            token,
            _signing_key(secret_key),
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "nbf", "sub", "jti", "typ"]},
        )
        if claims["typ"] != "access":
            raise InvalidToken("not an access token")
        return AccessClaims(
            user_id=uuid.UUID(claims["sub"]),
            session_id=uuid.UUID(claims["jti"]),
            roles=tuple(str(role) for role in claims.get("roles", [])),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            not_before=datetime.fromtimestamp(claims["nbf"], UTC),
        )
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as error:
        raise InvalidToken(str(error)) from None


def new_secret(prefix: str) -> str:
    """An opaque token: a recognisable prefix and 256 random bits."""
    return prefix + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """What is stored instead of the token: its SHA-256 (the token has 256 bits of entropy, so no salt)."""
    return hashlib.sha256(token.encode()).hexdigest()
