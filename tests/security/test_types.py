"""Every number and boolean of every JSON body is taken as the document types it, never coerced.

The fuzzing found `"single_use": 0` and `"priority": false` accepted; its CI budget makes finding such a
case again a matter of luck, so this sweep sends each one on purpose: the documented example body with
one such field given the wrong type.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from quart.testing import QuartClient

from service.application import Switchboard

from ..accounts import admin_headers

# A value of another JSON type that lax parsing would turn into the documented one.
_WRONG: dict[str, Any] = {"integer": "7", "number": "0.5", "boolean": 1}


def _typed_fields(schema: dict[str, Any], document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """The body's top-level fields documented as integer, number or boolean (nullable or not)."""
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    for name, field in schema.get("properties", {}).items():
        kinds = [field.get("type")] + [part.get("type") for part in field.get("anyOf", [])]
        for kind in kinds:
            if kind in _WRONG:
                yield name, kind


async def test_no_body_field_is_coerced_from_another_type(app: Switchboard, client: QuartClient) -> None:
    admin = await admin_headers(app, client)
    document = await (await client.get("/openapi.json")).get_json()
    tried: list[str] = []
    accepted: list[str] = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if content is None:
                continue
            example = content["schema"].get("examples", [{}])[0]
            target = path
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    target = target.replace(f"{{{parameter['name']}}}", str(uuid.uuid4()))
            for name, kind in _typed_fields(content["schema"], document):
                body = {**example, name: _WRONG[kind]}
                response = await client.open(target, method=method.upper(), json=body, headers=admin)
                tried.append(f"{method.upper()} {path} {name}")
                if response.status_code != 422:
                    accepted.append(f"{method.upper()} {path} {name}: {response.status_code}")
    assert len(tried) >= 10
    assert accepted == []
