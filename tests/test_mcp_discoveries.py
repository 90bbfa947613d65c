"""Sharing, subscribing and polling discoveries through the SDK's MCP client over HTTP, both protocol revisions."""

import json

import anyio
import mcp.types as types
import pytest

from agenthub.auth import Role
from tests.conftest import RunningHub

SHARE = {"agent_id": "agent-1", "agent_role": "Analyzer", "discovery_type": "Pattern",
         "content": "Unusual pattern in authentication logs", "confidence": 0.85}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_shared_discovery_is_stored_numbered_and_readable_as_a_resource(hub: RunningHub, mode: str) -> None:
    async with hub.mcp(mode=mode) as client:
        assert client.protocol_version == ("2026-07-28" if mode == "auto" else "2025-11-25")
        result = await client.call_tool("share_discovery", SHARE)
        assert not result.is_error, result.content
        out = result.structured_content
        assert out is not None
        assert out["sequence"] == 1
        assert out["nats_subject"] == f"{hub.state.bus.prefix}discoveries.agent-1.pattern"
        assert out["uri"] == f"discovery://agents/agent-1/discoveries/{out['discovery_id']}"
        read = await client.read_resource(out["uri"])
        stored = json.loads(read.contents[0].text)  # type: ignore[union-attr]
        assert stored["discovery_type"] == "pattern"
        assert stored["content"] == SHARE["content"]
        listed = await client.list_resources()
        assert "discovery://agents/agent-1/discoveries" in [r.uri for r in listed.resources]


async def test_tool_list_depends_on_the_token_profile(hub: RunningHub) -> None:
    agent_token = await hub.token(Role.AGENT, "agent-1")
    async with hub.mcp(agent_token) as client:
        names = {t.name for t in (await client.list_tools()).tools}
    assert names == {"share_discovery", "subscribe_discoveries", "poll_discoveries", "unsubscribe_discoveries",
                     "share_context", "get_context", "submit_task", "place_bid", "get_task", "report_task",
                     "request_approval", "get_approval", "reserve_usage", "report_usage"}
    async with hub.mcp() as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert "get_collaboration_status" in tools
    assert tools["share_discovery"].input_schema["additionalProperties"] is False
    assert tools["share_discovery"].output_schema is None  # lean: results carry structured content without one


@pytest.mark.parametrize(("change", "message"), [
    ({"confidence": 1.5}, "confidence"),
    ({"confidence": "high"}, "confidence"),
    ({"discovery_type": "rumour"}, "discovery_type"),
    ({"content": ""}, "content"),
    ({"content": "x" * 16_001}, "content"),
    ({"agent_id": "bad.id"}, "agent_id"),
    ({"surprise": 1}, "surprise"),
    ({"related_to": "disc_doesnotexist"}, "related_to"),
])
async def test_bad_discovery_input_is_an_error_result_and_stores_nothing(
        hub: RunningHub, change: dict[str, object], message: str) -> None:
    received: list[bytes] = []

    async def on_message(msg: object) -> None:
        received.append(msg.data)  # type: ignore[attr-defined]

    sub = await hub.state.bus.nc.subscribe(f"{hub.state.bus.prefix}discoveries.>", cb=on_message)
    async with hub.mcp() as client:
        result = await client.call_tool("share_discovery", {**SHARE, **change})
    assert result.is_error
    assert message in result.content[0].text  # type: ignore[union-attr]
    await hub.state.bus.nc.flush()
    await sub.unsubscribe()
    assert await hub.state.pool.fetchval("SELECT count(*) FROM discoveries") == 0
    assert await hub.state.pool.fetchval("SELECT last FROM discovery_counter") == 0
    assert received == []


async def test_an_agent_token_cannot_share_as_another_agent(hub: RunningHub) -> None:
    token = await hub.token(Role.AGENT, "agent-1")
    async with hub.mcp(token) as client:
        ok = await client.call_tool("share_discovery", SHARE)
        refused = await client.call_tool("share_discovery", {**SHARE, "agent_id": "agent-2"})
    assert not ok.is_error
    assert refused.is_error
    assert "cannot act as 'agent-2'" in refused.content[0].text  # type: ignore[union-attr]
    assert await hub.state.pool.fetchval("SELECT count(*) FROM discoveries") == 1


async def test_polls_return_matching_discoveries_once_and_in_order(hub: RunningHub) -> None:
    async with hub.mcp() as client:
        sub = (await client.call_tool("subscribe_discoveries", {
            "subscriber_agent_id": "watcher", "discovery_types": ["anomaly", "INSIGHT"], "min_confidence": 0.5,
        })).structured_content
        assert sub is not None
        for i, (kind, conf) in enumerate([("anomaly", 0.9), ("pattern", 0.9), ("insight", 0.4), ("insight", 0.7),
                                           ("anomaly", 0.6)]):
            await client.call_tool("share_discovery", {**SHARE, "discovery_type": kind, "confidence": conf,
                                                       "content": f"d{i}"})
        seen: list[str] = []
        cursor = sub["cursor"]
        for _ in range(4):
            page = (await client.call_tool("poll_discoveries", {
                "subscription_id": sub["subscription_id"], "cursor": cursor, "limit": 2})).structured_content
            assert page is not None
            seen += [d["content"] for d in page["discoveries"]]
            cursor = page["cursor"]
        assert seen == ["d0", "d3", "d4"]
        assert cursor == 5


async def test_a_long_poll_returns_as_soon_as_a_match_arrives(hub: RunningHub) -> None:
    async with hub.mcp() as poller, hub.mcp() as sharer:
        sub = (await poller.call_tool("subscribe_discoveries", {"subscriber_agent_id": "w"})).structured_content
        assert sub is not None
        result: dict[str, object] = {}

        async def poll() -> None:
            r = await poller.call_tool("poll_discoveries", {"subscription_id": sub["subscription_id"],
                                                            "wait_seconds": 20})
            result.update(r.structured_content or {})

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                await anyio.sleep(0.3)
                await sharer.call_tool("share_discovery", SHARE)
        assert [d["content"] for d in result["discoveries"]] == [SHARE["content"]]  # type: ignore[attr-defined]


async def test_polling_an_unknown_subscription_or_a_future_cursor_is_an_error(hub: RunningHub) -> None:
    async with hub.mcp() as client:
        unknown = await client.call_tool("poll_discoveries", {"subscription_id": "sub_nope"})
        sub = (await client.call_tool("subscribe_discoveries", {"subscriber_agent_id": "w"})).structured_content
        assert sub is not None
        future = await client.call_tool("poll_discoveries", {"subscription_id": sub["subscription_id"],
                                                             "cursor": 99})
        gone = await client.call_tool("unsubscribe_discoveries", {"subscription_id": sub["subscription_id"]})
        again = await client.call_tool("poll_discoveries", {"subscription_id": sub["subscription_id"]})
    assert unknown.is_error and "no subscription" in unknown.content[0].text  # type: ignore[union-attr]
    assert future.is_error and "beyond the newest" in future.content[0].text  # type: ignore[union-attr]
    assert gone.structured_content == {"subscription_id": sub["subscription_id"], "removed": True}
    assert again.is_error


async def test_context_reaches_only_its_addressee_and_expires(hub: RunningHub) -> None:
    async with hub.mcp() as client:
        await client.call_tool("share_context", {"from_agent": "a", "to_agent": "b", "context_type": "Warnings",
                                                 "content": "disk almost full", "relevance": 0.9})
        await client.call_tool("share_context", {"from_agent": "a", "context_type": "background",
                                                 "content": {"project": "x"}, "relevance": 0.5})
        await client.call_tool("share_context", {"from_agent": "a", "to_agent": "c", "context_type": "patterns",
                                                 "content": "not for b", "relevance": 1.0})
        await client.call_tool("share_context", {"from_agent": "a", "to_agent": "b", "context_type": "questions",
                                                 "content": "short-lived", "relevance": 1.0, "ttl_seconds": 1})
        await anyio.sleep(1.2)
        got = (await client.call_tool("get_context", {"agent_id": "b"})).structured_content
        assert got is not None
        assert [i["content"] for i in got["items"]] == ["disk almost full", {"project": "x"}]
        only = (await client.call_tool("get_context", {"agent_id": "b", "min_relevance": 0.8})).structured_content
        assert only is not None and len(only["items"]) == 1
        status = (await client.call_tool("get_collaboration_status", {})).structured_content
        assert status is not None and status["discoveries_total"] == 0


async def test_collection_subscribers_of_both_revisions_are_notified(hub: RunningHub) -> None:
    uri = "discovery://agents/agent-1/discoveries"
    legacy_got = anyio.Event()

    async def on_message(msg: object) -> None:
        if isinstance(msg, types.ResourceUpdatedNotification) and msg.params.uri == uri:
            legacy_got.set()

    async with hub.mcp(mode="legacy", message_handler=on_message) as legacy, hub.mcp() as modern:
        await legacy.subscribe_resource(uri)
        async with modern.listen(resource_subscriptions=[uri]) as listener:
            await anyio.sleep(0.3)  # the legacy client opens its GET stream asynchronously
            await modern.call_tool("share_discovery", SHARE)
            with anyio.fail_after(5):
                async for event in listener:
                    assert event.uri == uri  # type: ignore[union-attr]
                    break
                await legacy_got.wait()
