"""The demo's HTTP client: the operator's login (renewed when it expires), the agents' tokens, and
waiting out 429 and 503 as Retry-After asks. Everything the demo does goes through it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

RETRIES = 5  # of one request answered 429 or 503, or timed out
MAX_WAIT = 60.0  # the longest Retry-After the demo honours as given
# One "waiting" line at most this often, not one per agent per refusal.
WARN_EVERY = 10.0


@dataclass(frozen=True)
class Login:
    """Who the operator logs in as. `prepare` runs once the server answers, before the login: the
    command line creates the demo account there."""

    username: str
    password: str
    prepare: Callable[[], Awaitable[str]] | None = None


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to do."""


class ApiError(Exception):
    """The server refused a request; the demo skips that step."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


def _retry_after(response: httpx.Response) -> float:
    try:
        seconds = float(response.headers.get("Retry-After", "1"))
    except ValueError:  # an HTTP date: not what this server sends
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_WAIT)


class Client:
    """The server's API as the demo uses it. `warn` hears, now and then, that it is waiting."""

    def __init__(self, http: httpx.AsyncClient, login: Login, warn: Callable[[str], None]) -> None:
        self._http = http
        self._login = login
        self._warn = warn
        self._token = ""
        self._warned_at = -WARN_EVERY
        self.rate_limited = 0  # 429 answers waited out

    @property
    def url(self) -> str:
        return str(self._http.base_url).rstrip("/")

    async def check(self) -> None:
        """Raises DemoError when no Switchboard answers at the URL."""
        try:
            response = await self._http.get("/health")
            healthy = response.status_code == 200 and response.json().get("status") == "healthy"
        except (httpx.HTTPError, ValueError) as error:
            raise DemoError(
                f"no Switchboard answers at {self.url} ({type(error).__name__}): start it with `make run` "
                "in another terminal, or pass --url"
            ) from None
        if not healthy:
            raise DemoError(f"{self.url}/health did not answer as Switchboard does ({response.status_code})")

    async def log_in(self) -> None:
        """Raises DemoError when the login is refused."""
        login = self._login
        credentials = {"username": login.username, "password": login.password}
        try:
            data = await _data(await self._send("POST", "/auth/login", None, credentials))
        except ApiError as error:
            hint = (
                "the demo account has another password here, or the server uses another DATABASE_URL; "
                "pass --username and --password"
                if login.prepare is not None
                else "check --username and --password"
            )
            raise DemoError(f"cannot log in as {login.username!r} at {self.url} ({error}): {hint}") from None
        self._token = data["access_token"]

    async def operator(self, method: str, path: str, body: Any = None, **options: Any) -> Any:
        """A request as the operator, answering its `data`; an expired login is renewed once.

        Raises:
            DemoError: the operator lacks a permission the demo needs.
            ApiError: any other refusal.
        """
        response = await self._send(method, path, self._token, body, **options)
        if response.status_code == 401:
            await self.log_in()
            response = await self._send(method, path, self._token, body, **options)
        if response.status_code == 403:
            raise DemoError(
                f"{self._login.username!r} may not {method} {path}: the demo needs an operator or admin"
            )
        return await _data(response)

    async def agent(self, token: str, method: str, path: str, body: Any = None) -> Any:
        """A request with an agent's token, answering its `data`.

        Raises:
            ApiError: the server refused it.
        """
        return await _data(await self._send(method, path, token, body))

    async def _send(
        self, method: str, path: str, token: str | None, body: Any = None, **options: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(options.pop("headers", {}))
        for attempt in range(RETRIES + 1):
            try:
                response = await self._http.request(method, path, json=body, headers=headers, **options)
            except httpx.TimeoutException:
                wait = 1.0
            except httpx.TransportError as error:
                raise DemoError(f"lost the server at {self.url} ({type(error).__name__})") from None
            else:
                if response.status_code not in (429, 503) or attempt == RETRIES:
                    return response
                wait = _retry_after(response)
                self._waiting(response.status_code, path, wait)
            await asyncio.sleep(wait)
        raise DemoError(f"the server at {self.url} stopped answering (timed out {RETRIES + 1} times)")

    def _waiting(self, status: int, path: str, wait: float) -> None:
        if status == 429:
            self.rate_limited += 1
        if time.monotonic() - self._warned_at >= WARN_EVERY:
            self._warned_at = time.monotonic()
            reason = "rate limited" if status == 429 else "server unavailable"
            self._warn(f"{reason} ({status} on {path}): waiting {wait:g}s as Retry-After asks")


async def _data(response: httpx.Response) -> Any:
    """The `data` of a success envelope; raises ApiError with the error envelope's code otherwise."""
    try:
        body = response.json()
    except ValueError:
        raise ApiError(response.status_code, "NOT_JSON", response.text[:100]) from None
    if response.is_success:
        return body["data"]
    error = body.get("error") or {}
    raise ApiError(response.status_code, error.get("code", "?"), error.get("message", ""))
