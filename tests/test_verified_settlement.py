"""Accountable settlement end to end, through REST and MCP with real agent processes: bid bonds (held, returned to
losers and to a winner that delivers, slashed from a no-show), acceptance checks (a WASM evaluator and a JSON
Schema: pay at once on a pass, refund or dispute on a fail), and auctions whose clearing can be replayed from
what they recorded."""

import random
from pathlib import Path
from typing import Any

import httpx2
from wasmtime import wat2wasm

from market.clearing import Bid, TaskAuction, clear
from market.models import AuditAuction
from tests.agents_helpers import wait_for
from tests.conftest import HubFactory, RunningHub
from tests.test_market import balance, deposit, key, task_state, worker

FEE = 10  # percent: the default platform fee
EVALUATOR = Path(__file__).parent / "wasm" / "evaluator_needle.wat"  # passes results of the "careful" worker


def _market(hub_factory: HubFactory, **market: Any) -> Any:
    return hub_factory.settings(agents={"heartbeat_seconds": 0.5},
                                market={"close_interval_seconds": 0.1, "accept_after_seconds": 3600, **market})


async def _submit(http: httpx2.AsyncClient, budget: int, capabilities: list[str], *, seconds: float = 2.0,
                  **extra: Any) -> dict[str, Any]:
    r = await http.post("/api/v1/tasks", json={
        "requester_id": "alice", "description": "Count the words of this sentence", "budget": budget,
        "required_capabilities": capabilities, "bidding_seconds": seconds, "idempotency_key": key(), **extra})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def _verified(hub: RunningHub) -> None:
    audit = await hub.state.market.ledger.verify()
    assert audit.ok, audit


async def test_bonds_go_back_to_losers_and_a_no_show_winner_loses_its_bond_to_the_requester(
        hub_factory: HubFactory) -> None:
    async with hub_factory.run(_market(hub_factory, work_timeout_seconds=2)) as hub, hub.http() as http:
        await deposit(http, "requester:alice", 1000)
        await deposit(http, "agent:ghost", 100)
        await deposit(http, "agent:honest", 100)
        ghost = worker("ghost", 40, ["summarize"])  # the cheapest: it wins, starts, and never finishes
        ghost["executor_config"] = {**ghost["executor_config"], "work_seconds": 3600}
        for spec in (ghost, worker("honest", 60, ["summarize"]), worker("broke", 10, ["summarize"])):
            assert (await http.post("/api/v1/agents", json=spec)).status_code == 201
        for agent in ("ghost", "honest", "broke"):
            await wait_for(http, agent, "idle")
        task = await _submit(http, 100, ["summarize"], bond_percent=50)
        assert task["bond_percent"] == 50
        # A bidder that cannot cover its bond cannot bid: "broke" (no credits) is refused and stores nothing.
        refused = await http.post(f"/api/v1/tasks/{task['task_id']}/bids",
                                  json={"agent_id": "broke", "price": 5, "estimated_seconds": 1})
        assert refused.status_code == 409 and "needs 3" in refused.text, refused.text
        assigned = await task_state(http, task["task_id"], "assigned", "running")
        assert assigned["winner"] == "ghost" and {b["agent_id"] for b in assigned["bids"]} == {"ghost", "honest"}
        assert await balance(http, "agent:honest") == 100  # the loser's bond (30) came back at the close
        assert await balance(http, "agent:ghost") == 80  # the winner's bond (20 = 50 % of 40) is held
        failed = await task_state(http, task["task_id"], "failed")
        assert failed["escrow_state"] == "refunded"
        assert await balance(http, "agent:ghost") == 80  # slashed: 18 to the requester, 2 to the platform
        assert await balance(http, "requester:alice") == 1000 + 20 - 20 * FEE // 100
        assert await balance(http, "agent:broke") == 0
        kinds = [e["kind"] for e in (await http.get("/api/v1/accounts/bond:" + task["task_id"] + "/ledger")).json()[
            "entries"]]
        assert sorted(kinds) == ["bond", "bond", "bond_return", "slash"]
        await _verified(hub)


async def test_a_winner_that_delivers_gets_its_bond_back_and_the_books_balance(hub_factory: HubFactory) -> None:
    async with hub_factory.run(_market(hub_factory)) as hub, hub.http() as http:
        await deposit(http, "requester:alice", 1000)
        await deposit(http, "agent:honest", 100)
        assert (await http.post("/api/v1/agents", json=worker("honest", 60, ["summarize"]))).status_code == 201
        await wait_for(http, "honest", "idle")
        task = await _submit(http, 200, ["summarize"], bond_percent=25)
        done = await task_state(http, task["task_id"], "completed")
        assert done["winner"] == "honest"
        assert await balance(http, "agent:honest") == 100  # its bond (30 of its 120) came back on delivery
        r = await http.post(f"/api/v1/tasks/{task['task_id']}/accept", json={"idempotency_key": key()})
        assert r.status_code == 200, r.text
        assert await balance(http, "agent:honest") == 100 + done["price"] - done["price"] * FEE // 100
        await _verified(hub)


async def test_an_evaluator_pays_the_result_that_passes_and_refunds_the_one_that_fails(
        hub_factory: HubFactory) -> None:
    async with hub_factory.run(_market(hub_factory)) as hub, hub.http() as http:
        await deposit(http, "requester:alice", 1000)
        r = await http.post("/api/v1/evaluators", content=bytes(wat2wasm(EVALUATOR.read_text())),
                            headers={"Content-Type": "application/wasm"})
        assert r.status_code == 201, r.text
        evaluator = r.json()["sha256"]
        for spec in (worker("careful", 60, ["careful"]), worker("sloppy", 60, ["sloppy"])):
            assert (await http.post("/api/v1/agents", json=spec)).status_code == 201
        for agent in ("careful", "sloppy"):
            await wait_for(http, agent, "idle")
        check = {"evaluator": evaluator, "on_fail": "refund"}
        good = await _submit(http, 100, ["careful"], acceptance=check)
        bad = await _submit(http, 100, ["sloppy"], acceptance=check)
        assert good["acceptance"] == {"json_schema": None, **check} and good["check"] is None

        paid = await task_state(http, good["task_id"], "completed")
        assert paid["check"]["passed"] is True and paid["check"]["evaluator"]["exit_code"] == 0
        assert paid["escrow_state"] == "released"  # at once: no accept, no timer
        assert await balance(http, "agent:careful") == 60 - 60 * FEE // 100

        refunded = await task_state(http, bad["task_id"], "failed")
        assert refunded["check"]["passed"] is False and refunded["check"]["evaluator"]["exit_code"] == 1
        assert "not made by the careful worker" in refunded["check"]["evaluator"]["log"]
        assert refunded["escrow_state"] == "refunded" and refunded["result"]["worker"] == "sloppy"
        assert await balance(http, "agent:sloppy") == 0
        assert await balance(http, "requester:alice") == 1000 - 60
        await _verified(hub)


async def test_a_json_schema_check_over_mcp_disputes_a_failing_result_and_pays_a_passing_one(
        hub_factory: HubFactory) -> None:
    schema = {"type": "object", "required": ["words"], "properties": {"words": {"type": "integer", "minimum": 1}}}
    async with hub_factory.run(_market(hub_factory)) as hub, hub.http() as http, hub.mcp() as client:
        await deposit(http, "requester:alice", 1000)

        async def task_won_by_bob() -> str:
            created = await client.call_tool("submit_task", {
                "requester_id": "alice", "description": "Count words", "budget": 100, "bidding_seconds": 1,
                "acceptance": {"json_schema": schema, "on_fail": "dispute"}, "idempotency_key": key()})
            assert not created.is_error, created.content
            task_id = str((created.structured_content or {})["task_id"])
            bid = await client.call_tool("place_bid", {"task_id": task_id, "agent_id": "bob", "price": 50,
                                                       "estimated_seconds": 1})
            assert not bid.is_error, bid.content
            await task_state(http, task_id, "assigned")
            return task_id

        disputed, paid = await task_won_by_bob(), await task_won_by_bob()
        report = await client.call_tool("report_task", {"task_id": disputed, "agent_id": "bob", "status": "completed",
                                                        "result": {"words": "five"}})
        assert not report.is_error, report.content
        got = report.structured_content or {}
        assert got["state"] == "completed" and got["escrow_state"] == "disputed"
        assert got["check"]["passed"] is False and got["check"]["schema_errors"] == [
            "words: 'five' is not of type 'integer'"]
        report = await client.call_tool("report_task", {"task_id": paid, "agent_id": "bob", "status": "completed",
                                                        "result": {"words": 5}})
        got = report.structured_content or {}
        assert got["escrow_state"] == "released" and got["check"]["passed"] is True
        assert await balance(http, "agent:bob") == got["price"] - got["price"] * FEE // 100  # the disputed one waits

        # A check that could never run is refused at submission, and nothing is held.
        before = await balance(http, "requester:alice")
        for acceptance, says in (({"json_schema": {"type": "nonsense"}}, "not a valid JSON Schema"),
                                 ({"evaluator": "0" * 64}, "names no uploaded evaluator"),
                                 ({"on_fail": "refund"}, "needs a json_schema, an evaluator, or both")):
            r = await http.post("/api/v1/tasks", json={"requester_id": "alice", "description": "x", "budget": 10,
                                                       "acceptance": acceptance, "idempotency_key": key()})
            assert r.status_code in (400, 422) and says in r.text, r.text
        assert await balance(http, "requester:alice") == before
        await _verified(hub)


async def test_every_cleared_auction_replays_to_the_winner_and_price_it_recorded(hub_factory: HubFactory) -> None:
    rng = random.Random(16)
    agents = [f"bidder{i}" for i in range(8)]
    async with hub_factory.run(_market(hub_factory)) as hub, hub.http() as http:
        await deposit(http, "requester:alice", 10**7)
        # A history first, so that reputations differ: some bidders fail the tasks they win, others deliver.
        for agent in agents[:4]:
            task = await _submit(http, 100, [])
            await http.post(f"/api/v1/tasks/{task['task_id']}/bids",
                            json={"agent_id": agent, "price": 50, "estimated_seconds": 1})
            await task_state(http, task["task_id"], "assigned")
            status = "failed" if agents.index(agent) % 2 else "completed"
            r = await http.post(f"/api/v1/tasks/{task['task_id']}/report", json={"agent_id": agent, "status": status})
            assert r.status_code == 200, r.text
            if status == "completed":
                await http.post(f"/api/v1/tasks/{task['task_id']}/accept", json={"idempotency_key": key()})
        task_ids = []
        for _ in range(40):
            task = await _submit(http, rng.randint(20, 500), [], seconds=3600)
            task_ids.append(task["task_id"])
            for agent in rng.sample(agents, rng.randint(0, len(agents))):
                r = await http.post(f"/api/v1/tasks/{task['task_id']}/bids", json={
                    "agent_id": agent, "price": rng.randint(1, 600), "estimated_seconds": rng.uniform(1, 100)})
                assert r.status_code == 201, r.text
        unclosed = await http.get(f"/api/v1/tasks/{task_ids[0]}/audit")
        assert unclosed.status_code == 409  # still bidding: there is no clearing yet
        # Their time comes ten at a time (the clock moved for them alone): each ten clear together, where each
        # agent wins at most one task, so awards depend on the other auctions of the batch.
        for group in range(0, len(task_ids), 10):
            await hub.state.pool.execute("UPDATE tasks SET bidding_closes_at = now() WHERE id = ANY($1)",
                                         task_ids[group:group + 10])
            for task_id in task_ids[group:group + 10]:
                await task_state(http, task_id, "assigned", "expired")
        batches = set()
        for task_id in task_ids:
            task = await task_state(http, task_id, "assigned", "expired")
            r = await http.get(f"/api/v1/tasks/{task_id}/audit")
            assert r.status_code == 200, r.text
            audit = r.json()
            batches.add(audit["clearing_batch"])
            assert (audit["winner"], audit["price"]) == (task["winner"], task["price"])
            assert audit["replay"] == {"winner": task["winner"], "price": task["price"], "matches": True}
            # Our own replay from the published inputs, with the pure clearing function.
            auctions = [AuditAuction.model_validate(a) for a in audit["auctions"]]
            assert all(b.reputation is not None for a in auctions for b in a.bids)
            cleared = clear([TaskAuction(task_id=a.task_id, budget=a.budget, bids=tuple(
                Bid(task_id=a.task_id, agent_id=b.agent_id, price=b.price, estimated_seconds=b.estimated_seconds,
                    reputation=b.reputation or 0.0, placed_seq=b.placed_seq) for b in a.bids)) for a in auctions])
            mine = [(w.agent_id, w.price) for w in cleared.awards if w.task_id == task_id]
            assert mine == ([(task["winner"], task["price"])] if task["winner"] else [])
        assert len(batches) < len(task_ids)  # some auctions did clear together
        reputations = {b["reputation"] for t in task_ids
                       for a in (await http.get(f"/api/v1/tasks/{t}/audit")).json()["auctions"] for b in a["bids"]}
        assert len(reputations) > 1  # the history made them differ
        await _verified(hub)


async def test_a_schema_whose_pattern_never_finishes_fails_the_check_in_its_own_process(
        hub_factory: HubFactory) -> None:
    schema = {"type": "object", "properties": {"text": {"type": "string", "pattern": "^(a+)+$"}}}
    async with hub_factory.run(_market(hub_factory, schema_check_seconds=1)) as hub, hub.http() as http:
        await deposit(http, "requester:alice", 1000)
        task = await _submit(http, 100, [], acceptance={"json_schema": schema})
        r = await http.post(f"/api/v1/tasks/{task['task_id']}/bids",
                            json={"agent_id": "bob", "price": 50, "estimated_seconds": 1})
        assert r.status_code == 201, r.text
        await task_state(http, task["task_id"], "assigned")
        # The pattern backtracks for hours on this text: its child process is stopped at the deadline.
        r = await http.post(f"/api/v1/tasks/{task['task_id']}/report", json={
            "agent_id": "bob", "status": "completed", "result": {"text": "a" * 40 + "!"}})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["state"] == "failed" and got["escrow_state"] == "refunded"
        assert got["check"]["passed"] is False
        assert "took longer than 1 s" in got["check"]["schema_errors"][0]
        await _verified(hub)
