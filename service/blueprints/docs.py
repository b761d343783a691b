"""The docs UI at /docs: Swagger UI served from the installed swagger-ui-bundle-v2 package, no CDN."""

from __future__ import annotations

import swagger_ui_bundle
from quart import Blueprint, Response, render_template, send_from_directory
from quart_schema import hide

blueprint = Blueprint("docs", __name__)


@blueprint.get("/docs")
@hide
async def get_docs() -> str:
    return await render_template("docs.html")


@blueprint.get("/_docs/swagger/<path:filename>")
@hide
async def get_swagger_asset(filename: str) -> Response:
    # send_from_directory refuses paths that leave the directory.
    response = await send_from_directory(swagger_ui_bundle.swagger_ui_path, filename)
    response.cache_control.public = True
    response.cache_control.max_age = 86400
    return response
