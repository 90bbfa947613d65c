"""Settlement requests racing on the same tasks: accept, cancel, dispute, resolve and report, from 64 clients at once,
beside the hub's own closers (auto-accept sweeps). Every answer is 200 or 409, PostgreSQL detects no deadlock, each
escrow ends at most once and the ledger keeps its invariants."""

import logging
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import asyncpg
import httpx2

from tests.agents_helpers import eventually
from tests.conftest import HubFactory

CLIENTS = 64
TASKS = 8
ACTIONS = ("accept", "cancel", "dispute", "resolve", "report")
ENDING = frozenset({"accept", "cancel", "resolve", "report"})  # what moves the escrow's money out
DEPOSIT = 1_000_000


def key() -> str:
    return str(uuid.uuid4())


@contextmanager
def captured_logs() -> Iterator[list[logging.LogRecord]]:
    """Every record at WARNING or above, from the hub and from uvicorn (which does not propagate to the root)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.WARNING)
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


async def _setup(http: httpx2.AsyncClient) -> dict[str, str]:
    """TASKS tasks awarded to an agent each: the first half completed, the other half running. {task: winner}"""
    r = await http.post("/api/v1/accounts/requester:alice/deposit", json={"amount": DEPOSIT, "idempotency_key": key()})
    assert r.status_code == 201, r.text
    winners: dict[str, str] = {}
    for i in range(TASKS):
        r = await http.post("/api/v1/tasks", json={"requester_id": "alice", "description": f"task {i}", "budget": 100,
                                                   "bidding_seconds": 0.5, "idempotency_key": key()})
        assert r.status_code == 201, r.text
        task_id = r.json()["task_id"]
        bid = {"agent_id": f"w{i}", "price": 50, "estimated_seconds": 1}
        assert (await http.post(f"/api/v1/tasks/{task_id}/bids", json=bid)).status_code == 201
        winners[task_id] = f"w{i}"

    async def all_assigned() -> bool:
        states = [(await http.get(f"/api/v1/tasks/{t}")).json()["state"] for t in winners]
        return all(s == "assigned" for s in states)

    await eventually(all_assigned, 30, "every auction cleared")
    for n, (task_id, winner) in enumerate(winners.items()):
        status = "completed" if n < TASKS // 2 else "progress"
        r = await http.post(f"/api/v1/tasks/{task_id}/report", json={"agent_id": winner, "status": status,
                                                                      "result": {"n": n}})
        assert r.status_code == 200, r.text
    return winners


def _request(action: str, client: int, winner: str) -> tuple[str, dict[str, Any]]:
    if action == "dispute":
        return "dispute", {"by": "alice" if client % 2 else winner, "evidence": "not what was asked",
                           "idempotency_key": key()}
    if action == "resolve":
        outcome = ("release", "refund", "split")[client % 3]
        return "resolve", {"outcome": outcome, "agent_share_percent": 40, "idempotency_key": key()}
    if action == "report":
        return "report", {"agent_id": winner, "status": "failed", "message": "gave up"}
    return action, {"idempotency_key": key()}


async def test_64_clients_racing_settlements_get_only_200_or_409_and_the_books_balance(
        hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(market={"close_interval_seconds": 0.05, "accept_after_seconds": 1.0,
                                            "work_timeout_seconds": 3600})
    answers: list[tuple[str, str, int]] = []  # (task, action, status)
    with captured_logs() as logs:
        async with hub_factory.run(settings) as hub:
            async with hub.http() as http:
                winners = await _setup(http)

            async def client(n: int) -> None:
                order = list(winners)
                random.Random(n).shuffle(order)
                async with hub.http() as own:  # a connection of its own, as separate clients have
                    for task_id in order:
                        action, body = _request(ACTIONS[n % len(ACTIONS)], n, winners[task_id])
                        r = await own.post(f"/api/v1/tasks/{task_id}/{action}", json=body)
                        answers.append((task_id, ACTIONS[n % len(ACTIONS)], r.status_code))

            async with anyio.create_task_group() as tg:
                for n in range(CLIENTS):
                    tg.start_soon(client, n)

            async with hub.http() as http:
                final = {t: (await http.get(f"/api/v1/tasks/{t}")).json() for t in winners}
                accounts = ["requester:alice", "platform", *(f"agent:{w}" for w in winners.values()),
                            *(f"escrow:{task['escrow_id']}" for task in final.values())]
                balances = {a: (await http.get(f"/api/v1/accounts/{a}")).json()["balance"] for a in accounts}
            audit = await hub.state.market.ledger.verify()

    assert len(answers) == CLIENTS * TASKS
    assert Counter(status for _, _, status in answers).keys() <= {200, 409}, Counter(s for _, _, s in answers)
    for task_id, task in final.items():
        won = Counter(action for t, action, status in answers if t == task_id and status == 200)
        # The winner's failure report has one key per task (`failed:{task}`): once it ended the task, the same report
        # again is that report's replay (200, nothing moves), not a second ending.
        ended = sum(won[a] for a in ENDING - {"report"}) + min(won["report"], 1)
        assert ended <= 1 and won["dispute"] <= 1, (task_id, won)
        assert won["resolve"] <= won["dispute"], (task_id, won)  # only a disputed escrow is resolved
        escrow = task["escrow_state"]
        assert escrow != "held", task  # some settlement found every escrow open, and ended or froze it
        if escrow == "disputed":
            assert ended == 0 and won["dispute"] == 1, (task_id, won)
        elif ended == 0:  # the sweep accepted it before any request could settle it
            assert escrow == "released" and "accepted automatically" in [e["detail"] for e in task["events"]]
    assert audit.ok, audit
    assert sum(balances.values()) == DEPOSIT  # every credit is with alice, an agent, the platform or an escrow
    assert [r.getMessage() for r in logs if "deadlock" in r.getMessage().lower() or r.exc_info] == []
    assert await _deadlocks(hub_factory.database_url) == 0


async def _deadlocks(database_url: str) -> int:
    """The deadlocks PostgreSQL detected in this test's database, counted once the hub's connections have ended
    (a backend reports its statistics as it exits)."""
    conn = await asyncpg.connect(database_url)
    try:
        async def others_gone() -> bool:
            return bool(await conn.fetchval("SELECT count(*) = 0 FROM pg_stat_activity"
                                            " WHERE datname = current_database() AND pid <> pg_backend_pid()"))

        await eventually(others_gone, 30, "the hub's connections closed")
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value: int = await conn.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        return value
    finally:
        await conn.close()
