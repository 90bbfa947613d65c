"""The discovery log as a long-lived hub holds it: counts kept on write across replicas, retention with a clear
answer for expired cursors, paged catch-up, and JSON Lines export and import through the REST API and the CLI."""

import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import asyncpg
import pytest
from mcp.types import CallToolResult

from agenthub.auth import Role
from collaboration.filters import DiscoveryFilter
from collaboration.models import Discovery
from mcp_server import cli
from tests.conftest import HubFactory, RunningHub, Services
from tests.test_feed import insert_silently, line


async def _share(hub: RunningHub, n: int, *, agent: str = "a1", kind: str = "insight") -> list[dict[str, object]]:
    async with hub.http() as http:
        out = []
        for i in range(n):
            resp = await http.post("/api/v1/discoveries", json={
                "agent_id": agent, "agent_role": "Analyzer", "discovery_type": kind, "content": f"{agent} {i}",
                "confidence": 0.5})
            assert resp.status_code == 201, resp.text
            out.append(resp.json())
        return out


async def _truth(pool: asyncpg.Pool) -> tuple[dict[str, int], dict[str, int]]:
    by_type = {r["discovery_type"]: r["n"] for r in await pool.fetch(
        "SELECT discovery_type, count(*) AS n FROM discoveries GROUP BY 1")}
    by_agent = {r["agent_id"]: r["n"] for r in await pool.fetch(
        "SELECT agent_id, count(*) AS n FROM discoveries GROUP BY 1")}
    return by_type, by_agent


async def test_counts_stay_right_across_concurrent_shares_on_two_replicas(hub_factory: HubFactory) -> None:
    async with hub_factory.run() as a, hub_factory.run(hub_factory.settings(data_dir=hub_factory.tmp_path / "b")) as b:
        kinds = ["insight", "pattern", "anomaly"]
        async with anyio.create_task_group() as tg:
            for i, hub in enumerate([a, b, a, b, a, b]):
                tg.start_soon(lambda h=hub, i=i: _share(h, 15, agent=f"agent{i % 4}", kind=kinds[i % 3]))
        by_type, by_agent = await _truth(a.state.pool)
        assert sum(by_type.values()) == 90
        async with b.http() as http:
            status = (await http.get("/api/v1/status")).json()
        assert status["discoveries_by_type"] == by_type
        assert status["discoveries_total"] == 90 == status["newest_sequence"]
        async with a.mcp() as client:
            listed = await client.list_resources()
        assert sorted(str(r.uri) for r in listed.resources) == sorted(
            f"discovery://agents/{agent}/discoveries" for agent in by_agent)
        kept = {r["agent_id"]: r["n"] for r in await a.state.pool.fetch("SELECT agent_id, n FROM discovery_agents")}
        assert kept == by_agent


async def test_retention_keeps_the_newest_and_expired_cursors_get_the_oldest_position(
        hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(retention={"max_discoveries": 10, "interval_seconds": 3600, "batch": 4})
    async with hub_factory.run(settings) as hub:
        await _share(hub, 25, agent="old")
        await _share(hub, 5, agent="new")
        async with hub.http() as http:
            sub = (await http.post("/api/v1/subscriptions", json={"subscriber_agent_id": "w", "start": 3})).json()
            assert await hub.state.collab.retention.apply() == 20  # 4 at a time, until 10 are left
            assert await hub.state.collab.retention.apply() == 0

            page = (await http.get("/api/v1/discoveries", params={"cursor": 20})).json()
            assert [d["sequence"] for d in page["items"]] == list(range(21, 31))
            status = (await http.get("/api/v1/status")).json()
            assert (status["oldest_cursor"], status["discoveries_total"]) == (20, 10)

            expired = await http.get("/api/v1/discoveries", params={"cursor": 5})
            assert expired.status_code == 410
            assert expired.json()["oldest_cursor"] == 20 and "cursor 20" in expired.json()["detail"]
            poll = await http.post(f"/api/v1/subscriptions/{sub['subscription_id']}/poll", json={})
            assert poll.status_code == 410
            resumed = await http.post(f"/api/v1/subscriptions/{sub['subscription_id']}/poll", json={"cursor": 20})
            assert [d["sequence"] for d in resumed.json()["discoveries"]] == list(range(21, 31))
            late = await http.post("/api/v1/subscriptions", json={"subscriber_agent_id": "w", "start": 19})
            assert late.status_code == 410
            beginning = (await http.post("/api/v1/subscriptions",
                                         json={"subscriber_agent_id": "w", "start": "beginning"})).json()
            assert beginning["cursor"] == 20
            stream = await http.get("/discoveries/stream", headers={"Last-Event-ID": "7"})
            assert stream.status_code == 410 and stream.json()["oldest_cursor"] == 20
            hub_stream = await http.get("/events/stream", headers={"Last-Event-ID": "7.0"})
            assert hub_stream.status_code == 410

        async with hub.mcp() as client:
            result = await client.call_tool("poll_discoveries",
                                            {"subscription_id": sub["subscription_id"], "cursor": 5})
            assert isinstance(result, CallToolResult) and result.is_error
            assert "continue from cursor 20" in str(result.content[0])
            listed = await client.list_resources()
        # "old" has 5 discoveries left (21..25): it stays listed; the counts follow the deletes.
        assert {str(r.uri) for r in listed.resources} == {"discovery://agents/old/discoveries",
                                                          "discovery://agents/new/discoveries"}
        by_type, by_agent = await _truth(hub.state.pool)
        assert by_agent == {"old": 5, "new": 5}
        assert (await hub.state.collab.log.counts_by_type()) == by_type


async def test_retention_by_age_deletes_only_the_old_prefix(hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(retention={"max_age_seconds": 3600, "interval_seconds": 3600})
    async with hub_factory.run(settings) as hub:
        log = hub.state.collab.log
        long_ago = datetime.now(UTC) - timedelta(days=2)
        await log.import_many([line(i, "history", timestamp=long_ago + timedelta(seconds=i)) for i in range(30)])
        await _share(hub, 3, agent="today")
        await log.import_many([line(100, "history", timestamp=long_ago)])  # old, but after a young one: kept
        assert await hub.state.collab.retention.apply() == 30
        assert await log.bounds() == (30, 34)
        items, _ = await log.read(DiscoveryFilter(), 30, 100)
        assert [d.agent_id for d in items] == ["today"] * 3 + ["history"]
        assert {a for a, _ in await log.agents(10)} == {"today", "history"}


async def test_a_feed_far_behind_catches_up_page_by_page_every_discovery_once_in_order(
        hub_factory: HubFactory) -> None:
    async with hub_factory.run(hub_factory.settings(feed_sync_seconds=3600)) as hub:
        delivered: list[int] = []

        async def record(d: Discovery) -> None:
            delivered.append(d.sequence)

        hub.state.collab.feed.add_hook(record)
        # 2,500 written without a word on NATS (three pages of the feed's catch-up), then one share announces 2,501.
        await hub.state.collab.log.import_many([line(i, "bulk") for i in range(2500)])
        await _share(hub, 1)
        with anyio.fail_after(30):
            while len(delivered) < 2501:
                await hub.state.collab.feed.wait_beyond(hub.state.collab.feed.frontier, 1)
        assert delivered == list(range(1, 2502))


@pytest.fixture
async def other_database_url(services: Services) -> AsyncIterator[str]:
    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(services.admin_database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield services.admin_database_url.rsplit("/", 1)[0] + f"/{name}"
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


def _run_cli(*args: str) -> None:
    try:
        cli.main(list(args))
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code


async def test_export_then_import_into_another_hub_keeps_every_discovery_and_can_be_run_again(
        hub_factory: HubFactory, other_database_url: str, tmp_path: Path) -> None:
    source = hub_factory
    target = HubFactory(services=source.services, database_url=other_database_url, prefix=source.prefix + "b.",
                        tmp_path=tmp_path / "target")
    export = tmp_path / "export.jsonl"
    async with source.run() as a:
        first = (await _share(a, 3, agent="asker", kind="question"))[0]
        async with a.http() as http:
            reply = await http.post("/api/v1/discoveries", json={
                "agent_id": "helper", "agent_role": "Helper", "discovery_type": "solution", "content": "answer ✓",
                "confidence": 0.9, "related_to": first["discovery_id"], "tags": ["db", "fix"]})
            assert reply.status_code == 201
            ctx = await http.post("/api/v1/context", json={"from_agent": "asker", "to_agent": "helper",
                                                           "context_type": "background", "content": {"k": "v"},
                                                           "relevance": 0.4, "ttl_seconds": 600})
            assert ctx.status_code == 201
            viewer = await a.token(Role.VIEWER)
            async with a.http(viewer) as as_viewer:
                assert (await as_viewer.get("/api/v1/discoveries/export")).status_code == 403
        original, _ = await a.state.collab.log.read(DiscoveryFilter(), 0, 100)
        await anyio.to_thread.run_sync(_run_cli, "discoveries", "export", "--context", "--output", str(export),
                                       "--url", a.url, "--data-dir", str(a.data_dir))
        partial = tmp_path / "partial.jsonl"
        await anyio.to_thread.run_sync(_run_cli, "discoveries", "export", "--after", "2", "--output", str(partial),
                                       "--url", a.url, "--data-dir", str(a.data_dir))
    lines = [json.loads(raw) for raw in export.read_text().splitlines()]
    assert [x["kind"] for x in lines] == ["discovery"] * 4 + ["context"]
    assert [json.loads(raw)["sequence"] for raw in partial.read_text().splitlines()] == [3, 4]

    async with target.run() as b:
        await _share(b, 2, agent="local")  # the target has its own history: imported ones come after it
        async with b.http() as http:
            sub = (await http.post("/api/v1/subscriptions", json={"subscriber_agent_id": "w"})).json()
            # An interrupted import: the second half first, then the whole file; nothing twice.
            await anyio.to_thread.run_sync(_run_cli, "discoveries", "import", str(partial), "--url", b.url,
                                           "--data-dir", str(b.data_dir))
            await anyio.to_thread.run_sync(_run_cli, "discoveries", "import", str(export), "--chunk-lines", "2",
                                           "--url", b.url, "--data-dir", str(b.data_dir))
            polled = (await http.post(f"/api/v1/subscriptions/{sub['subscription_id']}/poll",
                                      json={"wait_seconds": 5})).json()
            context = (await http.get("/api/v1/context/helper")).json()["items"]
        imported, _ = await b.state.collab.log.read(DiscoveryFilter(agent_ids=frozenset({"asker", "helper"})), 0, 100)
        assert sorted(d.sequence for d in imported) == [3, 4, 5, 6]
        assert len(polled["discoveries"]) == 4  # a live subscriber saw them like any shared ones

        def essence(d: Discovery) -> tuple[object, ...]:
            return (d.discovery_id, d.agent_id, d.agent_role, d.discovery_type, d.content, d.confidence,
                    d.related_to, d.tags, d.timestamp)

        assert sorted(map(essence, imported)) == sorted(map(essence, original))
        assert [c["content"] for c in context] == [{"k": "v"}]
        async with b.http() as http:
            again = await http.post("/api/v1/discoveries/import", content=export.read_bytes())
            status = (await http.get("/api/v1/status")).json()
        assert again.json() == {"discoveries_imported": 0, "discoveries_skipped": 4, "context_imported": 0,
                                "context_skipped": 1, "newest_sequence": None}
        assert (status["discoveries_total"], status["newest_sequence"]) == (6, 6)


async def test_a_bad_import_is_refused_whole_with_the_line_that_is_wrong(hub: RunningHub) -> None:
    good = line(1, "x").model_dump_json()
    bad_lines = [
        '{"kind": "discovery"}',
        good.replace('"confidence":0.5', '"confidence":2'),
        good.replace('"agent_id":"x"', '"agent_id":"x y"'),
        good.replace('"content":"c1"', '"content":"c1\\u0000"').replace("disc_x", "disc_z"),
        '{"kind": "something else"}',
        "not json",
    ]
    async with hub.http() as http:
        for bad in bad_lines:
            resp = await http.post("/api/v1/discoveries/import", content=f"{good}\n{bad}\n")
            assert resp.status_code == 400, (bad, resp.text)
            assert "line 2" in resp.json()["detail"]
        too_many = await http.post("/api/v1/discoveries/import", content="\n".join(["{}"] * 5001))
        assert too_many.status_code == 400
        agent = await hub.token(Role.AGENT, "x")
        async with hub.http(agent) as as_agent:
            assert (await as_agent.post("/api/v1/discoveries/import", content=good)).status_code == 403
        assert (await http.get("/api/v1/status")).json()["discoveries_total"] == 0
        ok = await http.post("/api/v1/discoveries/import", content=good + "\n\n")
        assert ok.json()["discoveries_imported"] == 1
        assert (await http.get("/api/v1/discoveries/export", params={"after": 9})).status_code == 400


async def test_imported_history_reaches_subscribers_but_old_questions_are_not_routed(hub: RunningHub) -> None:
    log = hub.state.collab.log
    await insert_silently(log, [line(1, "asker", discovery_type="question", timestamp=datetime.now(UTC)
                                     - timedelta(days=1))])
    def stale() -> float:
        value = hub.state.metrics.registry.get_sample_value("agenthub_questions_unrouted_total", {"reason": "stale"})
        return value or 0.0

    async with hub.http() as http:
        resp = await http.post("/api/v1/discoveries/import", content=line(2, "asker", discovery_type="question",
                               timestamp=datetime.now(UTC) - timedelta(days=1)).model_dump_json())
        assert resp.json()["discoveries_imported"] == 1
    with anyio.fail_after(10):
        while stale() < 2:  # noqa: ASYNC110 - a Prometheus counter has no event to wait on
            await anyio.sleep(0.05)


async def test_a_feed_behind_what_retention_deleted_skips_to_the_oldest_retained_and_streams_are_told(
        hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(feed_sync_seconds=3600, retention={"max_discoveries": 10})
    async with hub_factory.run(settings) as hub:
        feed = hub.state.collab.feed
        await hub.state.collab.log.import_many([line(i, "bulk") for i in range(50)])  # the feed does not know yet
        assert await hub.state.collab.retention.apply() == 40
        async with hub.http() as http, http.stream("GET", "/discoveries/stream", params={"start": "40"}) as stream:
            assert stream.status_code == 200
            await _share(hub, 1)
            with anyio.fail_after(10):
                while feed.frontier < 51:
                    await feed.wait_beyond(feed.frontier, 1)
            ids = []
            with anyio.fail_after(10):
                async for text in stream.aiter_lines():
                    if text.startswith("id: "):
                        ids.append(int(text[4:]))
                    if len(ids) == 11:
                        break
        assert ids == list(range(41, 52))
