"""What the fuzzing adds to schemathesis, for the in-process test (tests/security/test_fuzz.py) and the run
against a live server alike (`hooks` in tests/security/schemathesis.toml): a check that no answer leaks
internals or secrets, and the API's email format."""

from __future__ import annotations

import os
import re

import schemathesis
from email_validator import EmailNotValidError, validate_email
from hypothesis import strategies as st
from schemathesis import CheckContext, Response
from schemathesis.generation.case import Case

from service.config import DEVELOPMENT_SECRET_KEY

# What an answer must never show: a traceback, a database error or statement, a driver's or the ORM's
# name, a password hash or a key. Kept to phrases no generated input is likely to echo back.
LEAKS = re.compile(
    "|".join(
        (
            r"Traceback \(most recent call last\)",
            r'File "[^"]+\.py", line \d+',
            r"sqlalchemy",
            r"sqlalche\.me",
            r"asyncpg",
            r"aiosqlite",
            r"sqlite3\.",
            r"psycopg",
            r"\[SQL: ",
            r"\bINSERT INTO\b",
            r"\bDELETE FROM\b",
            r"UNIQUE constraint failed",
            r"duplicate key value violates",
            r"violates (foreign key|not-null|check) constraint",
            r"\$argon2id?\$",
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
        )
    ),
    re.IGNORECASE,
)
# Exact values that must never appear: the test run adds its own (the signing key, the users' password).
SECRETS: set[str] = {DEVELOPMENT_SECRET_KEY, *filter(None, [os.environ.get("SECRET_KEY")])}


@schemathesis.check
def no_leaks(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """No internals, secrets or server banner in any answer, whatever the request."""
    if "server" in {name.lower() for name in response.headers}:
        raise AssertionError(f"a Server header: {response.headers.get('server')!r}")
    text = response.text or ""
    found = LEAKS.search(text)
    if found is not None:
        raise AssertionError(f"the answer leaks {found.group(0)!r}")
    for secret in SECRETS:
        if secret in text:
            raise AssertionError("the answer holds a secret")
    return None


def _deliverable(address: str) -> bool:
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


# The API's "email" is an address mail can reach: email-validator (which pydantic's EmailStr uses) refuses
# reserved names such as `.test` or `.localhost` that JSON Schema's format allows. Without this every
# such address would count as a schema-valid request the API refuses.
schemathesis.openapi.format("email", st.emails().filter(_deliverable))
