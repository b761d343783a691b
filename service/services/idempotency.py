"""`Idempotency-Key`: the first answer to a keyed request is stored with the change it made, in the same
transaction, and replayed to every retry with the same key (per user). Reusing a key for a different
request is refused.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from service import db, errors
from service.models.assignments import IdempotencyKey

MAX_KEY_LENGTH = 200

# Built once (see db.ConditionalUpdate), on the table (the ORM adds nothing here), for each dialect:
# both have INSERT ... ON CONFLICT DO NOTHING.
_KEYS = cast(Table, IdempotencyKey.__table__)
_CLAIM = {
    name: insert(_KEYS)
    .on_conflict_do_nothing(index_elements=[_KEYS.c.user_id, _KEYS.c.key])
    .returning(_KEYS.c.id)
    for name, insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}
_SETTLE = (
    update(_KEYS)
    .where(_KEYS.c.id == bindparam("claim"))
    .values(status_code=bindparam("code"), response=bindparam("body"))
)


def fingerprint(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def claim(
    session: AsyncSession, user_id: uuid.UUID, key: str, request_hash: str
) -> tuple[int, dict[str, Any]] | uuid.UUID:
    """The stored (status, body) when this key was used before; else the id of a claim to fill in with
    `settle`.

    The claim is an INSERT that does nothing on a conflict: the common first use costs that one
    statement, and a replay one SELECT more. Two requests racing with one key: the second's INSERT waits
    on the unique index until the first commits, then finds its answer.

    Raises:
        MalformedRequest: an empty or overlong key.
        Conflict: the key was used for a different request.
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise errors.MalformedRequest(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} characters.")
    claimed: uuid.UUID | None = await session.scalar(
        _CLAIM["postgresql" if db.is_postgres(session) else "sqlite"],
        {"user_id": user_id, "key": key, "request_hash": request_hash, "status_code": 0, "response": {}},
    )
    if claimed is not None:
        return claimed
    stored = await _find(session, user_id, key)
    assert stored is not None  # it conflicted: the row exists, committed
    if stored.request_hash != request_hash:
        raise errors.Conflict(
            "This Idempotency-Key was used for a different request.", {"header": "Idempotency-Key"}
        )
    return stored.status_code, stored.response


async def settle(session: AsyncSession, claim: uuid.UUID, status_code: int, body: dict[str, Any]) -> None:
    """Store the answer; it commits with the change it describes."""
    await session.execute(_SETTLE, {"claim": claim, "code": status_code, "body": body})


async def _find(session: AsyncSession, user_id: uuid.UUID, key: str) -> IdempotencyKey | None:
    query = select(IdempotencyKey).where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
    return (await session.execute(query)).scalar_one_or_none()
