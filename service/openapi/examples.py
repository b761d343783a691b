"""Examples of request and response bodies, from the examples the models in service/schemas carry."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE, QUART_SCHEMA_RESPONSE_ATTRIBUTE

from service.openapi import source
from service.schemas.envelope import METADATA_EXAMPLE, PAGINATION_EXAMPLE, Page, Success


def complete_request(operation: dict[str, Any], view: Callable[..., Any]) -> None:
    """Mark the declared request body required and give it its model's examples."""
    declared = getattr(view, QUART_SCHEMA_REQUEST_ATTRIBUTE, None)
    body = operation.get("requestBody")
    if declared is None or body is None:
        return
    body["required"] = True
    for media in body["content"].values():
        _set_examples(media, model_examples(declared[0]))


def complete_responses(operation: dict[str, Any], view: Callable[..., Any]) -> None:
    """Give each declared response a description, when it has none, and its model's examples."""
    declared = getattr(view, QUART_SCHEMA_RESPONSE_ATTRIBUTE, {})
    message = source.message_of(view)
    for status, (model, _headers) in declared.items():
        response = operation["responses"][str(status)]
        if not response.get("description"):
            response["description"] = f"{HTTPStatus(int(status)).phrase}."
        examples = model_examples(model, message)
        if len(examples) > 1:
            # A model answering both ways (readiness: ready and degraded, not ready) lists the failure's
            # example last and the success's before it.
            examples = examples[:-1] if int(status) < 400 else examples[-1:]
        for media in response.get("content", {}).values():
            if isinstance(media, dict) and "schema" in media:
                _set_examples(media, examples)


def model_examples(model: Any, message: str | None = None) -> list[Any]:
    """The examples of a model from service/schemas; an envelope's are built around its data's."""
    metadata = getattr(model, "__pydantic_generic_metadata__", None)
    if metadata and metadata["origin"] in (Success, Page):
        (item,) = metadata["args"]
        data = [None] if item is None or item is type(None) else model_examples(item)[:1]
        if metadata["origin"] is Page:
            return [
                {
                    "status": "success",
                    "data": [d],
                    "pagination": PAGINATION_EXAMPLE,
                    "metadata": METADATA_EXAMPLE,
                }
                for d in data
            ]
        return [
            {"status": "success", "data": d, "message": message, "metadata": METADATA_EXAMPLE} for d in data
        ]
    if isinstance(model, type) and issubclass(model, BaseModel):
        extra = model.model_config.get("json_schema_extra")
        examples = extra.get("examples") if isinstance(extra, dict) else None
        if isinstance(examples, list):
            return list(examples)
    return []


def _set_examples(media: dict[str, Any], examples: list[Any]) -> None:
    if len(examples) == 1:
        media["example"] = examples[0]
    elif examples:
        media["examples"] = {_example_name(value, i): {"value": value} for i, value in enumerate(examples, 1)}


def _example_name(value: Any, index: int) -> str:
    status = value.get("status") if isinstance(value, dict) else None
    return status if isinstance(status, str) else f"example{index}"
