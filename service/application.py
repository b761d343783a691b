"""The Quart application class: Quart with the request session committed as part of the handler."""

from __future__ import annotations

from typing import Any, NoReturn

from quart import Quart, Request
from quart.ctx import RequestContext

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


class Switchboard(Quart):
    request_class = JSONRequest

    async def dispatch_request(self, request_context: RequestContext | None = None) -> Any:
        """Run the view, then commit its session before the response is made.

        Committing here rather than in after_request means a failed commit (a constraint, a lost
        database) is handled like any other error from the view: a 409 or 503, never a 200.
        """
        result = await super().dispatch_request(request_context)
        await db.commit_request_session()
        return result
