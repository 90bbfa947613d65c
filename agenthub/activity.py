"""The hub's activity log and its live feed: agent events, task events, bids and transfers as one gap-free
sequence (migration `0006_activity.sql`), for the hub-wide event stream.

Writers call `record` inside the transaction of the change they record, so an event exists exactly when its
change committed; the sequence is assigned at commit. Every replica's `ActivityFeed` reads the log in sequence
order every `poll_seconds` (everything up to the counter is committed, so reading up to it never skips a row)
and pushes the events into a `Ring` that the streams read.
"""

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import anyio
import asyncpg
from anyio.abc import TaskStatus
from sse_starlette import ServerSentEvent

from agenthub.database import DATABASE_ERRORS, Connection, log_failure
from agenthub.ring import Ring

logger = logging.getLogger(__name__)

Kind = Literal["agent", "task", "bid", "transfer", "approval", "budget"]
_PAGE = 500


async def record(conn: Connection, kind: Kind, data: dict[str, Any]) -> None:
    """Add an event to the log, in the caller's transaction (it gets its sequence when that commits)."""
    await conn.execute("INSERT INTO activity (kind, data) VALUES ($1, $2)", kind, json.dumps(data, default=str))


@dataclass(frozen=True, slots=True)
class ActivityEvent:
    """One logged event, with its SSE `data:` encoded once for every stream."""

    seq: int
    kind: str
    data: str  # JSON: {"seq", "at", **the event's fields}

    def frame(self, event_id: str) -> bytes:
        return ServerSentEvent(self.data, event=self.kind, id=event_id).encode()


def _event(row: asyncpg.Record) -> ActivityEvent:
    at: datetime = row["at"]
    data = json.dumps({"seq": row["seq"], "at": at.isoformat(), **json.loads(row["data"])})
    return ActivityEvent(seq=row["seq"], kind=row["kind"], data=data)


class ActivityLog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def newest(self) -> int:
        value: int = await self._pool.fetchval("SELECT last FROM activity_counter")
        return value

    async def read(self, after: int, limit: int = _PAGE) -> list[ActivityEvent]:
        """Events after `after`, in sequence order: all committed, none skipped."""
        rows = await self._pool.fetch(
            "SELECT a.seq, a.at, a.kind, a.data::text AS data FROM activity a, activity_counter c"
            " WHERE a.seq > $1 AND a.seq <= c.last ORDER BY a.seq LIMIT $2", after, limit)
        return [_event(r) for r in rows]


class ActivityFeed:
    """This replica's view of the log: a ring of the latest events, refreshed every `poll_seconds` by `run`
    (a child of the hub's root supervisor)."""

    def __init__(self, log: ActivityLog, *, ring_size: int, poll_seconds: float) -> None:
        self.log = log
        self.ring: Ring[ActivityEvent] = Ring(ring_size)
        self._poll_seconds = poll_seconds

    async def start(self) -> None:
        self.ring.skip_to(await self.log.newest())

    async def run(self, task_status: TaskStatus[None]) -> None:
        task_status.started()
        while True:
            await anyio.sleep(self._poll_seconds)
            try:
                while events := await self.log.read(self.ring.frontier):
                    for event in events:
                        self.ring.push(event)
            except DATABASE_ERRORS as exc:  # the next poll retries
                log_failure(logger, "activity feed: reading the log failed", exc)
