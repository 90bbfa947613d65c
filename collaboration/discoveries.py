"""The discovery log in PostgreSQL, the source of truth for every delivery path.

Each discovery takes the next value of a one-row counter in the same statement that inserts it. The counter's
row lock makes the sequence gap-free and makes commits happen in sequence order, so "everything up to the
counter's value" is always committed and readable: a reader that stops at the counter never skips a row that
commits later. After the commit the discovery is published on NATS, which only wakes other replicas up; they
read what they missed from here.
"""

import logging
from datetime import datetime

import asyncpg

from agenthub.bus import Bus
from agenthub.errors import CursorInFuture, DiscoveryNotFound, RelatedDiscoveryNotFound
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

    async def share(self, item: ShareDiscoveryInput) -> SharedDiscovery:
        """Store, then publish. Raises RelatedDiscoveryNotFound (nothing stored) for an unknown `related_to`."""
        try:
            row = await self._pool.fetchrow(
                _INSERT, new_discovery_id(), item.agent_id, item.agent_role, item.discovery_type, item.content,
                item.confidence, item.related_to, item.tags,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise RelatedDiscoveryNotFound(item.related_to or "") from exc
        assert row is not None
        discovery = row_to_discovery(row)
        subject = discovery_subject(self._bus, discovery.agent_id, discovery.discovery_type)
        await self._bus.publish(subject, discovery)
        self._metrics.discoveries.labels(discovery.discovery_type).inc()
        return SharedDiscovery(discovery_id=discovery.discovery_id, uri=discovery.uri, sequence=discovery.sequence,
                               nats_subject=subject, timestamp=discovery.timestamp)

    async def get(self, discovery_id: str) -> Discovery:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM discoveries WHERE id = $1", discovery_id)
        if row is None:
            raise DiscoveryNotFound(discovery_id)
        return row_to_discovery(row)

    async def newest_sequence(self) -> int:
        value: int = await self._pool.fetchval("SELECT last FROM discovery_counter")
        return value

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
