"""The OpenAPI document and the docs UI, which works with no internet access."""

from __future__ import annotations

import json
import re
from pathlib import Path

from quart.testing import QuartClient

from service.application import Switchboard

COMMITTED_SPEC = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"


async def test_openapi_document_describes_the_probes(client: QuartClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec = await response.get_json()
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "Switchboard API"
    assert {"/health", "/readiness"} <= set(spec["paths"])
    assert "/metrics" not in spec["paths"]
    assert not any(path.startswith("/_docs") or path == "/docs" for path in spec["paths"])
    health = spec["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(health["properties"]) == {"status", "timestamp", "version", "service"}
    readiness = spec["paths"]["/readiness"]["get"]["responses"]
    assert {"200", "503"} <= set(readiness)


async def test_every_operation_documents_the_error_envelope(client: QuartClient) -> None:
    spec = await (await client.get("/openapi.json")).get_json()
    error = spec["components"]["schemas"]["Error"]
    assert set(error["properties"]) == {"status", "error", "metadata"}
    for path_item in spec["paths"].values():
        for operation in path_item.values():
            for status in ("4XX", "5XX"):
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


async def test_docs_page_loads_only_local_assets(client: QuartClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    html = (await response.get_data()).decode()
    assert "swagger-ui" in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "the docs page must not load from a CDN"
    assert "<script>" not in html, "no inline scripts: the page keeps the strict CSP"
    for asset in re.findall(r"(?:src|href)=\"(/[^\"]+)\"", html):
        served = await client.get(asset)
        assert served.status_code == 200, asset
        assert len(await served.get_data()) > 0
    bundle = await client.get("/_docs/swagger/swagger-ui-bundle.js")
    assert bundle.headers["Content-Type"].startswith(("text/javascript", "application/javascript"))


async def test_docs_assets_cannot_escape_their_directory(client: QuartClient) -> None:
    response = await client.get("/_docs/swagger/..%2F..%2F__init__.py")
    assert response.status_code == 404


async def test_other_doc_uis_are_off(client: QuartClient) -> None:
    for path in ("/redocs", "/scalar"):
        assert (await client.get(path)).status_code == 404


async def test_the_committed_openapi_document_matches_the_code(app: Switchboard) -> None:
    """docs/openapi.json is what client authors read without running the service: it must not drift."""
    generated = await (await app.test_client().get("/openapi.json")).get_json()
    committed = json.loads(COMMITTED_SPEC.read_text())
    assert committed == generated, "docs/openapi.json is stale: run `make openapi` and commit it"
