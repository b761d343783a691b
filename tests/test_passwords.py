"""Password hashing and policy: the stored format, salts, verification, rehashing, the rules a new
password must meet, and that hashing neither blocks the event loop nor runs more than N at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Literal

import pytest
from argon2 import PasswordHasher

from service import passwords

GOOD = "Correct7Horse"


@pytest.fixture(autouse=True)
def _default_concurrency() -> Iterator[None]:
    yield
    passwords.configure(2)


class _CountingHasher(PasswordHasher):
    """Our hasher's parameters, counting how many hashes run at the same moment."""

    def __init__(self) -> None:
        super().__init__(time_cost=2, memory_cost=19456, parallelism=1)
        self.running = 0
        self.most_at_once = 0
        self.calls = 0
        self.verifications = 0
        self._lock = threading.Lock()

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        with self._lock:
            self.running += 1
            self.calls += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return super().hash(password, salt=salt)
        finally:
            with self._lock:
                self.running -= 1

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        with self._lock:
            self.verifications += 1
        return super().verify(hash, password)


async def test_stored_hash_is_argon2id_at_the_asvs_floor() -> None:
    stored = await passwords.hash_password(GOOD)

    empty, algorithm, version, parameters, salt, digest = stored.split("$")
    assert empty == ""
    assert algorithm == "argon2id"
    assert version == "v=19"
    fields = dict(field.split("=") for field in parameters.split(","))
    assert fields == {"m": "19456", "t": "2", "p": "1"}
    assert salt
    assert digest


async def test_same_password_hashes_differently() -> None:
    first = await passwords.hash_password(GOOD)
    second = await passwords.hash_password(GOOD)

    assert first != second
    assert first.split("$")[4] != second.split("$")[4]


async def test_verify_accepts_the_password_and_refuses_another() -> None:
    stored = await passwords.hash_password(GOOD)

    assert await passwords.verify_password(stored, GOOD)
    assert not await passwords.verify_password(stored, "Correct7Horsf")
    assert not await passwords.verify_password(stored, GOOD.lower())


async def test_long_password_is_not_truncated() -> None:
    long_password = "Ab1" + "x" * 61
    assert len(long_password) == 64
    stored = await passwords.hash_password(long_password)

    changed = long_password[:-1] + "y"
    assert await passwords.verify_password(stored, long_password)
    assert not await passwords.verify_password(stored, changed)


@pytest.mark.parametrize(
    "stored",
    ["", "not a hash", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$", "$argon2id$v=19$garbage$$", "$2b$12$abc"],
)
async def test_corrupt_hash_verifies_false(stored: str) -> None:
    assert await passwords.verify_password(stored, GOOD) is False


async def test_corrupted_digest_verifies_false() -> None:
    stored = await passwords.hash_password(GOOD)
    digest = stored.rsplit("$", 1)[1]
    flipped = ("A" if digest[0] != "A" else "B") + digest[1:]

    assert await passwords.verify_password(stored.rsplit("$", 1)[0] + "$" + flipped, GOOD) is False


async def test_unencodable_password_verifies_false() -> None:
    stored = await passwords.hash_password(GOOD)

    assert await passwords.verify_password(stored, "Ab1\ud800xxxx") is False
    assert passwords.NOT_ENCODABLE in passwords.policy_violations("Ab1\ud800xxxx")


async def test_needs_rehash_for_other_parameters_only() -> None:
    weaker = PasswordHasher(time_cost=1, memory_cost=8192).hash(GOOD)
    ours = await passwords.hash_password(GOOD)

    assert passwords.needs_rehash(weaker)
    assert not passwords.needs_rehash(ours)
    assert passwords.needs_rehash("not a hash")


async def test_verify_dummy_does_a_real_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown user costs one argon2 verification, like a wrong password; the dummy is hashed once."""
    counting = _CountingHasher()
    monkeypatch.setattr(passwords, "_hasher", counting)
    passwords._dummy_hash.cache_clear()
    try:
        await passwords.verify_dummy(GOOD)
        await passwords.verify_dummy("")
        await passwords.verify_dummy("\ud800")
    finally:
        passwords._dummy_hash.cache_clear()

    assert counting.calls == 1
    assert counting.verifications == 2


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("Ab1cdef", passwords.TOO_SHORT),
        ("Ab1" + "c" * 126, passwords.TOO_LONG),
        ("abcdef12", passwords.NO_UPPER),
        ("ABCDEF12", passwords.NO_LOWER),
        ("Abcdefgh", passwords.NO_DIGIT),
        ("Password1", passwords.TOO_COMMON),
    ],
)
def test_each_rule_gives_its_own_message(password: str, message: str) -> None:
    assert passwords.policy_violations(password) == [message]


def test_length_bounds_are_inclusive() -> None:
    assert passwords.policy_violations("Ab1cdefg") == []
    assert passwords.policy_violations("Ab1" + "c" * 125) == []


def test_common_passwords_compare_case_insensitively() -> None:
    assert "password1" in passwords.common_passwords()
    assert passwords.TOO_COMMON in passwords.policy_violations("PASSWORD")
    assert passwords.TOO_COMMON in passwords.policy_violations("pAsSwOrD1")


def test_good_password_has_no_violations() -> None:
    assert passwords.policy_violations(GOOD) == []


def test_bundled_list_is_large_and_clean() -> None:
    common = passwords.common_passwords()

    assert len(common) >= 2500
    assert {"123456", "password", "qwerty"} <= common
    assert all(entry and entry == entry.strip() and not entry.startswith("#") for entry in common)


def test_configure_refuses_zero() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        passwords.configure(0)


async def test_hashing_is_bounded_and_keeps_the_loop_running(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _CountingHasher()
    monkeypatch.setattr(passwords, "_hasher", counting)
    passwords.configure(1)
    ticks = 0
    ticks_during_hashing = []

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    async def hash_and_note_ticks() -> str:
        before = ticks
        stored = await passwords.hash_password(GOOD)
        ticks_during_hashing.append(ticks - before)
        return stored

    ticker = asyncio.create_task(tick())
    try:
        hashes = await asyncio.gather(*(hash_and_note_ticks() for _ in range(4)))
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker

    assert counting.calls == 4
    assert counting.most_at_once == 1
    assert len(set(hashes)) == 4
    # The loop kept ticking while the hashes ran (a blocking hash would leave the count unchanged).
    assert ticks > 0
    assert max(ticks_during_hashing) > 0


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="thread priorities are Linux's")
async def test_hashing_runs_below_the_event_loops_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    """A login burst that fills every core must leave the event loop first in line for a core."""
    seen: list[int] = []

    class _Noting(PasswordHasher):
        def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return "noted"

    monkeypatch.setattr(passwords, "_hasher", _Noting())
    passwords.configure(2)
    await asyncio.gather(*(passwords.hash_password(GOOD) for _ in range(4)))
    loop_priority = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert len(seen) == 4
    assert all(priority >= min(19, loop_priority + passwords.HASHING_NICENESS) for priority in seen)


async def test_cancelled_caller_keeps_its_slot_until_the_hash_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that goes away mid-hash must not let a second hash start beside the first."""
    counting = _CountingHasher()
    monkeypatch.setattr(passwords, "_hasher", counting)
    passwords.configure(1)

    first = asyncio.create_task(passwords.hash_password(GOOD))
    while counting.calls == 0:
        await asyncio.sleep(0.001)
    first.cancel()
    await passwords.hash_password(GOOD)

    assert first.cancelled()
    assert counting.calls == 2
    assert counting.most_at_once == 1
