"""The market as callers see it: accounts, tasks, sealed-bid auctions, escrow, reputation, with who-may-do-what
checked in one place. The MCP tools, REST and the CLI only translate.

Money and task state move together: each operation is ONE transaction that changes the task and its escrow (the
escrow functions of `market.escrow` run on the same connection), under an idempotency key. Every one of them locks
the task first, then the escrow, then accounts in id order (`market.tasks`), so racing requests queue instead of
deadlocking, and the later ones find the task in a state that refuses them (409). Callers give their
own keys; the hub's own actions (clearing, failure refunds, timeouts, auto-accept) use keys derived from the
task, so a repeat after a crash finds the first answer instead of acting twice.

The auction closer (`children`, run by the hub's root supervisor) wakes every `close_interval_seconds` and clears
the auctions past their closing time in three steps, so that a large batch (100 tasks x 10,000 bids) neither
stalls the replica's event loop nor holds a lock while it is solved:
1. read the due auctions (up to 100), their bids and their bidders' records, without locks;
2. solve in a worker thread (one at a time per replica): reputations, then `market.clearing.clear`;
3. in one short transaction, lock those tasks (`FOR UPDATE SKIP LOCKED`) and check that all are still bidding and
   that their bids are the ones solved (count and sum of `bids.seq`: bids are never deleted and a replaced bid
   takes a new, higher seq, so any change moves one of them); then reduce each winner's escrow to its price
   (refunding the rest) and expire the auctions without an eligible bid (refunding all). If anything changed (a
   cancellation, a bid whose transaction began before the close and committed after the read, another replica
   clearing the same auctions), nothing is written and the next round starts again from step 1. So each auction
   is cleared once, from the bids it closed with; replicas may solve the same batch, and only one commits it.
It also auto-accepts completed tasks after `accept_after_seconds`, fails tasks still unfinished
`work_timeout_seconds` after their award, and forgets idempotency keys older than `idempotency_retention_seconds`
(a day or more; `market.idempotency` says whose keys they are). NATS: `tasks.{id}.auction` when an auction opens,
`.assignment` at award, `.progress` while running, `.result` when a task ends.
"""

import json
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import anyio
import asyncpg
from anyio.abc import TaskStatus

from agenthub.auth import Principal, Role
from agenthub.bus import Bus
from agenthub.database import DATABASE_ERRORS, Connection, log_failure
from agenthub.errors import Conflict, Forbidden, InvalidInput, MissingCapabilities, TaskNotFound, WrongTaskState
from agenthub.metrics import HubMetrics
from agenthub.settings import MarketSettings
from governance.approvals import ApprovalInfo, Approvals
from governance.budgets import Budgets
from market import acceptance, bonds
from market import escrow as escrows
from market.clearing import Award, Bid, Clearing, TaskAuction, clear
from market.idempotency import prune, run_once, scope_of
from market.ledger import (
    PLATFORM,
    AccountId,
    AccountKind,
    Ledger,
    account_kind,
    agent_account,
    bond_account,
    escrow_account,
    lock_accounts,
    parse_account_id,
    requester_account,
)
from market.models import (
    AcceptanceCheck,
    AccountInfo,
    AuditAuction,
    AuditBid,
    BidInfo,
    BidPlaced,
    CheckOutcome,
    DepositInput,
    DisputeInput,
    LedgerEntry,
    LedgerPage,
    ListTasksInput,
    PlaceBidInput,
    Replay,
    ReportTaskInput,
    ResolveInput,
    SettleInput,
    SubmitTaskInput,
    TaskAnnouncement,
    TaskAudit,
    TaskInfo,
    TaskList,
    TaskRef,
    TaskUpdate,
)
from market.reputation import Observation, reputation
from market.tasks import TaskStore
from sandbox.models import RunResult
from supervisor import ChildSpec, task_child

logger = logging.getLogger(__name__)

HUB_SCOPE = "hub"  # the idempotency scope of the hub's own actions
MAX_SCHEMA_BYTES = 64 * 1024
_EVALUATOR_DONE = frozenset({"ok", "invalid_output"})  # runs that ended by themselves (stdout may be any text)
_BATCH = 100
# The settled tasks won by `winners` (an array or a subquery): what reputations are computed from. Only the
# settlement counts: paid (released, or split at half or more to the agent) is a success, refunded a failure; a
# task the requester cancelled counts for nothing, and completed work counts once it is paid.
_FINISHED = ("SELECT t.winner, t.estimated_seconds, t.completed_at IS NOT NULL AS completed,"
             " e.state = 'released' OR (e.state = 'split' AND e.payee_share_percent >= 50) AS succeeded,"
             " extract(epoch FROM t.assigned_at) AS assigned,"
             " (SELECT min(lower(c)) FROM unnest(t.required_capabilities) c) AS capability,"
             " extract(epoch FROM coalesce(t.completed_at, e.settled_at)) AS ended,"
             " e.resolution = 'refund' AND e.disputed_by IS NOT NULL AS dispute_lost"
             " FROM tasks t JOIN escrows e ON e.id = t.escrow_id"
             " WHERE t.winner = ANY({winners}) AND e.settled_at IS NOT NULL AND t.state <> 'cancelled'")
_PRUNE_EVERY = 3600.0
# Tasks whose escrow ended with their requester's credits reservation still open.
_CREDITS_ENDED = ("FROM tasks t JOIN escrows e ON e.id = t.escrow_id"
                  " WHERE t.credit_reservation IS NOT NULL AND e.settled_at IS NOT NULL")
_DISPUTABLE = ("assigned", "running", "completed")


def _new_task_id() -> str:
    return f"task_{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class _DueBatch:
    """Auctions past their closing time, their bids and their bidders' finished tasks (rows of `_FINISHED`), as
    read in one snapshot without locks."""

    tasks: list[asyncpg.Record]
    bids: list[asyncpg.Record]
    finished: list[asyncpg.Record]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Solved:
    """A batch's clearing with what its commit records: bids per task and each winner's own estimate; and the
    `fingerprint` (count, sum of seq) of the bids it was solved from, which the commit compares to see that none
    arrived or changed since."""

    clearing: Clearing
    bid_counts: dict[str, int]
    estimates: dict[str, float]
    fingerprint: tuple[int, int]
    reputations: list[tuple[str, str, float]]  # (task, agent, reputation) of every bid: recorded with the bids


def replay(auctions: Sequence[AuditAuction], task_id: str) -> Award | None:
    """`task_id`'s award when `market.clearing.clear` runs again on an audit's auctions (None: unassigned)."""
    cleared = clear([TaskAuction(task_id=a.task_id, budget=a.budget, bids=tuple(
        Bid(task_id=a.task_id, agent_id=b.agent_id, price=b.price, estimated_seconds=b.estimated_seconds,
            reputation=b.reputation if b.reputation is not None else 0.0, placed_seq=b.placed_seq)
        for b in a.bids)) for a in auctions])
    return next((award for award in cleared.awards if award.task_id == task_id), None)


def _observations(rows: Sequence[asyncpg.Record]) -> dict[str, list[Observation]]:
    """Each agent's finished tasks (rows of `Market.finished_tasks`) as reputation observations."""
    observations: dict[str, list[Observation]] = defaultdict(list)
    for r in rows:
        took = (r["ended"] - r["assigned"]) if r["assigned"] is not None else None
        on_time = (float(took) / r["estimated_seconds"]) if took is not None and r["estimated_seconds"] else None
        observations[r["winner"]].append(Observation(
            at=float(r["ended"]), succeeded=bool(r["succeeded"]),
            on_time=on_time if r["succeeded"] and r["completed"] else None, dispute_lost=bool(r["dispute_lost"]),
            capability=r["capability"]))
    return observations


def _solve(batch: _DueBatch, now: float, half_life: float) -> _Solved:
    """Clear a batch, each bid scaled by its bidder's reputation for its task's first capability (alphabetically).

    Pure and CPU-bound (10,000 bids: tens of milliseconds of Python around the solver): the closer runs it in a
    worker thread.
    """
    history = _observations(batch.finished)
    capability = {r["id"]: min((c.lower() for c in r["required_capabilities"]), default=None) for r in batch.tasks}
    # An agent without finished tasks has the same reputation as any other: computed once, not once per bidder.
    newcomer = {cap: reputation((), now, half_life, capability=cap) for cap in set(capability.values())}
    scores: dict[tuple[str, str | None], float] = {}
    by_task: dict[str, list[Bid]] = defaultdict(list)
    for b in batch.bids:
        agent, cap = b["agent_id"], capability[b["task_id"]]
        score = scores.get((agent, cap))
        if score is None:
            seen = history.get(agent)
            score = scores[agent, cap] = (newcomer[cap] if seen is None
                                          else reputation(seen, now, half_life, capability=cap))
        by_task[b["task_id"]].append(Bid(task_id=b["task_id"], agent_id=agent, price=b["price"],
                                         estimated_seconds=b["estimated_seconds"], reputation=score,
                                         placed_seq=b["seq"]))
    clearing = clear([TaskAuction(task_id=r["id"], budget=r["budget"], bids=tuple(by_task[r["id"]]))
                      for r in batch.tasks])
    estimates = {award.task_id: next(b.estimated_seconds for b in by_task[award.task_id]
                                     if b.agent_id == award.agent_id) for award in clearing.awards}
    return _Solved(clearing=clearing, bid_counts={task: len(bids) for task, bids in by_task.items()},
                   estimates=estimates, fingerprint=(len(batch.bids), sum(b["seq"] for b in batch.bids)),
                   reputations=[(b.task_id, b.agent_id, b.reputation) for bids in by_task.values() for b in bids])


class Evaluators(Protocol):
    """Where acceptance checks' WASM evaluators are kept and run (`sandbox.service.SandboxService`)."""

    async def evaluator_exists(self, sha256: str) -> bool: ...

    async def evaluate(self, sha256: str, stdin: bytes) -> RunResult: ...


class Market:
    def __init__(self, pool: asyncpg.Pool, bus: Bus, metrics: HubMetrics, settings: MarketSettings,
                 evaluators: Evaluators, approvals: Approvals, budgets: Budgets) -> None:
        self._pool = pool
        self._evaluators = evaluators
        self._approvals = approvals
        self._budgets = budgets
        approvals.on_decided("task", self._approval_decided)
        approvals.on_committed("task", self._approval_committed)
        self._bus = bus
        self._metrics = metrics
        self.settings = settings
        self.tasks = TaskStore(pool)
        self.ledger = Ledger(pool)
        self._solver = anyio.CapacityLimiter(1)  # one clearing solve at a time per replica: it takes a core
        self._schemas = acceptance.SchemaChecker(seconds=settings.schema_check_seconds)

    def children(self) -> list[ChildSpec]:
        return [ChildSpec(id="auction-closer", start=task_child(self._close_forever))]

    async def aclose(self) -> None:
        """Stop the acceptance checks' schema child (the hub's shutdown)."""
        await self._schemas.aclose()

    # -- accounts --------------------------------------------------------------------------------------------------

    async def deposit(self, who: Principal, req: DepositInput) -> AccountInfo:
        who.require_operator()
        account = parse_account_id(req.account_id)
        await self.ledger.deposit(account, req.amount, key=req.idempotency_key, scope=scope_of(who))
        return await self.account(who, req.account_id)

    async def account(self, who: Principal, account_id: str) -> AccountInfo:
        account = self._readable(who, account_id)
        balance = await self.ledger.balance(account)
        score = None
        if account_kind(account) is AccountKind.AGENT:
            score = (await self.reputations([account.split(":", 1)[1]]))[account.split(":", 1)[1]]
        return AccountInfo(account_id=account, balance=balance, reputation=score)

    async def ledger_page(self, who: Principal, account_id: str, *, before: int | None, limit: int) -> LedgerPage:
        account = self._readable(who, account_id)
        page = await self.ledger.history(account, limit=limit, before=before)
        return LedgerPage(account_id=account, next_before=page.next_before, entries=[
            LedgerEntry(transfer_id=e.transfer_id, at=e.created_at, kind=e.kind.value, amount=e.amount, memo=e.memo,
                        escrow_id=e.escrow_id) for e in page.entries])

    @staticmethod
    def _readable(who: Principal, account_id: str) -> AccountId:
        account = parse_account_id(account_id)
        if who.role is Role.AGENT and account.split(":", 1)[-1] != who.agent_id:
            raise Forbidden(f"this token belongs to agent {who.agent_id!r} and cannot read account {account_id!r}")
        return account

    # -- tasks -----------------------------------------------------------------------------------------------------

    async def submit_task(self, who: Principal, req: SubmitTaskInput) -> TaskInfo:
        who.require_acting_as(req.requester_id)
        payer = requester_account(req.requester_id)
        if req.acceptance is not None:
            await self._check_acceptance(req.acceptance)

        for subject in (payer, agent_account(req.requester_id)):  # an agent out of budget submits nothing either
            await self._budgets.require_dispatch(subject)

        async def effect(conn: Connection) -> str:
            task_id = _new_task_id()
            held = await escrows.hold(conn, payer, req.budget, task_id, scope=scope_of(who),
                                      key=req.idempotency_key)
            # Past the requester's credits limit this refuses (and the hold rolls back); settled by `_sweep` with
            # what the task cost once its escrow ended.
            credits = await self._budgets.reserve(payer, "credits", req.budget, ref=f"task:{task_id}", conn=conn)
            approval = None
            threshold = await self._budgets.approval_threshold(payer, conn=conn)
            if threshold is not None and req.budget > threshold:
                approval = await self._approvals.request(
                    conn, kind="task", subject=payer, requested_by=req.requester_id,
                    reason=f"task {task_id} of {req.requester_id}: a budget of {req.budget} is over the approval "
                    f"threshold of {threshold}", detail={"task_id": task_id, "budget": req.budget,
                                                         "threshold": threshold,
                                                         "description": req.description[:500]})
            closes = datetime.now(UTC) + timedelta(seconds=req.bidding_seconds)
            await self.tasks.create(conn, req, task_id=task_id, escrow_id=held.id, closes_at=closes,
                                    approval_id=approval.approval_id if approval is not None else None,
                                    credit_reservation=credits)
            return task_id

        task_id = await run_once(self._pool, scope=scope_of(who), key=req.idempotency_key,
                                 request={"op": "submit_task", **req.model_dump(mode="json")}, result_type=str,
                                 effect=effect)
        task = await self.tasks.get(task_id, with_events=True)
        if task.state == "bidding":
            await self._announce(task)
        return await self._with_escrow(task)

    async def _announce(self, task: TaskInfo) -> None:
        await self._publish(task.task_id, "auction", TaskAnnouncement(
            task_id=task.task_id, description=task.description, required_capabilities=task.required_capabilities,
            priority=task.priority, budget=task.budget, bidding_closes_at=task.bidding_closes_at))

    async def _approval_decided(self, conn: Connection, approval: ApprovalInfo) -> None:
        """A person answered for a task over its requester's approval threshold (or nobody did, and the default
        applied), in the deciding transaction: approved, its auction opens for its bidding time from now; denied,
        it is cancelled and refunded. A task cancelled meanwhile stays as it is."""
        task_id = str(approval.detail.get("task_id", ""))
        row = await conn.fetchrow("SELECT state, bidding_seconds FROM tasks WHERE id = $1 FOR UPDATE", task_id)
        if row is None or row["state"] != "awaiting_approval":
            return
        who = f"{approval.decided_by}" + (f" ({approval.note})" if approval.note else "")
        if approval.decision == "approve":
            closes = datetime.now(UTC) + timedelta(seconds=row["bidding_seconds"])
            await self.tasks.transition(task_id, "bidding", f"approved by {who}: auction open until "
                                        f"{closes.isoformat()}", conn=conn, bidding_closes_at=closes)
        else:
            task = await self.tasks.get(task_id)
            await self.tasks.transition(task_id, "cancelled", f"approval {approval.state} by {who}", conn=conn)
            await self._lock_parties(conn, task, paying=False)
            await escrows.refund(conn, task.escrow_id, scope=HUB_SCOPE, key=f"denied:{task_id}")

    async def _approval_committed(self, approval: ApprovalInfo) -> None:
        """Once an approval's decision committed: announce the auction it opened."""
        task = await self.tasks.get(str(approval.detail.get("task_id", "")))
        if task.state == "bidding" and task.approval_id == approval.approval_id:
            await self._announce(task)

    async def _check_acceptance(self, check: AcceptanceCheck) -> None:
        """Refuse a check that could never run: a schema that is not a JSON Schema, or too big, or an evaluator
        nobody uploaded."""
        if check.json_schema is not None:
            if len(json.dumps(check.json_schema)) > MAX_SCHEMA_BYTES:
                raise InvalidInput(f"acceptance.json_schema is over {MAX_SCHEMA_BYTES} bytes as JSON")
            acceptance.check_schema(check.json_schema)
        if check.evaluator is not None and not await self._evaluators.evaluator_exists(check.evaluator):
            raise InvalidInput(f"acceptance.evaluator {check.evaluator} names no uploaded evaluator "
                               "(POST /api/v1/evaluators first)")

    async def place_bid(self, who: Principal, req: PlaceBidInput) -> BidPlaced:
        who.require_acting_as(req.agent_id)
        await self._budgets.require_dispatch(agent_account(req.agent_id))  # a capped agent takes no new work
        required = await self.tasks.required_capabilities(req.task_id)  # a bid must not read every other bid
        if required:
            caps = await self._pool.fetchval("SELECT capabilities FROM agents WHERE id = $1", req.agent_id) or []
            missing = sorted({c.lower() for c in required} - {c.lower() for c in caps})
            if missing:
                raise MissingCapabilities(req.agent_id, missing)
        return await self.tasks.place_bid(req)

    async def get_task(self, who: Principal, ref: TaskRef) -> TaskInfo:
        task = await self.tasks.get(ref.task_id, with_events=True)
        if task.bids:
            first = min((c.lower() for c in task.required_capabilities), default=None)
            scores = await self.reputations([b.agent_id for b in task.bids], first)
            task.bids = [BidInfo(**{**b.model_dump(), "reputation": scores[b.agent_id]}) for b in task.bids]
        return await self._with_escrow(task)

    async def audit(self, who: Principal, ref: TaskRef) -> TaskAudit:
        """What a cleared auction was decided from, replayed: the bids of its clearing batch with the reputations
        recorded at clearing, and the winner and price `market.clearing.clear` gives on them now."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            task = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", ref.task_id)
            if task is None:
                raise TaskNotFound(ref.task_id)
            if task["clearing_batch"] is None:
                raise Conflict(f"task {ref.task_id} is {task['state']}: it has no clearing to audit (an auction is "
                               "audited once it cleared)")
            tasks = await conn.fetch("SELECT id, budget FROM tasks WHERE clearing_batch = $1 ORDER BY id",
                                     task["clearing_batch"])
            bids = await TaskStore.bids_for(conn, [r["id"] for r in tasks])
        by_task: dict[str, list[AuditBid]] = defaultdict(list)
        for b in bids:
            by_task[b["task_id"]].append(AuditBid(agent_id=b["agent_id"], price=b["price"],
                                                  estimated_seconds=b["estimated_seconds"],
                                                  reputation=b["reputation"], placed_seq=b["seq"]))
        auctions = [AuditAuction(task_id=r["id"], budget=r["budget"], bids=by_task[r["id"]]) for r in tasks]
        award = await anyio.to_thread.run_sync(replay, auctions, ref.task_id, limiter=self._solver)
        winner, price = (award.agent_id, award.price) if award is not None else (None, None)
        return TaskAudit(task_id=ref.task_id, state=task["state"], clearing_batch=task["clearing_batch"],
                         cleared_at=task["cleared_at"], winner=task["winner"], price=task["price"], auctions=auctions,
                         replay=Replay(winner=winner, price=price,
                                       matches=(winner, price) == (task["winner"], task["price"])))

    async def list_tasks(self, who: Principal, query: ListTasksInput) -> TaskList:
        return TaskList(tasks=await self.tasks.find(query))

    async def report_task(self, who: Principal, req: ReportTaskInput) -> TaskInfo:
        who.require_acting_as(req.agent_id)
        task = await self.tasks.get(req.task_id)
        if task.winner != req.agent_id:
            raise Forbidden(f"task {req.task_id} was not awarded to {req.agent_id!r}")
        if req.status == "progress":
            if task.state == "assigned":
                await self.tasks.transition(req.task_id, "running", req.message or "work started")
            else:
                await self.tasks.record(req.task_id, "progress", req.message or "progress")
        elif req.status == "completed":
            await self._deliver(task, req.result or {}, req.message or "completed by the agent")
        else:
            await self._end(req.task_id, "failed", req.message or "failed, as the agent reported",
                            key=f"failed:{req.task_id}", scope=HUB_SCOPE)
        updated = await self.tasks.get(req.task_id)
        kind = "progress" if req.status == "progress" else "result"
        await self._publish(req.task_id, kind, TaskUpdate(task_id=req.task_id, state=updated.state,
                                                           agent_id=req.agent_id, detail=req.message or "",
                                                           result=updated.result))
        return await self.get_task(who, TaskRef(task_id=req.task_id))

    async def cancel_task(self, who: Principal, req: SettleInput) -> TaskInfo:
        task = await self.tasks.get(req.task_id)
        who.require_acting_as(task.requester_id)
        await self._end(req.task_id, "cancelled", "cancelled by the requester", key=req.idempotency_key,
                        scope=scope_of(who))
        return await self._result_of(who, req.task_id)

    async def accept(self, who: Principal, req: SettleInput) -> TaskInfo:
        task = await self.tasks.get(req.task_id)
        who.require_acting_as(task.requester_id)
        await self._release(req.task_id, task.escrow_id, "accepted by the requester", key=req.idempotency_key,
                            scope=scope_of(who))
        return await self.get_task(who, TaskRef(task_id=req.task_id))

    async def dispute(self, who: Principal, req: DisputeInput) -> TaskInfo:
        who.require_acting_as(req.by)

        async def effect(conn: Connection) -> str:
            task = await self.tasks.lock(conn, req.task_id)
            party = (requester_account(req.by) if req.by == task["requester_id"]
                     else agent_account(req.by) if req.by == task["winner"] else None)
            if party is None:
                raise Forbidden(f"only the requester or the winner of task {req.task_id} can dispute it")
            if task["state"] not in _DISPUTABLE:  # before the award there is no work to dispute; after, no money
                raise WrongTaskState(req.task_id, task["state"], "disputed", _DISPUTABLE)
            await escrows.dispute(conn, task["escrow_id"], party, req.evidence)
            await self.tasks.record(req.task_id, "dispute", f"disputed by {req.by}: {req.evidence[:500]}", conn=conn)
            return str(task["escrow_id"])

        await run_once(self._pool, scope=scope_of(who), key=req.idempotency_key,
                       request={"op": "dispute", **req.model_dump(mode="json")}, result_type=str, effect=effect)
        return await self.get_task(who, TaskRef(task_id=req.task_id))

    async def resolve(self, who: Principal, req: ResolveInput) -> TaskInfo:
        who.require_operator()

        async def effect(conn: Connection) -> str:
            task = await self.tasks.lock(conn, req.task_id)
            await escrows.resolve(conn, task["escrow_id"], req.outcome, arbiter=scope_of(who),
                                  fee_percent=self.settings.fee_percent,
                                  payee_share_percent=req.agent_share_percent if req.outcome == "split" else None)
            await self.tasks.record(req.task_id, "resolution", f"resolved by an arbiter: {req.outcome}"
                                    + (f", {req.agent_share_percent} % to the agent" if req.outcome == "split" else ""),
                                    conn=conn)
            return str(task["escrow_id"])

        await run_once(self._pool, scope=scope_of(who), key=req.idempotency_key,
                       request={"op": "resolve", **req.model_dump(mode="json")}, result_type=str, effect=effect)
        return await self.get_task(who, TaskRef(task_id=req.task_id))

    # -- money and state together ----------------------------------------------------------------------------------

    async def _end(self, task_id: str, state: str, detail: str, *, key: str, scope: str) -> None:
        """Fail or cancel a task and refund its escrow, in one transaction (the task's lock first, by
        `transition`)."""
        task = await self.tasks.get(task_id)

        async def effect(conn: Connection) -> str:
            await self.tasks.transition(task_id, state, detail, conn=conn)
            forfeit = state == "failed" and task.winner is not None and task.bond_percent > 0
            await self._lock_parties(conn, task, paying=forfeit)
            await escrows.refund(conn, task.escrow_id, scope=scope, key=key)
            if forfeit:
                assert task.winner is not None  # the winner did not deliver: its bond is forfeit
                lost = await bonds.slash(conn, task_id, task.winner, to=requester_account(task.requester_id),
                                         fee_percent=self.settings.fee_percent, why=detail)
                await self._budgets.record(agent_account(task.winner), "credits", lost, conn=conn)
            await bonds.give_back(conn, task_id, why=detail)
            return state

        await run_once(self._pool, scope=scope, key=key, request={"op": state, "task_id": task_id}, result_type=str,
                       effect=effect)

    @staticmethod
    async def _lock_parties(conn: Connection, task: TaskInfo, *, paying: bool) -> None:
        """Lock the task's escrow, then every account a settlement of it may touch in one statement in id order
        (the platform's only when it is `paying` a fee), so that its several transfers cannot deadlock with
        another transaction's. The task's row is locked already."""
        await escrows.lock(conn, [task.escrow_id])
        accounts = [requester_account(task.requester_id), escrow_account(task.escrow_id)]
        if paying:
            accounts.append(PLATFORM)
        if task.winner is not None:
            accounts.append(agent_account(task.winner))
        if task.bond_percent:
            accounts.append(bond_account(task.task_id))
        await lock_accounts(conn, accounts)

    async def _deliver(self, task: TaskInfo, result: dict[str, Any], detail: str) -> None:
        """The winner reports the task completed: its bond goes back and, when the task carries an acceptance
        check, the check runs (outside any transaction: an evaluator may take seconds) and settles the escrow in
        the same transaction as the completion: pass → released less the fee; fail → refunded (the task fails)
        or disputed, as the task says."""
        outcome = await self._check(task, result) if task.acceptance is not None else None

        async def deliver(conn: Connection) -> None:
            failed = outcome is not None and not outcome.passed and task.acceptance is not None \
                and task.acceptance.on_fail == "refund"
            fields: dict[str, Any] = {"result": result, "check_outcome": outcome.model_dump(mode="json")
                                      if outcome is not None else None}
            if failed:
                await self.tasks.transition(task.task_id, "failed", f"{detail}; the acceptance check failed",
                                            conn=conn, allowed_from={"assigned", "running"}, **fields)
            else:
                await self.tasks.transition(task.task_id, "completed", detail, conn=conn,
                                            allowed_from={"assigned", "running"}, completed_at=datetime.now(UTC),
                                            **fields)
            await self._lock_parties(conn, task, paying=outcome is not None and outcome.passed)
            assert task.winner is not None
            await bonds.give_back(conn, task.task_id, only=task.winner, why="the winner delivered")
            if outcome is None:
                return
            if outcome.passed:
                await escrows.release(conn, task.escrow_id, self.settings.fee_percent, scope=HUB_SCOPE,
                                      key=f"check:{task.task_id}")
                await self.tasks.record(task.task_id, "accepted", "the acceptance check passed", conn=conn)
            elif failed:
                await escrows.refund(conn, task.escrow_id, scope=HUB_SCOPE, key=f"check:{task.task_id}")
            else:
                await escrows.dispute(conn, task.escrow_id, requester_account(task.requester_id),
                                      f"the acceptance check failed: {outcome.summary()}"[:escrows.MAX_EVIDENCE_LENGTH])
                await self.tasks.record(task.task_id, "dispute", "the acceptance check failed: an arbiter decides",
                                        conn=conn)

        async with self._pool.acquire() as conn, conn.transaction():
            await deliver(conn)

    async def _check(self, task: TaskInfo, result: dict[str, Any]) -> CheckOutcome:
        """Run the task's acceptance check on `result`: its JSON Schema, then its evaluator (both must pass)."""
        check = task.acceptance
        assert check is not None
        schema_errors = None
        if check.json_schema is not None:
            schema_errors = await self._schemas.errors(check.json_schema, result)
        evaluator = None
        if check.evaluator is not None:
            stdin = json.dumps({"task": {"task_id": task.task_id, "description": task.description,
                                         "parameters": task.parameters, "requester_id": task.requester_id,
                                         "winner": task.winner, "price": task.price},
                                "result": result}).encode()
            run = await self._evaluators.evaluate(check.evaluator, stdin)
            evaluator = {"outcome": run.outcome.value, "exit_code": run.exit_code, "error": run.error,
                         "log": run.log[:4000], "output": run.output}
        passed = not schema_errors and (evaluator is None or (evaluator["exit_code"] == 0
                                                              and evaluator["outcome"] in _EVALUATOR_DONE))
        return CheckOutcome(passed=passed, checked_at=datetime.now(UTC), schema_errors=schema_errors,
                            evaluator=evaluator)

    async def _release(self, task_id: str, escrow_id: str, detail: str, *, key: str, scope: str) -> None:
        async def effect(conn: Connection) -> str:
            state = (await self.tasks.lock(conn, task_id))["state"]
            if state != "completed":
                raise WrongTaskState(task_id, state, "accepted", ("completed",))
            await escrows.release(conn, escrow_id, self.settings.fee_percent, scope=scope, key=key)
            await self.tasks.record(task_id, "accepted", detail, conn=conn)
            return escrow_id

        await run_once(self._pool, scope=scope, key=key, request={"op": "accept", "task_id": task_id},
                       result_type=str, effect=effect)

    async def _with_escrow(self, task: TaskInfo) -> TaskInfo:
        task.escrow_state = await self._pool.fetchval("SELECT state FROM escrows WHERE id = $1", task.escrow_id)
        return task

    async def _result_of(self, who: Principal, task_id: str) -> TaskInfo:
        task = await self.get_task(who, TaskRef(task_id=task_id))
        await self._publish(task_id, "result", TaskUpdate(task_id=task_id, state=task.state, agent_id=task.winner))
        return task

    async def _publish(self, task_id: str, kind: str, payload: Any) -> None:
        await self._bus.publish(self._bus.subject(f"tasks.{task_id}.{kind}"), payload)

    # -- reputation ------------------------------------------------------------------------------------------------

    async def reputations(self, agent_ids: list[str], capability: str | None = None) -> dict[str, float]:
        """Each agent's reputation now, from the tasks it finished; with `capability`, its record on tasks of that
        capability (a task counts for the first of its required capabilities, in alphabetical order)."""
        observations = _observations(await self.finished_tasks(agent_ids))
        now = time.time()
        return {agent: reputation(observations.get(agent, []), now, self.settings.reputation_half_life_seconds,
                                  capability=capability) for agent in agent_ids}

    async def finished_tasks(self, agent_ids: Sequence[str]) -> list[asyncpg.Record]:
        """The completed and failed tasks these agents won: what their reputations are computed from."""
        return list(await self._pool.fetch(_FINISHED.format(winners="$1"), list(set(agent_ids))))

    # -- the auction closer ----------------------------------------------------------------------------------------

    async def _close_forever(self, task_status: TaskStatus[None]) -> None:
        task_status.started()
        pruned = 0.0
        while True:
            await anyio.sleep(self.settings.close_interval_seconds)
            try:
                await self.close_due()
                await self._sweep()
                if time.monotonic() - pruned > _PRUNE_EVERY:  # keys are kept their retention, then forgotten
                    pruned = time.monotonic()
                    await prune(self._pool, timedelta(seconds=self.settings.idempotency_retention_seconds))
            except DATABASE_ERRORS as exc:  # PostgreSQL away for a moment: the next round retries
                log_failure(logger, "the auction closer failed", exc)

    async def close_due(self) -> int:
        """Clear the auctions past their closing time (module docstring: read, solve in a thread, lock, re-check and
        commit). Returns how many were cleared: 0 when none was due, or when the batch changed while it was being
        solved (the next round clears it from what it is then)."""
        batch = await self._due_batch()
        if batch is None:
            return 0
        solved = await anyio.to_thread.run_sync(_solve, batch, time.time(),
                                                self.settings.reputation_half_life_seconds, limiter=self._solver)
        published = await self._commit(batch, solved)
        if published is None:
            logger.debug("a batch of %d auctions changed while it was solved; the next round clears it again",
                         len(batch.tasks))
            return 0
        for update in published:
            await self._publish(update.task_id, "assignment" if update.state == "assigned" else "result", update)
        self._metrics.auctions_cleared.inc(len(published))
        return len(published)

    async def _due_batch(self) -> _DueBatch | None:
        """The due auctions, their bids and their bidders' finished tasks, from one snapshot, without locks."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            tasks = await TaskStore.due(conn, _BATCH)
            if not tasks:
                return None
            ids = [r["id"] for r in tasks]
            bids = await TaskStore.bids_for(conn, ids)
            bidders = "(SELECT agent_id FROM bids WHERE task_id = ANY($1))"
            finished = list(await conn.fetch(_FINISHED.format(winners=bidders), ids))
        return _DueBatch(tasks=tasks, bids=bids, finished=finished)

    async def _commit(self, batch: _DueBatch, solved: _Solved) -> list[TaskUpdate] | None:
        """Apply a solved batch in one transaction: the tasks assigned or expired with their escrows; None, writing
        nothing, when a task is no longer bidding (or is being changed right now) or its bids changed."""
        ids = sorted(r["id"] for r in batch.tasks)
        rows = {r["id"]: r for r in batch.tasks}
        clearing = solved.clearing
        published: list[TaskUpdate] = []
        async with self._pool.acquire() as conn, conn.transaction():
            # SKIP LOCKED: a task another replica is committing, or one being cancelled, makes this batch stale
            # rather than a wait.
            if (await TaskStore.lock_bidding(conn, ids) != ids
                    or await TaskStore.bid_fingerprint(conn, ids) != solved.fingerprint):
                return None
            # Then the escrows, then every account the escrow changes below touch (payers and the escrows' own),
            # in id order: they lock them one by one, and two replicas clearing different batches of one payer
            # would otherwise deadlock.
            await escrows.lock(conn, [r["escrow_id"] for r in batch.tasks])
            bonded = {r["id"] for r in batch.tasks if r["bond_percent"]}  # their bidders' bonds go back below
            await lock_accounts(conn, [requester_account(r["requester_id"]) for r in batch.tasks]
                                + [escrow_account(r["escrow_id"]) for r in batch.tasks]
                                + [bond_account(t) for t in bonded]
                                + [agent_account(b["agent_id"]) for b in batch.bids if b["task_id"] in bonded])
            now = datetime.now(UTC)
            clearing_batch = f"clr_{secrets.token_hex(8)}"
            await TaskStore.record_clearing(conn, ids, clearing_batch, solved.reputations)
            winners = {award.task_id: award.agent_id for award in clearing.awards}
            for task_id in sorted(bonded):
                await bonds.give_back(conn, task_id, keep=winners.get(task_id),
                                      why="the auction closed" if task_id in winners else "no award")
            for award in clearing.awards:
                await escrows.reduce(conn, rows[award.task_id]["escrow_id"], award.price,
                                     agent_account(award.agent_id), scope=HUB_SCOPE, key=f"award:{award.task_id}")
                await self.tasks.transition(
                    award.task_id, "assigned", f"won by {award.agent_id} at {award.price} (asked {award.bid_price}; "
                    f"{solved.bid_counts[award.task_id]} bids; batch of {len(ids)})", conn=conn,
                    winner=award.agent_id, price=award.price, welfare=award.welfare,
                    estimated_seconds=solved.estimates[award.task_id], assigned_at=now)
                published.append(TaskUpdate(task_id=award.task_id, state="assigned", agent_id=award.agent_id,
                                            price=award.price))
            for task_id in clearing.unassigned:
                await escrows.refund(conn, rows[task_id]["escrow_id"], scope=HUB_SCOPE, key=f"expired:{task_id}")
                await self.tasks.transition(task_id, "expired",
                                            f"no eligible bid among {solved.bid_counts.get(task_id, 0)}", conn=conn)
                published.append(TaskUpdate(task_id=task_id, state="expired", agent_id=None))
        return published

    async def _sweep(self) -> None:
        """Auto-accept completed tasks whose window passed; fail tasks unfinished past their work timeout; settle
        the credits reservations of tasks whose escrow ended."""
        await self._settle_credits()
        accept = await self._pool.fetch(
            "SELECT t.id, t.escrow_id FROM tasks t JOIN escrows e ON e.id = t.escrow_id WHERE t.state = 'completed'"
            " AND e.state = 'held' AND t.completed_at < now() - make_interval(secs => $1) LIMIT $2",
            self.settings.accept_after_seconds, _BATCH)
        for row in accept:
            await self._guarded(self._release(row["id"], row["escrow_id"], "accepted automatically",
                                              key=f"auto-accept:{row['id']}", scope=HUB_SCOPE))
        late = await self._pool.fetch(  # a disputed escrow waits for its arbiter, not for a timeout
            "SELECT t.id FROM tasks t JOIN escrows e ON e.id = t.escrow_id WHERE t.state IN ('assigned', 'running')"
            " AND e.state = 'held' AND t.assigned_at < now() - make_interval(secs => $1) LIMIT $2",
            self.settings.work_timeout_seconds, _BATCH)
        for row in late:
            await self._guarded(self._end(row["id"], "failed", "timed out", key=f"timeout:{row['id']}",
                                          scope=HUB_SCOPE))

    async def _settle_credits(self) -> None:
        """A task's credits reservation becomes the requester's spend once its escrow ended: what left the
        requester for good (paid to the agent and the fee), the rest of the budget having come back."""
        if not await self._pool.fetchval(f"SELECT EXISTS (SELECT 1 {_CREDITS_ENDED})"):
            return  # the usual round: nothing to lock
        async with self._pool.acquire() as conn, conn.transaction():
            ended = await conn.fetch(f"SELECT t.id, t.credit_reservation, e.paid_to_payee + e.fee AS cost"
                                     f" {_CREDITS_ENDED} ORDER BY t.id LIMIT $1 FOR UPDATE OF t SKIP LOCKED", _BATCH)
            for row in ended:
                await self._budgets.settle(row["credit_reservation"], int(row["cost"]), conn=conn)
            if ended:
                await conn.execute("UPDATE tasks SET credit_reservation = NULL WHERE id = ANY($1)",
                                   [r["id"] for r in ended])

    @staticmethod
    async def _guarded(action: Awaitable[None]) -> None:
        try:
            await action
        except (TaskNotFound, Conflict) as exc:  # a request settled or froze the task first: nothing to do
            logger.debug("the sweep left a task alone: %s", exc)
        except Exception:  # one task that cannot be settled must not stop the sweep of the others
            logger.exception("settling a task failed")

