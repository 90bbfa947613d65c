"""The market under a person's and a budget's control, through REST and MCP with real agent processes: a task over
its requester's approval threshold waits for an operator (approved, its auction runs; denied or expired, it is
refunded), and credits limits cap what a requester commits and stop a capped agent from taking new work."""

from typing import Any

import httpx2

from tests.agents_helpers import eventually, wait_for
from tests.conftest import HubFactory
from tests.test_market import balance, deposit, key, task_state, worker


def _settings(hub_factory: HubFactory, **approvals: Any) -> Any:
    return hub_factory.settings(agents={"heartbeat_seconds": 0.5},
                                market={"close_interval_seconds": 0.1, "accept_after_seconds": 3600},
                                approvals={"sweep_seconds": 0.2, **approvals})


async def _submit(http: httpx2.AsyncClient, budget: int, requester: str = "alice", **extra: Any) -> httpx2.Response:
    return await http.post("/api/v1/tasks", json={
        "requester_id": requester, "description": "Summarise the incident report", "budget": budget,
        "required_capabilities": ["summarize"], "bidding_seconds": 2, "idempotency_key": key(), **extra})


async def _set_budget(http: httpx2.AsyncClient, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await http.put(f"/api/v1/budgets/{subject}", json=body)
    assert r.status_code == 200, r.text
    info: dict[str, Any] = r.json()
    return info


async def _decide(http: httpx2.AsyncClient, approval_id: str, decision: str) -> dict[str, Any]:
    r = await http.post(f"/api/v1/approvals/{approval_id}/decision", json={"decision": decision, "note": "checked"})
    assert r.status_code == 200, r.text
    info: dict[str, Any] = r.json()
    return info


async def test_a_task_over_the_approval_threshold_waits_for_an_operator_then_its_auction_runs(
        hub_factory: HubFactory) -> None:
    async with hub_factory.run(_settings(hub_factory)) as hub, hub.http() as http:
        await deposit(http, "requester:alice", 1000)
        await _set_budget(http, "requester:alice", {"approval_threshold": 300})
        assert (await http.post("/api/v1/agents", json=worker("w1", 50, ["summarize"]))).status_code == 201
        await wait_for(http, "w1", "idle")

        small = (await _submit(http, 200)).json()  # at or below the threshold: straight to its auction
        assert small["state"] == "bidding" and small["approval_id"] is None
        r = await _submit(http, 500)
        assert r.status_code == 201, r.text
        big = r.json()
        assert big["state"] == "awaiting_approval" and big["escrow_state"] == "held"
        assert await balance(http, "requester:alice") == 1000 - 200 - 500  # the budget is held while it waits
        pending = (await http.get("/api/v1/approvals", params={"state": "pending"})).json()["approvals"]
        [approval] = [a for a in pending if a["approval_id"] == big["approval_id"]]
        assert approval["kind"] == "task" and approval["subject"] == "requester:alice"
        assert approval["detail"]["task_id"] == big["task_id"] and approval["detail"]["budget"] == 500

        await task_state(http, small["task_id"], "completed")
        assert (await http.get(f"/api/v1/tasks/{big['task_id']}")).json()["state"] == "awaiting_approval"
        # A bid while it waits is refused: there is no auction yet.
        early = await http.post(f"/api/v1/tasks/{big['task_id']}/bids",
                                json={"agent_id": "w1", "price": 10, "estimated_seconds": 1})
        assert early.status_code == 409, early.text

        decided = await _decide(http, big["approval_id"], "approve")
        assert decided["state"] == "approved" and decided["decided_by"] is not None
        done = await task_state(http, big["task_id"], "completed")  # announced: the worker bid, won and delivered
        assert done["winner"] == "w1"
        transitions = [(e["to_state"], e["detail"]) for e in done["events"] if e["kind"] == "transition"]
        assert transitions[0][0] == "awaiting_approval" and transitions[1][0] == "bidding"
        assert "approved by" in transitions[1][1] and "(checked)" in transitions[1][1]
        again = await http.post(f"/api/v1/approvals/{big['approval_id']}/decision", json={"decision": "deny"})
        assert again.status_code == 409  # decided once
        audit = await hub.state.market.ledger.verify()
        assert audit.ok, audit


async def test_a_denied_or_expired_task_approval_cancels_the_task_and_refunds_its_budget(
        hub_factory: HubFactory) -> None:
    async with hub_factory.run(_settings(hub_factory, expires_seconds=1.0, default_decision="deny")) as hub, \
            hub.http() as http, hub.mcp() as client:
        await deposit(http, "requester:alice", 1000)
        await _set_budget(http, "requester:alice", {"approval_threshold": 100})
        denied = (await _submit(http, 400)).json()
        created = await client.call_tool("submit_task", {
            "requester_id": "alice", "description": "Nobody answers this one", "budget": 300,
            "bidding_seconds": 1, "idempotency_key": key()})
        assert not created.is_error, created.content
        expiring = created.structured_content or {}
        assert expiring["state"] == "awaiting_approval"

        await _decide(http, denied["approval_id"], "deny")
        task = await task_state(http, denied["task_id"], "cancelled")
        assert task["escrow_state"] == "refunded"
        task = await task_state(http, expiring["task_id"], "cancelled")  # nobody answered: the default, deny
        assert task["escrow_state"] == "refunded"
        approval = (await http.get(f"/api/v1/approvals/{expiring['approval_id']}")).json()
        assert (approval["state"], approval["decision"], approval["decided_by"]) == ("expired", "deny", "expiry")
        assert await balance(http, "requester:alice") == 1000
        audit = await hub.state.market.ledger.verify()
        assert audit.ok, audit


async def test_a_credits_limit_caps_what_a_requester_commits_and_a_capped_agent_takes_no_new_work(
        hub_factory: HubFactory) -> None:
    async with hub_factory.run(_settings(hub_factory)) as hub, hub.http() as http:
        await deposit(http, "requester:alice", 10_000)
        await _set_budget(http, "requester:alice", {"limits": {"credits": {"soft": 300, "hard": 600}}})
        assert (await http.post("/api/v1/agents", json=worker("w1", 50, ["summarize"]))).status_code == 201
        await wait_for(http, "w1", "idle")

        first = (await _submit(http, 400)).json()  # reserved 400: past the soft limit, so an operator is asked
        refused = await _submit(http, 300)  # 400 + 300 > 600: refused before anything is held
        assert refused.status_code == 409 and "credits" in refused.text, refused.text
        assert await balance(http, "requester:alice") == 10_000 - 400
        pending = (await http.get("/api/v1/approvals", params={"state": "pending"})).json()["approvals"]
        assert [(a["kind"], a["subject"]) for a in pending] == [("budget", "requester:alice")]

        done = await task_state(http, first["task_id"], "completed")
        r = await http.post(f"/api/v1/tasks/{first['task_id']}/accept", json={"idempotency_key": key()})
        assert r.status_code == 200, r.text

        async def settled() -> bool:  # the reservation became what the task cost: its price (the rest came back)
            info = (await http.get("/api/v1/budgets/requester:alice")).json()
            return bool(info["spent"].get("credits") == done["price"] and not info["reserved"].get("credits"))

        await eventually(settled, 10, "the task's credits settled at its price")
        assert done["price"] + 300 <= 600 and (await _submit(http, 300)).status_code == 201  # fits again

        # An agent at a hard limit (here its work time) is refused new bids, and says why.
        await _set_budget(http, "agent:w1", {"limits": {"work_seconds": {"hard": 0}}})
        await deposit(http, "requester:bob", 100)
        task = (await _submit(http, 100, requester="bob")).json()
        bid = await http.post(f"/api/v1/tasks/{task['task_id']}/bids",
                              json={"agent_id": "w1", "price": 10, "estimated_seconds": 1})
        assert bid.status_code == 409 and "work_seconds" in bid.text, bid.text
        assert (await task_state(http, task["task_id"], "expired"))["bid_count"] == 0  # its own bid was refused too
        assert (await http.get("/api/v1/agents/w1")).json()["state"] in ("idle", "busy")  # not killed
        audit = await hub.state.market.ledger.verify()
        assert audit.ok, audit
