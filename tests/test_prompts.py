"""The hub's MCP prompts (join and share, ask and answer, bid and deliver), listed and got through the SDK's MCP
client over HTTP: each names only tools its caller can call, with the caller's agent id filled in."""

import re

import pytest
from mcp.shared.exceptions import MCPError

from agenthub.auth import Role
from mcp_server.tools import TOOLS
from tests.conftest import RunningHub
from tests.test_tool_list import selecting

PROMPTS = {"join_and_share", "ask_and_answer", "bid_and_deliver"}
TOOL_NAME = re.compile(r"\b[a-z]+(?:_[a-z]+)+\b")


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_an_agent_lists_the_prompts_and_gets_each_filled_in_with_its_id(hub: RunningHub, mode: str) -> None:
    async with hub.mcp(await hub.token(Role.AGENT, "scout-7"), mode=mode) as client:
        assert client.server_capabilities is not None and client.server_capabilities.prompts is not None
        listed = {p.name: p for p in (await client.list_prompts()).prompts}
        assert set(listed) == PROMPTS
        assert all(p.description and p.title for p in listed.values())
        assert "agent_id" in {a.name for a in listed["join_and_share"].arguments or []}
        tools = {t.name for t in (await client.list_tools()).tools}
        for name in PROMPTS:
            got = await client.get_prompt(name)
            (message,) = got.messages
            text = message.content.text  # type: ignore[union-attr]
            assert message.role == "user" and 'agent_id="scout-7"' in text
            named = set(TOOL_NAME.findall(text)) & {t.name for t in TOOLS}
            assert named and named <= tools, name  # every tool it names, the agent can call
            assert "error" in text  # and what to do when a call fails
        joined = await client.get_prompt("join_and_share", {"role": "Analyzer", "topic": "slow reports"})
        assert "slow reports" in joined.messages[0].content.text  # type: ignore[union-attr]
        with pytest.raises(MCPError, match="acts as agent 'scout-7', not 'other'"):
            await client.get_prompt("ask_and_answer", {"agent_id": "other"})
        with pytest.raises(MCPError, match=r"takes no argument budget; its arguments: agent_id, task_id"):
            await client.get_prompt("bid_and_deliver", {"budget": "10"})
        with pytest.raises(MCPError, match=r"Unknown prompt: gossip \(the prompts here: join_and_share"):
            await client.get_prompt("gossip")


async def test_an_operator_names_the_agent_a_prompt_is_for(hub: RunningHub) -> None:
    async with hub.mcp() as client:
        with pytest.raises(MCPError, match="agent_id is required"):
            await client.get_prompt("bid_and_deliver")
        with pytest.raises(MCPError, match="is not an agent id"):
            await client.get_prompt("bid_and_deliver", {"agent_id": "no spaces"})
        got = await client.get_prompt("bid_and_deliver", {"agent_id": "worker-2", "task_id": "task_abc"})
        text = got.messages[0].content.text  # type: ignore[union-attr]
        assert 'agent_id="worker-2"' in text and 'task "task_abc"' in text


async def test_prompts_follow_the_tools_a_caller_sees(hub: RunningHub) -> None:
    async with hub.mcp(await hub.token(Role.VIEWER)) as client:
        assert (await client.list_prompts()).prompts == []
        with pytest.raises(MCPError, match="Unknown prompt: join_and_share"):
            await client.get_prompt("join_and_share", {"agent_id": "a"})
    async with selecting(hub, await hub.token(Role.AGENT, "a"), "discoveries,context") as client:
        assert {p.name for p in (await client.list_prompts()).prompts} == {"join_and_share", "ask_and_answer"}
        with pytest.raises(MCPError, match="Unknown prompt: bid_and_deliver"):
            await client.get_prompt("bid_and_deliver")
