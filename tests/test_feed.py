"""The live feed delivers every committed discovery once and in order, whatever NATS does, and the Python and
SQL forms of a filter agree."""

import asyncio
import json
import random
from datetime import UTC, datetime

import anyio

from agenthub.errors import RelatedDiscoveryNotFound
from collaboration.discoveries import DiscoveryLog
from collaboration.filters import DiscoveryFilter
from collaboration.models import DISCOVERY_TYPES, Discovery, DiscoveryLine, ShareDiscoveryInput
from tests.conftest import HubFactory, RunningHub


def line(i: int, agent: str = "ghost", **fields: object) -> DiscoveryLine:
    values: dict[str, object] = {"kind": "discovery", "discovery_id": f"disc_{agent}{i:012d}", "agent_id": agent,
                                 "agent_role": "Role", "discovery_type": "insight", "content": f"c{i}",
                                 "confidence": 0.5, "timestamp": datetime.now(UTC), **fields}
    return DiscoveryLine.model_validate(values)


async def insert_silently(log: DiscoveryLog, lines: list[DiscoveryLine]) -> list[Discovery]:
    """Commit discoveries without publishing them (as if the NATS publish failed): the log's import."""
    await log.import_many(lines)
    items, _ = await log.read(DiscoveryFilter(agent_ids=frozenset({lines[0].agent_id})), 0, 100)
    return items


async def _insert_silently(hub: RunningHub, n: int, agent: str = "ghost") -> list[Discovery]:
    return await insert_silently(hub.state.collab.log, [line(i, agent) for i in range(n)])


async def _collect(hub: RunningHub, cursor: int, count: int) -> list[int]:
    """The sequences the feed delivers after `cursor`, as a stream sees them."""
    feed = hub.state.collab.feed
    seen: list[int] = []
    with anyio.fail_after(5):
        while len(seen) < count:
            events = feed.ring.after(cursor)
            assert events is not None, "the feed lost its place"
            if not events:
                await feed.next_event(asyncio.get_running_loop().create_future())
                continue
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


async def test_a_sequence_named_on_nats_beyond_the_log_does_not_move_the_feed(hub_factory: HubFactory) -> None:
    async with hub_factory.run(hub_factory.settings(feed_sync_seconds=3600)) as hub:
        bus, feed = hub.state.bus, hub.state.collab.feed
        fake = Discovery(discovery_id="disc_fake", sequence=1000, agent_id="ghost", agent_role="Role",
                         discovery_type="insight", content="not in the log", confidence=1.0, related_to=None,
                         tags=[], timestamp=datetime.now(UTC))
        assert await bus.publish(bus.subject("discoveries.ghost.insight"), fake)
        await hub.state.collab.log.share(ShareDiscoveryInput(agent_id="a", agent_role="R",
                                                             discovery_type="insight", content="real",
                                                             confidence=0.5))
        assert await _collect(hub, 0, 1) == [1]
        assert feed.frontier == 1


async def test_python_and_sql_filters_select_the_same_discoveries_page_by_page(hub: RunningHub) -> None:
    rng = random.Random(7)
    agents, roles = ["a1", "a2", "a3", "rare"], ["Analyzer", "analyzer", "Critic", "Builder"]
    log = hub.state.collab.log
    await log.import_many([
        line(i, rng.choice(agents[:3]) if i % 40 else "rare", agent_role=rng.choice(roles),
             discovery_type=rng.choice(DISCOVERY_TYPES), confidence=round(rng.random(), 2))
        for i in range(400)])
    stored, _ = await log.read(DiscoveryFilter(), 0, 1000)
    assert len(stored) == 400
    # Each filter shape is read many times on the same connections, past the point where PostgreSQL may switch a
    # prepared statement to a generic plan; the rows must stay right (and, per bench/scale.py, cheap).
    for _ in range(80):
        flt = DiscoveryFilter(
            types=frozenset(rng.sample(DISCOVERY_TYPES, rng.randint(1, 3))) if rng.random() < 0.6 else None,
            roles=frozenset(r.lower() for r in rng.sample(roles, 2)) if rng.random() < 0.4 else None,
            agent_ids=frozenset(rng.sample(agents, rng.randint(1, 2))) if rng.random() < 0.6 else None,
            min_confidence=round(rng.random(), 2) if rng.random() < 0.4 else 0.0,
        )
        after, limit = rng.choice([0, 0, 37, 399]), rng.choice([1, 7, 100])
        got: list[int] = []
        cursor = after
        while True:
            items, cursor = await log.read(flt, cursor, limit)
            got += [d.sequence for d in items]
            if len(items) < limit:
                break
        assert cursor == 400
        assert got == [d.sequence for d in stored if d.sequence > after and flt.matches(d)], json.dumps(
            flt.stored())


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
        assert feed.ring.after(0) is None
        assert feed.ring.after(1) is None
        assert [e.discovery.sequence for e in feed.ring.after(2) or []] == [3, 4, 5]
        assert [e.discovery.sequence for e in feed.ring.after(4) or []] == [5]
