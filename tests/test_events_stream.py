"""`GET /events/stream`, the hub-wide stream, through real HTTP: discoveries, agent transitions, tasks, bids and
transfers as they happen, `metrics_update`, resuming exactly with Last-Event-ID, and the activity log under it
(gap-free in commit order, no deadlocks between writers that lock in different orders)."""

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from agenthub import activity
from agenthub.activity import ActivityLog
from agenthub.auth import Role
from tests.agents_helpers import scripted
from tests.conftest import HubFactory, RunningHub
from tests.test_market import deposit
from tests.test_sse import EventStream, Frame, open_stream, share

STREAM = "/events/stream"


@pytest.fixture
async def busy_hub(hub_factory: HubFactory) -> AsyncIterator[RunningHub]:
    settings = hub_factory.settings(agents={"heartbeat_seconds": 0.5}, market={"close_interval_seconds": 0.1},
                                    sse={"metrics_seconds": 0.3, "activity_poll_seconds": 0.05})
    async with hub_factory.run(settings) as running:
        yield running


async def events_until(stream: EventStream, done: Any, seconds: float = 15) -> list[Frame]:
    """Every event (metrics_update left out) up to and including the first for which `done(frame)` holds."""
    got: list[Frame] = []
    with anyio.fail_after(seconds):
        while True:
            frame = await stream.event(seconds)
            if frame.event == "metrics_update":
                continue
            got.append(frame)
            if done(frame):
                return got


def position(frame: Frame) -> tuple[int, int]:
    assert frame.id is not None
    d, e = frame.id.split(".")
    return int(d), int(e)


async def test_everything_that_happens_arrives_in_order_with_resumable_ids(busy_hub: RunningHub) -> None:
    async with busy_hub.http() as http, open_stream(http, path=STREAM) as (stream, hello):
        assert hello == {"discovery_cursor": 0, "activity_cursor": 0}
        first = await stream.event()
        assert first.event == "metrics_update" and "by_state" in first.json()["tasks"]

        await http.post("/api/v1/agents", json=scripted("w1", "worker", role="worker", capabilities=["count"]))
        agent_events = await events_until(stream, lambda f: f.event == "agent" and f.json()["to_state"] == "idle")
        assert [f.json()["to_state"] for f in agent_events][:2] == ["created", "starting"]
        assert {f.json()["agent_id"] for f in agent_events} == {"w1"}

        await share(http, "the cache misses every night")
        [found] = await events_until(stream, lambda f: f.event == "discovery")
        assert found.json()["discovery"]["content"] == "the cache misses every night"

        await deposit(http, "requester:carol", 500)
        [money] = await events_until(stream, lambda f: f.event == "transfer")
        assert money.json()["kind"] == "deposit"
        assert {p["account_id"]: p["amount"] for p in money.json()["postings"]} == {"mint": -500,
                                                                                    "requester:carol": 500}

        r = await http.post("/api/v1/tasks", json={
            "requester_id": "carol", "description": "count", "budget": 100, "required_capabilities": ["count"],
            "bidding_seconds": 0.5, "idempotency_key": str(uuid.uuid4())})
        task_id = r.json()["task_id"]
        auction = await events_until(stream, lambda f: f.event == "task" and f.json()["to_state"] == "completed")
        kinds = [(f.event, f.json().get("to_state") or f.json().get("kind")) for f in auction
                 if f.event in ("task", "bid", "transfer")]
        assert kinds[:2] == [("transfer", "hold"), ("task", "bidding")]
        assert ("bid", None) in [(k, None) for k, _ in kinds if k == "bid"]
        bids = [f.json() for f in auction if f.event == "bid"]
        assert bids and bids[0] == {**bids[0], "task_id": task_id, "bid_count": 1} and "price" not in bids[0]
        assert ("task", "assigned") in kinds and ("transfer", "award") in kinds
        assert kinds.index(("task", "assigned")) < kinds.index(("task", "completed"))

        logged = [f for f in [*agent_events, found, money, *auction] if f.event != "discovery"]
        seqs = [f.json()["seq"] for f in logged]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # gap-free, in order
        positions = [position(f) for f in [*agent_events, found, money, *auction]]
        assert positions == sorted(positions)


async def test_a_client_that_resumes_gets_every_missed_event_once(busy_hub: RunningHub) -> None:
    async with busy_hub.http() as http:
        async with open_stream(http, path=STREAM) as (stream, _):
            await share(http, "before the drop")
            seen = await events_until(stream, lambda f: f.event == "discovery")
            last = seen[-1].id
        # Disconnected: discoveries and transfers happen meanwhile.
        for n in range(3):
            await share(http, f"missed {n}")
            await deposit(http, f"requester:r{n}", 10)
        async with open_stream(http, path=STREAM, headers={"Last-Event-ID": str(last)}) as (stream, hello):
            assert hello == dict(zip(("discovery_cursor", "activity_cursor"), position(seen[-1]), strict=True))
            await share(http, "after the resume")
            await deposit(http, "requester:after", 10)
            # Each of the two sequences arrives in order; between them, a batch lists discoveries first.
            resumed = await events_until(stream, lambda f: f.event == "transfer" and
                                         f.json()["postings"][-1]["account_id"] == "requester:after")
    contents = [f.json()["discovery"]["content"] for f in resumed if f.event == "discovery"]
    assert contents == ["missed 0", "missed 1", "missed 2", "after the resume"]
    deposits = [p["account_id"] for f in resumed if f.event == "transfer" for p in f.json()["postings"]
                if p["account_id"] != "mint"]
    assert deposits == ["requester:r0", "requester:r1", "requester:r2", "requester:after"]
    ids = [f.id for f in resumed]
    assert len(ids) == len(set(ids))


async def test_start_beginning_replays_the_logs_and_metrics_update_repeats(busy_hub: RunningHub) -> None:
    async with busy_hub.http() as http:
        await share(http, "an old discovery")
        await deposit(http, "requester:old", 7)
        async with open_stream(http, {"start": "beginning"}, path=STREAM) as (stream, hello):
            assert hello == {"discovery_cursor": 0, "activity_cursor": 0}
            replayed = await events_until(stream, lambda f: f.event == "transfer")
            assert [f.event for f in replayed] == ["discovery", "transfer"]
            updates = 0
            with anyio.fail_after(5):
                while updates < 2:
                    updates += (await stream.event()).event == "metrics_update"


@pytest.mark.parametrize(("params", "headers", "reason"), [
    ({}, {"Last-Event-ID": "12"}, "invalid Last-Event-ID"),
    ({}, {"Last-Event-ID": "0.99"}, "beyond the newest activity"),
    ({}, {"Last-Event-ID": "99.0"}, "beyond the newest discovery"),
    ({"start": "yesterday"}, {}, "invalid stream start"),
])
async def test_bad_positions_are_refused_with_the_reason(hub: RunningHub, params: dict[str, str],
                                                         headers: dict[str, str], reason: str) -> None:
    async with hub.http() as http:
        r = await http.get(STREAM, params=params, headers=headers)
    assert r.status_code == 400 and reason in r.json()["detail"], r.text


async def test_viewers_stream_with_a_query_token_and_strangers_are_refused(hub: RunningHub) -> None:
    viewer = await hub.token(Role.VIEWER)
    async with hub.http() as http:
        anonymous = await http.get(STREAM, headers={"Authorization": ""})
        assert anonymous.status_code == 401
        async with hub.http("nobody") as stranger:
            assert (await stranger.get(STREAM, params={"access_token": "ah_wrong"})).status_code == 401
        async with open_stream(http, {"access_token": viewer}, headers={"Authorization": ""}, path=STREAM) as (
                stream, _):
            assert (await stream.event()).event == "metrics_update"
        whoami = await http.get("/api/v1/whoami", headers={"Authorization": f"Bearer {viewer}"})
        assert whoami.json() == {"role": "viewer", "agent_id": None, "auth": True}


async def test_the_activity_log_is_gap_free_under_concurrent_writers_that_lock_in_different_orders(
        hub: RunningHub) -> None:
    """Half the writers record an event and then lock a row, the other half lock the row and then record: a
    sequence taken when the event is written would deadlock them. It is taken at commit, last, so none does,
    and the log reads 1..N with each transaction's events consecutive."""
    pool = hub.state.pool
    await pool.execute("CREATE TABLE locks (id int PRIMARY KEY)")
    await pool.execute("INSERT INTO locks VALUES (1)")

    async def writer(n: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            if n % 2:
                await activity.record(conn, "task", {"task_id": f"t{n}", "kind": "test"})
                await conn.execute("SELECT 1 FROM locks WHERE id = 1 FOR UPDATE")
            else:
                await conn.execute("SELECT 1 FROM locks WHERE id = 1 FOR UPDATE")
                await activity.record(conn, "task", {"task_id": f"t{n}", "kind": "test"})
            await anyio.sleep(0.002)
            await activity.record(conn, "bid", {"task_id": f"t{n}", "bid_count": n})

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for n in range(40):
                tg.start_soon(writer, n)
    events = await ActivityLog(pool).read(0, 1000)
    assert [e.seq for e in events] == list(range(1, 81))
    assert all(json.loads(e.data)["seq"] == e.seq for e in events)
    pairs = [(json.loads(a.data)["task_id"], a.kind, json.loads(b.data)["task_id"], b.kind)
             for a, b in zip(events[::2], events[1::2], strict=True)]
    assert all(ta == tb and (ka, kb) == ("task", "bid") for ta, ka, tb, kb in pairs)
