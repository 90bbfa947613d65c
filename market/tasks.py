"""Tasks and their bids in PostgreSQL, with the task state machine.

    awaiting_approval → bidding (approved) | cancelled (denied, or by the requester)
    bidding → assigned → running → completed | failed
    bidding → expired (no eligible bid) | cancelled;  assigned / running → cancelled | failed

Every change goes through `transition`, which locks the task row, checks the change, updates the row and writes a
`task_events` row in one transaction (on the caller's connection when given, so the auction closer can change a
batch of tasks atomically). Bids are sealed: `get` shows them only once the auction has closed.

Lock order, for every transaction that settles a task (accept, cancel, dispute, resolve, report, and the
automatic closers): the task rows first (`lock`, `transition` or `lock_bidding`, in id order when several), then
their escrow rows, then accounts in id order (`market.ledger.lock_accounts`). A task event row takes a key-share
lock on its task, so writing one before the task is locked would invert the order; nothing does.
"""

import json
from collections.abc import Collection
from datetime import datetime
from typing import Any

import asyncpg

from agenthub import activity
from agenthub.database import Connection
from agenthub.errors import AuctionClosed, IllegalTaskTransition, TaskNotFound
from market import bonds
from market.bonds import bond_for
from market.models import BidInfo, BidPlaced, ListTasksInput, PlaceBidInput, SubmitTaskInput, TaskEvent, TaskInfo

_ALLOWED: dict[str, frozenset[str]] = {
    "awaiting_approval": frozenset({"bidding", "cancelled"}),
    "bidding": frozenset({"assigned", "expired", "cancelled"}),
    "assigned": frozenset({"running", "completed", "failed", "cancelled"}),
    "running": frozenset({"completed", "failed", "cancelled"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
    "expired": frozenset(),
}
OPEN_STATES = frozenset({"awaiting_approval", "bidding", "assigned", "running"})
_COLUMNS = frozenset({"winner", "price", "welfare", "estimated_seconds", "result", "assigned_at", "completed_at",
                      "check_outcome", "bidding_closes_at", "clearing_batch", "cleared_at"})
_JSON_COLUMNS = frozenset({"result", "check_outcome"})
_EVENTS_SHOWN = 50


def can_transition(current: str, target: str) -> bool:
    return target in _ALLOWED[current]


def _info(row: asyncpg.Record, bids: list[BidInfo] | None, bid_count: int) -> TaskInfo:
    return TaskInfo(
        task_id=row["id"], requester_id=row["requester_id"], description=row["description"],
        required_capabilities=list(row["required_capabilities"]), priority=row["priority"],
        parameters=json.loads(row["parameters"]), budget=row["budget"], state=row["state"],
        bidding_closes_at=row["bidding_closes_at"], bid_count=bid_count, bids=bids, winner=row["winner"],
        price=row["price"], welfare=row["welfare"],
        result=json.loads(row["result"]) if row["result"] is not None else None, escrow_id=row["escrow_id"],
        bond_percent=row["bond_percent"], approval_id=row["approval_id"],
        acceptance=json.loads(row["acceptance"]) if row["acceptance"] is not None else None,
        check=json.loads(row["check_outcome"]) if row["check_outcome"] is not None else None,
        created_at=row["created_at"], updated_at=row["updated_at"])


class TaskStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, conn: Connection, req: SubmitTaskInput, *, task_id: str, escrow_id: str,
                     closes_at: datetime, approval_id: str | None = None,
                     credit_reservation: str | None = None) -> None:
        """Store a new task: bidding until `closes_at`, or, with `approval_id`, awaiting that approval (its
        auction then opens for `req.bidding_seconds`)."""
        state = "bidding" if approval_id is None else "awaiting_approval"
        acceptance = req.acceptance.model_dump_json() if req.acceptance is not None else None
        await conn.execute(
            "INSERT INTO tasks (id, requester_id, description, required_capabilities, priority, parameters, budget,"
            " state, bidding_closes_at, escrow_id, bidding_seconds, approval_id, bond_percent, acceptance,"
            " credit_reservation) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            task_id, req.requester_id, req.description, req.required_capabilities, req.priority,
            json.dumps(req.parameters), req.budget, state, closes_at, escrow_id, req.bidding_seconds, approval_id,
            req.bond_percent, acceptance, credit_reservation)
        detail = (f"auction open until {closes_at.isoformat()}" if approval_id is None
                  else f"waiting for approval {approval_id}")
        await self._event(conn, task_id, "transition", None, state, detail)

    async def counts_by_state(self) -> dict[str, int]:
        rows = await self._pool.fetch("SELECT state, count(*) AS n FROM tasks GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    async def required_capabilities(self, task_id: str) -> list[str]:
        caps = await self._pool.fetchval("SELECT required_capabilities FROM tasks WHERE id = $1", task_id)
        if caps is None:
            raise TaskNotFound(task_id)
        return list(caps)

    async def place_bid(self, req: PlaceBidInput) -> BidPlaced:
        """Store (or replace) the agent's bid while the auction is open."""
        async with self._pool.acquire() as conn, conn.transaction():
            task = await conn.fetchrow("SELECT state, bidding_closes_at, bond_percent, escrow_id, now() AS now"
                                       " FROM tasks WHERE id = $1 FOR SHARE", req.task_id)
            if task is None:
                raise TaskNotFound(req.task_id)
            if task["state"] != "bidding" or task["now"] >= task["bidding_closes_at"]:
                raise AuctionClosed(req.task_id)
            replaced = await conn.fetchval(
                "INSERT INTO bids (task_id, agent_id, price, estimated_seconds) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (task_id, agent_id) DO UPDATE SET price = EXCLUDED.price,"
                " estimated_seconds = EXCLUDED.estimated_seconds, seq = nextval('bids_seq_seq'), placed_at = now()"
                " RETURNING xmax <> 0", req.task_id, req.agent_id, req.price, req.estimated_seconds)
            if task["bond_percent"]:  # a bidder that cannot cover its bond cannot bid: this raises, storing nothing
                await bonds.post(conn, task_id=req.task_id, escrow_id=task["escrow_id"], agent_id=req.agent_id,
                                 amount=bond_for(req.price, task["bond_percent"]))
            count = await conn.fetchval("SELECT count(*) FROM bids WHERE task_id = $1", req.task_id)
            await activity.record(conn, "bid", {"task_id": req.task_id, "bid_count": count})  # sealed: no prices
        return BidPlaced(task_id=req.task_id, agent_id=req.agent_id, price=req.price, replaced=bool(replaced),
                         bidding_closes_at=task["bidding_closes_at"], bond=bond_for(req.price, task["bond_percent"]))

    @staticmethod
    async def lock(conn: Connection, task_id: str) -> asyncpg.Record:
        """Lock the task's row for the caller's transaction and return it: the first lock every settlement takes
        (module docstring: lock order)."""
        row = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1 FOR UPDATE", task_id)
        if row is None:
            raise TaskNotFound(task_id)
        return row

    async def transition(self, task_id: str, target: str, detail: str = "", *, conn: Connection | None = None,
                         allowed_from: Collection[str] | None = None, **fields: Any) -> str:
        """Move the task to `target` (setting `fields`); returns the state it left."""
        if conn is None:
            async with self._pool.acquire() as own, own.transaction():
                return await self.transition(task_id, target, detail, conn=own, allowed_from=allowed_from, **fields)
        unknown = set(fields) - _COLUMNS
        if unknown:
            raise ValueError(f"not task columns: {sorted(unknown)}")
        current = await conn.fetchval("SELECT state FROM tasks WHERE id = $1 FOR UPDATE", task_id)
        if current is None:
            raise TaskNotFound(task_id)
        if (allowed_from is not None and current not in allowed_from) or not can_transition(current, target):
            raise IllegalTaskTransition(task_id, current, target)
        sets = ["state = $2", "updated_at = now()"]
        args: list[Any] = [task_id, target]
        for name, value in fields.items():
            args.append(json.dumps(value) if name in _JSON_COLUMNS and value is not None else value)
            sets.append(f"{name} = ${len(args)}")
        await conn.execute(f"UPDATE tasks SET {', '.join(sets)} WHERE id = $1", *args)
        await self._event(conn, task_id, "transition", current, target, detail)
        return str(current)

    async def record(self, task_id: str, kind: str, detail: str, *, conn: Connection | None = None) -> None:
        if conn is None:
            async with self._pool.acquire() as own:
                await self._event(own, task_id, kind, None, None, detail)
        else:
            await self._event(conn, task_id, kind, None, None, detail)

    async def get(self, task_id: str, *, with_events: bool = False) -> TaskInfo:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
            if row is None:
                raise TaskNotFound(task_id)
            bid_rows = await conn.fetch("SELECT * FROM bids WHERE task_id = $1 ORDER BY seq", task_id)
            info = _info(row, None if row["state"] == "bidding" else [
                BidInfo(agent_id=b["agent_id"], price=b["price"], estimated_seconds=b["estimated_seconds"],
                        reputation=0.0, placed_at=b["placed_at"]) for b in bid_rows], len(bid_rows))
            if with_events:
                rows = await conn.fetch(
                    "SELECT * FROM (SELECT * FROM task_events WHERE task_id = $1 ORDER BY id DESC LIMIT $2) e"
                    " ORDER BY id", task_id, _EVENTS_SHOWN)
                info.events = [TaskEvent(at=r["at"], kind=r["kind"], from_state=r["from_state"],
                                         to_state=r["to_state"], detail=r["detail"]) for r in rows]
        return info

    async def find(self, query: ListTasksInput) -> list[TaskInfo]:
        rows = await self._pool.fetch(
            "SELECT t.*, (SELECT count(*) FROM bids b WHERE b.task_id = t.id) AS bid_count FROM tasks t"
            " WHERE ($1::text[] IS NULL OR state = ANY($1)) AND ($2::text IS NULL OR requester_id = $2)"
            " AND ($3::text IS NULL OR winner = $3) AND ($4::text IS NULL OR $4 = ANY(required_capabilities))"
            " ORDER BY created_at DESC LIMIT $5",
            query.state, query.requester_id, query.agent_id, query.capability, query.limit)
        return [_info(r, None, r["bid_count"]) for r in rows]

    @staticmethod
    async def due(conn: Connection, limit: int) -> list[asyncpg.Record]:
        """Auctions past their closing time, earliest first, read without locks (see `lock_bidding`)."""
        return list(await conn.fetch(
            "SELECT * FROM tasks WHERE state = 'bidding' AND bidding_closes_at <= now()"
            " ORDER BY bidding_closes_at LIMIT $1", limit))

    @staticmethod
    async def lock_bidding(conn: Connection, task_ids: list[str]) -> list[str]:
        """Lock those of the tasks that are still bidding for this transaction and return their ids, sorted; a task
        locked by another transaction (a cancellation, a bid, another replica's clearing) is skipped, not waited
        for."""
        return [r["id"] for r in await conn.fetch(
            "SELECT id FROM tasks WHERE id = ANY($1) AND state = 'bidding' ORDER BY id FOR UPDATE SKIP LOCKED",
            task_ids)]

    @staticmethod
    async def bids_for(conn: Connection, task_ids: list[str], page: int = 1000) -> list[asyncpg.Record]:
        """The tasks' bids in seq order (with the reputation recorded when they cleared), read a page at a time
        inside the caller's transaction: ten thousand rows decoded at once would hold the event loop for
        milliseconds."""
        cursor = await conn.cursor("SELECT task_id, agent_id, price, estimated_seconds, seq, reputation FROM bids"
                                   " WHERE task_id = ANY($1) ORDER BY seq", task_ids)
        bids: list[asyncpg.Record] = []
        while rows := await cursor.fetch(page):
            bids += rows
        return bids

    @staticmethod
    async def record_clearing(conn: Connection, task_ids: list[str], batch: str,
                              reputations: list[tuple[str, str, float]]) -> None:
        """What a clearing used, for its replay: the batch its tasks cleared in, and each bid's reputation."""
        await conn.execute("UPDATE tasks SET clearing_batch = $2, cleared_at = now() WHERE id = ANY($1)",
                           task_ids, batch)
        if reputations:
            tasks, agents, scores = zip(*reputations, strict=True)
            await conn.execute(
                "UPDATE bids SET reputation = x.score FROM unnest($1::text[], $2::text[], $3::float8[])"
                " AS x(task_id, agent_id, score) WHERE bids.task_id = x.task_id AND bids.agent_id = x.agent_id",
                list(tasks), list(agents), list(scores))

    @staticmethod
    async def bid_fingerprint(conn: Connection, task_ids: list[str]) -> tuple[int, int]:
        """(count, sum of seq) of the tasks' bids: bids are never deleted and a replaced bid takes a new, higher
        seq, so any bid placed or replaced changes it."""
        [(count, total)] = await conn.fetch("SELECT count(*), coalesce(sum(seq), 0) FROM bids WHERE task_id = ANY($1)",
                                            task_ids)  # an aggregate: always one row
        return int(count), int(total)

    @staticmethod
    async def _event(conn: Connection, task_id: str, kind: str, from_state: str | None, to_state: str | None,
                     detail: str) -> None:
        await conn.execute("INSERT INTO task_events (task_id, kind, from_state, to_state, detail)"
                           " VALUES ($1, $2, $3, $4, $5)", task_id, kind, from_state, to_state, detail)
        await activity.record(conn, "task", {"task_id": task_id, "kind": kind, "from_state": from_state,
                                             "to_state": to_state, "detail": detail})
