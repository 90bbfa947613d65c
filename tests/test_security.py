"""Bad input gets a clear error and changes nothing: Host and Origin checks, body limits, malformed JSON and
JSON-RPC, authentication, roles, validation, and how tokens are kept."""

import hashlib
import json
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from agenthub.auth import Role
from mcp_server.app import OPERATOR_TOKEN_FILE
from tests.conftest import HubFactory, RunningHub

SHARE = {"agent_id": "agent-1", "agent_role": "Analyzer", "discovery_type": "Pattern",
         "content": "Unusual pattern in authentication logs", "confidence": 0.85}
CONTEXT = {"from_agent": "agent-1", "to_agent": "agent-2", "context_type": "warnings", "content": "disk full",
           "relevance": 0.9}

# What a 2026-07-28 client sends for one `tools/call` over HTTP, without the SDK.
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "share_discovery"}
MCP_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def mcp_call(arguments: dict[str, Any], request_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": "share_discovery", "arguments": arguments, "_meta": MCP_META}}


@asynccontextmanager
async def nats_messages(hub: RunningHub) -> AsyncIterator[list[str]]:
    """The subjects of every message published under the hub's prefix while the block runs, but for the replicas'
    talk among themselves (`hub.`: what each admitted, for the shared rate limits), which is not data."""
    subjects: list[str] = []
    between_replicas = f"{hub.state.bus.prefix}hub."

    async def on_message(msg: Any) -> None:
        if not msg.subject.startswith(between_replicas):
            subjects.append(msg.subject)

    nc = hub.state.bus.nc
    sub = await nc.subscribe(f"{hub.state.bus.prefix}>", cb=on_message)
    try:
        yield subjects
    finally:
        await nc.flush()
        await sub.unsubscribe()


async def stored(hub: RunningHub) -> dict[str, int]:
    pool = hub.state.pool
    return {
        "discoveries": await pool.fetchval("SELECT count(*) FROM discoveries"),
        "sequence": await pool.fetchval("SELECT last FROM discovery_counter"),
        "subscriptions": await pool.fetchval("SELECT count(*) FROM subscriptions"),
        "contexts": await pool.fetchval("SELECT count(*) FROM contexts"),
    }


NOTHING = {"discoveries": 0, "sequence": 0, "subscriptions": 0, "contexts": 0}


def assert_problem(r: httpx2.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["detail"]
    return body


async def send(http: httpx2.AsyncClient, target: str, **kwargs: Any) -> httpx2.Response:
    """One request to `target`: "mcp" (a raw share_discovery call), "rest" (POST a discovery) or "stream"."""
    headers = kwargs.pop("headers", {})
    if target == "mcp":
        return await http.post("/mcp", json=mcp_call(SHARE), headers={**MCP_HEADERS, **headers}, **kwargs)
    if target == "rest":
        return await http.post("/api/v1/discoveries", json=SHARE, headers=headers, **kwargs)
    with anyio.fail_after(5):
        async with http.stream("GET", "/discoveries/stream", headers=headers, **kwargs) as r:
            if r.status_code == 200:  # read the first event, then hang up
                async for line in r.aiter_lines():
                    if line.startswith("event:"):
                        break
            else:
                await r.aread()
            return r


# -- Host and Origin -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["mcp", "rest", "stream"])
async def test_a_foreign_origin_is_refused_before_any_work(hub: RunningHub, target: str) -> None:
    async with nats_messages(hub) as published, hub.http() as http:
        r = await send(http, target, headers={"origin": "http://evil.example"})
    body = assert_problem(r, 403)
    assert body["title"] == "Forbidden origin"
    assert "http://evil.example" in body["detail"]
    assert await stored(hub) == NOTHING
    assert published == []
    assert hub.state.collab.feed.stream_count == 0


@pytest.mark.parametrize("origin", ["null", "http://127.0.0.1.evil.example", "http://localhost.evil.example:80",
                                    "file://", "http://evil.example#http://127.0.0.1"])
async def test_origins_that_only_look_local_are_refused(hub: RunningHub, origin: str) -> None:
    async with hub.http() as http:
        r = await send(http, "rest", headers={"origin": origin})
    assert_problem(r, 403)
    assert await stored(hub) == NOTHING


async def test_the_hubs_own_loopback_origin_is_allowed(hub: RunningHub) -> None:
    port = hub.url.rsplit(":", 1)[1]
    async with hub.http() as http:
        rest = await send(http, "rest", headers={"origin": f"http://127.0.0.1:{port}"})
        mcp = await send(http, "mcp", headers={"origin": f"http://localhost:{port}"})
        stream = await send(http, "stream", headers={"origin": f"http://127.0.0.1:{port}"})
    assert rest.status_code == 201, rest.text
    assert mcp.status_code == 200, mcp.text
    assert not mcp.json()["result"].get("isError")
    assert stream.status_code == 200
    assert (await stored(hub))["discoveries"] == 2


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.nip.io", "localhost.evil.example:8080", ""])
@pytest.mark.parametrize("target", ["mcp", "rest"])
async def test_a_foreign_host_header_is_refused(hub: RunningHub, host: str, target: str) -> None:
    async with nats_messages(hub) as published, hub.http() as http:
        r = await send(http, target, headers={"host": host})
    assert assert_problem(r, 403)["title"] == "Forbidden host"
    assert await stored(hub) == NOTHING
    assert published == []


async def test_configured_hosts_and_origins_are_allowed_and_nothing_else(hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(allowed_hosts=["hub.example:8443"], allowed_origins=["https://ui.example"])
    async with hub_factory.run(settings) as hub, hub.http() as http:
        allowed = await send(http, "rest", headers={"host": "hub.example:8443", "origin": "https://ui.example"})
        other_port = await send(http, "rest", headers={"host": "hub.example:9999"})
        other_origin = await send(http, "rest", headers={"origin": "https://ui.example.evil"})
        assert allowed.status_code == 201, allowed.text
        assert_problem(other_port, 403)
        assert_problem(other_origin, 403)
        assert (await stored(hub))["discoveries"] == 1


# -- body size -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/api/v1/discoveries", "/mcp"])
async def test_a_body_over_the_limit_is_refused_with_413(hub: RunningHub, path: str, chunked: bool) -> None:
    limit = hub.state.settings.limits.max_body_bytes
    assert limit == 1 << 20
    oversize = json.dumps(mcp_call(SHARE) if path == "/mcp" else SHARE).encode().ljust(limit + 1)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(oversize), 64 * 1024):
            yield oversize[start:start + 64 * 1024]

    async with nats_messages(hub) as published, hub.http() as http:
        r = await http.post(path, content=chunks() if chunked else oversize, headers=MCP_HEADERS)
    assert ("transfer-encoding" in r.request.headers) is chunked
    assert assert_problem(r, 413)["title"] == "Body too large"
    assert await stored(hub) == NOTHING
    assert published == []


async def test_a_body_of_exactly_the_limit_is_accepted(hub: RunningHub) -> None:
    limit = hub.state.settings.limits.max_body_bytes
    padded = json.dumps(SHARE).encode().ljust(limit)  # trailing whitespace is still valid JSON
    async with hub.http() as http:
        r = await http.post("/api/v1/discoveries", content=padded, headers={"content-type": "application/json"})
    assert r.status_code == 201, r.text
    assert (await stored(hub))["discoveries"] == 1


# -- malformed JSON and JSON-RPC -------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"agent_id": "agent-1"', b"\xff\xfe", b'{"a": 1} trailing'],
                         ids=["garbage", "empty", "truncated", "not-utf8", "trailing"])
@pytest.mark.parametrize("path", ["/api/v1/discoveries", "/api/v1/subscriptions", "/api/v1/context",
                                  "/api/v1/tokens"])
async def test_malformed_json_to_rest_is_a_400_problem(hub: RunningHub, path: str, raw: bytes) -> None:
    async with nats_messages(hub) as published, hub.http() as http:
        r = await http.post(path, content=raw, headers={"content-type": "application/json"})
    body = assert_problem(r, 400)
    assert body["title"] == "Malformed JSON"
    assert "not valid JSON" in body["detail"]
    assert await stored(hub) == NOTHING
    assert published == []


async def test_malformed_json_rpc_to_mcp_is_a_parse_error(hub: RunningHub) -> None:
    async with nats_messages(hub) as published, hub.http() as http:
        r = await http.post("/mcp", content=b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {',
                            headers=MCP_HEADERS)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == -32700
    assert await stored(hub) == NOTHING
    assert published == []


async def test_a_json_rpc_batch_to_mcp_is_refused_and_runs_nothing(hub: RunningHub) -> None:
    batch = [mcp_call(SHARE, 1), mcp_call({**SHARE, "content": "second"}, 2)]
    async with hub.http() as http:
        async with nats_messages(hub) as published:
            refused = await http.post("/mcp", json=batch, headers=MCP_HEADERS)
        assert 400 <= refused.status_code < 500
        assert refused.json()["error"]["code"] == -32600
        assert await stored(hub) == NOTHING
        assert published == []
        single = await http.post("/mcp", json=batch[0], headers=MCP_HEADERS)  # the same call on its own works
    assert single.status_code == 200, single.text
    assert single.json()["result"]["structuredContent"]["sequence"] == 1


# -- authentication --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["mcp", "rest", "stream"])
@pytest.mark.parametrize("authorization", [None, "Bearer ah_wrong", "Bearer", "Basic YWRtaW46YWRtaW4="],
                         ids=["missing", "unknown", "scheme-only", "basic"])
async def test_a_missing_or_wrong_token_is_401_with_www_authenticate(
        hub: RunningHub, target: str, authorization: str | None) -> None:
    headers = {"authorization": authorization} if authorization else {}
    async with nats_messages(hub) as published, httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        r = await send(http, target, headers=headers)
    assert_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert await stored(hub) == NOTHING
    assert published == []


@pytest.mark.parametrize("path", ["/api/v1/discoveries", "/api/v1/status", "/metrics/system", "/api/v1/context/a"])
async def test_reads_need_a_token_too(hub: RunningHub, path: str) -> None:
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        r = await http.get(path)
    assert_problem(r, 401)


async def test_a_revoked_token_is_refused(hub: RunningHub) -> None:
    token = await hub.token(Role.AGENT, "agent-1")
    await hub.state.pool.execute("UPDATE tokens SET revoked_at = now() WHERE role = 'agent'")
    async with hub.http(token) as http:
        r = await send(http, "rest")
    assert "revoked" in assert_problem(r, 401)["detail"]
    assert await stored(hub) == NOTHING


# -- roles -----------------------------------------------------------------------------------------------------------


async def test_a_viewer_can_read_and_stream_but_not_write(hub: RunningHub) -> None:
    async with hub.http() as operator:
        shared = (await operator.post("/api/v1/discoveries", json=SHARE)).json()
        sub = (await operator.post("/api/v1/subscriptions", json={"subscriber_agent_id": "agent-1"})).json()
    viewer = await hub.token(Role.VIEWER)
    async with nats_messages(hub) as published, hub.http(viewer) as http:
        assert (await http.get("/api/v1/discoveries")).status_code == 200
        assert (await http.get(f"/api/v1/discoveries/{shared['discovery_id']}")).status_code == 200
        assert (await http.get("/api/v1/status")).status_code == 200
        assert (await send(http, "stream")).status_code == 200
        writes = [
            await http.post("/api/v1/discoveries", json=SHARE),
            await http.post("/api/v1/subscriptions", json={"subscriber_agent_id": "agent-1"}),
            await http.post(f"/api/v1/subscriptions/{sub['subscription_id']}/poll", json={}),
            await http.delete(f"/api/v1/subscriptions/{sub['subscription_id']}"),
            await http.post("/api/v1/context", json=CONTEXT),
            await http.post("/api/v1/tokens", json={"role": "viewer"}),
        ]
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as anonymous:
        by_query = await send(anonymous, "stream", params={"access_token": viewer})
    assert by_query.status_code == 200
    for r in writes:
        assert_problem(r, 403)
    assert await stored(hub) == {**NOTHING, "discoveries": 1, "sequence": 1, "subscriptions": 1}
    assert await hub.state.pool.fetchval("SELECT cursor FROM subscriptions") == sub["cursor"]
    assert published == []


async def test_a_viewer_cannot_share_over_mcp(hub: RunningHub) -> None:
    async with nats_messages(hub) as published, hub.mcp(await hub.token(Role.VIEWER)) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        with pytest.raises(MCPError, match="Unknown tool: share_discovery"):
            await client.call_tool("share_discovery", SHARE)
    assert names == {"get_collaboration_status", "list_agents", "list_approvals"}  # the read-only operator tools
    assert await stored(hub) == NOTHING
    assert published == []


async def test_an_agent_token_cannot_act_as_or_read_for_another_agent(hub: RunningHub) -> None:
    async with hub.http() as operator:
        theirs = (await operator.post("/api/v1/subscriptions", json={"subscriber_agent_id": "agent-2"})).json()
    token = await hub.token(Role.AGENT, "agent-1")
    async with nats_messages(hub) as published, hub.http(token) as http:
        refused = [
            await http.post("/api/v1/discoveries", json={**SHARE, "agent_id": "agent-2"}),
            await http.post("/api/v1/subscriptions", json={"subscriber_agent_id": "agent-2"}),
            await http.post("/api/v1/context", json={**CONTEXT, "from_agent": "agent-2", "to_agent": "agent-1"}),
            await http.get("/api/v1/context/agent-2"),
            await http.post(f"/api/v1/subscriptions/{theirs['subscription_id']}/poll", json={}),
            await http.delete(f"/api/v1/subscriptions/{theirs['subscription_id']}"),
        ]
        own = await http.get("/api/v1/context/agent-1")
    async with hub.mcp(token) as client:
        over_mcp = [
            await client.call_tool("share_discovery", {**SHARE, "agent_id": "agent-2"}),
            await client.call_tool("subscribe_discoveries", {"subscriber_agent_id": "agent-2"}),
            await client.call_tool("share_context", {**CONTEXT, "from_agent": "agent-2"}),
            await client.call_tool("get_context", {"agent_id": "agent-2"}),
        ]
    for r in refused:
        assert_problem(r, 403)
    assert own.status_code == 200
    for result in over_mcp:
        assert result.is_error
        assert "agent-2" in result.content[0].text  # type: ignore[union-attr]
    assert await stored(hub) == {**NOTHING, "subscriptions": 1}
    assert published == []


# -- validation ------------------------------------------------------------------------------------------------------

_BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("/api/v1/discoveries", {**SHARE, "confidence": "high"}, "confidence"),
    ("/api/v1/discoveries", {**SHARE, "confidence": 1.5}, "confidence"),
    ("/api/v1/discoveries", {**SHARE, "confidence": True}, "confidence"),
    ("/api/v1/discoveries", {**SHARE, "discovery_type": "rumour"}, "discovery_type"),
    ("/api/v1/discoveries", {**SHARE, "agent_id": "bad.id"}, "agent_id"),
    ("/api/v1/discoveries", {**SHARE, "agent_id": 7}, "agent_id"),
    ("/api/v1/discoveries", {**SHARE, "content": ""}, "content"),
    ("/api/v1/discoveries", {**SHARE, "content": "   "}, "content"),
    ("/api/v1/discoveries", {**SHARE, "content": "x" * 16_001}, "content"),
    ("/api/v1/discoveries", {**SHARE, "agent_role": "r" * 65}, "agent_role"),
    ("/api/v1/discoveries", {**SHARE, "tags": ["t"] * 21}, "tags"),
    ("/api/v1/discoveries", {**SHARE, "tags": ["t" * 65]}, "tags.0"),
    ("/api/v1/discoveries", {**SHARE, "tags": "auth"}, "tags"),
    ("/api/v1/discoveries", {**SHARE, "surprise": 1}, "surprise"),
    ("/api/v1/discoveries", {k: v for k, v in SHARE.items() if k != "content"}, "content"),
    ("/api/v1/subscriptions", {"subscriber_agent_id": "w", "discovery_types": ["anomaly"] * 7}, "discovery_types"),
    ("/api/v1/subscriptions", {"subscriber_agent_id": "w", "agent_ids": ["a"] * 51}, "agent_ids"),
    ("/api/v1/subscriptions", {"subscriber_agent_id": "w", "min_confidence": "0.5"}, "min_confidence"),
    ("/api/v1/subscriptions", {"subscriber_agent_id": "w", "start": "yesterday"}, "start"),
    ("/api/v1/subscriptions", {"subscriber_agent_id": "w", "filter": {}}, "filter"),
    ("/api/v1/context", {**CONTEXT, "ttl_seconds": 0}, "ttl_seconds"),
    ("/api/v1/context", {**CONTEXT, "relevance": "high"}, "relevance"),
    ("/api/v1/context", {**CONTEXT, "context_type": "gossip"}, "context_type"),
    ("/api/v1/context", {**CONTEXT, "to_agent": "a b"}, "to_agent"),
    ("/api/v1/context", {**CONTEXT, "content": {str(i): i for i in range(51)}}, "content"),
    ("/api/v1/subscriptions/sub_x/poll", {"wait_seconds": 31}, "wait_seconds"),
    ("/api/v1/subscriptions/sub_x/poll", {"limit": 101}, "limit"),
    ("/api/v1/subscriptions/sub_x/poll", {"cursor": "1"}, "cursor"),
    ("/api/v1/tokens", {"role": "admin"}, "role"),
    ("/api/v1/tokens", {"role": "agent", "agent_id": "bad id"}, "agent_id"),
]


@pytest.mark.parametrize(("path", "body", "field"), _BAD_BODIES,
                         ids=[f"{p.rsplit('/', 1)[1]}-{f}-{i}" for i, (p, _, f) in enumerate(_BAD_BODIES)])
async def test_an_invalid_rest_body_is_a_422_problem_naming_the_field(
        hub: RunningHub, path: str, body: dict[str, Any], field: str) -> None:
    tokens_before = await hub.state.pool.fetchval("SELECT count(*) FROM tokens")
    async with nats_messages(hub) as published, hub.http() as http:
        r = await http.post(path, json=body)
    problem = assert_problem(r, 422)
    # A union field's errors are located under its members, e.g. "content.dict[str,any]".
    assert any(e["loc"] == field or e["loc"].startswith(f"{field}.") for e in problem["errors"])
    assert field in problem["detail"]
    assert await stored(hub) == NOTHING
    assert await hub.state.pool.fetchval("SELECT count(*) FROM tokens") == tokens_before
    assert published == []


@pytest.mark.parametrize(("query", "field"), [
    ({"limit": 101}, "limit"), ({"cursor": -1}, "cursor"), ({"min_confidence": 2}, "min_confidence"),
    ({"min_confidence": "high"}, "min_confidence"), ({"type": "rumour"}, "type.0"), ({"surprise": 1}, "surprise"),
])
async def test_an_invalid_query_is_a_422_problem_naming_the_parameter(
        hub: RunningHub, query: dict[str, Any], field: str) -> None:
    async with hub.http() as http:
        r = await http.get("/api/v1/discoveries", params=query)
    assert field in [e["loc"] for e in assert_problem(r, 422)["errors"]]


async def test_a_json_body_that_is_not_an_object_is_a_422_problem(hub: RunningHub) -> None:
    async with hub.http() as http:
        r = await http.post("/api/v1/discoveries", json=[SHARE])
    assert "body" in assert_problem(r, 422)["detail"]
    assert await stored(hub) == NOTHING


# -- tokens at rest --------------------------------------------------------------------------------------------------


async def test_tokens_are_stored_only_as_hashes(hub: RunningHub) -> None:
    async with hub.http() as http:
        minted = (await http.post("/api/v1/tokens", json={"role": "agent", "agent_id": "agent-1"})).json()["token"]
    plaintexts = [hub.operator_token, minted, await hub.token(Role.VIEWER)]
    rows = await hub.state.pool.fetch("SELECT * FROM tokens")
    assert len(rows) == 3
    dump = repr([dict(r) for r in rows])
    raw = b"".join(v for r in rows for v in r.values() if isinstance(v, bytes))
    for token in plaintexts:
        secret = token.removeprefix("ah_")
        assert secret not in dump
        assert secret.encode() not in raw
    assert {bytes(r["token_hash"]) for r in rows} == {hashlib.sha256(t.encode()).digest() for t in plaintexts}


async def test_the_first_operator_token_file_is_private_and_kept_across_restarts(hub_factory: HubFactory) -> None:
    async with hub_factory.run() as hub:
        path = hub.data_dir / OPERATOR_TOKEN_FILE
        first = path.read_text().strip()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    async with hub_factory.run() as hub, hub.http(first) as http:
        assert path.read_text().strip() == first
        r = await http.post("/api/v1/tokens", json={"role": "viewer"})  # still an operator token
        assert r.status_code == 201
        assert await hub.state.pool.fetchval("SELECT count(*) FROM tokens WHERE role = 'operator'") == 1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
