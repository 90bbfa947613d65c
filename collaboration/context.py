"""Shared context between agents: addressed to one agent or broadcast, with a time to live.

Stored in PostgreSQL (expired items are never returned and are deleted as new ones arrive) and published on
`context.direct.{agent_id}` or `context.broadcast`.
"""

import json
from datetime import UTC, datetime, timedelta

import asyncpg

from agenthub.bus import Bus
from agenthub.ids import new_context_id
from collaboration.models import ContextItem, ContextList, GetContextInput, ShareContextInput, SharedContext

_MAX_ITEMS = 100


class ContextManager:
    def __init__(self, pool: asyncpg.Pool, bus: Bus) -> None:
        self._pool = pool
        self._bus = bus

    async def share(self, req: ShareContextInput) -> SharedContext:
        context_id = new_context_id()
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=req.ttl_seconds)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM contexts WHERE expires_at < now()")
            await conn.execute(
                "INSERT INTO contexts (id, from_agent, to_agent, context_type, content, relevance, created_at, "
                "expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                context_id, req.from_agent, req.to_agent, req.context_type, json.dumps(req.content), req.relevance,
                now, expires,
            )
        item = ContextItem(context_id=context_id, from_agent=req.from_agent, to_agent=req.to_agent,
                           context_type=req.context_type, content=req.content, relevance=req.relevance,
                           created_at=now, expires_at=expires)
        name = f"context.direct.{req.to_agent}" if req.to_agent else "context.broadcast"
        subject = self._bus.subject(name)
        await self._bus.publish(subject, item)
        return SharedContext(context_id=context_id, nats_subject=subject, expires_at=expires)

    async def get(self, req: GetContextInput) -> ContextList:
        rows = await self._pool.fetch(
            "SELECT * FROM contexts WHERE (to_agent = $1 OR to_agent IS NULL) AND expires_at > now()"
            " AND ($2::text[] IS NULL OR context_type = ANY($2)) AND relevance >= $3"
            " ORDER BY relevance DESC, created_at DESC LIMIT $4",
            req.agent_id, req.context_types, req.min_relevance, _MAX_ITEMS,
        )
        return ContextList(items=[
            ContextItem(context_id=r["id"], from_agent=r["from_agent"], to_agent=r["to_agent"],
                        context_type=r["context_type"], content=json.loads(r["content"]), relevance=r["relevance"],
                        created_at=r["created_at"], expires_at=r["expires_at"])
            for r in rows
        ])
