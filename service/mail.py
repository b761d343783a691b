"""Outgoing mail: the Message record, the Mailer interface and its two backends (log and SMTP).

`mailer_for(settings)` picks the backend named by MAIL_BACKEND; `init_app` keeps it in
`app.extensions["mailer"]`, where `current_mailer()` finds it during a request.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Protocol, assert_never

from quart import Quart, current_app

from service import log
from service.config import Settings

logger = log.get(__name__)


class MailError(Exception):
    """A mail could not be handed to the SMTP server; the message never contains the password."""


@dataclass(frozen=True)
class Message:
    """One plain-text mail to one recipient."""

    to: str
    subject: str
    body: str


class Mailer(Protocol):
    async def send(self, message: Message) -> None:
        """Deliver the message, or raise MailError."""


class LogMailer:
    """Writes each mail to the log instead of sending it: the development default.

    In production the body is withheld: it carries one-time links (password reset, email verification),
    and tokens do not belong in production logs. Configure SMTP there to actually send mail.
    """

    def __init__(self, show_body: bool = True) -> None:
        self._show_body = show_body

    async def send(self, message: Message) -> None:
        # The redaction in service.log matches key names only, so `body` passes through on purpose when shown.
        body = message.body if self._show_body else "(withheld in production; set MAIL_BACKEND=smtp)"
        logger.info("mail", to=message.to, subject=message.subject, body=body)


class SMTPMailer:
    """Sends through an SMTP server with the standard library, in a thread so the event loop never waits."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def send(self, message: Message) -> None:
        """Hand the message to the SMTP server.

        Raises:
            MailError: the server could not be reached, refused the login or refused the mail.
        """
        await asyncio.to_thread(self._deliver, self._build(message))

    def _build(self, message: Message) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self._settings.mail_from
        mail["To"] = message.to
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(localtime=False, usegmt=True)
        # The sender's domain, not make_msgid's default: that calls socket.getfqdn(), a DNS lookup per mail.
        domain = parseaddr(self._settings.mail_from)[1].rpartition("@")[2] or "localhost"
        mail["Message-ID"] = make_msgid(domain=domain)
        mail.set_content(message.body)
        return mail

    def _deliver(self, mail: EmailMessage) -> None:
        # No local holds the Settings object: error reporters that capture frame locals (Sentry) would
        # otherwise show its repr, password included.
        host, port = self._settings.smtp_host, self._settings.smtp_port
        try:
            with smtplib.SMTP(host, port, timeout=self._settings.smtp_timeout) as smtp:
                if self._settings.smtp_starttls:
                    # smtplib's own default context does not verify the certificate; this one does.
                    smtp.starttls(context=ssl.create_default_context())
                if self._settings.smtp_username:
                    smtp.login(self._settings.smtp_username, self._settings.smtp_password or "")
                smtp.send_message(mail)
        except (smtplib.SMTPException, OSError) as error:
            # `from None`: the cause's text is the server's unscrubbed reply, which could echo credentials.
            raise MailError(f"sending mail via {host}:{port} failed: {self._describe(error)}") from None

    def _describe(self, error: Exception) -> str:
        text = f"{type(error).__name__}: {error}"
        if self._settings.smtp_password:
            text = text.replace(self._settings.smtp_password, log.REDACTED)
        return text


def mailer_for(settings: Settings) -> Mailer:
    """The backend MAIL_BACKEND names."""
    match settings.mail_backend:
        case "log":
            return LogMailer(show_body=not settings.is_production)
        case "smtp":
            return SMTPMailer(settings)
        case _:
            assert_never(settings.mail_backend)


# Mails in flight: the loop keeps only weak references to tasks, and shutdown waits for these.
_in_flight: set[asyncio.Task[None]] = set()


def send_soon(mailer: Mailer, message: Message) -> None:
    """Send in the background: the request that asked for the mail does not wait for SMTP.

    Besides speed this keeps timing equal: /auth/password/forgot answers as fast for an unknown address
    as for a known one. A failure is logged; the user can ask again.
    """
    task = asyncio.get_running_loop().create_task(_deliver(mailer, message))
    _in_flight.add(task)
    task.add_done_callback(_in_flight.discard)


async def _deliver(mailer: Mailer, message: Message) -> None:
    try:
        await mailer.send(message)
    except MailError as error:
        logger.warning("mail_not_sent", subject=message.subject, error=str(error))


async def drain(within: float) -> None:
    """Wait (up to `within` seconds) for mails still being sent."""
    if _in_flight:
        await asyncio.wait(set(_in_flight), timeout=within)


def init_app(app: Quart, settings: Settings) -> None:
    # Building a mailer opens no connection (SMTP connects per send), so it can happen at app creation.
    app.extensions["mailer"] = mailer_for(settings)

    @app.after_serving
    async def _finish_sending() -> None:
        await drain(settings.smtp_timeout)


def current_mailer() -> Mailer:
    """The application's mailer; call inside an app context."""
    mailer: Mailer = current_app.extensions["mailer"]
    return mailer
