"""Links sent by mail: email verification and password reset, each a single-use, expiring token.

Only the token's hash is stored. The mail leaves after the transaction commits, in the background.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import db, errors, identity, mail, passwords, tokens
from service.config import Settings
from service.models.sessions import MailToken
from service.models.users import User
from service.services import accounts, audit

VERIFY_EMAIL = "verify_email"
RESET_PASSWORD = "reset_password"  # noqa: S105 - a purpose name, not a password

# Where the links point: pages of the dashboard that post the token to the API.
VERIFY_PATH = "/account/verify"
RESET_PATH = "/account/reset-password"


def _issue(session: AsyncSession, user: User, purpose: str, lifetime: timedelta) -> str:
    secret = tokens.new_secret(tokens.MAIL_PREFIX)
    session.add(
        MailToken(
            user_id=user.id,
            purpose=purpose,
            token_hash=tokens.digest(secret),
            expires_at=datetime.now(UTC) + lifetime,
        )
    )
    return secret


def _link(settings: Settings, path: str, secret: str) -> str:
    return f"{settings.public_base_url.rstrip('/')}{path}?{urlencode({'token': secret})}"


async def _spend_outstanding(session: AsyncSession, user: User, purpose: str) -> None:
    """Void the user's unused links of this purpose: only the newest works (a verification link sent to
    an address the user has since changed must not confirm the new one)."""
    await session.execute(
        update(MailToken)
        .where(MailToken.user_id == user.id, MailToken.purpose == purpose, MailToken.used_at.is_(None))
        .values(used_at=datetime.now(UTC))
    )


async def _live_user_by_email(session: AsyncSession, email: str) -> User | None:
    query = select(User).where(func.lower(User.email) == email.lower(), User.deleted_at.is_(None))
    user = (await session.execute(query)).scalar_one_or_none()
    return user if user is not None and user.is_active else None


async def _mail_link(
    session: AsyncSession,
    mailer: mail.Mailer,
    link: tuple[Settings, str, str, timedelta],
    user: User,
    subject: str,
    text: str,
) -> None:
    """Issue a fresh link (voiding older ones of its purpose) and mail it once the transaction commits.

    `link` is (settings, path, purpose, lifetime); `text` has `{name}` and `{link}` placeholders.
    """
    settings, path, purpose, lifetime = link
    await _spend_outstanding(session, user, purpose)
    url = _link(settings, path, _issue(session, user, purpose, lifetime))
    message = mail.Message(to=user.email, subject=subject, body=text.format(name=user.username, link=url))
    db.after_commit(session, _sender(mailer, message))


async def send_verification(
    session: AsyncSession, settings: Settings, mailer: mail.Mailer, user: User
) -> None:
    """Mail the user a link that confirms their address (sent once the transaction commits)."""
    hours = settings.email_verification_ttl_hours
    await _mail_link(
        session,
        mailer,
        (settings, VERIFY_PATH, VERIFY_EMAIL, timedelta(hours=hours)),
        user,
        "Confirm your email address",
        "Hello {name},\n\nconfirm your email address for Switchboard by opening this link:\n\n{link}\n\n"
        f"It works once and expires in {hours} hours. If you did not create an account, ignore this mail.\n",
    )


async def request_password_reset(
    session: AsyncSession, settings: Settings, mailer: mail.Mailer, email: str
) -> None:
    """Mail a reset link when a live, active user has this address; otherwise do nothing, silently.

    The caller answers the same either way, so the endpoint does not reveal who has an account.
    """
    user = await _live_user_by_email(session, email)
    if user is None:
        return
    minutes = settings.password_reset_ttl_minutes
    await _mail_link(
        session,
        mailer,
        (settings, RESET_PATH, RESET_PASSWORD, timedelta(minutes=minutes)),
        user,
        "Reset your password",
        "Hello {name},\n\nsomeone asked to reset your Switchboard password. To choose a new one, open "
        f"this link:\n\n{{link}}\n\nIt works once and expires in {minutes} minutes. If it was not you, "
        "ignore this mail: your password stays as it is.\n",
    )


def _sender(mailer: mail.Mailer, message: mail.Message) -> db.AfterCommit:
    async def send() -> None:
        mail.send_soon(mailer, message)

    return send


async def _consume(session: AsyncSession, purpose: str, secret: str) -> User:
    """Spend a mailed token and return its user.

    Raises:
        MalformedRequest: unknown, used or expired token, or its user is gone.
    """
    invalid = errors.MalformedRequest("The link is invalid or has expired; ask for a new one.")
    now = datetime.now(UTC)
    stored = (
        await session.execute(
            select(MailToken).where(
                MailToken.token_hash == tokens.digest(secret), MailToken.purpose == purpose
            )
        )
    ).scalar_one_or_none()
    if stored is None or stored.used_at is not None or stored.expires_at <= now:
        raise invalid
    # Spend it only if no concurrent request spent it first.
    spent = await session.execute(
        update(MailToken).where(MailToken.id == stored.id, MailToken.used_at.is_(None)).values(used_at=now)
    )
    user = await session.get(User, stored.user_id)
    if spent.rowcount != 1 or user is None or user.is_deleted:  # type: ignore[attr-defined]
        raise invalid
    return user


async def reset_password(session: AsyncSession, secret: str, password: str, client: identity.Client) -> User:
    """Set a new password from a reset link and end every login session of the user.

    Raises:
        MalformedRequest: the link is invalid, used or expired.
        WeakPassword: the password breaks the policy.
    """
    accounts.require_strong(password)
    user = await _consume(session, RESET_PASSWORD, secret)
    user.password_hash = await passwords.hash_password(password)
    await _spend_outstanding(session, user, RESET_PASSWORD)
    # Whoever could read the mail proved they own the address.
    user.email_verified_at = user.email_verified_at or datetime.now(UTC)
    await accounts.end_sessions(session, user.id, "password_reset")
    audit.record(
        session, audit.PASSWORD_RESET, actor_id=user.id, target_type="user", target_id=user.id, ip=client.ip
    )
    return user


async def verify_email(session: AsyncSession, secret: str, client: identity.Client) -> User:
    """Mark the user's address as confirmed.

    Raises:
        MalformedRequest: the link is invalid, used or expired.
    """
    user = await _consume(session, VERIFY_EMAIL, secret)
    user.email_verified_at = datetime.now(UTC)
    audit.record(
        session, audit.EMAIL_VERIFIED, actor_id=user.id, target_type="user", target_id=user.id, ip=client.ip
    )
    return user


async def resend_verification(
    session: AsyncSession, settings: Settings, mailer: mail.Mailer, email: str
) -> None:
    """Send a new verification link when a live, unverified user has this address; else nothing."""
    user = await _live_user_by_email(session, email)
    if user is not None and user.email_verified_at is None:
        await send_verification(session, settings, mailer, user)
