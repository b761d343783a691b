"""Mail backends: the SMTP mailer against a real local SMTP sink (aiosmtpd), the log mailer, the choice."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from quart import Quart

from service import log, mail
from service.config import Settings

from .smtp_sink import Sink, free_port

SENDER = "Switchboard <noreply@switchboard.test>"
MESSAGE = mail.Message(
    to="ann@example.test",
    subject="Reset your password",
    body="Open http://127.0.0.1:8000/reset?token=one-time-abc to choose a new password.\n",
)


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


@pytest.mark.usefixtures("restore_root_handlers")
async def test_log_mailer_withholds_links_in_production(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure("INFO", "json")
    capsys.readouterr()
    production = Settings(_env_file=None, app_env="production", secret_key="x" * 40, mail_backend="log")  # type: ignore[call-arg]

    await mail.mailer_for(production).send(MESSAGE)

    err = capsys.readouterr().err
    assert "one-time-abc" not in err
    assert "withheld" in err


def test_mailer_for_follows_the_mail_backend() -> None:
    assert isinstance(mail.mailer_for(Settings(_env_file=None, mail_backend="log")), mail.LogMailer)
    assert isinstance(mail.mailer_for(smtp_settings(25)), mail.SMTPMailer)


async def test_current_mailer_is_the_one_init_app_stored() -> None:
    app = Quart(__name__)
    mail.init_app(app, smtp_settings(25))

    async with app.app_context():
        assert isinstance(mail.current_mailer(), mail.SMTPMailer)
        assert mail.current_mailer() is app.extensions["mailer"]
