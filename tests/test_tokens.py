"""Access tokens: verified claims are remembered per token, but the clock is checked on every use."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from service import tokens

SECRET = "a-test-secret-key-of-more-than-32-characters"


class _Later(datetime):
    """datetime whose now() is a fixed time ahead, as if the token were used later."""

    ahead = timedelta(0)

    @classmethod
    def now(cls, tz: object = None) -> _Later:  # type: ignore[override]
        return super().now(UTC) + cls.ahead  # type: ignore[return-value]


def test_a_token_accepted_once_is_refused_after_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    token = tokens.issue_access_token(SECRET, uuid.uuid4(), uuid.uuid4(), ["viewer"], ttl_seconds=60)
    assert tokens.decode_access_token(SECRET, token).roles == ("viewer",)
    monkeypatch.setattr(tokens, "datetime", _Later)
    _Later.ahead = timedelta(seconds=60 + tokens.LEEWAY_SECONDS - 1)
    tokens.decode_access_token(SECRET, token)  # within the leeway
    _Later.ahead = timedelta(seconds=60 + tokens.LEEWAY_SECONDS + 1)
    with pytest.raises(tokens.InvalidToken):
        tokens.decode_access_token(SECRET, token)


def test_a_remembered_token_is_not_valid_under_another_key() -> None:
    token = tokens.issue_access_token(SECRET, uuid.uuid4(), uuid.uuid4(), [], ttl_seconds=60)
    tokens.decode_access_token(SECRET, token)
    with pytest.raises(tokens.InvalidToken):
        tokens.decode_access_token(SECRET + "-rotated", token)
