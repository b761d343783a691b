"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives, for the mail tests."""

from __future__ import annotations

import asyncio
import email
import logging
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message as ParsedMail
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Sink:
    """What the SMTP server received: parsed mails and the credentials offered to AUTH."""

    port: int
    mails: list[ParsedMail] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd hook
        self.mails.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=True)

    async def wait_for_link(self, to: str, path: str, not_: str | None = None, timeout: float = 5.0) -> str:
        """The token of the newest link to `path` mailed to `to`, waiting for it (mail leaves in the
        background); `not_` waits for a token other than that one."""
        pattern = re.compile(re.escape(path) + r"\?token=([A-Za-z0-9_\-]+)")
        async with asyncio.timeout(timeout):
            while True:
                for mail in reversed(self.mails):
                    found = pattern.search(mail.get_payload(decode=True).decode())
                    if mail["To"] == to and found and found.group(1) != not_:
                        return found.group(1)
                await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sink]:
    # aiosmtpd logs every connection from its own thread; earlier tests may have left the root handler
    # writing to a capture stream that is closed by now.
    monkeypatch.setattr(logging.getLogger("mail.log"), "disabled", True)
    sink = Sink(port=free_port())
    # AUTH over a plain connection is refused unless auth_require_tls is off: fine on loopback in a test.
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=sink.port,
        authenticator=sink.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    yield sink
    controller.stop()
