"""Links by mail, through the real SMTP path into a local sink: email verification and password reset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from service import db
from service.application import Switchboard
from service.models.sessions import MailToken

from ..accounts import PASSWORD, bearer, login, register
from ..conftest import AppMaker
from ..smtp_sink import Sink

NEW_PASSWORD = "Brand-New-Kettle-7"


async def _mailing_app(make_app: AppMaker, sink: Sink, **overrides: object) -> Switchboard:
    return await make_app(
        mail_backend="smtp",
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        public_base_url="https://switchboard.example",
        **overrides,
    )


async def test_register_mails_a_link_that_verifies_once(make_app: AppMaker, sink: Sink) -> None:
    app = await _mailing_app(make_app, sink, require_email_verification=True)
    client = app.test_client()
    await register(client, "eve")
    token = await sink.wait_for_link("eve@example.com", "https://switchboard.example/account/verify")
    refused = await client.post("/auth/login", json={"username": "eve", "password": PASSWORD})
    assert refused.status_code == 401  # REQUIRE_EMAIL_VERIFICATION: not before the link is opened
    verified = await client.post("/auth/verify", json={"token": token})
    assert verified.status_code == 200
    pair = await login(client, "eve")
    me = await (await client.get("/auth/me", headers=bearer(pair["access_token"]))).get_json()
    assert me["data"]["email_verified"] is True
    again = await client.post("/auth/verify", json={"token": token})
    assert again.status_code == 400
    assert (await again.get_json())["error"]["code"] == "VALIDATION_ERROR"


async def test_resend_voids_the_older_link(make_app: AppMaker, sink: Sink) -> None:
    app = await _mailing_app(make_app, sink)
    client = app.test_client()
    await register(client, "eve")
    first = await sink.wait_for_link("eve@example.com", "/account/verify")
    for email in ("eve@example.com", "nobody@example.com"):
        response = await client.post("/auth/verify/resend", json={"email": email})
        assert response.status_code == 202
    second = await sink.wait_for_link("eve@example.com", "/account/verify", not_=first)
    assert (await client.post("/auth/verify", json={"token": first})).status_code == 400
    assert (await client.post("/auth/verify", json={"token": second})).status_code == 200


async def test_forgot_answers_the_same_for_anyone(make_app: AppMaker, sink: Sink) -> None:
    app = await _mailing_app(make_app, sink)
    client = app.test_client()
    await register(client, "eve")
    await sink.wait_for_link("eve@example.com", "/account/verify")
    known = await client.post("/auth/password/forgot", json={"email": "EVE@example.com"})
    unknown = await client.post("/auth/password/forgot", json={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 202
    known_body, unknown_body = await known.get_json(), await unknown.get_json()
    for body in (known_body, unknown_body):
        del body["metadata"]
    assert known_body == unknown_body
    await sink.wait_for_link("eve@example.com", "/account/reset-password")
    assert not [m for m in sink.mails if m["To"] == "nobody@example.com"]


async def test_reset_sets_the_password_once_and_ends_every_session(make_app: AppMaker, sink: Sink) -> None:
    app = await _mailing_app(make_app, sink)
    client = app.test_client()
    await register(client, "eve")
    pair = await login(client, "eve")
    await client.post("/auth/password/forgot", json={"email": "eve@example.com"})
    token = await sink.wait_for_link("eve@example.com", "/account/reset-password")
    weak = await client.post("/auth/password/reset", json={"token": token, "password": "short"})
    assert weak.status_code == 400
    assert (await weak.get_json())["error"]["code"] == "WEAK_PASSWORD"
    reset = await client.post("/auth/password/reset", json={"token": token, "password": NEW_PASSWORD})
    assert reset.status_code == 200
    assert (await client.get("/auth/me", headers=bearer(pair["access_token"]))).status_code == 401
    assert (
        await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    ).status_code == 401
    assert (
        await client.post("/auth/login", json={"username": "eve", "password": PASSWORD})
    ).status_code == 401
    await login(client, "eve", NEW_PASSWORD)
    reused = await client.post("/auth/password/reset", json={"token": token, "password": "Another-Kettle-8"})
    assert reused.status_code == 400


async def test_reset_links_expire(make_app: AppMaker, sink: Sink) -> None:
    app = await _mailing_app(make_app, sink)
    client = app.test_client()
    await register(client, "eve")
    await client.post("/auth/password/forgot", json={"email": "eve@example.com"})
    token = await sink.wait_for_link("eve@example.com", "/account/reset-password")
    database: db.Database = app.extensions["db"]
    async with database.sessionmaker() as session:
        await session.execute(update(MailToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        await session.commit()
    expired = await client.post("/auth/password/reset", json={"token": token, "password": NEW_PASSWORD})
    assert expired.status_code == 400
    forged = await client.post("/auth/password/reset", json={"token": "sbm_forged", "password": NEW_PASSWORD})
    assert forged.status_code == 400


async def test_an_email_change_sends_a_new_link(make_app: AppMaker, sink: Sink) -> None:
    app = await _mailing_app(make_app, sink)
    client = app.test_client()
    user = await register(client, "eve")
    old_link = await sink.wait_for_link("eve@example.com", "/account/verify")
    headers = bearer((await login(client, "eve"))["access_token"])
    changed = await client.patch(
        f"/api/v1/users/{user['id']}",
        json={"email": "eve.new@example.com", "current_password": PASSWORD},
        headers=headers,
    )
    assert changed.status_code == 200
    new_link = await sink.wait_for_link("eve.new@example.com", "/account/verify")
    # The link mailed to the old address must not confirm the new one.
    assert (await client.post("/auth/verify", json={"token": old_link})).status_code == 400
    assert (await client.post("/auth/verify", json={"token": new_link})).status_code == 200
