"""`/openapi.json` as a tool reads it: a valid OpenAPI 3.1 document with every route the hub serves, an
`operationId` each, the media types as served, and every error status described by the problem JSON schema that
the hub's real error answers match."""

import re
from typing import Any

import httpx2
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.routing import Mount, Route

from agenthub.auth import Role
from mcp_server.app import create_app
from tests.conftest import RunningHub
from web_ui.guard import PUBLIC_PATHS, QUERY_TOKEN_PATHS

PROBLEM = {"$ref": "#/components/schemas/Problem"}
BINARY = "/api/v1/agents/{agent_id}/binary"


async def document(hub: RunningHub) -> dict[str, Any]:
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as anonymous:
        r = await anonymous.get("/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, item in doc["paths"].items() for method, op in item.items()}


def validator(doc: dict[str, Any], name: str) -> Draft202012Validator:
    """A validator for one of the document's component schemas (its `$ref`s resolved in the document)."""
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


async def test_the_document_is_valid_openapi_3_1(hub: RunningHub) -> None:
    doc = await document(hub)
    assert doc["openapi"] == "3.1.0"
    errors = [e.message for e in OpenAPIV31SpecValidator(doc).iter_errors()]
    assert errors == []


async def test_every_route_the_hub_serves_is_described_with_its_methods(hub: RunningHub) -> None:
    doc = await document(hub)
    served: set[tuple[str, str]] = set()
    for route in create_app(hub.state).routes:
        if isinstance(route, Mount) and route.path in ("", "/ui"):  # MCP at /mcp; the dashboard's static files
            continue
        assert isinstance(route, Route), f"{route!r} is neither a route nor a known mount: describe it"
        if route.path == "/":  # the dashboard's page
            continue
        # Starlette answers HEAD wherever it answers GET, and OpenAPI describes the GET; OPTIONS are CORS preflights.
        served |= {(method, route.path) for method in route.methods or () if method not in ("HEAD", "OPTIONS")}
    described = set(operations(doc))
    missing, stale = sorted(served - described), sorted(described - served)
    assert not missing, f"served but not in /openapi.json: {missing}"
    assert not stale, f"in /openapi.json but not served: {stale}"


async def test_every_operation_has_a_unique_snake_case_operation_id(hub: RunningHub) -> None:
    ops = operations(await document(hub))
    ids = [op.get("operationId") for op in ops.values()]
    assert all(isinstance(i, str) and re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    # Twins of MCP tools have the tool's name.
    assert ops["POST", "/api/v1/tasks/{task_id}/bids"]["operationId"] == "place_bid"
    assert ops["POST", "/api/v1/subscriptions"]["operationId"] == "subscribe_discoveries"
    assert ops["GET", "/api/v1/status"]["operationId"] == "get_collaboration_status"


async def test_every_error_response_is_problem_json_and_each_operation_lists_its_statuses(hub: RunningHub) -> None:
    doc = await document(hub)
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert {"errors", "retry_after", "oldest_cursor"} <= set(problem["properties"])
    for (method, path), op in operations(doc).items():
        where = f"{method} {path}"
        errors = {status for status in op["responses"] if not status.startswith("2")}
        for status in errors:
            assert op["responses"][status]["content"]["application/problem+json"]["schema"] == PROBLEM, where
        # The guard's, in front of every route; what inputs bring.
        assert {"401", "403", "429", "503", "default"} <= errors, where
        if "{" in path:
            assert "404" in errors, where
        body = op.get("requestBody", {}).get("content", {})
        if body:
            assert "413" in errors, where
        if "application/json" in body:
            assert "422" in errors, where
    ops = operations(doc)
    # Each operation's own.
    assert "409" in ops["POST", "/api/v1/tasks/{task_id}/bids"]["responses"]  # the auction closed
    assert "409" in ops["POST", "/api/v1/agents"]["responses"]  # the agent id is in use
    assert {"410", "422"} <= set(ops["GET", "/api/v1/discoveries"]["responses"])  # a cursor retention deleted
    assert "410" in ops["GET", "/discoveries/stream"]["responses"]
    assert {"400", "404", "409", "413"} <= set(ops["POST", BINARY]["responses"])  # refused module, not wasm
    assert "Retry-After" in ops["POST", "/api/v1/discoveries"]["responses"]["429"]["headers"]
    # The idempotency documentation stays.
    submit = ops["POST", "/api/v1/tasks"]
    assert "409" in submit["responses"] and "idempotency key" in submit["responses"]["409"]["description"]
    assert submit["x-idempotency"]["name"] == "idempotency_key"
    # Module uploads take a larger body than the rest, and the document says how large.
    settings = hub.state.settings
    assert str(settings.sandbox.max_module_bytes) in ops["POST", BINARY]["responses"]["413"]["description"]
    assert str(settings.limits.max_body_bytes) in ops["POST", "/api/v1/tasks"]["responses"]["413"]["description"]


async def test_bodies_and_answers_have_the_media_types_served(hub: RunningHub) -> None:
    ops = operations(await document(hub))

    def answer(method: str, path: str, status: str = "200") -> dict[str, Any]:
        content: dict[str, Any] = ops[method, path]["responses"][status]["content"]
        return content

    assert set(ops["POST", BINARY]["requestBody"]["content"]) == {"application/wasm"}
    assert answer("POST", BINARY, "201")["application/json"]["schema"] == {"$ref": "#/components/schemas/BinaryVersion"}
    module = ops["GET", BINARY + "/module"]["responses"]["200"]
    assert set(module["content"]) == {"application/wasm"} and {"ETag", "X-Binary-Version"} <= set(module["headers"])
    assert set(answer("GET", "/api/v1/discoveries/export")) == {"application/x-ndjson"}
    assert set(ops["POST", "/api/v1/discoveries/import"]["requestBody"]["content"]) == {"application/x-ndjson"}
    assert set(answer("GET", "/discoveries/stream")) == set(answer("GET", "/events/stream")) == {"text/event-stream"}
    assert set(answer("GET", "/metrics")) == {"text/plain"}
    assert set(ops["POST", "/api/v1/discoveries"]["requestBody"]["content"]) == {"application/json"}
    # /ready answers 503 with its own JSON when a check fails.
    assert answer("GET", "/ready", "503")["application/json"]["schema"] == {"$ref": "#/components/schemas/Readiness"}
    # Query parameters carry their types and bounds.
    limit = next(p for p in ops["GET", "/api/v1/discoveries"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["type"] == "integer" and limit["schema"]["maximum"] == 100
    stream = {p["name"] for p in ops["GET", "/discoveries/stream"]["parameters"]}
    assert stream >= {"type", "role", "agent_id", "min_confidence", "subscription_id", "start", "Last-Event-ID"}


async def test_public_paths_need_no_token_and_the_document_says_so(hub: RunningHub) -> None:
    doc = await document(hub)
    assert doc["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    ops = operations(doc)
    public = {path for (method, path), op in ops.items() if op.get("security") == []}
    assert public == PUBLIC_PATHS
    assert {path for (_, path), op in ops.items() if {"accessToken": []} in op.get("security", ())} == \
        QUERY_TOKEN_PATHS
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as anonymous:
        for path in public:
            assert (await anonymous.get(path)).status_code == 200, path
        for method, path in [("GET", "/metrics/system"), ("GET", "/api/v1/status"), ("GET", "/events/stream")]:
            r = await anonymous.request(method, path)
            assert r.status_code == 401 and "401" in ops[method, path]["responses"], path


async def test_real_answers_match_the_documented_schemas(hub: RunningHub) -> None:
    doc = await document(hub)
    ops = operations(doc)
    problem = validator(doc, "Problem")
    viewer = await hub.token(Role.VIEWER)
    async with hub.http() as http, hub.http(viewer) as as_viewer, \
            httpx2.AsyncClient(base_url=hub.url, timeout=30) as anonymous:
        answers = [
            ("GET", "/api/v1/status", await anonymous.get("/api/v1/status"), 401),
            ("POST", "/api/v1/tokens", await as_viewer.post("/api/v1/tokens", json={"role": "viewer"}), 403),
            ("GET", "/api/v1/discoveries/{discovery_id}", await http.get("/api/v1/discoveries/d-nothing"), 404),
            ("POST", "/api/v1/tokens", await http.post("/api/v1/tokens", json={
                "role": "viewer", "expires_in_seconds": 0}), 422),
            ("POST", "/api/v1/discoveries", await http.post("/api/v1/discoveries", content=b"{"), 400),
            ("GET", "/api/v1/discoveries", await http.get("/api/v1/discoveries", params={"cursor": 10**9}), 400),
            ("POST", "/api/v1/discoveries", await http.post("/api/v1/discoveries", content=b"x" * (
                hub.state.settings.limits.max_body_bytes + 1)), 413),
            ("POST", BINARY, await http.post("/api/v1/agents/nobody/binary", content=b"\0asm\1\0\0\0",
                                             headers={"Content-Type": "application/wasm"}), 404),
            ("GET", "/discoveries/stream", await http.get("/discoveries/stream", params={"start": "soon"}), 400),
            ("GET", "/api/v1/agents/{agent_id}", await http.get("/api/v1/agents/no such agent"), 422),
        ]
        health, ready, system = [await http.get(path) for path in ("/health", "/ready", "/metrics/system")]
    for method, path, r, status in answers:
        assert r.status_code == status, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json", path
        assert str(status) in ops[method, path]["responses"], (method, path, status)
        body = r.json()
        problem.validate(body)
        assert body["status"] == status
    assert answers[3][2].json()["errors"][0]["loc"] == "expires_in_seconds"  # the 422 names the field
    for r, name in [(health, "Health"), (ready, "Readiness"), (system, "SystemMetrics")]:
        assert r.status_code == 200, r.text
        validator(doc, name).validate(r.json())
        # Every field the hub sends is described (none only in the code).
        assert set(r.json()) == set(doc["components"]["schemas"][name]["properties"]), name
