"""The auction closer solves a batch without locks and commits it only if nothing changed meanwhile: under bids that
keep arriving, on two replicas, and when a bid or a cancellation lands while the batch is being solved, every
auction is cleared once, from the bids it closed with, and every winner is paid once."""

import random
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import anyio
import httpx2
import pytest

import market.service
from market.clearing import Clearing, TaskAuction
from tests.conftest import HubFactory, RunningHub
from tests.test_market import balance, deposit, key, submit, task_state

FEE_PERCENT = 10  # the default platform fee


async def bid(http: httpx2.AsyncClient, task_id: str, agent: str, price: int) -> httpx2.Response:
    return await http.post(f"/api/v1/tasks/{task_id}/bids",
                           json={"agent_id": agent, "price": price, "estimated_seconds": 1})


async def complete_and_accept(http: httpx2.AsyncClient, task: dict[str, Any]) -> None:
    r = await http.post(f"/api/v1/tasks/{task['task_id']}/report",
                        json={"agent_id": task["winner"], "status": "completed", "result": {"ok": True}})
    assert r.status_code == 200, r.text
    r = await http.post(f"/api/v1/tasks/{task['task_id']}/accept", json={"idempotency_key": key()})
    assert r.status_code == 200, r.text
    assert r.json()["escrow_state"] == "released"


def transitions(task: dict[str, Any]) -> list[str]:
    return [e["to_state"] for e in task["events"] if e["kind"] == "transition"]


async def transfers_per_escrow(hub: RunningHub) -> Counter[tuple[str, str]]:
    rows = await hub.state.pool.fetch("SELECT escrow_id, kind FROM transfers WHERE escrow_id IS NOT NULL")
    return Counter((r["escrow_id"], r["kind"]) for r in rows)


async def test_clearing_batches_while_bids_keep_arriving_pays_each_winner_once(hub_factory: HubFactory) -> None:
    def settings(name: str) -> Any:
        # One operator token bids for 32 agents as fast as the machine allows: no rate limit in the way.
        return hub_factory.settings(replica_id=name, data_dir=hub_factory.tmp_path / name,
                                    market={"close_interval_seconds": 0.05, "accept_after_seconds": 3600},
                                    rate_limits={"enabled": False})

    rng = random.Random(11)
    agents = [f"bidder{i:02d}" for i in range(32)]
    async with hub_factory.run(settings("a")) as first, hub_factory.run(settings("b")) as second, \
            first.http() as http_a, second.http(first.operator_token) as http_b:
        await deposit(http_a, "requester:alice", 1_000_000)
        budgets: dict[str, int] = {}
        for i in range(16):
            r = await submit(http_a if i % 2 else http_b, 200 + 10 * i, capabilities=[], seconds=60)
            assert r.status_code == 201, r.text
            budgets[r.json()["task_id"]] = 200 + 10 * i
        accepted: Counter[str] = Counter()
        refused = 0
        cleared = anyio.Event()

        async def keep_bidding(agent: str, http: httpx2.AsyncClient) -> None:
            nonlocal refused
            while not cleared.is_set():  # bids go on past each auction's close, to both replicas, until all are cleared
                task_id = rng.choice(sorted(budgets))
                # At most half the budget: eligible at a new agent's reputation, 0.6.
                r = await bid(http, task_id, agent, rng.randint(20, budgets[task_id] // 2))
                assert r.status_code in (201, 409), r.text
                accepted[task_id] += r.status_code == 201
                refused += r.status_code == 409

        async def close_in_waves() -> None:
            while min(accepted[task_id] for task_id in budgets) < 2:  # noqa: ASYNC110 - bids are counted, not signalled
                await anyio.sleep(0.05)
            ids = sorted(budgets)
            for wave in range(0, len(ids), 4):  # four batches, each closing while bids still arrive
                # A moment ahead, as submit_task sets it: a bid may start just before the close and end after it.
                await first.state.pool.execute(
                    "UPDATE tasks SET bidding_closes_at = now() + interval '0.2 seconds' WHERE id = ANY($1)",
                    ids[wave:wave + 4])
                await anyio.sleep(0.1)
            while await first.state.pool.fetchval(  # noqa: ASYNC110 - the closers say nothing when they are done
                    "SELECT count(*) FROM tasks WHERE id = ANY($1) AND state = 'bidding'", ids):
                await anyio.sleep(0.05)
            cleared.set()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(close_in_waves)
                for n, agent in enumerate(agents):
                    tg.start_soon(keep_bidding, agent, http_a if n % 2 else http_b)
        assert refused > 0  # bids kept arriving after the closes

        paid: Counter[str] = Counter()
        expired = set()
        for task_id, budget in budgets.items():
            # A task expires when it drew no bid, or when all its bidders won other tasks of its batch.
            task = await task_state(http_a, task_id, "assigned", "expired")
            assert transitions(task) == ["bidding", task["state"]]  # cleared once, by one replica
            if task["state"] == "expired":
                expired.add(task["escrow_id"])
                continue
            # Only bids from before the clearing count, and the clearing replays from them to its award. (Not "before
            # `bidding_closes_at`": the waves move that while bids are in flight, and a bid whose transaction read
            # the earlier time may still commit.)
            audit = (await http_a.get(f"/api/v1/tasks/{task_id}/audit")).json()
            winning = next(b for b in task["bids"] if b["agent_id"] == task["winner"])
            assert datetime.fromisoformat(winning["placed_at"]) < datetime.fromisoformat(audit["cleared_at"])
            assert audit["replay"]["matches"], audit["replay"]
            assert winning["price"] <= task["price"] <= budget
            await complete_and_accept(http_a, task)
            paid[task["winner"]] += task["price"] - task["price"] * FEE_PERCENT // 100
        for agent in agents:
            assert await balance(http_b, f"agent:{agent}") == paid[agent]
        assert sum(hub.state.metrics.auctions_cleared._value.get() for hub in (first, second)) == len(budgets)

        counts = await transfers_per_escrow(first)
        escrows = {escrow for escrow, _ in counts}
        assert len(escrows) == len(budgets)
        for escrow in escrows:
            settled = (0, 1) if escrow in expired else (1, 0)
            assert (counts[escrow, "hold"], (counts[escrow, "release"], counts[escrow, "refund"])) == (1, settled)
            assert counts[escrow, "award"] <= 1
        assert len(expired) <= len(budgets) // 4
        audit = await first.state.market.ledger.verify()
        assert audit.ok, audit


@pytest.fixture
async def closer_hub(hub_factory: HubFactory) -> Any:
    settings = hub_factory.settings(market={"close_interval_seconds": 0.05, "accept_after_seconds": 3600})
    async with hub_factory.run(settings) as running:
        yield running


class DuringTheSolve:
    """Stands in for `clear` in the closer: the first time, it runs `action` on the event loop (from the solver's
    worker thread) before clearing, so the action lands between the batch's read and its commit."""

    def __init__(self, action: Any) -> None:
        self.action = action
        self.calls: list[set[str]] = []

    def __call__(self, auctions: Sequence[TaskAuction]) -> Clearing:
        self.calls.append({a.task_id for a in auctions})
        if len(self.calls) == 1:
            anyio.from_thread.run(self.action)
        return real_clear(auctions)


real_clear = market.service.clear  # type: ignore[attr-defined]  # the name the closer calls


async def two_tasks_with_bids(hub: RunningHub, http: httpx2.AsyncClient) -> tuple[str, str]:
    """Two auctions with one bid each, closed at the same instant so that they are cleared as one batch."""
    await deposit(http, "requester:alice", 1000)
    first = (await submit(http, 100, capabilities=[], seconds=60)).json()["task_id"]
    second = (await submit(http, 100, capabilities=[], seconds=60)).json()["task_id"]
    for task_id, agent, price in ((first, "a", 50), (second, "b", 60)):
        assert (await bid(http, task_id, agent, price)).status_code == 201
    await hub.state.pool.execute("UPDATE tasks SET bidding_closes_at = now() WHERE id = ANY($1)", [first, second])
    return first, second


async def test_a_bid_that_lands_while_the_batch_is_solved_is_cleared_with_it(
        closer_hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    async with closer_hub.http() as http:
        first = ""

        async def late_bid() -> None:
            # A bid whose transaction began before the close and commits after the read, as place_bid allows.
            await closer_hub.state.pool.execute("INSERT INTO bids (task_id, agent_id, price, estimated_seconds)"
                                                " VALUES ($1, 'late', 10, 1)", first)

        solve = DuringTheSolve(late_bid)
        monkeypatch.setattr(market.service, "clear", solve)
        first, second = await two_tasks_with_bids(closer_hub, http)
        won = await task_state(http, first, "assigned")
        other = await task_state(http, second, "assigned")
        assert solve.calls[:2] == [{first, second}] * 2  # solved again, the stale clearing not committed
        assert (won["winner"], won["price"]) == ("late", 50)  # the runner-up, a, sets the price
        assert (other["winner"], other["price"]) == ("b", 60)  # alone: the budget x a new agent's 0.6
        assert transitions(won) == transitions(other) == ["bidding", "assigned"]
        assert await balance(http, "requester:alice") == 1000 - 50 - 60


async def test_a_task_cancelled_while_its_batch_is_solved_stays_cancelled(
        closer_hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    async with closer_hub.http() as http:
        second = ""

        async def cancel() -> None:
            r = await http.post(f"/api/v1/tasks/{second}/cancel", json={"idempotency_key": key()})
            assert r.status_code == 200, r.text

        solve = DuringTheSolve(cancel)
        monkeypatch.setattr(market.service, "clear", solve)
        first, second = await two_tasks_with_bids(closer_hub, http)
        won = await task_state(http, first, "assigned")
        cancelled = await task_state(http, second, "cancelled")
        assert solve.calls[0] == {first, second} and solve.calls[-1] == {first}
        assert transitions(won) == ["bidding", "assigned"] and won["winner"] == "a"
        assert transitions(cancelled) == ["bidding", "cancelled"] and cancelled["escrow_state"] == "refunded"
        assert await balance(http, "agent:b") == 0
        assert await balance(http, "requester:alice") == 1000 - won["price"]
        counts = await transfers_per_escrow(closer_hub)
        assert counts[cancelled["escrow_id"], "refund"] == 1 and counts[cancelled["escrow_id"], "award"] == 0
        audit = await closer_hub.state.market.ledger.verify()
        assert audit.ok, audit
