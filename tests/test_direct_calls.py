"""The hub's direct answer to stateless tool calls (mcp_server.direct) cannot be told from the SDK's: the same
requests sent to a replica that answers them itself and to one that sends every call through the SDK
(`AGENTHUB_MCP__DIRECT_TOOL_CALLS=false`) get the same status, content type and JSON, for results, tool errors,
JSON-RPC errors and requests the direct path leaves to the SDK. And the SDK's client works against it."""

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest

from agenthub.auth import Role
from tests.conftest import HubFactory, RunningHub

MODERN = "2026-07-28"
SHARE = {"agent_id": "agent-1", "agent_role": "Analyzer", "discovery_type": "Pattern",
         "content": "Unusual pattern in authentication logs", "confidence": 0.85, "tags": ["auth"]}
# What varies between two calls however they are answered: new ids, sequence numbers and times.
_VARYING = re.compile(r'disc_[0-9A-Za-z_-]+|\d{4}-\d\d-\d\dT[0-9:.+Z-]+|(?<="sequence":)\d+')


def body(tool: str, arguments: Any, *, request_id: Any = 1, meta: dict[str, Any] | None = None,
         **params: Any) -> dict[str, Any]:
    envelope = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": {**envelope, **(meta or {})}, **params}}


def headers(token: str, tool: str, **extra: str) -> dict[str, str]:
    return {"content-type": "application/json", "accept": "application/json, text/event-stream",
            "mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": tool,
            "authorization": f"Bearer {token}", **extra}


@asynccontextmanager
async def two_replicas(hub_factory: HubFactory) -> AsyncIterator[tuple[RunningHub, RunningHub]]:
    """A replica that answers direct calls itself and one that leaves them all to the SDK (same database)."""
    async with hub_factory.run() as direct, hub_factory.run(hub_factory.settings(
            data_dir=hub_factory.tmp_path / "sdk", mcp={"direct_tool_calls": False})) as sdk:
        yield direct, sdk


async def answers(direct: RunningHub, sdk: RunningHub, content: bytes, sent: dict[str, str],
                  path: str = "/mcp") -> tuple[Any, Any]:
    """The same request to both; asserts the same status and content type; the two answers, normalised."""
    out = []
    for replica in (direct, sdk):
        async with httpx2.AsyncClient(base_url=replica.url, timeout=30) as http:
            response = await http.post(path, content=content, headers=sent)
        out.append((response.status_code, response.headers.get("content-type"), response.content))
    (status, kind, first), (sdk_status, sdk_kind, second) = out
    assert (status, kind) == (sdk_status, sdk_kind), (first, second)
    return _normalised(status, first), _normalised(sdk_status, second)


def _normalised(status: int, content: bytes) -> Any:
    try:
        return status, _without_varying(json.loads(content))
    except ValueError:
        return status, content.decode()


def _without_varying(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "<varies>" if k == "sequence" else _without_varying(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_varying(v) for v in value]
    return _VARYING.sub("<varies>", value) if isinstance(value, str) else value


async def test_results_and_errors_are_the_sdks(hub_factory: HubFactory) -> None:
    async with two_replicas(hub_factory) as (direct, sdk):
        agent = await direct.token(Role.AGENT, "agent-1")
        operator = direct.operator_token
        cases: list[tuple[str, bytes, dict[str, str], str]] = [
            ("a shared discovery", json.dumps(body("share_discovery", SHARE)).encode(),
             headers(agent, "share_discovery"), "/mcp"),
            ("a string request id", json.dumps(body("share_discovery", SHARE, request_id="r-1")).encode(),
             headers(agent, "share_discovery"), "/mcp"),
            ("any type accepted", json.dumps(body("share_discovery", SHARE)).encode(),
             headers(agent, "share_discovery", accept="*/*"), "/mcp"),
            ("no accepted SSE", json.dumps(body("share_discovery", SHARE)).encode(),
             headers(agent, "share_discovery", accept="application/json"), "/mcp"),
            ("invalid arguments: a tool error", json.dumps(body("share_discovery", {**SHARE, "confidence": 7}))
             .encode(), headers(agent, "share_discovery"), "/mcp"),
            ("another agent's id: a tool error", json.dumps(body("share_discovery", {**SHARE, "agent_id": "x"}))
             .encode(), headers(agent, "share_discovery"), "/mcp"),
            ("an operator tool", json.dumps(body("get_collaboration_status", {})).encode(),
             headers(operator, "get_collaboration_status"), "/mcp"),
            ("a tool the agent may not use", json.dumps(body("get_collaboration_status", {})).encode(),
             headers(agent, "get_collaboration_status"), "/mcp"),
            ("an unknown tool", json.dumps(body("no_such_tool", {})).encode(), headers(agent, "no_such_tool"),
             "/mcp"),
            ("a tool outside ?tools=", json.dumps(body("share_discovery", SHARE)).encode(),
             headers(agent, "share_discovery"), "/mcp?tools=market"),
            ("a bad ?tools=", json.dumps(body("share_discovery", SHARE)).encode(),
             headers(agent, "share_discovery"), "/mcp?tools=nothing"),
            ("mcp-name differs from the body", json.dumps(body("share_discovery", SHARE)).encode(),
             headers(agent, "get_task"), "/mcp"),
            ("an unsupported version", json.dumps(body("share_discovery", SHARE)).encode(),
             headers(agent, "share_discovery", **{"mcp-protocol-version": "2099-01-01"}), "/mcp"),
            ("no envelope", json.dumps({**body("share_discovery", SHARE), "params": {"name": "share_discovery"}})
             .encode(), headers(agent, "share_discovery"), "/mcp"),
            ("a name that is not a string", json.dumps(body(7, SHARE)).encode(),  # type: ignore[arg-type]
             headers(agent, "share_discovery"), "/mcp"),
            ("arguments that are a list", json.dumps(body("share_discovery", [1])).encode(),
             headers(agent, "share_discovery"), "/mcp"),
            ("a malformed client capabilities", json.dumps(body("share_discovery", SHARE, meta={
                "io.modelcontextprotocol/clientCapabilities": "all"})).encode(), headers(agent, "share_discovery"),
             "/mcp"),
            ("a params member the hub does not know", json.dumps(body("share_discovery", SHARE, task={"ttl": 5}))
             .encode(), headers(agent, "share_discovery"), "/mcp"),
            ("a null id", json.dumps(body("share_discovery", SHARE, request_id=None)).encode(),
             headers(agent, "share_discovery"), "/mcp"),
            ("a boolean id", json.dumps(body("share_discovery", SHARE, request_id=True)).encode(),
             headers(agent, "share_discovery"), "/mcp"),
            ("not JSON", b"{not json", headers(agent, "share_discovery"), "/mcp"),
            ("a batch", json.dumps([body("share_discovery", SHARE)]).encode(), headers(agent, "share_discovery"),
             "/mcp"),
            ("a text/plain body", json.dumps(body("share_discovery", SHARE)).encode(),
             headers(agent, "share_discovery", **{"content-type": "text/plain"}), "/mcp"),
            ("no accepted JSON", json.dumps(body("share_discovery", SHARE)).encode(),
             headers(agent, "share_discovery", accept="text/event-stream"), "/mcp"),
        ]
        for why, content, sent, path in cases:
            mine, theirs = await answers(direct, sdk, content, sent, path)
            assert mine == theirs, why
        # Six were answered directly (results and tool errors); the SDK answered the rest, and all on the other.
        assert direct.state.metrics.registry.get_sample_value("agenthub_mcp_direct_calls_total") == 6
        assert sdk.state.metrics.registry.get_sample_value("agenthub_mcp_direct_calls_total") == 0
        stored = await direct.state.collab.log.newest_sequence()
        assert stored == 8  # both stored each of the four accepted shares (the SDK ignores a `task` member)


async def test_a_repeated_routing_header_or_a_session_goes_to_the_sdk(hub_factory: HubFactory) -> None:
    async with two_replicas(hub_factory) as (direct, sdk):
        agent = await direct.token(Role.AGENT, "agent-1")
        content = json.dumps(body("share_discovery", SHARE)).encode()
        for extra in ([("mcp-method", "tools/call")], [("mcp-session-id", "0123")],
                      [("mcp-param-agent", "agent-1")]):
            raw = [*headers(agent, "share_discovery").items(), *extra]
            results = []
            for replica in (direct, sdk):
                async with httpx2.AsyncClient(base_url=replica.url, timeout=30) as http:
                    response = await http.post("/mcp", content=content, headers=raw)
                results.append((response.status_code, _normalised(response.status_code, response.content)))
            assert results[0] == results[1], extra


async def test_a_rate_limited_call_is_the_same_tool_error(hub_factory: HubFactory) -> None:
    limits = {"requests_per_second": 0.01, "request_burst": 1}
    async with hub_factory.run(hub_factory.settings(rate_limits=limits)) as direct, hub_factory.run(
            hub_factory.settings(data_dir=hub_factory.tmp_path / "sdk", rate_limits=limits,
                                 mcp={"direct_tool_calls": False})) as sdk:
        refused = []
        for replica in (direct, sdk):
            token = await replica.token(Role.AGENT, "agent-1")
            async with httpx2.AsyncClient(base_url=replica.url, timeout=30) as http:
                for _ in range(2):  # the first takes the burst
                    response = await http.post("/mcp", content=json.dumps(body("share_discovery", SHARE)).encode(),
                                               headers=headers(token, "share_discovery"))
            assert response.status_code == 200
            refused.append(json.loads(response.content))
        mine, theirs = refused
        assert mine["result"]["isError"] is True
        assert mine["result"]["_meta"]["agenthub/retry_after"] > 0
        for answer in (mine, theirs):
            answer["result"]["_meta"]["agenthub/retry_after"] = "<varies>"
            answer["result"]["content"][0]["text"] = re.sub(r"[\d.]+ s", "<n> s", answer["result"]["content"][0]
                                                            ["text"])
        assert mine == theirs


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_sdk_client_shares_and_polls_through_it(hub: RunningHub, mode: str) -> None:
    token = await hub.token(Role.AGENT, "agent-1")
    async with hub.mcp(token, mode=mode) as client:
        subscribed = await client.call_tool("subscribe_discoveries", {"subscriber_agent_id": "agent-1"})
        assert not subscribed.is_error, subscribed.content
        assert subscribed.structured_content is not None
        shared = await client.call_tool("share_discovery", SHARE)
        assert not shared.is_error, shared.content
        polled = await client.call_tool("poll_discoveries", {
            "subscription_id": subscribed.structured_content["subscription_id"],
            "cursor": subscribed.structured_content["cursor"], "wait_seconds": 5})
        assert shared.structured_content is not None and polled.structured_content is not None
        assert [d["discovery_id"] for d in polled.structured_content["discoveries"]] == [
            shared.structured_content["discovery_id"]]
    # The SDK's 2026-07-28 client was answered directly but for the poll that waits; a session never is.
    direct = hub.state.metrics.registry.get_sample_value("agenthub_mcp_direct_calls_total")
    assert direct == (2 if mode == "auto" else 0)
