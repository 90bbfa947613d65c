"""Shared context between agents: addressed to one agent or broadcast, with a time to live.

Stored in PostgreSQL (expired items are never returned and are deleted as new ones arrive) and published on
`context.direct.{agent_id}` or `context.broadcast`.
"""

import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from agenthub.bus import Bus
from agenthub.ids import new_context_id
from collaboration.models import (
    ContextItem,
    ContextLine,
    ContextList,
    GetContextInput,
    ShareContextInput,
    SharedContext,
)

_MAX_ITEMS = 100
_EXPORT_PAGE = 1000


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
        return ContextList(items=[_item(r) for r in rows])

    async def export(self) -> AsyncIterator[bytes]:
        """Every unexpired item as export lines (`collaboration.archive`), a page at a time."""
        after = ""
        query = "SELECT * FROM contexts WHERE expires_at > now() AND id > $1 ORDER BY id LIMIT $2"
        while rows := await self._pool.fetch(query, after, _EXPORT_PAGE):
            after = rows[-1]["id"]
            yield b"".join(ContextLine(kind="context", **_item(r).model_dump()).model_dump_json().encode() + b"\n"
                           for r in rows)

    async def import_many(self, items: Sequence[ContextLine]) -> int:
        """Store imported items that have not expired, keeping their ids and times (ids already stored are
        skipped); returns how many were stored. Nothing is published: they are history, not news."""
        result: str = await self._pool.execute(
            "INSERT INTO contexts (id, from_agent, to_agent, context_type, content, relevance, created_at, expires_at)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::float8[],"
            " $7::timestamptz[], $8::timestamptz[]) AS t(id, from_agent, to_agent, context_type, content, relevance,"
            " created_at, expires_at) WHERE t.expires_at > now()"
            " ON CONFLICT (id) DO NOTHING",
            [i.context_id for i in items], [i.from_agent for i in items], [i.to_agent for i in items],
            [i.context_type for i in items], [json.dumps(i.content) for i in items], [i.relevance for i in items],
            [i.created_at for i in items], [i.expires_at for i in items],
        )
        return int(result.rsplit(" ", 1)[1])


def _item(r: asyncpg.Record) -> ContextItem:
    return ContextItem(context_id=r["id"], from_agent=r["from_agent"], to_agent=r["to_agent"],
                       context_type=r["context_type"], content=json.loads(r["content"]), relevance=r["relevance"],
                       created_at=r["created_at"], expires_at=r["expires_at"])
