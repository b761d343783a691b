"""The OpenAPI document is valid, complete, and tells the truth about what the API answers."""

from __future__ import annotations

import ast
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from pydantic import BaseModel
from quart.testing import QuartClient

from service import identity
from service.application import Switchboard
from service.schemas import (
    agents,
    assignments,
    audit,
    envelope,
    events,
    health,
    notifications,
    sessions,
    users,
)

from .accounts import admin_headers
from .conftest import AppMaker
from .fleet import beat, make_agent, make_work
from .sse import Frame, watching

SERVICE = Path(__file__).resolve().parents[1] / "service"
SCHEMA_MODULES = (agents, assignments, audit, envelope, events, health, notifications, sessions, users)
Operation = tuple[str, str, dict[str, Any]]


async def document(client: QuartClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec: dict[str, Any] = await response.get_json()
    return spec


def operations(spec: dict[str, Any]) -> Iterator[Operation]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A component the node refers to (`{"$ref": "#/components/…"}`), or the node itself."""
    while "$ref" in node:
        found: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            found = found[part]
        node = found
    return node


def responses(spec: dict[str, Any], operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {status: resolve(spec, response) for status, response in operation["responses"].items()}


def examples_of(spec: dict[str, Any], media: dict[str, Any]) -> list[Any]:
    if "example" in media:
        return [media["example"]]
    return [resolve(spec, example)["value"] for example in media.get("examples", {}).values()]


def body_of(operation: dict[str, Any]) -> dict[str, Any]:
    """The request's example body as test-client arguments (none when it takes no body)."""
    body = operation.get("requestBody")
    return {} if body is None else {"json": body["content"]["application/json"]["example"]}


def concrete(path: str) -> str:
    """The path with a fresh id for every parameter."""
    for part in path.split("/"):
        if part.startswith("{"):
            path = path.replace(part, str(uuid.uuid4()))
    return path


def streams(operation: dict[str, Any]) -> bool:
    return "text/event-stream" in operation["responses"].get("200", {}).get("content", {})


async def test_the_document_is_valid_openapi(client: QuartClient) -> None:
    spec = await document(client)
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # raises on the first violation of the OpenAPI 3.1 schema


async def test_every_operation_is_documented(client: QuartClient) -> None:
    """Summary, tag, unique operationId, examples for its bodies, and its errors in the envelope."""
    spec = await document(client)
    declared_tags = {tag["name"] for tag in spec["tags"]}
    operation_ids: list[str] = []
    for method, path, operation in operations(spec):
        name = f"{method} {path}"
        summary = operation.get("summary", "")
        assert summary.endswith("."), f"{name}: summary {summary!r}"
        assert len(summary) <= 80, f"{name}: summary {summary!r}"
        assert operation.get("tags"), name
        assert set(operation["tags"]) <= declared_tags, name
        operation_ids.append(operation["operationId"])
        if "requestBody" in operation:
            assert operation["requestBody"]["required"] is True, name
            for media in operation["requestBody"]["content"].values():
                assert examples_of(spec, media), f"{name}: no request example"
        answers = responses(spec, operation)
        assert any(status.startswith("2") for status in answers), name
        for status, response in answers.items():
            assert response["description"], f"{name} {status}: no description"
            for media in response.get("content", {}).values():
                assert examples_of(spec, media), f"{name} {status}: no example"
            if (
                status[0] in "45"
                and status not in ("4XX", "5XX")
                and "application/json" in response["content"]
            ):
                schema = response["content"]["application/json"]["schema"]
                if schema == {"$ref": "#/components/schemas/Error"}:
                    codes = set(response["content"]["application/json"]["examples"])
                    assert codes, name
                    assert all(f"`{code}`" in response["description"] for code in codes), name
        assert {"4XX", "5XX"} <= set(answers), name
        if operation.get("security"):
            assert operation["security"] == [{"bearerAuth": []}], name
            assert "401" in answers, f"{name}: behind a bearer token but no 401"
    assert len(operation_ids) == len(set(operation_ids)), "duplicate operationId"


async def test_examples_match_their_schemas(client: QuartClient) -> None:
    """Every example in the document validates against the schema it illustrates, formats included."""
    spec = await document(client)
    checked = 0

    def check(schema: dict[str, Any], example: Any, where: str) -> None:
        nonlocal checked
        validator = OAS31Validator(
            {**schema, "components": spec["components"]}, format_checker=OAS31Validator.FORMAT_CHECKER
        )
        problems = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(example)
        ]
        assert not problems, f"{where}: {problems[:3]}"
        checked += 1

    for method, path, operation in operations(spec):
        for parameter in operation.get("parameters", []):
            for example in [*parameter["schema"].get("examples", []), *examples_of(spec, parameter)]:
                check(parameter["schema"], example, f"{method} {path} {parameter['name']}")
        bodies = [("request", operation["requestBody"])] if "requestBody" in operation else []
        for where, body in [*bodies, *responses(spec, operation).items()]:
            for media in body.get("content", {}).values():
                for example in examples_of(spec, media):
                    check(media["schema"], example, f"{method} {path} {where}")
    assert checked > 100


def schema_models() -> Iterator[type[BaseModel]]:
    for module in SCHEMA_MODULES:
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseModel)
                and value.__module__ == module.__name__
            ):
                yield value


@pytest.mark.parametrize("model", list(schema_models()), ids=lambda model: model.__name__)
def test_schema_examples_are_valid_models(model: type[BaseModel]) -> None:
    """The examples in service/schemas pass the models' own validation (patterns, bounds, validators)."""
    extra = model.model_config.get("json_schema_extra")
    examples = extra.get("examples", []) if isinstance(extra, dict) else []
    for example in examples:
        model.model_validate(example)


async def test_what_the_api_answers_is_documented(make_app: AppMaker) -> None:
    """Each operation, called as a stranger and as an admin with its example body, answers a status its
    documentation lists; the example bodies pass validation; and an operation documents the bearer
    requirement exactly when it asks `identity` who is calling and refuses the stranger with 401."""
    app = await make_app(rate_limits_enabled=False)
    client = app.test_client()
    spec = await document(client)
    asked: list[str] = []

    def spy(original: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        async def asking() -> Any:
            asked.append(original.__name__)
            return await original()

        return asking

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(identity, "current", spy(identity.current))
        patch.setattr(identity, "current_agent", spy(identity.current_agent))
        for method, path, operation in operations(spec):
            name = f"{method} {path}"
            asked.clear()
            response = await client.open(concrete(path), method=method, **body_of(operation))
            documented = set(operation["responses"]) - {"4XX", "5XX"}
            assert str(response.status_code) in documented, f"{name} as a stranger: {response.status_code}"
            needs_auth = bool(asked) and response.status_code == 401
            assert needs_auth == bool(operation.get("security")), (
                f"{name}: security {operation.get('security')}"
            )

    admin = await admin_headers(app, client)
    for method, path, operation in operations(spec):
        if streams(operation):
            continue  # its body never ends: test_the_stream_sends_what_the_document_describes opens it
        name = f"{method} {path}"
        if (await client.get("/auth/me", headers=admin)).status_code != 200:
            admin = await admin_headers(app, client)  # logged out, or its sessions ended, by the last one
        response = await client.open(concrete(path), method=method, headers=admin, **body_of(operation))
        documented = set(operation["responses"]) - {"4XX", "5XX"}
        assert str(response.status_code) in documented, f"{name} as admin: {response.status_code}"
        assert response.status_code != 422, f"{name}: its example body is not valid"


def recorded_event_types() -> set[str]:
    """The event types the code records (`outbox.record(session, type, …)`, `record_event(…)`)."""
    found: set[str] = set()
    for source in SERVICE.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.Call) or len(node.args) < 2:
                continue
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            owner = node.func.value if isinstance(node.func, ast.Attribute) else None
            is_record = callee == "record_event" or (
                callee == "record" and isinstance(owner, ast.Name) and owner.id == "outbox"
            )
            if is_record:
                found |= {
                    n.value
                    for n in ast.walk(node.args[1])
                    if isinstance(n, ast.Constant) and isinstance(n.value, str)
                }
    return found


async def test_every_event_a_client_can_receive_is_documented(client: QuartClient) -> None:
    spec = await document(client)
    stream = spec["paths"]["/api/v1/events"]["get"]
    assert stream.get("security") == [{"bearerAuth": []}]
    media = stream["responses"]["200"]["content"]["text/event-stream"]
    union = resolve(spec, media["schema"])
    documented = set(union["discriminator"]["mapping"])
    recorded = {type_ for type_ in recorded_event_types() if not type_.startswith("_")}
    assert len(recorded) >= 8
    assert documented == recorded | {"reset"}, "document every event type recorded, and only those"
    assert set(media["examples"]) == documented
    reasons = {
        node.args[0].value
        for node in ast.walk(ast.parse((SERVICE / "events" / "stream.py").read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "reset_frame"
        and isinstance(node.args[0], ast.Constant)
    }
    reset_message = resolve(spec, {"$ref": union["discriminator"]["mapping"]["reset"]})
    reset = resolve(spec, reset_message["properties"]["data"]["contentSchema"])
    assert set(reset["properties"]["reason"]["enum"]) == reasons


def assert_conforms(spec: dict[str, Any], frames: list[Frame]) -> None:
    """The stream as sent passes schemathesis's check of event streams against the document (ST108):
    each message's fields against `ServerSentEvent`, each `data:` decoded against its contentSchema."""
    wire = b"".join(frame.wire for frame in frames)
    sent = httpx.Response(
        200,
        headers={"Content-Type": "text/event-stream"},
        content=wire,
        request=httpx.Request("GET", "http://switchboard.test/api/v1/events"),
    )
    sent.read()
    sent.elapsed = timedelta(0)
    schemathesis.openapi.from_dict(spec)["/api/v1/events"]["GET"].validate_response(sent)


async def test_the_stream_sends_what_the_document_describes(app: Switchboard, client: QuartClient) -> None:
    """Real messages (agent and assignment events, then a reset) validate against the documented message
    schema, the way schemathesis reads a stream: every field a string, `data:` JSON text."""
    spec = await document(client)
    admin = await admin_headers(app, client)
    async with watching(client, admin) as stream:
        agent_id, token = await make_agent(client, admin, "runner-1", ["gpu"])
        await beat(client, agent_id, token)
        work = await make_work(client, admin, "transcode", required_capabilities=["gpu"])
        await client.post(f"/api/v1/assignments/{work['id']}/start", headers=token)
        await client.delete(f"/api/v1/agents/{agent_id}", headers=admin)
        while "agent.deleted" not in {frame.event for frame in stream.frames}:
            await stream.next_event()
    async with watching(client, admin, **{"Last-Event-ID": "1000-0"}) as ancient:
        assert (await ancient.next_event()).event == "reset"
    seen = {frame.event for frame in stream.frames}
    assert {"agent.registered", "agent.status_changed", "assignment.assigned"} <= seen
    assert {"assignment.status_changed", "agent.deleted"} <= seen
    assert_conforms(spec, stream.frames + ancient.frames)
    # And the check has teeth: a message the document does not allow fails it.
    bogus = Frame(wire=b'event: reset\ndata: {"reason": "bogus"}\n\n')
    with pytest.raises(AssertionError, match="SSE event violates schema"):
        assert_conforms(spec, [bogus])
