"""Mail backends: the SMTP mailer against a real local SMTP sink (aiosmtpd), the log mailer, the choice."""

from __future__ import annotations

import email
import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message as ParsedMail
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from quart import Quart

from service import log, mail
from service.config import Settings

SENDER = "Switchboard <noreply@switchboard.test>"
MESSAGE = mail.Message(
    to="ann@example.test",
    subject="Reset your password",
    body="Open http://127.0.0.1:8000/reset?token=one-time-abc to choose a new password.\n",
)


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


def smtp_settings(port: int, **overrides: Any) -> Settings:
    return Settings(
        _env_file=None,
        mail_backend="smtp",
        smtp_host="127.0.0.1",
        smtp_port=port,
        mail_from=SENDER,
        **overrides,
    )


async def test_smtp_mailer_delivers_the_message(sink: Sink) -> None:
    await mail.SMTPMailer(smtp_settings(sink.port)).send(MESSAGE)

    assert len(sink.mails) == 1
    received = sink.mails[0]
    assert received["From"] == SENDER
    assert received["To"] == MESSAGE.to
    assert received["Subject"] == MESSAGE.subject
    assert received["Message-ID"].endswith("@switchboard.test>")
    assert received["Date"]
    assert received.get_content_type() == "text/plain"
    payload = received.get_payload(decode=True)
    assert isinstance(payload, bytes)
    # SMTP carries lines ending in CRLF.
    assert payload.decode().replace("\r\n", "\n") == MESSAGE.body
    assert sink.logins == []


async def test_smtp_mailer_logs_in_when_a_username_is_set(sink: Sink) -> None:
    settings = smtp_settings(sink.port, smtp_username="switchboard", smtp_password="s3cret-pass")

    await mail.SMTPMailer(settings).send(MESSAGE)

    assert sink.logins == [("switchboard", "s3cret-pass")]
    assert len(sink.mails) == 1


async def test_refused_connection_raises_mail_error_without_the_password() -> None:
    settings = smtp_settings(
        free_port(), smtp_username="switchboard", smtp_password="s3cret-pass", smtp_timeout=2.0
    )
    started = time.monotonic()

    with pytest.raises(mail.MailError) as raised:
        await mail.SMTPMailer(settings).send(MESSAGE)

    assert time.monotonic() - started < 2.0
    assert "s3cret-pass" not in str(raised.value)
    assert raised.value.__cause__ is None


@pytest.fixture
def restore_root_handlers() -> Iterator[None]:
    """log.configure points the root handler at this test's capture stream; put the old one back after,
    so later tests do not log into a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_handlers")
async def test_log_mailer_writes_one_mail_event(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure("INFO", "json")
    capsys.readouterr()

    await mail.LogMailer().send(MESSAGE)

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    events = [line for line in lines if line["event"] == "mail"]
    assert len(events) == 1
    assert events[0]["to"] == MESSAGE.to
    assert events[0]["subject"] == MESSAGE.subject
    assert events[0]["body"] == MESSAGE.body
    assert events[0]["level"] == "info"


def test_mailer_for_follows_the_mail_backend() -> None:
    assert isinstance(mail.mailer_for(Settings(_env_file=None, mail_backend="log")), mail.LogMailer)
    assert isinstance(mail.mailer_for(smtp_settings(25)), mail.SMTPMailer)


async def test_current_mailer_is_the_one_init_app_stored() -> None:
    app = Quart(__name__)
    mail.init_app(app, smtp_settings(25))

    async with app.app_context():
        assert isinstance(mail.current_mailer(), mail.SMTPMailer)
        assert mail.current_mailer() is app.extensions["mailer"]
