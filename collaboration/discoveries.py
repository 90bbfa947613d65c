"""The discovery log in PostgreSQL, the source of truth for every delivery path.

Each discovery takes the next value of a one-row counter in the same statement that inserts it. The counter's
row lock makes the sequence gap-free and makes commits happen in sequence order, so "everything up to the
counter's value" is always committed and readable: a reader that stops at the counter never skips a row that
commits later. After the commit the discoveries of a write go to this replica's live feed in-process (the
listeners), then each is published on NATS, which only wakes other replicas up: they read what it names from
here, and believe nothing a NATS message says that the log does not.

Concurrent shares are written together: while one statement is in flight the next ones queue, and whoever
writes next takes the whole queue in one multi-row statement (one round trip, one commit, consecutive sequence
numbers in arrival order). A share whose `related_to` names no stored discovery is refused before the write, so
it never fails the others; text PostgreSQL cannot store is refused before it is queued (`agenthub.text`), and
should PostgreSQL still refuse a value of a batch, its items are written one by one so only the bad one fails.

At scale: reads by filter are index-driven (`DiscoveryFilter.read_query`); counts by type, per-agent activity
and per-minute figures are kept by triggers in the same statement that writes (migration 0007), so status and
resource lists never scan the log; imports keep each discovery's id and time and skip ids already stored, so an
interrupted import can be run again; retention deletes a prefix of the log and records it in the counter's
`pruned`, so a reader behind it gets `CursorExpired` naming the oldest position left, never a silent gap.
"""

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import asyncpg

from agenthub.bus import Bus
from agenthub.database import Connection, unavailable
from agenthub.errors import (
    CursorExpired,
    CursorInFuture,
    DiscoveryNotFound,
    HubError,
    InvalidInput,
    RelatedDiscoveryNotFound,
    ServiceUnavailable,
)
from agenthub.ids import new_discovery_id
from agenthub.metrics import HubMetrics
from collaboration.filters import DiscoveryFilter
from collaboration.models import Discovery, DiscoveryLine, SharedDiscovery, ShareDiscoveryInput

logger = logging.getLogger(__name__)

_COLUMNS = "sequence, id, agent_id, agent_role, discovery_type, content, confidence, related_to, tags, created_at"

# Rows whose id is already stored are skipped (an import run again), so the sequences stay gap-free; a NULL time
# is the time of the write.
_INSERT = f"""
WITH items AS (
    SELECT t.*, row_number() OVER (ORDER BY t.n) AS k
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[], $7::text[], $8::text[],
                $9::timestamptz[]) WITH ORDINALITY AS t(id, agent_id, agent_role, discovery_type, content, confidence,
                                                        related_to, tags, created_at, n)
    WHERE NOT EXISTS (SELECT 1 FROM discoveries d WHERE d.id = t.id)
), seq AS (UPDATE discovery_counter SET last = last + (SELECT count(*) FROM items) RETURNING last)
INSERT INTO discoveries (sequence, id, agent_id, agent_role, discovery_type, content, confidence, related_to, tags,
                         created_at)
SELECT seq.last - (SELECT count(*) FROM items) + items.k, items.id, items.agent_id, items.agent_role,
       items.discovery_type, items.content, items.confidence, items.related_to,
       ARRAY(SELECT jsonb_array_elements_text(items.tags::jsonb)), coalesce(items.created_at, now())
FROM items, seq ORDER BY items.k
RETURNING {_COLUMNS}
"""
_MAX_BATCH = 200
_RANGE_PAGE = 1000  # rows per read when the live feed catches up


@dataclass(eq=False, slots=True)
class _Pending:
    item: ShareDiscoveryInput
    row: asyncpg.Record | None = None
    discovery: Discovery | None = None
    error: HubError | None = None
    done: bool = False


Listener = Callable[[list[Discovery]], None]


def row_to_discovery(row: asyncpg.Record) -> Discovery:
    return Discovery(
        discovery_id=row["id"], sequence=row["sequence"], agent_id=row["agent_id"], agent_role=row["agent_role"],
        discovery_type=row["discovery_type"], content=row["content"], confidence=row["confidence"],
        related_to=row["related_to"], tags=list(row["tags"]), timestamp=row["created_at"],
    )


def discovery_subject(bus: Bus, agent_id: str, discovery_type: str) -> str:
    return bus.subject(f"discoveries.{agent_id}.{discovery_type}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportResult:
    imported: int
    skipped: int  # already stored (same id)
    newest: Discovery | None  # the last one imported


class DiscoveryLog:
    def __init__(self, pool: asyncpg.Pool, bus: Bus, metrics: HubMetrics) -> None:
        self._pool = pool
        self._bus = bus
        self._metrics = metrics
        self._queue: list[_Pending] = []
        self._writing: anyio.Event | None = None  # set when the write in flight ends
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Call `listener` with the discoveries of each write of `share`, in sequence order, right after it
        committed (before they are published): the replica's own feed takes them from here, without a read."""
        self._listeners.append(listener)

    # -- writing ---------------------------------------------------------------------------------------------------

    async def share(self, item: ShareDiscoveryInput) -> SharedDiscovery:
        """Store, then publish. Raises RelatedDiscoveryNotFound (nothing stored) for an unknown `related_to`."""
        pending = _Pending(item)
        self._queue.append(pending)
        while not pending.done:
            if self._writing is not None:  # a write is in flight: wait for it (ours may be in it, or go next)
                await self._writing.wait()
                continue
            # Nobody took ours along yet: write it and everything queued behind it. Shielded: other callers'
            # discoveries ride on this write, so it finishes even if ours is cancelled.
            batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
            self._writing = written = anyio.Event()
            try:
                with anyio.CancelScope(shield=True):
                    await self._write(batch)
            finally:
                self._writing = None
                written.set()
        if pending.error is not None:
            raise pending.error
        discovery = pending.discovery
        assert discovery is not None
        return SharedDiscovery(discovery_id=discovery.discovery_id, uri=discovery.uri, sequence=discovery.sequence,
                               nats_subject=discovery_subject(self._bus, discovery.agent_id, discovery.discovery_type),
                               timestamp=discovery.timestamp)

    async def _write(self, batch: list[_Pending]) -> None:
        failure = ServiceUnavailable("the discovery could not be stored; retry")
        try:
            related = {p.item.related_to for p in batch if p.item.related_to is not None}
            if related:
                known = {r["id"] for r in await self._pool.fetch(
                    "SELECT id FROM discoveries WHERE id = ANY($1::text[])", list(related))}
                for p in batch:
                    if p.item.related_to is not None and p.item.related_to not in known:
                        p.error = RelatedDiscoveryNotFound(p.item.related_to)
            todo = [p for p in batch if p.error is None]
            if todo:
                await self._insert(todo)
                discoveries: list[Discovery] = []
                for p in todo:
                    if p.row is not None:
                        p.discovery = row_to_discovery(p.row)
                        discoveries.append(p.discovery)
                discoveries.sort(key=lambda d: d.sequence)
                for listener in self._listeners:
                    listener(discoveries)
                await self._publish(discoveries)
        except Exception as exc:
            # A statement that timed out may still run when a frozen server thaws: the whole batch's outcome is
            # unknown, and every caller in it is told so, not only the one whose statement it was.
            failure = unavailable(exc) or failure
            raise
        finally:
            for p in batch:  # a failure leaves the queued callers to raise it rather than wait forever
                if p.row is None and p.error is None:
                    p.error = ServiceUnavailable(failure.message, retry_after=failure.retry_after)  # one each
                p.done = True

    async def _publish(self, discoveries: list[Discovery]) -> None:
        """Publish a write's discoveries one after the other without yielding: NATS's client sends them in one go."""
        for d in discoveries:
            await self._bus.publish_discovery(discovery_subject(self._bus, d.agent_id, d.discovery_type),
                                              d.model_dump_json().encode())
            self._metrics.discoveries.labels(d.discovery_type).inc()

    async def _insert(self, todo: list[_Pending]) -> None:
        """Write `todo` in one statement; when PostgreSQL refuses a value of it (a data or constraint error, which
        one bad item causes and no other), write each on its own so the bad one fails alone."""
        ids: list[str] = [new_discovery_id() for _ in todo]
        try:
            rows = await self._pool.fetch(_INSERT, *_columns(ids, [p.item for p in todo], [None] * len(todo)))
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            if len(todo) > 1:
                logger.warning("a batch of %d discoveries was refused (%s); writing them one by one", len(todo),
                               exc)
                for p in todo:
                    await self._insert([p])
                return
            todo[0].error = InvalidInput(f"the discovery could not be stored: {exc}")
            todo[0].error.__cause__ = exc
            return
        by_id = {r["id"]: r for r in rows}
        for p, discovery_id in zip(todo, ids, strict=True):
            p.row = by_id.get(discovery_id)

    async def import_many(self, items: Sequence[DiscoveryLine]) -> ImportResult:
        """Store discoveries exported from a hub, keeping their ids, agents, content, links and times; the
        sequences are this log's own, in the order given. Ids already stored are skipped."""
        async with self._pool.acquire() as conn, conn.transaction():
            # The counter's lock first: the existence check below then sees every discovery written before ours.
            await conn.execute("SELECT last FROM discovery_counter FOR UPDATE")
            rows = await conn.fetch(_INSERT, *_columns([i.discovery_id for i in items], items,
                                                       [i.timestamp for i in items]))
        newest = row_to_discovery(rows[-1]) if rows else None
        return ImportResult(imported=len(rows), skipped=len(items) - len(rows), newest=newest)

    async def prune(self, *, keep: int | None, max_age_seconds: float | None, batch: int) -> int:
        """Delete the oldest discoveries beyond `keep` or older than `max_age_seconds`, at most `batch` of them
        (a prefix of the log: the first one young enough stops an age-based prune). Returns how many."""
        async with self._pool.acquire() as conn, conn.transaction():
            # The counter's lock first, as every writer of the log takes it: the count triggers never deadlock.
            newest, floor = await _bounds(conn, "SELECT last, pruned FROM discovery_counter FOR UPDATE")
            target = floor
            if keep is not None:
                target = max(target, newest - keep)
            if max_age_seconds is not None:
                young: int | None = await conn.fetchval(
                    "SELECT min(sequence) FROM (SELECT sequence, created_at FROM discoveries WHERE sequence > $1"
                    " ORDER BY sequence LIMIT $2) s WHERE created_at >= now() - make_interval(secs => $3)",
                    floor, batch, max_age_seconds)
                target = max(target, newest if young is None else young - 1)
            target = min(target, floor + batch)
            if target <= floor:
                return 0
            deleted = target - floor
            await conn.execute("DELETE FROM discoveries WHERE sequence > $1 AND sequence <= $2", floor, target)
            await conn.execute("UPDATE discovery_counter SET pruned = $1", target)
        logger.info("retention pruned discoveries %d..%d", floor + 1, target)
        return deleted

    async def forget_old_minutes(self) -> None:
        """The per-minute figures are kept for the last hour only."""
        await self._pool.execute("DELETE FROM discovery_minutes WHERE minute < now() - interval '1 hour'")

    # -- reading ---------------------------------------------------------------------------------------------------

    async def get(self, discovery_id: str) -> Discovery:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM discoveries WHERE id = $1", discovery_id)
        if row is None:
            raise DiscoveryNotFound(discovery_id)
        return row_to_discovery(row)

    async def newest_sequence(self) -> int:
        value: int = await self._pool.fetchval("SELECT last FROM discovery_counter")
        return value

    async def bounds(self) -> tuple[int, int]:
        """(oldest, newest): the positions a reader may start after; everything up to `oldest` was pruned."""
        newest, oldest = await _bounds(self._pool, "SELECT last, pruned FROM discovery_counter")
        return oldest, newest

    async def per_minute(self, minutes: int) -> list[dict[str, object]]:
        """Discoveries per minute and type over the last `minutes` minutes (at most 60), oldest first."""
        rows = await self._pool.fetch(
            "SELECT minute, discovery_type, n FROM discovery_minutes"
            " WHERE minute > date_trunc('minute', now()) - make_interval(mins => $1) ORDER BY minute", minutes)
        buckets: dict[str, dict[str, int]] = {}
        for r in rows:
            buckets.setdefault(r["minute"].isoformat(), {})[r["discovery_type"]] = r["n"]
        return [{"minute": minute, "by_type": by_type} for minute, by_type in buckets.items()]

    async def read(self, flt: DiscoveryFilter, after: int, limit: int) -> tuple[list[Discovery], int]:
        """Matching discoveries after `after`, oldest first, and the cursor to pass next time.

        The next cursor is the last row returned when the page is full, otherwise the newest sequence at the time
        of the read: everything up to it was committed and has been looked at. Raises CursorInFuture beyond the
        newest and CursorExpired before the oldest retained position.
        """
        sql, args = flt.read_query(_COLUMNS)
        rows = await self._pool.fetch(sql, after, limit, *args)
        newest, oldest = rows[0]["newest"], rows[0]["oldest"]
        if after > newest:
            raise CursorInFuture(after, newest)
        if after < oldest:
            raise CursorExpired(after, oldest)
        items = [row_to_discovery(r) for r in rows if r["sequence"] is not None]
        return items, (items[-1].sequence if len(items) == limit else newest)

    async def read_range(self, first: int, last: int) -> list[Discovery]:
        """Discoveries with first <= sequence <= last, oldest first, at most a page of them (the live feed reads
        a long range page by page, so catching up costs bounded memory)."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM discoveries WHERE sequence BETWEEN $1 AND $2 ORDER BY sequence LIMIT $3",
            first, last, _RANGE_PAGE,
        )
        return [row_to_discovery(r) for r in rows]

    async def counts_by_type(self) -> dict[str, int]:
        rows = await self._pool.fetch("SELECT discovery_type, n FROM discovery_type_counts WHERE n > 0")
        return {r["discovery_type"]: r["n"] for r in rows}

    async def latest_by_agent(self, agent_id: str, limit: int) -> list[Discovery]:
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM discoveries WHERE agent_id = $1 ORDER BY sequence DESC LIMIT $2", agent_id, limit
        )
        return [row_to_discovery(r) for r in rows]

    async def agents(self, limit: int) -> list[tuple[str, datetime]]:
        """The agents with stored discoveries and the time of each one's latest, most recent first."""
        rows = await self._pool.fetch("SELECT agent_id, last_at FROM discovery_agents ORDER BY last_at DESC LIMIT $1",
                                      limit)
        return [(r["agent_id"], r["last_at"]) for r in rows]


async def _bounds(conn: Connection | asyncpg.Pool, query: str) -> tuple[int, int]:
    """(last, pruned) of the counter."""
    row = await conn.fetchrow(query)
    assert row is not None  # the counter's one row is created by the first migration
    return int(row["last"]), int(row["pruned"])


def _columns(ids: list[str], items: Sequence[ShareDiscoveryInput | DiscoveryLine],
             times: list[datetime | None]) -> list[list[Any]]:
    """The arguments of `_INSERT`: one array per column."""
    return [ids, [i.agent_id for i in items], [i.agent_role for i in items], [i.discovery_type for i in items],
            [i.content for i in items], [i.confidence for i in items], [i.related_to for i in items],
            [json.dumps(i.tags) for i in items], list(times)]
