"""The tool list is lean enough to sit in every agent's context on every turn, and a client can narrow it with
the MCP URL's `?tools=` (groups or tool names), through the SDK's MCP client over HTTP."""

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from agenthub.auth import Role
from tests.conftest import RunningHub

# Bytes of the tools/list result's JSON (what a client hands its model) and the most tools, per profile (viewers see
# a read-only part of the operator's). Agents' grew by ~1.2 kB with request_approval and get_approval, and by ~1.4 kB
# with reserve_usage and report_usage (issue 16; the claude executor does not hand those two to its model), and by
# ~0.6 kB with submit_task's bond_percent and acceptance check.
LIMITS = {Role.AGENT: (11_400, 14), Role.OPERATOR: (16_000, None), Role.VIEWER: (8_000, None)}
DISCOVERY_TOOLS = {"share_discovery", "subscribe_discoveries", "poll_discoveries", "unsubscribe_discoveries"}
MARKET_TOOLS = {"submit_task", "place_bid", "get_task", "report_task"}
SHARE = {"agent_id": "agent-1", "agent_role": "Analyzer", "discovery_type": "insight",
         "content": "the index on reports.day halves the scan", "confidence": 0.7}


def selecting(hub: RunningHub, token: str, tools: str, mode: str = "auto") -> Client:
    """An MCP client whose URL carries `?tools=`, as a user would configure it in any MCP client."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    return Client(streamable_http_client(f"{hub.mcp_url}?tools={tools}", http_client=http), mode=mode)


async def token_of(hub: RunningHub, role: Role) -> str:
    return await hub.token(role, "agent-1" if role is Role.AGENT else None)


def keys_in(node: object) -> set[str]:
    """Every key of a JSON schema's schema objects (not the names in `properties`)."""
    if isinstance(node, list):
        return set().union(*map(keys_in, node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = set(node)
    for key, value in node.items():
        found |= set().union(*map(keys_in, value.values())) if key in ("properties", "$defs") else keys_in(value)
    return found


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize("role", list(LIMITS))
async def test_each_profiles_tool_list_is_within_its_size_limit(hub: RunningHub, role: Role, mode: str) -> None:
    async with hub.mcp(await token_of(hub, role), mode=mode) as client:
        listed = await client.list_tools()
    size = len(listed.model_dump_json(by_alias=True, exclude_unset=True).encode())
    most_bytes, most_tools = LIMITS[role]
    assert listed.tools and len(listed.tools) <= (most_tools or len(listed.tools))
    assert size <= most_bytes, f"{role}: {size} bytes for {len(listed.tools)} tools"
    for tool in listed.tools:
        assert tool.description and len(tool.description) <= 320, tool.name
        assert tool.output_schema is None, tool.name  # results still carry structured content
        assert "title" not in keys_in(tool.input_schema), tool.name
        assert tool.input_schema["additionalProperties"] is False, tool.name


async def test_the_lean_schemas_keep_types_enums_and_bounds(hub: RunningHub) -> None:
    async with hub.mcp(await token_of(hub, Role.AGENT)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        share = tools["share_discovery"].input_schema["properties"]
        assert share["discovery_type"]["enum"] == ["pattern", "anomaly", "connection", "solution", "question",
                                                   "insight"]
        assert (share["confidence"]["minimum"], share["confidence"]["maximum"]) == (0, 1)
        assert share["related_to"]["type"] == ["string", "null"]
        assert share["agent_id"]["pattern"] == "^[A-Za-z0-9_-]{1,64}$"
        poll = tools["poll_discoveries"].input_schema["properties"]
        assert poll["wait_seconds"]["maximum"] == 30 and "cursor" in poll["cursor"]["description"]
        assert tools["get_task"].annotations is not None and tools["get_task"].annotations.read_only_hint
        shared = await client.call_tool("share_discovery", SHARE)
        assert not shared.is_error, shared.content
        assert (shared.structured_content or {})["discovery_id"].startswith("disc")
        refused = await client.call_tool("share_discovery", {**SHARE, "confidence": 2})
        assert refused.is_error and "confidence" in refused.content[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_client_narrows_its_tools_by_group_or_name_in_the_url(hub: RunningHub, mode: str) -> None:
    agent = await token_of(hub, Role.AGENT)
    async with selecting(hub, agent, "discoveries", mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} == DISCOVERY_TOOLS
        shared = await client.call_tool("share_discovery", SHARE)
        assert not shared.is_error, shared.content
        with pytest.raises(MCPError, match=r"submit_task is not among the tools .* add 'market' or 'submit_task'"):
            await client.call_tool("submit_task", {})
    async with selecting(hub, agent, "market, get_context", mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} == MARKET_TOOLS | {"get_context"}


async def test_a_selection_narrows_a_profile_and_never_widens_it(hub: RunningHub) -> None:
    async with selecting(hub, hub.operator_token, "agents") as client:
        assert {t.name for t in (await client.list_tools()).tools} == {
            "spawn_agent", "stop_agent", "list_agents", "get_collaboration_status"}
    async with selecting(hub, await token_of(hub, Role.VIEWER), "agents,market") as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"list_agents", "get_collaboration_status"}
    async with selecting(hub, await token_of(hub, Role.AGENT), "agents,share_discovery") as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"share_discovery"}
        with pytest.raises(MCPError, match="Unknown tool: spawn_agent"):
            await client.call_tool("spawn_agent", {})


@pytest.mark.parametrize(("tools", "message"), [
    ("discoveries,gossip", r"names 'gossip', which is neither a group \(discoveries, context, market, agents, "),
    (",", "selects no tool"),
])
async def test_a_bad_selection_says_how_to_fix_the_url(hub: RunningHub, tools: str, message: str) -> None:
    async with selecting(hub, hub.operator_token, tools) as client:
        with pytest.raises(MCPError, match=message):
            await client.list_tools()
        with pytest.raises(MCPError, match=message):
            await client.call_tool("share_discovery", SHARE)
