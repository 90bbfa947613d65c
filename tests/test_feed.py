"""The live feed delivers every committed discovery once and in order, whatever NATS does, and the Python and
SQL forms of a filter agree."""

import json
import random

import anyio

from agenthub.errors import RelatedDiscoveryNotFound
from collaboration.discoveries import _INSERT, row_to_discovery
from collaboration.filters import SQL_CONDITION, DiscoveryFilter
from collaboration.models import DISCOVERY_TYPES, Discovery, ShareDiscoveryInput
from tests.conftest import HubFactory, RunningHub


async def _insert_silently(hub: RunningHub, n: int, agent: str = "ghost") -> list[Discovery]:
    """Commit discoveries the way a replica does, but without publishing them (as if its NATS publish failed)."""
    rows = [await hub.state.pool.fetchrow(_INSERT, f"disc_{agent}{i:012d}", agent, "Role", "insight", f"c{i}", 0.5,
                                          None, []) for i in range(n)]
    return [row_to_discovery(r) for r in rows if r is not None]


async def _collect(hub: RunningHub, cursor: int, count: int) -> list[int]:
    """The sequences the feed delivers after `cursor`, as a stream sees them."""
    feed = hub.state.collab.feed
    seen: list[int] = []
    with anyio.fail_after(5):
        while len(seen) < count:
            events = await feed.events_after(cursor)
            assert events, "the feed ended or lost its place"
            seen += [e.discovery.sequence for e in events]
            cursor = seen[-1]
    return seen


async def test_a_discovery_whose_publish_was_lost_still_reaches_listeners(hub_factory: HubFactory) -> None:
    async with hub_factory.run(hub_factory.settings(feed_sync_seconds=0.2)) as hub:
        cursor = hub.state.collab.feed.frontier
        await _insert_silently(hub, 3)
        assert await _collect(hub, cursor, 3) == [1, 2, 3]


async def test_discoveries_arriving_out_of_order_are_delivered_in_sequence(hub_factory: HubFactory) -> None:
    # No periodic check of the log during the test: only what arrives on NATS can move the feed.
    async with hub_factory.run(hub_factory.settings(feed_sync_seconds=3600)) as hub:
        cursor = hub.state.collab.feed.frontier
        stored = await _insert_silently(hub, 4)
        bus = hub.state.bus
        # Only the newest is published (first, then the rest newest first, with a malformed message between):
        # the feed reads the missing ones from the log and delivers in sequence order, each once.
        for d in reversed(stored):
            assert await bus.publish(bus.subject(f"discoveries.ghost.{d.discovery_type}"), d)
            await bus.nc.publish(bus.subject("discoveries.ghost.insight"), b"{not json")
        assert await _collect(hub, cursor, 4) == [1, 2, 3, 4]


async def test_python_and_sql_filters_select_the_same_discoveries(hub: RunningHub) -> None:
    rng = random.Random(7)
    agents, roles = ["a1", "a2", "a3"], ["Analyzer", "analyzer", "Critic", "Builder"]
    pool = hub.state.pool
    stored = []
    for i in range(120):
        row = await pool.fetchrow(_INSERT, f"disc_f{i:014d}", rng.choice(agents), rng.choice(roles),
                                  rng.choice(DISCOVERY_TYPES), "x", round(rng.random(), 2), None, [])
        assert row is not None
        stored.append(row_to_discovery(row))
    for _ in range(60):
        flt = DiscoveryFilter(
            types=frozenset(rng.sample(DISCOVERY_TYPES, rng.randint(1, 3))) if rng.random() < 0.7 else None,
            roles=frozenset(r.lower() for r in rng.sample(roles, 2)) if rng.random() < 0.5 else None,
            agent_ids=frozenset(rng.sample(agents, 2)) if rng.random() < 0.5 else None,
            min_confidence=round(rng.random(), 2) if rng.random() < 0.5 else 0.0,
        )
        rows = await pool.fetch(f"SELECT sequence FROM discoveries WHERE {SQL_CONDITION} ORDER BY sequence",
                                0, 10**9, *flt.sql_args())
        assert [r["sequence"] for r in rows] == [d.sequence for d in stored if flt.matches(d)], json.dumps(
            flt.sql_args())


async def test_concurrent_shares_with_one_bad_related_to_refuse_only_that_one(hub: RunningHub) -> None:
    log = hub.state.collab.log
    first = await log.share(ShareDiscoveryInput(agent_id="a", agent_role="R", discovery_type="question",
                                                content="root", confidence=0.5))
    outcomes: dict[int, str] = {}

    async def share(i: int) -> None:
        related = "disc_nope" if i == 7 else first.discovery_id
        try:
            shared = await log.share(ShareDiscoveryInput(agent_id="a", agent_role="R", discovery_type="solution",
                                                         content=f"c{i}", confidence=0.5, related_to=related))
            outcomes[i] = f"stored {shared.sequence}"
        except RelatedDiscoveryNotFound:
            outcomes[i] = "refused"

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(share, i)
    assert outcomes.pop(7) == "refused"
    assert sorted(int(o.split()[1]) for o in outcomes.values()) == list(range(2, 31))
    rows = await hub.state.pool.fetch("SELECT sequence, content, related_to FROM discoveries ORDER BY sequence")
    assert [r["sequence"] for r in rows] == list(range(1, 31))
    assert "c7" not in {r["content"] for r in rows}
    assert all(r["related_to"] == first.discovery_id for r in rows[1:])


async def test_the_feed_sends_a_stream_that_fell_out_of_its_ring_back_to_the_log(hub_factory: HubFactory) -> None:
    async with hub_factory.run(hub_factory.settings(sse={"ring_size": 3})) as hub:
        feed = hub.state.collab.feed
        await _insert_silently(hub, 5)
        with anyio.fail_after(5):
            while feed.frontier < 5:
                await feed.wait_beyond(feed.frontier, 1)
        assert await feed.events_after(0) is None
        assert await feed.events_after(1) is None
        assert [e.discovery.sequence for e in await feed.events_after(2) or []] == [3, 4, 5]
        assert [e.discovery.sequence for e in await feed.events_after(4) or []] == [5]
