"""The REST API (`/api/v1`), the operations endpoints and the OpenAPI description, through real HTTP."""

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agenthub.auth import Role
from tests.conftest import RunningHub

SHARE = {"agent_id": "agent-1", "agent_role": "Analyzer", "discovery_type": "Pattern",
         "content": "Unusual pattern in authentication logs", "confidence": 0.85}

# (agent_id, agent_role, discovery_type, confidence) of the discoveries the filter tests share, in order.
MIX = [
    ("a1", "Analyzer", "anomaly", 0.9),
    ("a2", "Researcher", "pattern", 0.4),
    ("a1", "analyzer", "insight", 0.3),
    ("a3", "Researcher", "anomaly", 0.6),
    ("a2", "Researcher", "insight", 0.95),
    ("a3", "Analyzer", "pattern", 0.7),
]


async def share_mix(http: httpx2.AsyncClient) -> None:
    for i, (agent, role, kind, confidence) in enumerate(MIX, start=1):
        r = await http.post("/api/v1/discoveries", json={
            "agent_id": agent, "agent_role": role, "discovery_type": kind, "confidence": confidence,
            "content": f"d{i}"})
        assert r.status_code == 201, r.text


def contents(page: httpx2.Response) -> list[str]:
    assert page.status_code == 200, page.text
    return [d["content"] for d in page.json()["items"]]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, keyed by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def anonymous(hub: RunningHub) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=hub.url, timeout=30)


# -- discoveries -----------------------------------------------------------------------------------------------------


async def test_posting_a_discovery_answers_201_with_the_shape_of_the_mcp_tool(hub: RunningHub) -> None:
    async with hub.http() as http, hub.mcp() as client:
        posted = await http.post("/api/v1/discoveries", json=SHARE)
        tool = await client.call_tool("share_discovery", {**SHARE, "content": "second"})
    assert posted.status_code == 201, posted.text
    assert posted.headers["content-type"] == "application/json"
    rest = posted.json()
    assert tool.structured_content is not None
    assert set(rest) == set(tool.structured_content) == {"discovery_id", "uri", "sequence", "nats_subject",
                                                         "timestamp"}
    assert (rest["sequence"], tool.structured_content["sequence"]) == (1, 2)
    assert rest["nats_subject"] == tool.structured_content["nats_subject"] == \
        f"{hub.state.bus.prefix}discoveries.agent-1.pattern"
    assert rest["uri"] == f"discovery://agents/agent-1/discoveries/{rest['discovery_id']}"
    assert abs(datetime.fromisoformat(rest["timestamp"]) - datetime.now(UTC)) < timedelta(minutes=1)


async def test_a_posted_discovery_is_readable_by_id_and_an_unknown_id_is_a_404_problem(hub: RunningHub) -> None:
    async with hub.http() as http:
        shared = (await http.post("/api/v1/discoveries", json={**SHARE, "tags": ["auth", "logs"]})).json()
        found = await http.get(f"/api/v1/discoveries/{shared['discovery_id']}")
        missing = await http.get("/api/v1/discoveries/disc_doesnotexist")
    assert found.status_code == 200
    assert found.json() == {
        "discovery_id": shared["discovery_id"], "sequence": 1, "agent_id": "agent-1", "agent_role": "Analyzer",
        "discovery_type": "pattern", "content": SHARE["content"], "confidence": 0.85, "related_to": None,
        "tags": ["auth", "logs"], "timestamp": shared["timestamp"],
    }
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["status"] == 404
    assert "disc_doesnotexist" in missing.json()["detail"]


@pytest.mark.parametrize(("query", "expected"), [
    ("", ["d1", "d2", "d3", "d4", "d5", "d6"]),
    ("?type=anomaly", ["d1", "d4"]),
    ("?type=ANOMALY,insight", ["d1", "d3", "d4", "d5"]),
    ("?type=anomaly&type=pattern", ["d1", "d2", "d4", "d6"]),
    ("?role=analyzer", ["d1", "d3", "d6"]),
    ("?agent_id=a2", ["d2", "d5"]),
    ("?agent_id=a1,a3&min_confidence=0.65", ["d1", "d6"]),
    ("?min_confidence=0.9", ["d1", "d5"]),
    ("?type=insight&role=Researcher&agent_id=a2&min_confidence=0.5", ["d5"]),
    ("?agent_id=nobody", []),
])
async def test_listing_discoveries_applies_type_role_agent_and_confidence_filters(
        hub: RunningHub, query: str, expected: list[str]) -> None:
    async with hub.http() as http:
        await share_mix(http)
        page = await http.get(f"/api/v1/discoveries{query}")
    assert contents(page) == expected
    assert page.json()["next_cursor"] == len(MIX)


async def test_walking_pages_by_cursor_returns_every_match_once_and_in_order(hub: RunningHub) -> None:
    async with hub.http() as http:
        for i in range(1, 15):
            await http.post("/api/v1/discoveries", json={
                **SHARE, "content": f"d{i}", "discovery_type": "anomaly" if i % 3 else "pattern"})
        seen: list[str] = []
        cursor, pages = 0, 0
        while True:
            page = await http.get("/api/v1/discoveries", params={"type": "anomaly", "cursor": cursor, "limit": 3})
            items = contents(page)
            seen += items
            cursor, pages = page.json()["next_cursor"], pages + 1
            if len(items) < 3:
                break
        after_end = await http.get("/api/v1/discoveries", params={"type": "anomaly", "cursor": cursor})
    assert seen == [f"d{i}" for i in range(1, 15) if i % 3]
    assert pages == 4  # 3 + 3 + 3 + 1 matches
    assert cursor == 14
    assert contents(after_end) == []
    assert after_end.json()["next_cursor"] == 14


async def test_a_page_holds_at_most_100_discoveries_and_a_future_cursor_is_refused(hub: RunningHub) -> None:
    async with hub.http() as http:
        await share_mix(http)
        largest = await http.get("/api/v1/discoveries", params={"limit": 100})
        too_large = await http.get("/api/v1/discoveries", params={"limit": 101})
        zero = await http.get("/api/v1/discoveries", params={"limit": 0})
        future = await http.get("/api/v1/discoveries", params={"cursor": 7})
    assert len(contents(largest)) == len(MIX)
    assert too_large.status_code == zero.status_code == 422
    assert too_large.json()["errors"][0]["loc"] == "limit"
    assert future.status_code == 400
    assert "beyond the newest" in future.json()["detail"]


# -- subscriptions, context, status ----------------------------------------------------------------------------------


async def test_a_rest_subscription_is_polled_once_per_match_and_deleted(hub: RunningHub) -> None:
    async with hub.http() as http:
        created = await http.post("/api/v1/subscriptions", json={
            "subscriber_agent_id": "watcher", "discovery_types": ["anomaly"], "min_confidence": 0.5})
        assert created.status_code == 201, created.text
        sub = created.json()
        await share_mix(http)
        first = await http.post(f"/api/v1/subscriptions/{sub['subscription_id']}/poll", json={})
        again = await http.post(f"/api/v1/subscriptions/{sub['subscription_id']}/poll", json={})
        replay = await http.post(f"/api/v1/subscriptions/{sub['subscription_id']}/poll", json={"cursor": 0,
                                                                                              "limit": 1})
        deleted = await http.delete(f"/api/v1/subscriptions/{sub['subscription_id']}")
        gone = await http.post(f"/api/v1/subscriptions/{sub['subscription_id']}/poll", json={})
    assert sub["cursor"] == 0
    assert sub["sse_endpoint"] == f"{hub.url}/discoveries/stream?subscription_id={sub['subscription_id']}"
    assert first.status_code == 200
    assert [d["content"] for d in first.json()["discoveries"]] == ["d1", "d4"]
    assert first.json()["cursor"] == len(MIX)
    assert again.json()["discoveries"] == [] and again.json()["cursor"] == len(MIX)
    assert [d["content"] for d in replay.json()["discoveries"]] == ["d1"]
    assert deleted.json() == {"subscription_id": sub["subscription_id"], "removed": True}
    assert gone.status_code == 404
    assert await hub.state.pool.fetchval("SELECT count(*) FROM subscriptions") == 0


async def test_a_rest_long_poll_returns_as_soon_as_a_match_is_shared(hub: RunningHub) -> None:
    async with hub.http() as http:
        sub = (await http.post("/api/v1/subscriptions", json={"subscriber_agent_id": "watcher"})).json()
        result: dict[str, Any] = {}

        async def poll() -> None:
            r = await http.post(f"/api/v1/subscriptions/{sub['subscription_id']}/poll", json={"wait_seconds": 20})
            result.update(r.json())

        with anyio.fail_after(8):
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                await anyio.sleep(0.3)
                await http.post("/api/v1/discoveries", json=SHARE)
    assert [d["content"] for d in result["discoveries"]] == [SHARE["content"]]


async def test_context_shared_over_rest_reaches_only_its_addressee(hub: RunningHub) -> None:
    async with hub.http() as http:
        direct = await http.post("/api/v1/context", json={
            "from_agent": "a", "to_agent": "b", "context_type": "Warnings", "content": "disk almost full",
            "relevance": 0.9})
        await http.post("/api/v1/context", json={"from_agent": "a", "context_type": "background",
                                                 "content": {"project": "x"}, "relevance": 0.5})
        await http.post("/api/v1/context", json={"from_agent": "a", "to_agent": "c", "context_type": "patterns",
                                                 "content": "not for b", "relevance": 1.0})
        for_b = await http.get("/api/v1/context/b")
        relevant = await http.get("/api/v1/context/b", params={"min_relevance": 0.8})
        background = await http.get("/api/v1/context/b", params={"context_type": "background"})
    assert direct.status_code == 201, direct.text
    assert direct.json()["nats_subject"] == f"{hub.state.bus.prefix}context.direct.b"
    assert for_b.status_code == 200
    assert [(i["content"], i["to_agent"]) for i in for_b.json()["items"]] == [
        ("disk almost full", "b"), ({"project": "x"}, None)]
    assert [i["context_type"] for i in relevant.json()["items"]] == ["warnings"]
    assert [i["content"] for i in background.json()["items"]] == [{"project": "x"}]


async def test_status_counts_discoveries_by_type_and_subscriptions(hub: RunningHub) -> None:
    async with hub.http() as http:
        await share_mix(http)
        await http.post("/api/v1/subscriptions", json={"subscriber_agent_id": "watcher"})
        status = await http.get("/api/v1/status")
    assert status.status_code == 200
    assert status.json() == {"discoveries_by_type": {"anomaly": 2, "pattern": 2, "insight": 2},
                             "discoveries_total": 6, "newest_sequence": 6, "oldest_cursor": 0, "subscriptions": 1,
                             "sse_clients": 0}


# -- tokens ----------------------------------------------------------------------------------------------------------


async def test_an_operator_mints_an_agent_token_that_works_only_as_its_agent(hub: RunningHub) -> None:
    async with hub.http() as http:
        minted = await http.post("/api/v1/tokens", json={"role": "agent", "agent_id": "minted"})
        viewer = await http.post("/api/v1/tokens", json={"role": "viewer"})
        no_agent = await http.post("/api/v1/tokens", json={"role": "agent"})
    assert minted.status_code == 201, minted.text
    body = minted.json()
    assert body["role"] == "agent" and body["agent_id"] == "minted"
    assert body["token"].startswith("ah_") and body["token_id"].startswith("tok_")
    assert viewer.status_code == 201 and viewer.json()["agent_id"] is None
    assert no_agent.status_code == 400
    async with hub.http(body["token"]) as agent:
        own = await agent.post("/api/v1/discoveries", json={**SHARE, "agent_id": "minted"})
        other = await agent.post("/api/v1/discoveries", json={**SHARE, "agent_id": "agent-2"})
        escalate = await agent.post("/api/v1/tokens", json={"role": "operator"})
    assert own.status_code == 201
    assert other.status_code == 403
    assert "cannot act as 'agent-2'" in other.json()["detail"]
    assert escalate.status_code == 403
    assert await hub.state.pool.fetchval("SELECT array_agg(agent_id) FROM discoveries") == ["minted"]
    assert await hub.state.pool.fetchval("SELECT count(*) FROM tokens WHERE role = 'operator'") == 1


async def test_only_an_operator_may_mint_tokens(hub: RunningHub) -> None:
    for role, agent_id in [(Role.AGENT, "agent-1"), (Role.VIEWER, None)]:
        async with hub.http(await hub.token(role, agent_id)) as http:
            r = await http.post("/api/v1/tokens", json={"role": "viewer"})
        assert r.status_code == 403, role
    assert await hub.state.pool.fetchval("SELECT count(*) FROM tokens WHERE role = 'viewer'") == 1


# -- operations ------------------------------------------------------------------------------------------------------


async def test_health_and_readiness_answer_without_a_token(hub: RunningHub) -> None:
    async with anonymous(hub) as http:
        health = await http.get("/health")
        ready = await http.get("/ready")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["uptime_seconds"] >= 0
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"nats": "ok", "postgres": "ok", "supervisor": "ok"},
                            "heartbeats": "judged"}


async def test_the_hub_is_not_ready_once_its_root_supervisor_has_stopped(hub: RunningHub) -> None:
    await hub.state.supervisor.stop(5)
    async with anonymous(hub) as http:
        ready = await http.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["supervisor"].startswith("stopped")


async def test_metrics_count_tool_calls_latency_discoveries_and_pool_connections(hub: RunningHub) -> None:
    async with hub.mcp() as client:
        for kind in ("pattern", "pattern", "anomaly"):
            assert not (await client.call_tool("share_discovery", {**SHARE, "discovery_type": kind})).is_error
        assert (await client.call_tool("share_discovery", {**SHARE, "confidence": 2})).is_error
        await client.call_tool("get_collaboration_status", {})
    async with hub.http() as http:
        await http.post("/api/v1/discoveries", json={**SHARE, "discovery_type": "insight"})
    async with anonymous(hub) as http:
        scraped = await http.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    s = samples(scraped.text)

    def value(name: str, **labels: str) -> float:
        return s[(name, frozenset(labels.items()))]

    assert value("agenthub_tool_calls_total", tool="share_discovery", outcome="ok") == 3
    assert value("agenthub_tool_calls_total", tool="share_discovery", outcome="invalid") == 1
    assert value("agenthub_tool_calls_total", tool="get_collaboration_status", outcome="ok") == 1
    assert value("agenthub_tool_call_seconds_count", tool="share_discovery") == 4
    assert value("agenthub_tool_call_seconds_bucket", tool="share_discovery", le="+Inf") == 4
    assert 0 < value("agenthub_tool_call_seconds_sum", tool="share_discovery") < 10
    # Shares count whichever way they came in, REST included.
    assert value("agenthub_discoveries_total", type="pattern") == 2
    assert value("agenthub_discoveries_total", type="anomaly") == 1
    assert value("agenthub_discoveries_total", type="insight") == 1
    assert value("agenthub_db_pool_connections", state="max") == hub.state.settings.db_pool_size
    assert value("agenthub_db_pool_connections", state="idle") + value("agenthub_db_pool_connections",
                                                                       state="in_use") >= 1
    assert value("agenthub_nats_publish_failures_total") == 0


async def test_system_metrics_report_agents_nats_and_process_values(hub: RunningHub) -> None:
    async with hub.http() as http:
        await http.get("/metrics/system")  # starts the message-rate window
        await share_mix(http)  # discoveries from a1, a2, a3: agents that connected, not agents the hub runs
        r = await http.get("/metrics/system")
    assert r.status_code == 200
    m = r.json()
    assert set(m) == {"timestamp", "agents", "nats", "system", "tasks", "approvals", "discoveries", "sse_clients",
                      "open_breakers", "health", "heartbeats"}
    assert m["approvals"] == {"pending": 0}
    assert m["heartbeats"] == "judged"
    assert m["timestamp"].endswith("Z")
    assert abs(datetime.fromisoformat(m["timestamp"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert m["agents"] == {"total": 0, "idle": 0, "busy": 0, "by_state": {}}  # tests/test_agents.py spawns some
    assert set(m["nats"]) == {"connections", "messages_per_sec"}
    assert m["nats"]["connections"] >= 1
    assert m["nats"]["messages_per_sec"] > 0  # the shares were published
    assert set(m["system"]) == {"cpu_percent", "memory_mb"}
    assert m["system"]["cpu_percent"] >= 0
    assert 10 < m["system"]["memory_mb"] < 64 * 1024
    # What the dashboard's overview adds.
    assert m["tasks"] == {"by_state": {}} and m["sse_clients"] == 0 and m["open_breakers"] == 0
    assert m["health"] == {"nats": "ok", "postgres": "ok"}
    assert m["discoveries"]["total"] == len(MIX)
    per_minute = m["discoveries"]["per_minute"]  # one bucket, or two if the shares straddled a minute
    assert 1 <= len(per_minute) <= 2 and sum(n for b in per_minute for n in b["by_type"].values()) == len(MIX)


async def test_openapi_describes_every_api_path_with_resolvable_schemas(hub: RunningHub) -> None:
    async with anonymous(hub) as http:
        r = await http.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    methods = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert methods >= {
        ("/api/v1/discoveries", "post"), ("/api/v1/discoveries", "get"), ("/api/v1/discoveries/{discovery_id}", "get"),
        ("/api/v1/subscriptions", "post"), ("/api/v1/subscriptions/{subscription_id}/poll", "post"),
        ("/api/v1/subscriptions/{subscription_id}", "delete"), ("/api/v1/context", "post"),
        ("/api/v1/context/{agent_id}", "get"), ("/api/v1/status", "get"), ("/api/v1/tokens", "post"),
        ("/discoveries/stream", "get"),
    }
    schemas = doc["components"]["schemas"]
    assert {"ShareDiscoveryInput", "SharedDiscovery", "Discovery", "DiscoveryPage", "SubscribeInput",
            "ShareContextInput", "TokenRequest", "TokenCreated"} <= set(schemas)
    assert set(schemas["ShareDiscoveryInput"]["required"]) == {"agent_id", "agent_role", "discovery_type", "content",
                                                               "confidence"}
    post = doc["paths"]["/api/v1/discoveries"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ShareDiscoveryInput"}
    assert "201" in post["responses"]
    listed = doc["paths"]["/api/v1/discoveries"]["get"]
    assert {p["name"] for p in listed["parameters"]} == {"type", "role", "agent_id", "min_confidence", "cursor",
                                                         "limit"}

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    dangling = {ref for ref in refs(doc) if ref.removeprefix("#/components/schemas/") not in schemas}
    assert dangling == set()
