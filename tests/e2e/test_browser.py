"""The dashboard and the docs UI in a real browser: Debian's Chromium, driven by Playwright, against a real
hypercorn serving the test database (SQLite, or PostgreSQL and Redis when TEST_DATABASE_URL and
TEST_REDIS_URL are set).

Playwright never downloads a browser here: it launches /usr/bin/chromium (`apt-get install -y chromium`).
Without it these tests skip on a laptop and fail in CI (CI set), so CI can never pass by skipping them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, ViewportSize, expect, sync_playwright
from redis import Redis
from sqlalchemy.ext.asyncio import create_async_engine

from service.config import Settings

from ..accounts import PASSWORD
from ..conftest import ROOT, empty_database
from ..servers import create_admin, free_port, stop_group

CHROMIUM = Path("/usr/bin/chromium")
# What headless Chromium needs here (as root, no GPU), and nothing that phones home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
# Generous: a loaded machine must not turn a slow answer into a failure (no timing is asserted).
WAIT_MS = 20_000
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 800}


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def admin(self) -> dict[str, str]:
        """Bearer headers of the admin, logged in over the API."""
        response = httpx.post(f"{self.url}/auth/login", json={"username": "root", "password": PASSWORD})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['data']['access_token']}"}


@dataclass
class Watched:
    """A browser tab, with every request it made and every CSP violation it reported."""

    page: Page
    requests: list[str]
    violations: list[str]


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _environment(database_url: str) -> dict[str, str]:
    names = {name.upper() for name in Settings.model_fields} | {"PROMETHEUS_MULTIPROC_DIR"}
    base = {k: v for k, v in os.environ.items() if k.upper() not in names}
    return {
        **base,
        "DATABASE_URL": database_url,
        "REDIS_URL": os.environ.get("TEST_REDIS_URL") or "",
        "APP_ENV": "development",
        "LOG_FORMAT": "json",
    }


def _empty(database_url: str) -> None:
    """Leave the database and Redis as the other tests expect them: empty but for the seeded rows."""

    async def empty() -> None:
        engine = create_async_engine(database_url)
        try:
            await empty_database(engine)
        finally:
            await engine.dispose()

    # A thread of its own: Playwright's synchronous API keeps an event loop on this one.
    worker = threading.Thread(target=asyncio.run, args=(empty(),))
    worker.start()
    worker.join()
    redis_url = os.environ.get("TEST_REDIS_URL")
    if redis_url:
        client = Redis.from_url(redis_url, socket_timeout=2)
        try:
            client.flushdb()
        finally:
            client.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    _require_chromium()
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """hypercorn with one worker on a free port, in its own process group, with an admin account."""
    env = _environment(database_url)
    create_admin(env)
    port = free_port()
    log = tmp_path_factory.mktemp("browser") / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "hypercorn", "--config", "hypercorn.toml"),
                *("--workers", "1", "--bind", f"127.0.0.1:{port}", "service:create_app()"),
            ],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{running.url}/readiness", timeout=3).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            pytest.fail(f"the server did not become ready:\n{running.output()[-4000:]}")
        yield running
    finally:
        stop_group(process)
        _empty(database_url)


def _watch(context: BrowserContext) -> Watched:
    requests: list[str] = []
    violations: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    context.expose_function("reportCspViolation", lambda text: violations.append(text))
    # Injected by the browser itself, so the page's CSP does not apply to this script.
    context.add_init_script(
        "document.addEventListener('securitypolicyviolation', (e) =>"
        " window.reportCspViolation(e.violatedDirective + ' ' + e.blockedURI));"
    )
    page = context.new_page()
    page.on("console", lambda message: _note_csp(message.text, violations))
    return Watched(page, requests, violations)


def _note_csp(text: str, violations: list[str]) -> None:
    if "Content Security Policy" in text:
        violations.append(text)


@pytest.fixture
def tab(browser: Browser, server: Server, request: pytest.FixtureRequest) -> Iterator[Watched]:
    """A fresh browser context (no cookies) on the server; a phone's screen when the test asks."""
    viewport: ViewportSize = getattr(request, "param", DESKTOP)
    context = browser.new_context(base_url=server.url, viewport=viewport)
    context.set_default_timeout(WAIT_MS)
    try:
        yield _watch(context)
    finally:
        context.close()


def _sign_in(page: Page, server: Server) -> None:
    page.goto("/")
    expect(page).to_have_url(f"{server.url}/login")
    page.fill('input[name="username"]', "root")
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    expect(page).to_have_url(f"{server.url}/")
    # Subscribed and the state loaded: from here on changes arrive through the stream.
    expect(page.locator("#live")).to_have_attribute("data-state", "open")


def test_a_missing_chromium_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        _require_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _require_chromium()


def test_an_agent_turns_online_on_the_board_without_a_reload(tab: Watched, server: Server) -> None:
    created = httpx.post(f"{server.url}/api/v1/agents", json={"name": "e2e-runner"}, headers=server.admin())
    assert created.status_code == 201, created.text
    agent = created.json()["data"]
    page = tab.page

    _sign_in(page, server)
    row = page.locator(f'tr[data-agent-id="{agent["id"]}"]')
    expect(row.locator('[data-field="status"]')).to_have_text("never_contacted")
    page.evaluate("window.notReloaded = true")

    beat = httpx.post(
        f"{server.url}/api/v1/agents/{agent['id']}/heartbeat",
        json={"status": "online", "load": 0.25},
        headers={"Authorization": f"Bearer {agent['agent_token']}"},
    )
    assert beat.status_code == 200, beat.text
    expect(row.locator('[data-field="status"]')).to_have_text("online")
    expect(row.locator('[data-field="last_heartbeat_at"]')).to_have_attribute("datetime", re.compile(r".+"))
    expect(page.locator('[data-summary-breakdown="agents"]')).to_contain_text("online")
    assert page.evaluate("window.notReloaded") is True, "the page must update in place"

    page.reload()  # the server-rendered board shows the same, with the heartbeat's load
    expect(row.locator('[data-field="status"]')).to_have_text("online")
    expect(row.locator('[data-field="load"]')).to_have_text("0.25")
    assert tab.violations == []


@pytest.mark.parametrize("tab", [PHONE], indirect=True, ids=["phone"])
def test_an_operator_creates_and_cancels_work_on_a_phone(tab: Watched, server: Server) -> None:
    page = tab.page
    _sign_in(page, server)
    page.get_by_role("link", name="Assignments").click()
    expect(page).to_have_url(f"{server.url}/assignments")
    expect(page.locator("#live")).to_have_attribute("data-state", "open")

    form = page.locator("#new-assignment")
    form.locator('input[name="title"]').fill("e2e-transcode")
    # A capability no agent has: the work waits as pending rather than going to another test's agent.
    form.locator('input[name="required_capabilities"]').fill("e2e-only")
    form.locator('button[type="submit"]').click()
    row = page.locator("#assignments tbody tr", has_text="e2e-transcode")
    expect(row.locator('[data-field="status"]')).to_have_text("pending")

    row.locator('button[data-action="cancel"]').click()
    expect(row.locator('[data-field="status"]')).to_have_text("cancelled")
    expect(row.locator('button[data-action="cancel"]')).to_be_hidden()
    assignment_id = row.get_attribute("data-assignment-id")
    stored = httpx.get(f"{server.url}/api/v1/assignments/{assignment_id}", headers=server.admin())
    assert stored.json()["data"]["status"] == "cancelled"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "no sideways scroll"
    assert tab.violations == []


def test_signing_out_in_one_tab_signs_out_the_others(tab: Watched, server: Server) -> None:
    """Logging out ends the session and its streams: the other tab's stream says reset, its fresh
    subscription is refused, and it finds itself signed out, all without anyone touching it."""
    page = tab.page
    _sign_in(page, server)
    other = page.context.new_page()
    other.goto("/assignments")
    expect(other.locator("#live")).to_have_attribute("data-state", "open")

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{server.url}/login")
    expect(other).to_have_url(f"{server.url}/login")
    page.goto("/")
    expect(page).to_have_url(f"{server.url}/login")  # the cookie is gone
    assert tab.violations == []


def test_the_docs_load_with_no_request_leaving_the_machine(tab: Watched, server: Server) -> None:
    page = tab.page
    routed: list[str] = []

    def only_local(route: Route) -> None:
        routed.append(route.request.url)
        if route.request.url.startswith(f"{server.url}/"):
            route.continue_()
        else:
            route.abort()

    page.route("**/*", only_local)
    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Switchboard API")
    expect(page.locator(".opblock").first).to_be_visible()
    page.locator(".opblock-summary").first.click()
    expect(page.locator(".opblock-body").first).to_be_visible()

    network = [url for url in routed + tab.requests if not url.startswith(("data:", "blob:"))]
    assert network, "the page made no requests at all"
    leaving = [url for url in network if not url.startswith(f"{server.url}/")]
    assert leaving == []
    assert tab.violations == []
