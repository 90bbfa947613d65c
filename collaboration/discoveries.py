"""The discovery log in PostgreSQL, the source of truth for every delivery path.

Each discovery takes the next value of a one-row counter in the same statement that inserts it. The counter's
row lock makes the sequence gap-free and makes commits happen in sequence order, so "everything up to the
counter's value" is always committed and readable: a reader that stops at the counter never skips a row that
commits later. After the commit the discovery is published on NATS, which only wakes other replicas up; they
read what they missed from here.

Concurrent shares are written together: while one statement is in flight the next ones queue, and whoever
writes next takes the whole queue in one multi-row statement (one round trip, one commit, consecutive sequence
numbers in arrival order). If that statement fails on a bad `related_to`, the batch is written one by one so
only the bad discovery is refused.
"""

import json
import logging
from dataclasses import dataclass
from datetime import datetime

import anyio
import asyncpg

from agenthub.bus import Bus
from agenthub.errors import CursorInFuture, DiscoveryNotFound, HubError, RelatedDiscoveryNotFound, ServiceUnavailable
from agenthub.ids import new_discovery_id
from agenthub.metrics import HubMetrics
from collaboration.filters import SQL_CONDITION, DiscoveryFilter
from collaboration.models import Discovery, SharedDiscovery, ShareDiscoveryInput

logger = logging.getLogger(__name__)

_COLUMNS = "sequence, id, agent_id, agent_role, discovery_type, content, confidence, related_to, tags, created_at"

_INSERT = f"""
WITH seq AS (UPDATE discovery_counter SET last = last + 1 RETURNING last)
INSERT INTO discoveries (sequence, id, agent_id, agent_role, discovery_type, content, confidence, related_to, tags)
SELECT seq.last, $1, $2, $3, $4, $5, $6, $7, $8 FROM seq
RETURNING {_COLUMNS}
"""

_INSERT_MANY = f"""
WITH items AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[], $7::text[],
                         $8::text[]) WITH ORDINALITY AS t(id, agent_id, agent_role, discovery_type, content,
                                                          confidence, related_to, tags, n)
), seq AS (UPDATE discovery_counter SET last = last + cardinality($1::text[]) RETURNING last)
INSERT INTO discoveries (sequence, id, agent_id, agent_role, discovery_type, content, confidence, related_to, tags)
SELECT seq.last - cardinality($1::text[]) + items.n, items.id, items.agent_id, items.agent_role,
       items.discovery_type, items.content, items.confidence, items.related_to,
       ARRAY(SELECT jsonb_array_elements_text(items.tags::jsonb))
FROM items, seq ORDER BY items.n
RETURNING {_COLUMNS}
"""
_MAX_BATCH = 200


@dataclass(eq=False, slots=True)
class _Pending:
    item: ShareDiscoveryInput
    row: asyncpg.Record | None = None
    error: HubError | None = None
    done: bool = False


def row_to_discovery(row: asyncpg.Record) -> Discovery:
    return Discovery(
        discovery_id=row["id"], sequence=row["sequence"], agent_id=row["agent_id"], agent_role=row["agent_role"],
        discovery_type=row["discovery_type"], content=row["content"], confidence=row["confidence"],
        related_to=row["related_to"], tags=list(row["tags"]), timestamp=row["created_at"],
    )


def discovery_subject(bus: Bus, agent_id: str, discovery_type: str) -> str:
    return bus.subject(f"discoveries.{agent_id}.{discovery_type}")


class DiscoveryLog:
    def __init__(self, pool: asyncpg.Pool, bus: Bus, metrics: HubMetrics) -> None:
        self._pool = pool
        self._bus = bus
        self._metrics = metrics
        self._queue: list[_Pending] = []
        self._write_lock = anyio.Lock()

    async def share(self, item: ShareDiscoveryInput) -> SharedDiscovery:
        """Store, then publish. Raises RelatedDiscoveryNotFound (nothing stored) for an unknown `related_to`."""
        pending = _Pending(item)
        self._queue.append(pending)
        async with self._write_lock:
            if not pending.done:  # nobody took it along yet: write it and everything queued behind it
                batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
                # Shielded: other callers' discoveries ride on this write, so it finishes even if ours is cancelled.
                with anyio.CancelScope(shield=True):
                    await self._write(batch)
        if pending.error is not None:
            raise pending.error
        assert pending.row is not None
        discovery = row_to_discovery(pending.row)
        subject = discovery_subject(self._bus, discovery.agent_id, discovery.discovery_type)
        await self._bus.publish(subject, discovery)
        self._metrics.discoveries.labels(discovery.discovery_type).inc()
        return SharedDiscovery(discovery_id=discovery.discovery_id, uri=discovery.uri, sequence=discovery.sequence,
                               nats_subject=subject, timestamp=discovery.timestamp)

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            if len(batch) == 1:
                await self._write_one(batch[0])
                return
            items = [p.item for p in batch]
            try:
                rows = await self._pool.fetch(
                    _INSERT_MANY, [new_discovery_id() for _ in items], [i.agent_id for i in items],
                    [i.agent_role for i in items], [i.discovery_type for i in items], [i.content for i in items],
                    [i.confidence for i in items], [i.related_to for i in items],
                    [json.dumps(i.tags) for i in items],
                )
            except asyncpg.ForeignKeyViolationError:
                for p in batch:
                    await self._write_one(p)
                return
            for p, row in zip(batch, rows, strict=True):
                p.row = row
        finally:
            for p in batch:  # a failure leaves the queued callers to raise it rather than wait forever
                if p.row is None and p.error is None:
                    p.error = ServiceUnavailable("the discovery could not be stored; retry")
                p.done = True

    async def _write_one(self, p: _Pending) -> None:
        item = p.item
        try:
            p.row = await self._pool.fetchrow(
                _INSERT, new_discovery_id(), item.agent_id, item.agent_role, item.discovery_type, item.content,
                item.confidence, item.related_to, item.tags,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            p.error = RelatedDiscoveryNotFound(item.related_to or "")
            p.error.__cause__ = exc

    async def get(self, discovery_id: str) -> Discovery:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM discoveries WHERE id = $1", discovery_id)
        if row is None:
            raise DiscoveryNotFound(discovery_id)
        return row_to_discovery(row)

    async def newest_sequence(self) -> int:
        value: int = await self._pool.fetchval("SELECT last FROM discovery_counter")
        return value

    async def per_minute(self, minutes: int) -> list[dict[str, object]]:
        """Discoveries per minute and type over the last `minutes` minutes, oldest first."""
        rows = await self._pool.fetch(
            "SELECT date_trunc('minute', created_at) AS minute, discovery_type, count(*) AS n FROM discoveries"
            " WHERE created_at > date_trunc('minute', now()) - make_interval(mins => $1)"
            " GROUP BY 1, 2 ORDER BY 1", minutes - 1)
        buckets: dict[str, dict[str, int]] = {}
        for r in rows:
            buckets.setdefault(r["minute"].isoformat(), {})[r["discovery_type"]] = r["n"]
        return [{"minute": minute, "by_type": by_type} for minute, by_type in buckets.items()]

    async def read(self, flt: DiscoveryFilter, after: int, limit: int) -> tuple[list[Discovery], int]:
        """Matching discoveries after `after`, oldest first, and the cursor to pass next time.

        The next cursor is the last row returned when the page is full, otherwise the newest sequence at the time
        of the read: everything up to it was committed and has been looked at.
        """
        async with self._pool.acquire() as conn:
            newest: int = await conn.fetchval("SELECT last FROM discovery_counter")
            if after > newest:
                raise CursorInFuture(after, newest)
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM discoveries WHERE {SQL_CONDITION} ORDER BY sequence LIMIT $7",
                after, newest, *flt.sql_args(), limit,
            )
        items = [row_to_discovery(r) for r in rows]
        return items, (items[-1].sequence if len(items) == limit else newest)

    async def read_range(self, first: int, last: int) -> list[Discovery]:
        """Every discovery with first <= sequence <= last (used to fill gaps in the live feed)."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM discoveries WHERE sequence BETWEEN $1 AND $2 ORDER BY sequence", first, last
        )
        return [row_to_discovery(r) for r in rows]

    async def counts_by_type(self) -> dict[str, int]:
        rows = await self._pool.fetch("SELECT discovery_type, count(*) AS n FROM discoveries GROUP BY discovery_type")
        return {r["discovery_type"]: r["n"] for r in rows}

    async def latest_by_agent(self, agent_id: str, limit: int) -> list[Discovery]:
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM discoveries WHERE agent_id = $1 ORDER BY sequence DESC LIMIT $2", agent_id, limit
        )
        return [row_to_discovery(r) for r in rows]

    async def agents(self, limit: int) -> list[tuple[str, datetime]]:
        rows = await self._pool.fetch(
            "SELECT agent_id, max(created_at) AS last FROM discoveries GROUP BY agent_id ORDER BY last DESC LIMIT $1",
            limit,
        )
        return [(r["agent_id"], r["last"]) for r in rows]
