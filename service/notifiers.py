"""The channels a notification goes out on (log, webhook, email), behind one `Notifier` interface.

Each `send` either returns (delivered) or raises `DeliveryFailed`, saying whether trying again later could
help. Retrying, backoff and bookkeeping belong to the queue (services/notifications.py), not here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from service import log
from service.config import Settings
from service.mail import Mailer, MailError, Message

logger = log.get(__name__)

LOG = "log"
WEBHOOK = "webhook"
EMAIL = "email"

# Statuses that mean "not now" rather than "never": the receiver timed out or is shedding load.
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})
_MAX_REASON = 500


class DeliveryFailed(Exception):
    """The channel could not deliver; `retryable` says whether a later attempt could succeed."""

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason[:_MAX_REASON]
        self.retryable = retryable


@dataclass(frozen=True)
class Delivery:
    """One notification as a channel sees it; `id` names it to receivers (and stays the same on retries)."""

    id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    created_at: datetime


class Notifier(Protocol):
    async def send(self, delivery: Delivery) -> None:
        """Deliver, or raise DeliveryFailed."""

    async def close(self) -> None:
        """Release what the channel holds open (connections)."""


class LogNotifier:
    """Writes each notification to the log: the default, and enough when a log shipper alerts on it."""

    async def send(self, delivery: Delivery) -> None:
        logger.info("notification", id=str(delivery.id), kind=delivery.kind, payload=delivery.payload)

    async def close(self) -> None:
        return None


class EmailNotifier:
    """Mails each notification to NOTIFY_EMAIL_TO through the app's mailer."""

    def __init__(self, mailer: Mailer, to: str) -> None:
        self._mailer = mailer
        self._to = to

    async def send(self, delivery: Delivery) -> None:
        body = (
            f"Switchboard notification: {delivery.kind}\n"
            f"Delivery id: {delivery.id}\n"
            f"Raised at: {delivery.created_at.isoformat()}\n\n"
            f"{json.dumps(delivery.payload, indent=2, sort_keys=True, default=str)}\n"
        )
        try:
            await self._mailer.send(Message(self._to, f"[Switchboard] {delivery.kind}", body))
        except MailError as error:
            # The mail server may be down or may refuse us for now: both pass, so always try again.
            raise DeliveryFailed(str(error), retryable=True) from None

    async def close(self) -> None:
        return None


class WebhookNotifier:
    """POSTs each notification as JSON to WEBHOOK_URL, signed with WEBHOOK_SECRET.

    The signature is `sha256=` + hex HMAC-SHA256 over `"{timestamp}.{body}"`: receivers recompute it, and
    reject old timestamps so a captured request cannot be replayed later.
    """

    def __init__(self, url: str, secret: str, timeout: float, allow_private: bool) -> None:
        self._url = url
        self._secret = secret.encode()
        self._timeout = timeout
        self._allow_private = allow_private
        self._client: httpx.AsyncClient | None = None

    async def send(self, delivery: Delivery) -> None:
        if not self._allow_private:
            await _refuse_private_targets(self._url)
        body = json.dumps(
            {
                "kind": delivery.kind,
                "payload": delivery.payload,
                "id": str(delivery.id),
                "created_at": delivery.created_at.isoformat(),
            },
            separators=(",", ":"),
            default=str,
        ).encode()
        timestamp = str(int(time.time()))
        try:
            response = await self._http().post(
                self._url, content=body, headers=self._headers(delivery, timestamp, body)
            )
        except httpx.TimeoutException:
            raise DeliveryFailed(f"timed out after {self._timeout:g} s", retryable=True) from None
        except httpx.HTTPError as error:
            raise DeliveryFailed(f"{type(error).__name__}: {error}", retryable=True) from None
        _judge(response)

    def _headers(self, delivery: Delivery, timestamp: str, body: bytes) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "User-Agent": "Switchboard-Webhook",
            "X-Switchboard-Event": delivery.kind,
            "X-Switchboard-Delivery": str(delivery.id),
            "X-Switchboard-Timestamp": timestamp,
            "X-Switchboard-Signature": "sha256=" + sign(self._secret, timestamp, body),
        }

    def _http(self) -> httpx.AsyncClient:
        # Made on first use, inside the serving event loop, and reused so connections are kept alive.
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                # A redirect could point anywhere, the inside included, after the address check passed.
                follow_redirects=False,
                # HTTP(S)_PROXY would send the request through a proxy the address check knows nothing of.
                trust_env=False,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of `"{timestamp}.{body}"`: what X-Switchboard-Signature carries after `sha256=`."""
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _judge(response: httpx.Response) -> None:
    """Return for 2xx; otherwise raise, retryable unless the receiver said the request itself is wrong."""
    status = response.status_code
    if 200 <= status < 300:
        return
    reason = f"HTTP {status} from the receiver"
    if 300 <= status < 400:
        raise DeliveryFailed(f"{reason} (redirects are not followed)", retryable=False)
    if 400 <= status < 500 and status not in _RETRYABLE_CLIENT_ERRORS:
        raise DeliveryFailed(reason, retryable=False)
    raise DeliveryFailed(reason, retryable=True)


async def _refuse_private_targets(url: str) -> None:
    """Raise unless every address the URL's host resolves to is a public one.

    Checked at each send, not at start-up, because DNS may change. Residual risk (DNS rebinding): httpx
    resolves the name again when it connects, so a hostile DNS server answering with a zero TTL can give
    us a public address here and a private one a moment later. Closing that needs connecting to the
    address checked here (pinning) or, simpler and stronger, an egress firewall that keeps the service
    from reaching internal networks at all; do the latter where webhook URLs are not fully trusted.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        # Often passing (a DNS outage); a name that never resolves fails for good after the last attempt.
        raise DeliveryFailed(f"cannot resolve {host!r}: {error.strerror}", retryable=True) from None
    for *_, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if not _is_public(address):
            raise DeliveryFailed(
                f"{host!r} resolves to {address}, a private or reserved address "
                "(set WEBHOOK_ALLOW_PRIVATE=true to allow it)",
                retryable=False,
            )


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:127.0.0.1 reaches 127.0.0.1; older Pythons judge the IPv6 form alone.
        address = address.ipv4_mapped
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def for_settings(settings: Settings, mailer: Mailer) -> dict[str, Notifier]:
    """The notifier of each channel NOTIFY_CHANNELS enables, by channel name."""
    built: dict[str, Notifier] = {}
    for channel in settings.notify_channels:
        if channel == LOG:
            built[channel] = LogNotifier()
        elif channel == WEBHOOK:
            # Settings refuse webhook without a URL and a secret.
            assert settings.webhook_url is not None
            assert settings.webhook_secret is not None
            built[channel] = WebhookNotifier(
                settings.webhook_url,
                settings.webhook_secret,
                settings.webhook_timeout,
                settings.webhook_allow_private,
            )
        elif channel == EMAIL:
            assert settings.notify_email_to is not None  # Settings refuse email without it
            built[channel] = EmailNotifier(mailer, settings.notify_email_to)
    return built


async def close_all(notifiers: Mapping[str, Notifier]) -> None:
    for notifier in notifiers.values():
        await notifier.close()
