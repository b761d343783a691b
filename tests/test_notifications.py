"""Notifications: queued with the change that causes them, delivered in the background on each channel,
retried with backoff, refused for private webhook targets, never sent twice by concurrent deliverers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from service import background, db, notifiers
from service.application import Switchboard
from service.config import ConfigError, Settings
from service.models.notifications import DELIVERED, FAILED, QUEUED, Notification
from service.services import notifications

from .conftest import AppMaker
from .smtp_sink import Sink, free_port
from .webhook_receiver import Receiver, serving

SECRET = "a-webhook-secret-of-at-least-32-characters"
PAYLOAD = {"agent": {"id": "0190aa00-0000-7000-8000-000000000001", "name": "crawler-1"}, "requeued": []}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving() as state:
        yield state


async def quiet(app: Switchboard) -> Switchboard:
    """Stop the app's background loops: rounds then run only when the test calls `deliver`."""
    await background.loops_of(app).stop()
    return app


async def webhook_app(make_app: AppMaker, receiver: Receiver, **overrides: object) -> Switchboard:
    values: dict[str, object] = {
        "notify_channels": "webhook",
        "webhook_url": receiver.url,
        "webhook_secret": SECRET,
        "webhook_allow_private": True,  # the receiver is on loopback
        "webhook_timeout": 2.0,
    }
    return await quiet(await make_app(**(values | overrides)))


def settings_of(app: Switchboard) -> Settings:
    settings: Settings = app.config["SETTINGS"]
    return settings


async def enqueue(
    app: Switchboard, kind: str = "agent.offline", payload: dict[str, Any] | None = None
) -> None:
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        notifications.enqueue(session, settings_of(app), kind, payload or PAYLOAD)
        await db.commit(session)


async def deliver(app: Switchboard, limit: int = 50) -> bool:
    return await notifications.deliver_due(
        app.extensions["db"], app.extensions["notifiers"], settings_of(app), limit
    )


async def rows(app: Switchboard) -> list[Notification]:
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        found = await session.scalars(select(Notification).order_by(Notification.created_at))
        return list(found)


async def only_row(app: Switchboard) -> Notification:
    [row] = await rows(app)
    return row


async def make_due(app: Switchboard) -> None:
    """Skip the backoff wait (or an expired lease) by making every queued row due now."""
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session, session.begin():
        await session.execute(
            update(Notification)
            .where(Notification.status == QUEUED)
            .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        )


# Channels ----------------------------------------------------------------------------------------------


async def test_the_log_channel_writes_one_line(
    make_app: AppMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    app = await quiet(await make_app(log_format="json"))
    await enqueue(app, "assignment.assigned", {"assignment": {"id": "a1"}})
    capsys.readouterr()
    assert await deliver(app) is False
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    [line] = [line for line in lines if line["event"] == "notification"]
    row = await only_row(app)
    assert line["kind"] == "assignment.assigned"
    assert line["payload"] == {"assignment": {"id": "a1"}}
    assert line["id"] == str(row.id)
    assert row.channel == "log"
    assert row.status == DELIVERED
    assert row.attempts == 1
    assert row.delivered_at is not None


async def test_the_email_channel_mails_notify_email_to(make_app: AppMaker, sink: Sink) -> None:
    app = await quiet(
        await make_app(
            notify_channels="email",
            notify_email_to="ops@example.com",
            mail_backend="smtp",
            smtp_host="127.0.0.1",
            smtp_port=sink.port,
        )
    )
    await enqueue(app, "agent.offline")
    await deliver(app)
    [mail] = sink.mails
    assert mail["To"] == "ops@example.com"
    assert mail["Subject"] == "[Switchboard] agent.offline"
    body = mail.get_payload(decode=True).decode()
    assert "crawler-1" in body
    assert str((await only_row(app)).id) in body
    assert (await only_row(app)).status == DELIVERED


async def test_an_unreachable_mail_server_is_retried(make_app: AppMaker) -> None:
    app = await quiet(
        await make_app(
            notify_channels="email",
            notify_email_to="ops@example.com",
            mail_backend="smtp",
            smtp_host="127.0.0.1",
            smtp_port=free_port(),  # nothing listens there
            smtp_timeout=2.0,
        )
    )
    await enqueue(app)
    await deliver(app)
    row = await only_row(app)
    assert row.status == QUEUED
    assert row.attempts == 1
    assert row.last_error is not None
    assert "sending mail via 127.0.0.1" in row.last_error
    assert row.next_attempt_at > datetime.now(UTC)


async def test_the_webhook_is_signed_over_timestamp_and_body(make_app: AppMaker, receiver: Receiver) -> None:
    app = await webhook_app(make_app, receiver)
    await enqueue(app, "assignment.assigned", {"assignment": {"id": "a1", "agent_id": "g1"}})
    await deliver(app)
    row = await only_row(app)
    assert row.status == DELIVERED
    [request] = receiver.requests
    assert request.path == "/hooks/switchboard"
    headers = request.headers
    assert headers["content-type"] == "application/json"
    assert headers["x-switchboard-event"] == "assignment.assigned"
    assert headers["x-switchboard-delivery"] == str(row.id)
    timestamp = headers["x-switchboard-timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    # What a receiver does: recompute the HMAC over "{timestamp}.{body}" and compare in constant time.
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-switchboard-signature"], f"sha256={expected}")
    forged = hmac.new(b"another-secret", f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
    assert headers["x-switchboard-signature"] != f"sha256={forged}"
    replayed = hmac.new(SECRET.encode(), b"1." + request.body, hashlib.sha256).hexdigest()
    assert headers["x-switchboard-signature"] != f"sha256={replayed}"
    body = json.loads(request.body)
    assert body == {
        "kind": "assignment.assigned",
        "payload": {"assignment": {"id": "a1", "agent_id": "g1"}},
        "id": str(row.id),
        "created_at": body["created_at"],
    }
    assert datetime.fromisoformat(body["created_at"]) == row.created_at


async def test_every_enabled_channel_gets_its_own_row(
    make_app: AppMaker, receiver: Receiver, sink: Sink
) -> None:
    app = await webhook_app(
        make_app,
        receiver,
        notify_channels="log,webhook,email",
        notify_email_to="ops@example.com",
        mail_backend="smtp",
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
    )
    await enqueue(app)
    await deliver(app)
    found = await rows(app)
    assert sorted(row.channel for row in found) == ["email", "log", "webhook"]
    assert {row.status for row in found} == {DELIVERED}
    assert len(receiver.requests) == 1
    assert len(sink.mails) == 1


# Retries -----------------------------------------------------------------------------------------------


async def test_a_failing_receiver_is_retried_with_growing_delays_then_given_up(
    make_app: AppMaker, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver.fail_first = 100
    app = await webhook_app(make_app, receiver, notify_max_attempts=4, log_format="json")
    await enqueue(app)
    delays = []
    for attempt in (1, 2, 3):
        await deliver(app)
        row = await only_row(app)
        assert row.status == QUEUED
        assert row.attempts == attempt
        assert row.last_error == "HTTP 503 from the receiver"
        delays.append((row.next_attempt_at - row.updated_at).total_seconds())
        assert await deliver(app) is False  # not due yet: nothing is sent
        assert len(receiver.requests) == attempt
        await make_due(app)
    # 2^attempts seconds plus up to a quarter of jitter: each wait longer than the one before.
    assert 2 <= delays[0] <= 2.5
    assert 4 <= delays[1] <= 5
    assert 8 <= delays[2] <= 10
    await deliver(app)
    row = await only_row(app)
    assert row.status == FAILED
    assert row.attempts == 4
    assert row.last_error == "HTTP 503 from the receiver"
    assert row.delivered_at is None
    # The same delivery id every time, so a receiver can tell a retry from a new event.
    assert receiver.delivery_ids() == [str(row.id)] * 4
    await make_due(app)
    await deliver(app)
    assert len(receiver.requests) == 4
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    failures = [line for line in logged if line["event"] in ("notification_retry", "notification_failed")]
    assert [line["event"] for line in failures] == ["notification_retry"] * 3 + ["notification_failed"]
    assert {line["id"] for line in failures} == {str(row.id)}
    assert SECRET not in json.dumps(logged)


async def test_a_receiver_that_recovers_gets_the_notification(make_app: AppMaker, receiver: Receiver) -> None:
    receiver.fail_first = 2
    app = await webhook_app(make_app, receiver)
    await enqueue(app)
    for _ in range(3):
        await make_due(app)
        await deliver(app)
    row = await only_row(app)
    assert row.status == DELIVERED
    assert row.attempts == 3
    assert row.last_error is None
    assert len(receiver.requests) == 3


@pytest.mark.parametrize(
    ("status", "retried"), [(400, False), (404, False), (410, False), (408, True), (429, True)]
)
async def test_client_errors_other_than_408_and_429_are_not_retried(
    make_app: AppMaker, receiver: Receiver, status: int, retried: bool
) -> None:
    receiver.fail_first, receiver.fail_status = 1, status
    app = await webhook_app(make_app, receiver)
    await enqueue(app)
    await deliver(app)
    row = await only_row(app)
    assert row.status == (QUEUED if retried else FAILED)
    assert row.attempts == 1
    assert row.last_error == f"HTTP {status} from the receiver"


async def test_a_timeout_is_retried(make_app: AppMaker, receiver: Receiver) -> None:
    receiver.delay = 1.0
    app = await webhook_app(make_app, receiver, webhook_timeout=0.2)
    await enqueue(app)
    await deliver(app)
    row = await only_row(app)
    assert row.status == QUEUED
    assert row.last_error == "timed out after 0.2 s"


async def test_a_refused_connection_is_retried(make_app: AppMaker, receiver: Receiver) -> None:
    app = await webhook_app(make_app, receiver, webhook_url=f"http://127.0.0.1:{free_port()}/hook")
    await enqueue(app)
    await deliver(app)
    row = await only_row(app)
    assert row.status == QUEUED
    assert row.last_error is not None
    assert row.last_error.startswith("ConnectError")


# Private targets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_loopback_target_is_refused_unless_allowed(
    make_app: AppMaker, receiver: Receiver, host: str
) -> None:
    url = receiver.url.replace("127.0.0.1", host)
    app = await webhook_app(make_app, receiver, webhook_url=url, webhook_allow_private=False)
    await enqueue(app)
    await deliver(app)
    row = await only_row(app)
    assert row.status == FAILED  # not retryable: the address will not become public
    assert row.attempts == 1
    assert row.last_error is not None
    assert "private or reserved address" in row.last_error
    assert "WEBHOOK_ALLOW_PRIVATE" in row.last_error
    assert receiver.requests == []


async def test_a_loopback_target_is_allowed_when_configured(make_app: AppMaker, receiver: Receiver) -> None:
    url = receiver.url.replace("127.0.0.1", "localhost")
    app = await webhook_app(make_app, receiver, webhook_url=url, webhook_allow_private=True)
    await enqueue(app)
    await deliver(app)
    assert (await only_row(app)).status == DELIVERED
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.5",
        "172.16.3.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",  # noqa: S104 - an address to refuse, not to bind
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::",
    ],
)
async def test_private_and_reserved_addresses_are_refused(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    notifier = notifiers.WebhookNotifier(f"http://{host}:9/hook", SECRET, 0.5, allow_private=False)
    delivery = notifiers.Delivery(uuid.uuid4(), "agent.offline", {}, datetime.now(UTC))
    with pytest.raises(notifiers.DeliveryFailed) as raised:
        await notifier.send(delivery)
    assert raised.value.retryable is False
    assert "private or reserved" in raised.value.reason
    await notifier.close()


# The queue ---------------------------------------------------------------------------------------------


async def test_a_rolled_back_change_enqueues_nothing(make_app: AppMaker, receiver: Receiver) -> None:
    app = await webhook_app(make_app, receiver, notify_channels="log,webhook")
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        notifications.enqueue(session, settings_of(app), "agent.offline", PAYLOAD)
        await session.flush()
        await session.rollback()
    assert await rows(app) == []
    assert await deliver(app) is False
    assert receiver.requests == []


async def test_payloads_are_stored_as_json(make_app: AppMaker) -> None:
    app = await quiet(await make_app())
    agent_id = uuid.uuid4()
    await enqueue(app, payload={"agent_id": agent_id, "at": datetime(2026, 1, 1, tzinfo=UTC)})
    assert (await only_row(app)).payload == {"agent_id": str(agent_id), "at": "2026-01-01T00:00:00Z"}


async def test_no_channels_means_no_rows(make_app: AppMaker) -> None:
    app = await quiet(await make_app(notify_channels=""))
    await enqueue(app)
    assert await rows(app) == []
    assert app.extensions["notifiers"] == {}
    assert await deliver(app) is False


async def test_rows_of_a_channel_turned_off_wait(make_app: AppMaker) -> None:
    """Queued for email, then email is turned off: the row stays queued, untouched, until it is back."""
    app = await quiet(await make_app(notify_channels="log"))
    database: db.Database = app.extensions["db"]
    with_email = settings_of(app).model_copy(update={"notify_channels": ["log", "email"]})
    async with database.sessionmaker() as session:
        notifications.enqueue(session, with_email, "agent.offline", PAYLOAD)
        await db.commit(session)
    await deliver(app)
    by_channel = {row.channel: row for row in await rows(app)}
    assert by_channel["log"].status == DELIVERED
    assert by_channel["email"].status == QUEUED
    assert by_channel["email"].attempts == 0


async def test_a_full_batch_asks_for_another_round(make_app: AppMaker, receiver: Receiver) -> None:
    app = await webhook_app(make_app, receiver)
    for _ in range(5):
        await enqueue(app)
    assert await deliver(app, limit=3) is True
    assert await deliver(app, limit=3) is False
    assert sorted(receiver.delivery_ids()) == sorted(str(row.id) for row in await rows(app))
    assert {row.status for row in await rows(app)} == {DELIVERED}


async def test_a_round_records_its_deliveries_but_not_a_row_claimed_again_meanwhile(
    make_app: AppMaker, receiver: Receiver
) -> None:
    """A round records every delivery at its end, in one statement, guarded by each row's attempt count:
    a row another process claimed again during the round (its lease ran out) keeps that claim."""
    app = await webhook_app(make_app, receiver)
    for n in range(3):
        await enqueue(app, payload={"n": n})
    reclaimed = (await rows(app))[0].id
    database: db.Database = app.extensions["db"]
    sent: list[str] = []

    class ReclaimingNotifier:
        async def send(self, delivery: notifiers.Delivery) -> None:
            sent.append(str(delivery.id))
            if delivery.id == reclaimed:  # as if its lease ended and another process claimed it
                async with database.sessionmaker() as session, session.begin():
                    await session.execute(
                        update(Notification)
                        .where(Notification.id == reclaimed)
                        .values(attempts=Notification.attempts + 1)
                    )

    assert (
        await notifications.deliver_due(database, {"webhook": ReclaimingNotifier()}, settings_of(app))
        is False
    )
    assert len(sent) == 3
    by_id = {row.id: row for row in await rows(app)}
    assert by_id.pop(reclaimed).status == QUEUED  # the other claim decides this one
    assert {row.status for row in by_id.values()} == {DELIVERED}


async def test_concurrent_deliverers_never_send_one_notification_twice(
    make_app: AppMaker, receiver: Receiver
) -> None:
    """Two instances (each its own app, engine and pool) and several rounds each, all at once: every
    notification arrives exactly once. On PostgreSQL this runs the FOR UPDATE SKIP LOCKED path."""
    receiver.delay = 0.02
    first = await webhook_app(make_app, receiver)
    second = await webhook_app(make_app, receiver)
    for n in range(30):
        await enqueue(first, payload={"n": n})

    async def drain(app: Switchboard) -> None:
        while await deliver(app, limit=4):
            pass

    await asyncio.gather(*(drain(app) for app in (first, second, first, second, first, second)))
    ids = receiver.delivery_ids()
    assert len(ids) == 30
    assert len(set(ids)) == 30
    assert {row.status for row in await rows(first)} == {DELIVERED}
    assert {row.attempts for row in await rows(first)} == {1}


async def test_a_row_locked_by_another_claimer_is_skipped_not_waited_for(
    make_app: AppMaker, receiver: Receiver
) -> None:
    """PostgreSQL only (SQLite has no row locks): while another transaction holds one row, a round sends
    the others at once and leaves that one to whoever holds it."""
    app = await webhook_app(make_app, receiver)
    if settings_of(app).uses_sqlite:
        pytest.skip("row locks are a PostgreSQL matter")
    await enqueue(app, "agent.offline")
    await enqueue(app, "assignment.assigned")
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as holder, holder.begin():
        held = await holder.scalar(
            select(Notification).where(Notification.kind == "agent.offline").with_for_update()
        )
        assert held is not None
        async with asyncio.timeout(5):  # a FOR UPDATE without SKIP LOCKED would wait here until the end
            await deliver(app)
        assert [request.headers["x-switchboard-event"] for request in receiver.requests] == [
            "assignment.assigned"
        ]
    await deliver(app)
    assert receiver.delivery_ids()[1] == str(held.id)


class _Hang:
    """A channel whose sends never finish: the process "dies" while they are in flight."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def send(self, delivery: notifiers.Delivery) -> None:
        self.started.set()
        await asyncio.Event().wait()

    async def close(self) -> None:
        return None


async def test_a_crash_mid_send_means_a_retry_after_the_lease(make_app: AppMaker, receiver: Receiver) -> None:
    app = await webhook_app(make_app, receiver)
    await enqueue(app)
    hang = _Hang()
    crashed = asyncio.create_task(
        notifications.deliver_due(app.extensions["db"], {"webhook": hang}, settings_of(app))
    )
    await asyncio.wait_for(hang.started.wait(), 5)
    crashed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await crashed
    row = await only_row(app)
    assert row.status == QUEUED
    assert row.attempts == 1
    assert row.next_attempt_at > datetime.now(UTC) + notifications.LEASE - timedelta(minutes=1)
    # Another instance leaves it alone while the lease runs…
    assert await deliver(app) is False
    assert receiver.requests == []
    # …and sends it once the lease is over.
    await make_due(app)
    await deliver(app)
    row = await only_row(app)
    assert row.status == DELIVERED
    assert row.attempts == 2
    assert len(receiver.requests) == 1


async def test_the_running_loop_delivers_soon_after_commit(make_app: AppMaker, receiver: Receiver) -> None:
    """Through the real background loop: the commit wakes it, so delivery does not wait for the poll."""
    app = await make_app(
        notify_channels="webhook",
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_allow_private=True,
        notify_interval=3600,  # only the wake can make it run in time
    )
    await asyncio.sleep(0.05)  # the loop's first round (an empty queue) is done
    await enqueue(app, "assignment.assigned")
    async with asyncio.timeout(5):
        while not receiver.requests:
            await asyncio.sleep(0.02)
    async with asyncio.timeout(5):
        while (await only_row(app)).status != DELIVERED:
            await asyncio.sleep(0.02)
    assert receiver.requests[0].headers["x-switchboard-event"] == "assignment.assigned"


async def test_the_running_loop_polls_for_rows_committed_elsewhere(
    make_app: AppMaker, receiver: Receiver
) -> None:
    """A session the app did not make (a script's) cannot wake the loop: its next poll finds the row."""
    app = await make_app(
        notify_channels="webhook",
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_allow_private=True,
        notify_interval=0.1,
    )
    database: db.Database = app.extensions["db"]
    script_sessions = async_sessionmaker(database.engine, expire_on_commit=False)
    async with script_sessions() as session:
        notifications.enqueue(session, settings_of(app), "agent.offline", PAYLOAD)
        await db.commit(session)
    async with asyncio.timeout(5):
        while not receiver.requests:
            await asyncio.sleep(0.02)


# Settings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "fragment"),
    [
        ({"NOTIFY_CHANNELS": "webhook"}, "WEBHOOK_URL must be set"),
        (
            {"NOTIFY_CHANNELS": "webhook", "WEBHOOK_URL": "https://hooks.example.com/x"},
            "WEBHOOK_SECRET must be set",
        ),
        ({"NOTIFY_CHANNELS": "log,email"}, "NOTIFY_EMAIL_TO must be set"),
        ({"NOTIFY_CHANNELS": "log,sms"}, "NOTIFY_CHANNELS:"),
        ({"WEBHOOK_URL": "ftp://hooks.example.com"}, "WEBHOOK_URL: must be an http:// or https:// URL"),
        ({"NOTIFY_EMAIL_TO": "not-an-address"}, "NOTIFY_EMAIL_TO: must be an email address"),
        ({"NOTIFY_MAX_ATTEMPTS": "0"}, "NOTIFY_MAX_ATTEMPTS:"),
        (
            {
                "APP_ENV": "production",
                "SECRET_KEY": "s" * 40,
                "NOTIFY_CHANNELS": "webhook",
                "WEBHOOK_URL": "https://hooks.example.com/x",
                "WEBHOOK_SECRET": "too-short",
            },
            "WEBHOOK_SECRET must be at least 32 characters in production",
        ),
    ],
)
def test_notification_settings_are_checked(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], fragment: str
) -> None:
    monkeypatch.chdir("/")  # no .env file
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_environment()


def test_notification_settings_parse_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    assert Settings.from_environment().notify_channels == ["log"]
    monkeypatch.setenv("NOTIFY_CHANNELS", "")
    assert Settings.from_environment().notify_channels == []
    monkeypatch.setenv("NOTIFY_CHANNELS", " Email , log,email ")
    monkeypatch.setenv("NOTIFY_EMAIL_TO", "Ops <ops@example.com>")
    settings = Settings.from_environment()
    assert settings.notify_channels == ["email", "log"]
    assert settings.webhook_allow_private is False
    assert settings.webhook_timeout == 5.0
    assert settings.notify_max_attempts == 8
    assert settings.notify_interval == 2.0
