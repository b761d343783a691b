"""The notification queue over HTTP: operators see failures and queue them again; viewers may not."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from service import background, db
from service.application import Switchboard
from service.config import Settings
from service.services import notifications

from ..accounts import admin_headers, signed_in
from ..conftest import AppMaker
from ..webhook_receiver import Receiver, serving

NOTIFICATIONS = "/api/v1/notifications"
SECRET = "a-webhook-secret-of-at-least-32-characters"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving() as state:
        yield state


async def refusing_app(make_app: AppMaker, receiver: Receiver) -> Switchboard:
    """Webhook and log on; the webhook aims at loopback without WEBHOOK_ALLOW_PRIVATE, so it fails for
    good on its first attempt. The loops are stopped: rounds run when the test says."""
    app = await make_app(
        notify_channels="log,webhook",
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_allow_private=False,
    )
    await background.loops_of(app).stop()
    return app


async def enqueue(app: Switchboard, kind: str) -> None:
    settings: Settings = app.config["SETTINGS"]
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        notifications.enqueue(session, settings, kind, {"agent": {"name": "crawler-1"}})
        await db.commit(session)


async def deliver(app: Switchboard) -> None:
    await notifications.deliver_due(app.extensions["db"], app.extensions["notifiers"], app.config["SETTINGS"])


async def test_operators_list_failures_and_queue_them_again(make_app: AppMaker, receiver: Receiver) -> None:
    app = await refusing_app(make_app, receiver)
    client = app.test_client()
    operator = await signed_in(client, "opal", "operator", app)
    await enqueue(app, "assignment.assigned")
    await enqueue(app, "agent.offline")
    await deliver(app)

    response = await client.get(f"{NOTIFICATIONS}?status=failed", headers=operator)
    assert response.status_code == 200
    body = await response.get_json()
    assert body["pagination"]["total_items"] == 2
    newest, oldest = body["data"]
    assert (newest["kind"], oldest["kind"]) == ("agent.offline", "assignment.assigned")
    assert newest["channel"] == "webhook"
    assert newest["status"] == "failed"
    assert newest["attempts"] == 1
    assert "private or reserved address" in newest["last_error"]
    assert newest["payload"] == {"agent": {"name": "crawler-1"}}
    assert newest["next_attempt_at"]
    assert newest["delivered_at"] is None

    retried = await client.post(f"{NOTIFICATIONS}/{newest['id']}/retry", headers=operator)
    assert retried.status_code == 200
    again = (await retried.get_json())["data"]
    assert again["status"] == "queued"
    assert again["attempts"] == 0
    assert again["last_error"] == newest["last_error"]  # kept until the next attempt replaces it
    queued = await (await client.get(f"{NOTIFICATIONS}?status=queued", headers=operator)).get_json()
    assert [item["id"] for item in queued["data"]] == [newest["id"]]

    # Fixed: the webhook may reach the receiver now. The retried row goes out; the other stays failed.
    fixed = await make_app(
        notify_channels="log,webhook",
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_allow_private=True,
    )
    await background.loops_of(fixed).stop()
    await deliver(fixed)
    assert receiver.delivery_ids() == [newest["id"]]
    delivered = await (await client.get(f"{NOTIFICATIONS}?channel=webhook", headers=operator)).get_json()
    assert [item["status"] for item in delivered["data"]] == ["delivered", "failed"]


async def test_filters_and_pages(make_app: AppMaker, receiver: Receiver) -> None:
    app = await refusing_app(make_app, receiver)
    client = app.test_client()
    admin = await admin_headers(app, client)
    for kind in ("agent.offline", "assignment.assigned", "agent.offline"):
        await enqueue(app, kind)
    await deliver(app)

    everything = await (await client.get(f"{NOTIFICATIONS}?per_page=4", headers=admin)).get_json()
    assert everything["pagination"]["total_items"] == 6
    assert everything["pagination"]["has_next"] is True
    assert len(everything["data"]) == 4
    logs = await (await client.get(f"{NOTIFICATIONS}?channel=log", headers=admin)).get_json()
    assert {(item["channel"], item["status"]) for item in logs["data"]} == {("log", "delivered")}
    offline = await (
        await client.get(f"{NOTIFICATIONS}?kind=agent.offline&status=failed", headers=admin)
    ).get_json()
    assert offline["pagination"]["total_items"] == 2
    bad = await client.get(f"{NOTIFICATIONS}?status=lost", headers=admin)
    assert bad.status_code == 422
    assert (await bad.get_json())["error"]["code"] == "VALIDATION_ERROR"


async def test_only_failed_notifications_can_be_retried(make_app: AppMaker, receiver: Receiver) -> None:
    app = await refusing_app(make_app, receiver)
    client = app.test_client()
    admin = await admin_headers(app, client)
    await enqueue(app, "agent.offline")
    await deliver(app)
    [delivered] = (await (await client.get(f"{NOTIFICATIONS}?channel=log", headers=admin)).get_json())["data"]
    conflict = await client.post(f"{NOTIFICATIONS}/{delivered['id']}/retry", headers=admin)
    assert conflict.status_code == 409
    assert (await conflict.get_json())["error"]["code"] == "CONFLICT"
    missing = await client.post(f"{NOTIFICATIONS}/0190aa00-0000-7000-8000-000000000001/retry", headers=admin)
    assert missing.status_code == 404
    assert (await missing.get_json())["error"]["code"] == "NOT_FOUND"


async def test_viewers_may_not_see_or_retry(app: Switchboard) -> None:
    client = app.test_client()
    viewer = await signed_in(client, "vera", "viewer", app)
    listed = await client.get(NOTIFICATIONS, headers=viewer)
    assert listed.status_code == 403
    assert (await listed.get_json())["error"]["code"] == "FORBIDDEN"
    retried = await client.post(f"{NOTIFICATIONS}/0190aa00-0000-7000-8000-000000000001/retry", headers=viewer)
    assert retried.status_code == 403
    assert (await client.get(NOTIFICATIONS)).status_code == 401


async def test_a_retry_wakes_the_running_loop(make_app: AppMaker, receiver: Receiver) -> None:
    """Through the real loop: the retry's commit wakes delivery, which does not wait for the next poll."""
    app = await make_app(
        notify_channels="webhook",
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_allow_private=True,
        notify_interval=3600,
    )
    receiver.fail_first, receiver.fail_status = 1, 400  # the first attempt fails for good
    client = app.test_client()
    admin = await admin_headers(app, client)
    await enqueue(app, "agent.offline")
    failed: list[dict[str, object]] = []
    async with asyncio.timeout(5):
        while not failed:
            response = await client.get(f"{NOTIFICATIONS}?status=failed", headers=admin)
            failed = (await response.get_json())["data"]
            await asyncio.sleep(0.02)
    assert (await client.post(f"{NOTIFICATIONS}/{failed[0]['id']}/retry", headers=admin)).status_code == 200
    async with asyncio.timeout(5):
        while len(receiver.requests) < 2:
            await asyncio.sleep(0.02)
    assert receiver.delivery_ids() == [failed[0]["id"]] * 2
