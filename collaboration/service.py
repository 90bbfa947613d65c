"""The collaboration operations as callers see them, with who-may-do-what checked in one place.

Both the MCP tools and the REST API call these methods; they only translate inputs, outputs and errors.
"""

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

import asyncpg

from agenthub.auth import Principal, Role
from agenthub.bus import Bus
from agenthub.errors import CursorExpired, CursorInFuture, Forbidden, QuotaExceeded
from agenthub.metrics import HubMetrics
from agenthub.ratelimit import DISCOVERIES, QUESTIONS, SUBSCRIPTIONS, RateLimiter
from agenthub.settings import RetentionSettings
from collaboration.archive import Archive, ImportSummary, parse_lines
from collaboration.context import ContextManager
from collaboration.discoveries import DiscoveryLog
from collaboration.feed import DiscoveryFeed
from collaboration.filters import DiscoveryFilter
from collaboration.models import (
    CollaborationStatus,
    ContextList,
    Discovery,
    GetContextInput,
    PollInput,
    PollResult,
    ShareContextInput,
    SharedContext,
    SharedDiscovery,
    ShareDiscoveryInput,
    Subscribed,
    SubscribeInput,
    Unsubscribed,
    UnsubscribeInput,
    collection_uri,
)
from collaboration.retention import Retention
from collaboration.subscriptions import Subscription, Subscriptions


class Collaboration:
    """Owns the live feed; enter it to start the feed, exit to stop it."""

    def __init__(self, pool: asyncpg.Pool, bus: Bus, metrics: HubMetrics, limiter: RateLimiter, *, base_url: str,
                 ring_size: int, sync_seconds: float, retention: RetentionSettings) -> None:
        self.log = DiscoveryLog(pool, bus, metrics)
        self.feed = DiscoveryFeed(self.log, bus, metrics, ring_size=ring_size, sync_interval=sync_seconds)
        self.subscriptions = Subscriptions(pool, self.log, self.feed)
        self.contexts = ContextManager(pool, bus)
        self.archive = Archive(self.log, self.contexts, bus)
        self.retention = Retention(self.log, retention)
        self._limiter = limiter
        self._base_url = base_url.rstrip("/")

    async def __aenter__(self) -> Self:
        await self.feed.__aenter__()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
                        ) -> None:
        await self.feed.__aexit__(et, e, tb)

    async def share_discovery(self, who: Principal, req: ShareDiscoveryInput) -> SharedDiscovery:
        who.require_acting_as(req.agent_id)
        if who.role is Role.AGENT:  # an agent's quotas (a question refused takes nothing from the other)
            if req.discovery_type == "question":
                self._limiter.take(QUESTIONS, req.agent_id)
            self._limiter.take(DISCOVERIES, req.agent_id)
        return await self.log.share(req)

    async def subscribe(self, who: Principal, req: SubscribeInput) -> Subscribed:
        who.require_acting_as(req.subscriber_agent_id)
        limits = self._limiter.settings
        quota = limits.enabled and who.role is Role.AGENT
        try:
            sub = await self.subscriptions.create(req, max_held=limits.max_subscriptions if quota else None)
        except QuotaExceeded:
            self._limiter.refused(SUBSCRIPTIONS)
            raise
        return Subscribed(
            subscription_id=sub.subscription_id,
            cursor=sub.cursor,
            sse_endpoint=f"{self._base_url}/discoveries/stream?subscription_id={sub.subscription_id}",
            resource_uri=collection_uri(req.agent_ids[0]) if req.agent_ids and len(req.agent_ids) == 1
            else "discovery://agents/{agent_id}/discoveries",
        )

    async def own_subscription(self, who: Principal, subscription_id: str) -> Subscription:
        """The subscription, if `who` may read it: operators and viewers any, an agent only its own."""
        sub = await self.subscriptions.get(subscription_id)
        if who.role is Role.AGENT and sub.subscriber_agent_id != who.agent_id:
            raise Forbidden(f"subscription {subscription_id} belongs to agent {sub.subscriber_agent_id!r}")
        return sub

    async def poll(self, who: Principal, req: PollInput) -> PollResult:
        who.require_write()  # a poll moves the subscription's stored cursor
        sub = await self.own_subscription(who, req.subscription_id)
        items, cursor = await self.subscriptions.poll(sub, req)
        return PollResult.of(items, cursor)

    async def unsubscribe(self, who: Principal, req: UnsubscribeInput) -> Unsubscribed:
        who.require_write()
        await self.own_subscription(who, req.subscription_id)
        removed = await self.subscriptions.delete(req.subscription_id)
        return Unsubscribed(subscription_id=req.subscription_id, removed=removed)

    async def share_context(self, who: Principal, req: ShareContextInput) -> SharedContext:
        who.require_acting_as(req.from_agent)
        return await self.contexts.share(req)

    async def get_context(self, who: Principal, req: GetContextInput) -> ContextList:
        if who.role is Role.AGENT and req.agent_id != who.agent_id:
            raise Forbidden(f"this token belongs to agent {who.agent_id!r} and cannot read {req.agent_id!r}'s context")
        return await self.contexts.get(req)

    async def status(self) -> CollaborationStatus:
        counts = await self.log.counts_by_type()
        oldest, newest = await self.log.bounds()
        return CollaborationStatus(
            discoveries_by_type=counts,
            discoveries_total=sum(counts.values()),
            newest_sequence=newest,
            oldest_cursor=oldest,
            subscriptions=await self.subscriptions.count(),
            sse_clients=self.feed.stream_count,
        )

    async def get_discovery(self, discovery_id: str) -> Discovery:
        return await self.log.get(discovery_id)

    async def list_discoveries(self, flt: DiscoveryFilter, cursor: int, limit: int) -> tuple[list[Discovery], int]:
        return await self.log.read(flt, cursor, limit)

    async def export(self, who: Principal, after: int, *, context: bool) -> AsyncIterator[bytes]:
        """The log after `after` (and live context) as JSON Lines; operators only (context is agents' own)."""
        who.require_operator()
        oldest, newest = await self.log.bounds()  # refused now, before the response starts
        if after > newest:
            raise CursorInFuture(after, newest)
        if after < oldest:
            raise CursorExpired(after, oldest)
        return self.archive.export(after, context=context)

    async def import_lines(self, who: Principal, body: bytes) -> ImportSummary:
        """Import a chunk of an export file; operators only (it writes as every agent in it)."""
        who.require_operator()
        return await self.archive.import_lines(parse_lines(body))
