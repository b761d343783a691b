"""Password hashing (argon2id) and the policy a new password must meet.

Hashing and verifying run in the process's hashing threads, never on the event loop: `configure(n)` of
them, since argon2 is CPU- and memory-bound and more at once would only queue for the same cores while
each holds its 19 MiB. The threads run at a lower scheduling priority than the event loop, so a burst of
logins that fills every core still leaves each worker answering its other requests at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import ParamSpec, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

P = ParamSpec("P")
T = TypeVar("T")

MIN_LENGTH = 8
MAX_LENGTH = 128

TOO_SHORT = f"Password must be at least {MIN_LENGTH} characters long."
TOO_LONG = f"Password must be at most {MAX_LENGTH} characters long."
NO_UPPER = "Password must contain an upper-case letter."
NO_LOWER = "Password must contain a lower-case letter."
NO_DIGIT = "Password must contain a digit."
TOO_COMMON = "Password is one of the most commonly used passwords; choose another."
NOT_ENCODABLE = "Password contains characters that are not valid text (unpaired surrogates)."

# The OWASP / ASVS 5.0 floor for argon2id (t=2, m=19 MiB, p=1): about 35 ms here, where the library's
# default profile takes about 200 ms. Raising any of these makes needs_rehash() upgrade users on login.
_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)

DEFAULT_CONCURRENCY = 2
# How far below the event loop's priority hashing threads run: the kernel runs a ready event loop first.
HASHING_NICENESS = 10

_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def configure(concurrency: int) -> None:
    """Set how many hashes may run at once in this process (Settings.password_hash_concurrency).

    The threads live as long as the process: every app made in it (tests make one each) shares them,
    and they are replaced only when the number changes.

    Raises:
        ValueError: concurrency is below 1.
    """
    global _pool, _pool_size
    if concurrency < 1:
        raise ValueError("password hash concurrency must be at least 1")
    if _pool is not None and _pool_size == concurrency:
        return
    _pool_size = concurrency
    previous, _pool = (
        _pool,
        ThreadPoolExecutor(concurrency, thread_name_prefix="password-hash", initializer=_lower_priority),
    )
    if previous is not None:
        # Hashes already admitted finish first; the old threads end before this returns.
        previous.shutdown(wait=True)


def _lower_priority() -> None:
    # On Linux each thread has its own nice value, and lowering one's own needs no privilege. Elsewhere
    # the threads keep the loop's priority.
    with contextlib.suppress(AttributeError, OSError):
        thread = threading.get_native_id()
        niceness = min(19, os.getpriority(os.PRIO_PROCESS, thread) + HASHING_NICENESS)
        os.setpriority(os.PRIO_PROCESS, thread, niceness)


async def hash_password(password: str) -> str:
    """The encoded argon2id hash of `password` (salted: two calls give different strings).

    Raises:
        ValueError: the password cannot be encoded as UTF-8 (policy_violations reports it first).
    """
    return await _in_thread(_hasher.hash, password)


async def verify_password(stored_hash: str, password: str) -> bool:
    """Whether `password` matches `stored_hash`; False also for a corrupt or unparseable hash."""
    return await _in_thread(_verify, stored_hash, password)


async def verify_dummy(password: str) -> None:
    """Spend the time a real verification takes, for a login naming no user.

    An unknown user then answers as slowly as a wrong password, so timing does not tell which
    accounts exist.
    """
    await _in_thread(_verify_dummy, password)


def needs_rehash(stored_hash: str) -> bool:
    """Whether `stored_hash` was made with other parameters than ours (rehash it after a good login).

    An unparseable hash counts as needing a rehash.
    """
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True


def policy_violations(password: str) -> list[str]:
    """One human-readable message per rule `password` breaks; empty when it is acceptable."""
    rules = [
        (len(password) < MIN_LENGTH, TOO_SHORT),
        (len(password) > MAX_LENGTH, TOO_LONG),
        (not any(char.isupper() for char in password), NO_UPPER),
        (not any(char.islower() for char in password), NO_LOWER),
        (not any(char.isdigit() for char in password), NO_DIGIT),
        (password.lower() in common_passwords(), TOO_COMMON),
        (not _encodable(password), NOT_ENCODABLE),
    ]
    return [message for broken, message in rules if broken]


@functools.cache
def common_passwords() -> frozenset[str]:
    """The bundled list of the most common passwords, lower-cased (see service/data/README.md)."""
    text = resources.files("service.data").joinpath("common-passwords.txt").read_text(encoding="utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


async def _in_thread(work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `work` in one of the process's hashing threads, queueing while all of them are busy.

    A caller that stops waiting (its client went away) leaves a running hash to finish in its thread,
    so no other hash starts beside it; a hash still queued is dropped.
    """
    if _pool is None:
        configure(DEFAULT_CONCURRENCY)
    assert _pool is not None
    return await asyncio.get_running_loop().run_in_executor(_pool, functools.partial(work, *args, **kwargs))


def _verify(stored_hash: str, password: str) -> bool:
    if not _encodable(password):
        # hash_password cannot have stored it; argon2 would raise UnicodeEncodeError instead of saying no.
        return False
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _verify_dummy(password: str) -> None:
    _verify(_dummy_hash(), password)


@functools.cache
def _dummy_hash() -> str:
    # Made on first use, in the worker thread; a second thread racing it only makes another equal one.
    return _hasher.hash(secrets.token_urlsafe(32))


def _encodable(password: str) -> bool:
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
