"""With SENTRY_DSN set, unexpected errors are reported to Sentry (here, a local sink)."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from service import create_app

from . import probes
from .conftest import make_settings


class _Sink(BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def sentry_sink() -> Iterator[tuple[str, list[bytes]]]:
    _Sink.received = []
    server = HTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://publickey@127.0.0.1:{server.server_port}/1", _Sink.received
    server.shutdown()


async def test_unexpected_errors_reach_sentry(
    database_url: str, sentry_sink: tuple[str, list[bytes]]
) -> None:
    import sentry_sdk

    dsn, received = sentry_sink
    app = create_app(make_settings(database_url, sentry_dsn=dsn))
    app.register_blueprint(probes.blueprint)
    try:
        async with app.test_app():
            response = await app.test_client().get("/_probe/boom")
        assert response.status_code == 500
        sentry_sdk.flush(timeout=5)
        items = [json.loads(line) for body in received for line in body.split(b"\n") if line.strip()]
        errors = [item for item in items if "exception" in item]
        assert errors, f"no error event reached the sink: {items}"
        assert errors[0]["exception"]["values"][0]["type"] == "RuntimeError"
    finally:
        sentry_sdk.get_global_scope().set_client(None)  # switch reporting off for the rest of the run


async def test_sentry_is_off_without_a_dsn(database_url: str) -> None:
    app = create_app(make_settings(database_url))
    assert "sentry" not in app.extensions
