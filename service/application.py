"""The Quart application class: Quart with the request session committed as part of the handler."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from hypercorn.typing import ASGIReceiveCallable, ASGIReceiveEvent, ASGISendCallable
from pydantic import BaseModel
from quart import Quart, Request, Response
from quart.asgi import ASGIHTTPConnection
from quart.ctx import RequestContext
from quart.sessions import SessionInterface, SessionMixin
from quart.typing import ResponseTypes
from quart.utils import cancel_tasks, raise_task_exceptions
from quart.wrappers import BaseRequestWebsocket
from werkzeug.wrappers import Response as WerkzeugResponse

from service import db, errors


class JSONRequest(Request):
    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        try:
            return await super().get_json(force, silent, cache)
        except UnicodeDecodeError:
            # Quart decodes the body before its own error handling starts; JSON must be UTF-8.
            if silent:
                return None
            raise errors.MalformedRequest("The request body is not valid UTF-8.") from None

    def on_json_loading_failed(self, error: Exception) -> NoReturn:
        # The decoder's message names the line and column, which helps the caller and leaks nothing.
        raise errors.MalformedRequest(f"The request body is not valid JSON: {error}")


class _NoSessions(SessionInterface):
    """Quart's cookie session, switched off: the service keeps nothing in it (the dashboard's login is
    quart-auth's own cookie, its CSRF token a cookie of its own), and opening it on every request costs a
    signing serializer for nothing. A write to `quart.session` goes to a null session and is refused."""

    async def open_session(self, app: Quart, request: BaseRequestWebsocket) -> SessionMixin | None:
        return None

    async def save_session(
        self, app: Quart, session: SessionMixin, response: Response | WerkzeugResponse | None
    ) -> None:
        return None


class _FinishingConnection(ASGIHTTPConnection):
    """Quart's HTTP handling, except that a client who goes away before its response has started no
    longer cancels the request: it runs to the end, and nothing is sent.

    Cancelled, a request could stop anywhere, and SQLAlchemy does not return a connection to the pool
    when the cancellation lands while it resets it (after a commit, at a session's close): the
    connection stays checked out until the garbage collector finds it, seconds or minutes later. In
    the embedded mode that was the only connection, and every request waited for it and got 503. A
    request's own work is bounded anyway (the database deadline, Redis's breaker). A response that is
    being sent when the client leaves (an event stream) is still cancelled: its database work is done.
    So is one whose body never fully arrived: it would only wait for it (BODY_TIMEOUT), and a cut body
    must not be acted on.
    """

    _gone = False
    _responding = False
    _received = False  # the whole body arrived

    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        request = self._create_request_from_scope(send)

        async def noting_the_end_of_the_body() -> ASGIReceiveEvent:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                self._received = True
            return message

        receiver = asyncio.ensure_future(self.handle_messages(request, noting_the_end_of_the_body))
        handler = asyncio.ensure_future(self.handle_request(request, send))
        await asyncio.wait([handler, receiver], return_when=asyncio.FIRST_COMPLETED)
        if receiver.done() and not handler.done():
            self._gone = True
            if self._received and not self._responding:
                await asyncio.wait([handler])
        tasks = {handler, receiver}
        await cancel_tasks({task for task in tasks if not task.done()})
        raise_task_exceptions(tasks)

    async def _send_response(self, send: ASGISendCallable, response: ResponseTypes) -> None:
        if self._gone:
            return  # nobody to send it to
        self._responding = True
        await super()._send_response(send, response)


class Switchboard(Quart):
    request_class = JSONRequest
    session_interface = _NoSessions()  # type: ignore[assignment]
    asgi_http_class = _FinishingConnection

    async def preprocess_request(self, request_context: RequestContext | None = None) -> Any:
        """Run the before-request hooks (some ask who is calling, from the database) within the deadline
        of the request's database work."""
        async with db.request_deadline():
            return await super().preprocess_request(request_context)

    async def dispatch_request(self, request_context: RequestContext | None = None) -> Any:
        """Run the view, then commit its session before the response is made.

        Committing here rather than in after_request means a failed commit (a constraint, a lost
        database) is handled like any other error from the view: a 409 or 503, never a 200. Both run
        within the deadline of the request's database work, so that a database that stops answering
        costs a request one deadline, then a 503.
        """
        async with db.request_deadline():
            result = await super().dispatch_request(request_context)
            await db.commit_request_session()
        return result


def serve_models_as_json(app: Quart) -> None:
    """Answer a view's pydantic model with pydantic's own JSON encoder.

    quart-schema turns a model into a dict that the stdlib encoder then walks (calling back for each
    datetime and UUID); `model_dump_json` writes the same document in one call, about three times
    faster. Install it after QuartSchema, whose wrapper it runs before.
    """
    convert: Callable[[Any], Awaitable[Any]] = app.make_response

    async def make_response(result: Any) -> Any:
        value, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if isinstance(value, BaseModel):
            body = app.response_class(value.model_dump_json(), mimetype="application/json")
            result = (body, *rest) if rest else body
        return await convert(result)

    app.make_response = make_response  # type: ignore[method-assign]
