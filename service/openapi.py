"""The OpenAPI document: quart-schema's provider plus the error envelope on every operation."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from quart_schema.openapi import OpenAPIProvider

from service.schemas.envelope import ErrorOut

_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_ERROR_RESPONSES = {
    "4XX": {
        "description": "A client error, in the error envelope.",
        "content": {"application/json": {"schema": _ERROR_REF}},
    },
    "5XX": {
        "description": "A server or dependency error, in the error envelope.",
        "content": {"application/json": {"schema": _ERROR_REF}},
    },
}


class Provider(OpenAPIProvider):
    """Declares `ErrorOut` once, as the `Error` component, and refers to it from every operation."""

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        error_schema = TypeAdapter(ErrorOut).json_schema(ref_template="#/components/schemas/{model}")
        definitions = error_schema.pop("$defs", {})
        document["components"]["schemas"].update(definitions)
        document["components"]["schemas"]["Error"] = error_schema
        for path_item in document["paths"].values():
            for operation in path_item.values():
                responses = operation.setdefault("responses", {})
                for status, response in _ERROR_RESPONSES.items():
                    responses.setdefault(status, response)
        return document
