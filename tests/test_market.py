"""The market end to end through REST and MCP with real agent processes: funding, auctions, escrow, settlement,
and the bad inputs that must move nothing."""

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import pytest

from agenthub.auth import Role
from tests.agents_helpers import FAST_POLICY, eventually, wait_for
from tests.conftest import HubFactory, RunningHub


@pytest.fixture
async def market_hub(hub_factory: HubFactory) -> AsyncIterator[RunningHub]:
    settings = hub_factory.settings(agents={"heartbeat_seconds": 0.5},
                                    market={"close_interval_seconds": 0.1, "accept_after_seconds": 3600})
    async with hub_factory.run(settings) as running:
        yield running


def key() -> str:
    return str(uuid.uuid4())


def worker(agent_id: str, price_percent: int, capabilities: list[str]) -> dict[str, Any]:
    return {"agent_id": agent_id, "role": "worker", "capabilities": capabilities, "executor": "scripted",
            "executor_config": {"behaviour": "worker", "price_percent": price_percent, "estimated_seconds": 5},
            "restart_policy": FAST_POLICY}


async def deposit(http: httpx2.AsyncClient, account: str, amount: int) -> None:
    r = await http.post(f"/api/v1/accounts/{account}/deposit", json={"amount": amount, "idempotency_key": key()})
    assert r.status_code == 201, r.text


async def balance(http: httpx2.AsyncClient, account: str) -> int:
    r = await http.get(f"/api/v1/accounts/{account}")
    assert r.status_code == 200, r.text
    return int(r.json()["balance"])


async def submit(http: httpx2.AsyncClient, budget: int, *, capabilities: list[str], seconds: float = 1.5,
                 requester: str = "alice", idempotency_key: str | None = None) -> httpx2.Response:
    return await http.post("/api/v1/tasks", json={
        "requester_id": requester, "description": "Summarise the weekly error report in five words",
        "required_capabilities": capabilities, "budget": budget, "bidding_seconds": seconds,
        "idempotency_key": idempotency_key or key()})


async def task_state(http: httpx2.AsyncClient, task_id: str, *states: str, seconds: float = 20) -> dict[str, Any]:
    task: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal task
        task = (await http.get(f"/api/v1/tasks/{task_id}")).json()
        return task["state"] in states

    await eventually(reached, seconds, f"task {task_id} in {states}")
    return task


async def test_scripted_agents_bid_win_work_and_get_paid_and_the_books_balance(market_hub: RunningHub) -> None:
    async with market_hub.http() as http:
        await deposit(http, "requester:alice", 1000)
        await http.post("/api/v1/agents", json=worker("cheap", 40, ["summarize"]))
        await http.post("/api/v1/agents", json=worker("dear", 60, ["summarize"]))
        await http.post("/api/v1/agents", json=worker("unskilled", 10, ["paint"]))
        for agent in ("cheap", "dear", "unskilled"):
            await wait_for(http, agent, "idle")
        r = await submit(http, 500, capabilities=["summarize"])
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["state"] == "bidding" and created["bids"] is None and created["escrow_state"] == "held"
        assert await balance(http, "requester:alice") == 500  # the budget is held
        task = await task_state(http, created["task_id"], "completed")
        assert task["winner"] == "cheap"
        # Equal (new-agent) reputations: the critical price is the runner-up's ask, 60 % of the budget.
        assert task["price"] == 300
        assert sorted((b["agent_id"], b["price"]) for b in task["bids"]) == [("cheap", 200), ("dear", 300)]
        assert task["result"]["worker"] == "cheap"
        assert [e["to_state"] for e in task["events"] if e["kind"] == "transition"] == [
            "bidding", "assigned", "running", "completed"]
        assert await balance(http, "requester:alice") == 700  # 200 of the budget came back at award
        r = await http.post(f"/api/v1/tasks/{created['task_id']}/accept", json={"idempotency_key": key()})
        assert r.status_code == 200, r.text
        assert r.json()["escrow_state"] == "released"
        twice = await http.post(f"/api/v1/tasks/{created['task_id']}/accept", json={"idempotency_key": key()})
        assert twice.status_code == 409, twice.text
        assert await balance(http, "agent:cheap") == 270
        assert await balance(http, "platform") == 30
        assert await balance(http, "requester:alice") == 700
        ledger = (await http.get("/api/v1/accounts/agent:cheap/ledger")).json()["entries"]
        assert [(e["kind"], e["amount"]) for e in ledger] == [("release", 270)]
    audit = await market_hub.state.market.ledger.verify()
    assert audit.ok, audit


async def test_an_auction_without_bids_expires_and_refunds(market_hub: RunningHub) -> None:
    async with market_hub.http() as http:
        await deposit(http, "requester:alice", 100)
        r = await submit(http, 80, capabilities=["nobody-has-this"], seconds=0.3)
        task = await task_state(http, r.json()["task_id"], "expired")
        assert task["escrow_state"] == "refunded" and task["winner"] is None
        assert await balance(http, "requester:alice") == 100


async def test_a_retried_submission_creates_one_task_and_a_changed_one_is_refused(market_hub: RunningHub) -> None:
    async with market_hub.http() as http:
        await deposit(http, "requester:alice", 100)
        same = key()
        first = await submit(http, 60, capabilities=[], idempotency_key=same)
        again = await submit(http, 60, capabilities=[], idempotency_key=same)
        assert first.status_code == again.status_code == 201
        assert first.json()["task_id"] == again.json()["task_id"]
        changed = await submit(http, 70, capabilities=[], idempotency_key=same)
        assert changed.status_code == 409, changed.text
        assert await balance(http, "requester:alice") == 40
        too_much = await submit(http, 50, capabilities=[])
        assert too_much.status_code in (400, 409, 422), too_much.text
        assert "40" in too_much.json()["detail"]
        assert await balance(http, "requester:alice") == 40
        assert len((await http.get("/api/v1/tasks")).json()["tasks"]) == 1


async def test_bad_bids_and_strangers_are_refused_and_move_nothing(market_hub: RunningHub) -> None:
    async with market_hub.http() as http:
        await deposit(http, "requester:alice", 100)
        await http.post("/api/v1/agents", json=worker("painter", 50, ["paint"]))
        task_id = (await submit(http, 50, capabilities=["summarize"], seconds=30)).json()["task_id"]
        bid = {"agent_id": "painter", "price": 10, "estimated_seconds": 1}
        r = await http.post(f"/api/v1/tasks/{task_id}/bids", json=bid)
        assert r.status_code == 403 and "summarize" in r.json()["detail"]
        for price in (0, -5):
            r = await http.post(f"/api/v1/tasks/{task_id}/bids", json={**bid, "price": price})
            assert r.status_code == 422
        r = await http.post("/api/v1/tasks/task_unknown/bids", json=bid)
        assert r.status_code == 404
    mallory = await market_hub.token(Role.AGENT, "mallory")
    async with market_hub.http(mallory) as http:
        r = await http.post(f"/api/v1/tasks/{task_id}/bids", json={**bid, "agent_id": "painter"})
        assert r.status_code == 403
        for action in ("cancel", "accept"):
            r = await http.post(f"/api/v1/tasks/{task_id}/{action}", json={"idempotency_key": key()})
            assert r.status_code == 403, r.text
        r = await http.post(f"/api/v1/tasks/{task_id}/dispute", json={"by": "mallory", "evidence": "x",
                                                                       "idempotency_key": key()})
        assert r.status_code == 403
    async with market_hub.http() as http:
        task = (await http.get(f"/api/v1/tasks/{task_id}")).json()
        assert task["state"] == "bidding" and task["bid_count"] == 0 and task["escrow_state"] == "held"
        assert await balance(http, "requester:alice") == 50


async def test_a_disputed_task_is_frozen_until_an_arbiter_splits_it(market_hub: RunningHub) -> None:
    async with market_hub.http() as http:
        await deposit(http, "requester:alice", 1000)
        await http.post("/api/v1/agents", json=worker("solo", 50, []))
        await wait_for(http, "solo", "idle")
        task_id = (await submit(http, 400, capabilities=[], seconds=1)).json()["task_id"]
        task = await task_state(http, task_id, "completed")
        # Alone, its critical scaled cost is the budget; at a new agent's reputation, 0.6, that is 240 credits.
        assert task["price"] == 240
        r = await http.post(f"/api/v1/tasks/{task_id}/dispute", json={
            "by": "alice", "evidence": "the summary has six words", "idempotency_key": key()})
        assert r.status_code == 200, r.text
        assert r.json()["escrow_state"] == "disputed"
        r = await http.post(f"/api/v1/tasks/{task_id}/accept", json={"idempotency_key": key()})
        assert r.status_code == 409, r.text
        resolution = {"outcome": "split", "agent_share_percent": 50, "idempotency_key": key()}
        r = await http.post(f"/api/v1/tasks/{task_id}/resolve", json=resolution)
        assert r.status_code == 200, r.text
        assert r.json()["escrow_state"] == "split"
        again = await http.post(f"/api/v1/tasks/{task_id}/resolve", json={**resolution, "idempotency_key": key()})
        assert again.status_code == 409
        total = sum([await balance(http, a) for a in ("requester:alice", "agent:solo", "platform")])
        assert total == 1000
    audit = await market_hub.state.market.ledger.verify()
    assert audit.ok, audit


async def test_agents_use_the_market_through_mcp(market_hub: RunningHub) -> None:
    async with market_hub.http() as http:
        await deposit(http, "requester:bob", 100)
    token = await market_hub.token(Role.AGENT, "bob")
    async with market_hub.mcp(token) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"submit_task", "place_bid", "get_task", "report_task"} <= names
        created = await client.call_tool("submit_task", {
            "requester_id": "bob", "description": "count to three", "budget": 30, "bidding_seconds": 0.5,
            "idempotency_key": key()})
        assert not created.is_error, created.content
        task_id = (created.structured_content or {})["task_id"]
        bid = await client.call_tool("place_bid", {"task_id": task_id, "agent_id": "bob", "price": 15,
                                                   "estimated_seconds": 1})
        assert not bid.is_error, bid.content
        with anyio.fail_after(10):
            while True:
                got = (await client.call_tool("get_task", {"task_id": task_id})).structured_content or {}
                if got["state"] == "assigned":
                    break
                await anyio.sleep(0.1)
        assert (got["winner"], got["price"]) == ("bob", 18)  # the budget at a new agent's reputation, 0.6
        done = await client.call_tool("report_task", {"task_id": task_id, "agent_id": "bob", "status": "completed",
                                                      "result": {"counted": [1, 2, 3]}})
        assert (done.structured_content or {})["state"] == "completed"
        late = await client.call_tool("place_bid", {"task_id": task_id, "agent_id": "bob", "price": 5,
                                                    "estimated_seconds": 1})
        assert late.is_error


async def test_balances_and_tasks_survive_a_hub_restart(hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(market={"close_interval_seconds": 0.1})
    async with hub_factory.run(settings) as hub, hub.http() as http:
        await deposit(http, "requester:alice", 500)
        task_id = (await submit(http, 200, capabilities=[], seconds=60)).json()["task_id"]
    async with hub_factory.run(hub_factory.settings(market={"close_interval_seconds": 0.1})) as hub, \
            hub.http() as http:
        assert await balance(http, "requester:alice") == 300
        task = (await http.get(f"/api/v1/tasks/{task_id}")).json()
        assert task["state"] == "bidding" and task["escrow_state"] == "held"


async def test_a_cheap_bidder_that_keeps_failing_stops_winning(market_hub: RunningHub) -> None:
    flaky = {**worker("flaky", 40, ["summarize"])}
    flaky["executor_config"] = {**flaky["executor_config"], "outcome": "failed"}
    async with market_hub.http() as http:
        await deposit(http, "requester:alice", 10_000)
        await http.post("/api/v1/agents", json=flaky)
        await http.post("/api/v1/agents", json=worker("reliable", 60, ["summarize"]))
        for agent in ("flaky", "reliable"):
            await wait_for(http, agent, "idle")
        winners = []
        for _ in range(3):
            task_id = (await submit(http, 1000, capabilities=["summarize"], seconds=0.7)).json()["task_id"]
            task = await task_state(http, task_id, "completed", "failed")
            winners.append((task["winner"], task["state"]))
        # Each failure lowers flaky's reputation for the capability (0.6, then about 0.42, then about 0.31); at
        # 0.31 its 400 scales above the budget, and the dearer but reliable bidder wins.
        assert winners == [("flaky", "failed")] * 2 + [("reliable", "completed")]
        agents = {a["agent_id"]: a for a in (await http.get("/api/v1/agents")).json()["agents"]}
        assert agents["flaky"]["reputation"] < agents["reliable"]["reputation"]
        assert await balance(http, "requester:alice") == 10_000 - 600  # failures refunded; one held at its price


async def test_two_replicas_clear_each_auction_exactly_once(hub_factory: HubFactory) -> None:
    def settings(name: str) -> Any:
        return hub_factory.settings(replica_id=name, data_dir=hub_factory.tmp_path / name,
                                    market={"close_interval_seconds": 0.05})

    async with hub_factory.run(settings("a")) as first, hub_factory.run(settings("b")) as second, \
            first.http() as http_a, second.http(first.operator_token) as http_b:
        await deposit(http_a, "requester:alice", 100_000)
        await deposit(http_a, "requester:bob", 100_000)
        task_ids = []
        for i in range(30):
            http = http_a if i % 2 else http_b
            r = await submit(http, 100 + i, capabilities=[], seconds=1.5, requester="alice" if i % 3 else "bob")
            task_ids.append(r.json()["task_id"])
            for agent in (f"x{i}", f"y{i}"):  # bidders of their own: one batch gives an agent at most one task
                bid = {"agent_id": agent, "price": 10 + i + agent.startswith("y"), "estimated_seconds": 1}
                assert (await http.post(f"/api/v1/tasks/{task_ids[-1]}/bids", json=bid)).status_code == 201
        for task_id in task_ids:
            await task_state(http_a, task_id, "assigned")
        cleared = sum(hub.state.metrics.auctions_cleared._value.get() for hub in (first, second))
        assert cleared == 30
        for task_id in task_ids:
            events = (await http_b.get(f"/api/v1/tasks/{task_id}")).json()["events"]
            assert [e["to_state"] for e in events if e["kind"] == "transition"] == ["bidding", "assigned"]
        audit = await first.state.market.ledger.verify()
        assert audit.ok, audit


async def test_an_arbiter_can_refund_a_disputed_task_and_the_agent_loses_reputation(market_hub: RunningHub) -> None:
    async with market_hub.http() as http:
        await deposit(http, "requester:alice", 500)
        task_id = (await submit(http, 300, capabilities=[], seconds=0.3)).json()["task_id"]
        bid = {"agent_id": "shady", "price": 100, "estimated_seconds": 1}
        assert (await http.post(f"/api/v1/tasks/{task_id}/bids", json=bid)).status_code == 201
        await task_state(http, task_id, "assigned")
        done = {"agent_id": "shady", "status": "completed", "result": {"text": "lorem"}}
        assert (await http.post(f"/api/v1/tasks/{task_id}/report", json=done)).status_code == 200
        before = (await http.get("/api/v1/accounts/agent:shady")).json()["reputation"]
        r = await http.post(f"/api/v1/tasks/{task_id}/dispute", json={"by": "alice", "evidence": "placeholder text",
                                                                       "idempotency_key": key()})
        assert r.status_code == 200, r.text
        r = await http.post(f"/api/v1/tasks/{task_id}/resolve", json={"outcome": "refund", "idempotency_key": key()})
        assert r.status_code == 200, r.text
        assert r.json()["escrow_state"] == "refunded"
        assert await balance(http, "requester:alice") == 500
        after = (await http.get("/api/v1/accounts/agent:shady")).json()["reputation"]
        assert after < before


async def test_completed_work_is_accepted_automatically_late_work_fails_and_cancelling_refunds(
        hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(market={"close_interval_seconds": 0.1, "accept_after_seconds": 0.5,
                                            "work_timeout_seconds": 1.0})
    async with hub_factory.run(settings) as hub, hub.http() as http:
        await deposit(http, "requester:alice", 1000)
        ids = [(await submit(http, 100, capabilities=[], seconds=0.3)).json()["task_id"] for _ in range(2)]
        for task_id, agent in zip(ids, ("prompt", "slow"), strict=True):
            bid = {"agent_id": agent, "price": 50, "estimated_seconds": 1}
            assert (await http.post(f"/api/v1/tasks/{task_id}/bids", json=bid)).status_code == 201
        for task_id in ids:
            await task_state(http, task_id, "assigned")
        done = {"agent_id": "prompt", "status": "completed", "result": {"ok": True}}
        assert (await http.post(f"/api/v1/tasks/{ids[0]}/report", json=done)).status_code == 200

        async def settled(task_id: str, escrow_state: str) -> bool:
            return bool((await http.get(f"/api/v1/tasks/{task_id}")).json()["escrow_state"] == escrow_state)

        await eventually(lambda: settled(ids[0], "released"), 10, "automatic acceptance")
        late = await task_state(http, ids[1], "failed", seconds=10)
        assert late["escrow_state"] == "refunded" and "timed out" in late["events"][-1]["detail"]
        open_one = (await submit(http, 200, capabilities=[], seconds=60)).json()["task_id"]
        r = await http.post(f"/api/v1/tasks/{open_one}/cancel", json={"idempotency_key": key()})
        assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["escrow_state"] == "refunded"
        # Only the accepted task cost anything: the late and the cancelled ones were refunded.
        paid = (await http.get(f"/api/v1/tasks/{ids[0]}")).json()["price"]
        assert await balance(http, "requester:alice") == 1000 - paid
        assert await balance(http, "agent:prompt") == paid - paid * 10 // 100
