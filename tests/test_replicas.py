"""Several replicas on one database and one NATS: the NATS payload, delivery across replicas (SSE, long-poll,
stateless MCP), many concurrent sharers against filtered subscribers, concurrent migrations, and restarts."""

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import asyncpg
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agenthub.database import apply_migrations, migration_files
from collaboration.models import DISCOVERY_TYPES
from tests.conftest import HubFactory, RunningHub

SHARE = {"agent_id": "agent-1", "agent_role": "Analyzer", "discovery_type": "Pattern",
         "content": "Unusual pattern in authentication logs", "confidence": 0.85}


@dataclass
class Received:
    """What one subscriber got, and an event set once it has at least as many as it should."""

    sequences: list[int] = field(default_factory=list)
    want: int | None = None
    complete: anyio.Event = field(default_factory=anyio.Event)

    def add(self, sequence: int) -> None:
        self.sequences.append(sequence)
        self._check()

    def expect(self, count: int) -> None:
        self.want = count
        self._check()

    def _check(self) -> None:
        if self.want is not None and len(self.sequences) >= self.want:
            self.complete.set()


async def follow_stream(hub: RunningHub, params: list[tuple[str, str]], into: Received,
                        connected: anyio.Event) -> None:
    """Read `GET /discoveries/stream` until cancelled, recording each discovery's sequence."""
    async with hub.http() as http, http.stream("GET", "/discoveries/stream", params=params,
                                               timeout=httpx2.Timeout(30, read=None)) as response:
        assert response.status_code == 200, await response.aread()
        async for event in httpx2.EventSource(response):
            if event.event == "connected":
                connected.set()
            elif event.event == "discovery":
                data: Any = event.json()
                assert data["discovery"]["sequence"] == int(event.id)
                into.add(int(event.id))


class Router(httpx2.AsyncBaseTransport):
    """A load balancer in front of replicas: sends every request to the port in `target`, and records where
    each JSON-RPC method went and whether it carried a session id."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.served: list[tuple[int, str]] = []
        self.session_ids: set[str] = set()
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.url = request.url.copy_with(port=self.target)
        if "mcp-session-id" in request.headers:
            self.session_ids.add(request.headers["mcp-session-id"])
        if request.method == "POST":
            body = json.loads(await request.aread())
            name = body.get("params", {}).get("name", "") if isinstance(body, dict) else ""
            self.served.append((self.target, f"{body.get('method')}:{name}" if isinstance(body, dict) else "batch"))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@asynccontextmanager
async def routed_mcp(first: RunningHub) -> AsyncIterator[tuple[Client, Router]]:
    """A 2026-protocol MCP client whose requests go wherever its router points."""
    router = Router(int(first.url.rsplit(":", 1)[1]))
    http = httpx2.AsyncClient(transport=router, headers={"Authorization": f"Bearer {first.operator_token}"},
                              timeout=httpx2.Timeout(60, read=300))
    async with Client(streamable_http_client(first.mcp_url, http_client=http)) as client:
        assert client.protocol_version == "2026-07-28"
        yield client, router


def port_of(hub: RunningHub) -> int:
    return int(hub.url.rsplit(":", 1)[1])


async def test_every_shared_discovery_is_published_on_its_nats_subject(hub: RunningHub) -> None:
    prefix = hub.state.bus.prefix
    messages: list[tuple[str, dict[str, Any]]] = []
    two = anyio.Event()

    async def on_message(msg: Any) -> None:
        messages.append((msg.subject, json.loads(msg.data)))
        if len(messages) == 2:
            two.set()

    sub = await hub.state.bus.nc.subscribe(f"{prefix}discoveries.>", cb=on_message)
    try:
        async with hub.mcp() as client:
            first = (await client.call_tool("share_discovery", SHARE)).structured_content
            assert first is not None
            second = (await client.call_tool("share_discovery", {
                **SHARE, "agent_id": "agent-2", "agent_role": "Critic", "discovery_type": "INSIGHT",
                "content": "it is a brute-force attempt", "confidence": 0.5, "related_to": first["discovery_id"]})
            ).structured_content
            assert second is not None
        with anyio.fail_after(5):
            await two.wait()
    finally:
        await sub.unsubscribe()

    assert [subject for subject, _ in messages] == [f"{prefix}discoveries.agent-1.pattern",
                                                    f"{prefix}discoveries.agent-2.insight"]
    payload = messages[0][1]
    assert set(payload) == {"discovery_id", "sequence", "agent_id", "agent_role", "discovery_type", "content",
                            "confidence", "timestamp", "related_to", "tags"}
    assert payload["discovery_id"] == first["discovery_id"]
    assert payload["sequence"] == 1
    assert (payload["agent_id"], payload["agent_role"], payload["discovery_type"]) == ("agent-1", "Analyzer",
                                                                                        "pattern")
    assert (payload["content"], payload["confidence"], payload["related_to"]) == (SHARE["content"], 0.85, None)
    stored = await hub.state.pool.fetchval("SELECT created_at FROM discoveries WHERE sequence = 1")
    assert datetime.fromisoformat(payload["timestamp"]) == stored
    answer = messages[1][1]
    assert (answer["sequence"], answer["discovery_type"], answer["related_to"]) == (2, "insight",
                                                                                    first["discovery_id"])
    assert answer["discovery_id"] == second["discovery_id"]


async def test_a_discovery_shared_on_one_replica_reaches_sse_and_long_poll_on_another(
        hub_factory: HubFactory) -> None:
    async with hub_factory.run() as a, hub_factory.run() as b, b.mcp() as poller:
        sub = (await poller.call_tool("subscribe_discoveries", {"subscriber_agent_id": "watcher"})
               ).structured_content
        assert sub is not None
        streamed = Received()
        polled: dict[str, Any] = {}
        connected, poll_returned = anyio.Event(), anyio.Event()

        async def long_poll() -> None:
            result = await poller.call_tool("poll_discoveries", {"subscription_id": sub["subscription_id"],
                                                                 "wait_seconds": 20})
            polled.update(result.structured_content or {})
            poll_returned.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow_stream, b, [("type", "pattern")], streamed, connected)
                tg.start_soon(long_poll)
                await connected.wait()
                await anyio.sleep(0.3)  # let the long poll reach its wait; it returns at once if it has not
                async with a.http() as http:
                    response = await http.post("/api/v1/discoveries", json=SHARE)
                assert response.status_code == 201, response.text
                streamed.expect(1)
                await streamed.complete.wait()
                await poll_returned.wait()
                tg.cancel_scope.cancel()
        assert streamed.sequences == [1]
        assert [d["content"] for d in polled["discoveries"]] == [SHARE["content"]]
        assert polled["cursor"] == 1


async def test_a_stateless_mcp_client_subscribes_on_one_replica_and_polls_on_another(
        hub_factory: HubFactory) -> None:
    async with hub_factory.run() as a, hub_factory.run() as b, routed_mcp(a) as (client, router):
        sub = (await client.call_tool("subscribe_discoveries", {"subscriber_agent_id": "watcher",
                                                                "discovery_types": ["pattern"]})).structured_content
        assert sub is not None
        await client.call_tool("share_discovery", SHARE)
        await client.call_tool("share_discovery", {**SHARE, "discovery_type": "anomaly", "content": "other"})
        router.target = port_of(b)
        page = (await client.call_tool("poll_discoveries", {"subscription_id": sub["subscription_id"]})
                ).structured_content
        assert page is not None
        again = (await client.call_tool("poll_discoveries", {"subscription_id": sub["subscription_id"]})
                 ).structured_content
    assert [d["content"] for d in page["discoveries"]] == [SHARE["content"]]
    assert page["cursor"] == 2
    assert again is not None and again["discoveries"] == [] and again["cursor"] == 2
    assert "Pass cursor=2 in your next poll" in again["next"]
    assert (port_of(a), "tools/call:subscribe_discoveries") in router.served
    assert (port_of(b), "tools/call:poll_discoveries") in router.served
    assert router.session_ids == set()


@dataclass(frozen=True)
class Shared:
    sequence: int
    agent_id: str
    agent_role: str
    discovery_type: str
    confidence: float


async def test_concurrent_sharers_on_two_replicas_give_each_subscriber_exactly_its_matches_in_order(
        hub_factory: HubFactory) -> None:
    agents, per_agent = 20, 50
    roles = ["Analyzer", "Builder", "Critic"]
    filters: dict[str, Callable[[Shared], bool]] = {
        "anomalies and insights": lambda s: s.discovery_type in ("anomaly", "insight"),
        "confident analyzers": lambda s: s.agent_role == "Analyzer" and s.confidence >= 0.5,
        "everything": lambda s: True,
        "two agents": lambda s: s.agent_id in ("agent-03", "agent-14"),
        "critics' patterns": lambda s: s.agent_role == "Critic" and s.discovery_type == "pattern",
        "very confident": lambda s: s.confidence >= 0.9,
    }
    received = {name: Received() for name in filters}
    shared: list[Shared] = []

    async with hub_factory.run() as a, hub_factory.run() as b:
        replicas = [a, b]

        async def share_all(agent: int, http: httpx2.AsyncClient) -> None:
            agent_id, role = f"agent-{agent:02d}", roles[agent % 3]
            for j in range(per_agent):
                kind, confidence = DISCOVERY_TYPES[(agent + j) % 6], ((agent * 7 + j * 13) % 101) / 100
                response = await http.post("/api/v1/discoveries", json={
                    "agent_id": agent_id, "agent_role": role, "discovery_type": kind.upper() if j % 2 else kind,
                    "content": f"{agent_id} #{j}", "confidence": confidence})
                assert response.status_code == 201, response.text
                shared.append(Shared(sequence=response.json()["sequence"], agent_id=agent_id, agent_role=role,
                                     discovery_type=kind, confidence=confidence))

        async def poll_all(client: Client, subscribe: dict[str, Any], name: str, router: Router | None) -> None:
            sub = (await client.call_tool("subscribe_discoveries", {"subscriber_agent_id": "watcher", **subscribe})
                   ).structured_content
            assert sub is not None
            if router is not None:
                router.target = port_of(b)  # subscribed on A, polls on B
            cursor = sub["cursor"]
            while not received[name].complete.is_set():
                page = (await client.call_tool("poll_discoveries", {
                    "subscription_id": sub["subscription_id"], "cursor": cursor, "limit": 100, "wait_seconds": 1,
                })).structured_content
                assert page is not None
                for d in page["discoveries"]:
                    received[name].add(d["sequence"])
                cursor = page["cursor"]

        with anyio.fail_after(50):
            async with (a.http() as http_a, b.http() as http_b, routed_mcp(a) as (routed, router),
                        b.mcp() as local, anyio.create_task_group() as tg):
                streams = [
                    (a, [("type", "anomaly"), ("type", "INSIGHT")], "anomalies and insights"),
                    (b, [("role", "analyzer"), ("min_confidence", "0.5")], "confident analyzers"),
                    (b, [], "everything"),
                    (a, [("agent_id", "agent-03"), ("agent_id", "agent-14"), ("start", "0")], "two agents"),
                ]
                for replica, params, name in streams:
                    connected = anyio.Event()
                    tg.start_soon(follow_stream, replica, params, received[name], connected)
                    await connected.wait()
                tg.start_soon(poll_all, routed, {"agent_roles": ["critic"], "discovery_types": ["Pattern"]},
                              "critics' patterns", router)
                tg.start_soon(poll_all, local, {"min_confidence": 0.9}, "very confident", None)
                async with anyio.create_task_group() as sharers:
                    for agent in range(agents):
                        sharers.start_soon(share_all, agent, (http_a, http_b)[agent % 2])
                for name, matches in filters.items():
                    received[name].expect(sum(1 for s in shared if matches(s)))
                for name in filters:
                    await received[name].complete.wait()
                tg.cancel_scope.cancel()

        stored = [r["sequence"] for r in await a.state.pool.fetch("SELECT sequence FROM discoveries ORDER BY 1")]
        counter = await a.state.pool.fetchval("SELECT last FROM discovery_counter")
        drops = [hub.state.metrics.registry.get_sample_value("agenthub_sse_dropped_clients_total") for hub in replicas]

    total = agents * per_agent
    assert stored == list(range(1, total + 1))
    assert counter == total
    assert sorted(s.sequence for s in shared) == stored
    for agent in range(agents):
        mine = [s.sequence for s in shared if s.agent_id == f"agent-{agent:02d}"]
        assert mine == sorted(mine)  # one agent's discoveries, shared one after another, are numbered in order
    for name, matches in filters.items():
        expected = sorted(s.sequence for s in shared if matches(s))
        assert expected, name
        assert received[name].sequences == expected, name
    assert drops == [0, 0]


async def test_concurrent_migrations_apply_each_version_once(database_url: str) -> None:
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        results: list[list[str]] = []

        async def migrate(conn: asyncpg.Connection) -> None:
            results.append(await apply_migrations(conn))

        async with anyio.create_task_group() as tg:
            tg.start_soon(migrate, first)
            tg.start_soon(migrate, second)
        versions = [version for version, _ in migration_files()]
        assert sorted(results, key=len) == [[], versions]
        recorded = [r["version"] for r in await first.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
        assert recorded == versions
        assert await second.fetchval("SELECT last FROM discovery_counter") == 0
        assert await apply_migrations(second) == []
        assert await first.fetchval("SELECT count(*) FROM schema_migrations") == len(versions)
    finally:
        await first.close()
        await second.close()


async def test_a_restarted_hub_keeps_every_discovery_and_continues_the_sequence(hub_factory: HubFactory) -> None:
    async with hub_factory.run() as hub, hub.http() as http:
        for i in range(3):
            response = await http.post("/api/v1/discoveries", json={**SHARE, "content": f"before {i}"})
            assert response.status_code == 201
    async with hub_factory.run() as hub, hub.http() as http:
        assert hub.state.collab.feed.frontier == 3
        streamed = Received()
        connected = anyio.Event()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow_stream, hub, [("start", "beginning")], streamed, connected)
                await connected.wait()
                response = await http.post("/api/v1/discoveries", json={**SHARE, "content": "after"})
                streamed.expect(4)
                await streamed.complete.wait()
                tg.cancel_scope.cancel()
        listed = (await http.get("/api/v1/discoveries")).json()
    assert response.json()["sequence"] == 4
    assert [d["content"] for d in listed["items"]] == ["before 0", "before 1", "before 2", "after"]
    assert streamed.sequences == [1, 2, 3, 4]
