"""Discovery subscriptions: a stored filter plus a server-side cursor, polled (long-poll) or streamed.

A poll reads the log after the cursor; when nothing matches it waits for the live feed to move past what it
has seen, then reads again, until `wait_seconds` run out. The cursor it returns covers everything it looked at,
so consecutive polls neither skip nor repeat a discovery.
"""

import time
from dataclasses import dataclass

import asyncpg

from agenthub.errors import CursorExpired, CursorInFuture, QuotaExceeded, SubscriptionNotFound
from agenthub.ids import SubscriptionId, new_subscription_id
from collaboration.discoveries import DiscoveryLog
from collaboration.feed import DiscoveryFeed
from collaboration.filters import DiscoveryFilter
from collaboration.models import Discovery, PollInput, SubscribeInput


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    subscription_id: SubscriptionId
    subscriber_agent_id: str
    flt: DiscoveryFilter
    cursor: int


class Subscriptions:
    def __init__(self, pool: asyncpg.Pool, log: DiscoveryLog, feed: DiscoveryFeed) -> None:
        self._pool = pool
        self._log = log
        self._feed = feed

    async def create(self, req: SubscribeInput, *, max_held: int | None = None) -> Subscription:
        """Store a subscription; `QuotaExceeded` when its agent already holds `max_held` (counted under a lock
        per agent, so concurrent requests on any replica cannot pass it together)."""
        oldest, newest = await self._log.bounds()
        match req.start:
            case "now":
                cursor = newest
            case "beginning":
                cursor = oldest
            case int(n) if n > newest:
                raise CursorInFuture(n, newest)
            case int(n) if n < oldest:
                raise CursorExpired(n, oldest)
            case int(n):
                cursor = n
        flt = DiscoveryFilter.of(req)
        sub_id = new_subscription_id()
        async with self._pool.acquire() as conn, conn.transaction():
            if max_held is not None:
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('subscriptions:' || $1, 0))",
                                   req.subscriber_agent_id)
                held = await conn.fetchval("SELECT count(*) FROM subscriptions WHERE subscriber_agent_id = $1",
                                           req.subscriber_agent_id)
                if held >= max_held:
                    raise QuotaExceeded("subscriptions held by this agent", max_held,
                                        "unsubscribe from one it no longer polls first")
            await conn.execute(
                "INSERT INTO subscriptions (id, subscriber_agent_id, discovery_types, agent_roles, agent_ids, "
                "min_confidence, cursor) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                sub_id, req.subscriber_agent_id, *flt.stored(), cursor,
            )
        return Subscription(subscription_id=sub_id, subscriber_agent_id=req.subscriber_agent_id, flt=flt,
                            cursor=cursor)

    async def get(self, subscription_id: str) -> Subscription:
        row = await self._pool.fetchrow("SELECT * FROM subscriptions WHERE id = $1", subscription_id)
        if row is None:
            raise SubscriptionNotFound(subscription_id)

        def opt(values: list[str] | None) -> frozenset[str] | None:
            return frozenset(values) if values is not None else None

        flt = DiscoveryFilter(types=opt(row["discovery_types"]), roles=opt(row["agent_roles"]),
                              agent_ids=opt(row["agent_ids"]), min_confidence=row["min_confidence"])
        return Subscription(subscription_id=SubscriptionId(row["id"]), subscriber_agent_id=row["subscriber_agent_id"],
                            flt=flt, cursor=row["cursor"])

    async def delete(self, subscription_id: str) -> bool:
        result: str = await self._pool.execute("DELETE FROM subscriptions WHERE id = $1", subscription_id)
        return result.endswith(" 1")

    async def count(self) -> int:
        n: int = await self._pool.fetchval("SELECT count(*) FROM subscriptions")
        return n

    async def poll(self, sub: Subscription, req: PollInput) -> tuple[list[Discovery], int]:
        cursor = req.cursor if req.cursor is not None else sub.cursor
        deadline = time.monotonic() + req.wait_seconds
        while True:
            items, next_cursor = await self._log.read(sub.flt, cursor, req.limit)
            remaining = deadline - time.monotonic()
            if items or remaining <= 0:
                break
            cursor = next_cursor
            await self._feed.wait_beyond(next_cursor, remaining)
        await self._pool.execute("UPDATE subscriptions SET cursor = $2 WHERE id = $1", sub.subscription_id,
                                 next_cursor)
        return items, next_cursor
