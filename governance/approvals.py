"""Human approvals: a durable request for an operator's decision, resolved exactly once.

An approval is raised by the hub (a soft budget limit, a task over its requester's approval threshold) with
`Approvals.request` inside the transaction of the change that needs it, or by an agent that asks
(`request_agent`: the `request_approval` tool, `POST /api/v1/approvals`). It is pending until an operator approves
or denies it (`decide`), or until it expires, when the sweep (`children`, run by the hub's root supervisor) applies
its default decision with `decided_by="expiry"`. Either way one `UPDATE ... WHERE state = 'pending' RETURNING`
decides it: of two operators deciding at once, one gets the approval and the other a 409 naming who decided and
when. The handlers registered for its kind (`on_decided`) run in that same transaction, so a decision and its
effect (a task's auction opening, a budget released) commit together, exactly once.

Every change is an `approval` event on the hub-wide stream (`agenthub.activity`, written in the same transaction):
the ApprovalInfo JSON with `change` = requested, decided or expired. After a decision commits, the hub publishes a
hint on NATS `approvals.{id}`; `wait` (the long-poll behind `wait_seconds`) wakes on it, but reads the decision
from PostgreSQL, and re-reads every `_POLL_SECONDS` whatever the bus says.

Who sees what: operators and viewers every approval; an agent the approvals it requested and those about its own
account (`agent:{id}`). Only operators decide.
"""

import json
import logging
import secrets
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import anyio
import asyncpg
from anyio.abc import TaskStatus
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from agenthub import activity
from agenthub.auth import Principal, Role
from agenthub.bus import Bus
from agenthub.database import DATABASE_ERRORS, UNAVAILABLE, Connection, log_failure
from agenthub.errors import ApprovalAlreadyDecided, ApprovalNotFound, Forbidden
from agenthub.ids import AGENT_ID_PATTERN
from agenthub.metrics import HubMetrics
from agenthub.settings import ApprovalSettings
from agenthub.text import Storable
from supervisor import ChildSpec, task_child

logger = logging.getLogger(__name__)

ApprovalKind = Literal["budget", "task", "agent"]
Decision = Literal["approve", "deny"]
ApprovalState = Literal["pending", "approved", "denied", "expired"]

HUB_REQUESTER = "hub"  # `requested_by` of the approvals the hub raises itself
EXPIRY = "expiry"  # `decided_by` of an approval nobody answered in time
MAX_REASON_CHARS = 1000
MAX_DETAIL_KEYS = 50
MAX_WAIT_SECONDS = 300.0  # the schemas' bound; `ApprovalSettings.max_wait_seconds` is the hub's (at most this)
MAX_EXPIRES_SECONDS = 30 * 24 * 3600.0
_POLL_SECONDS = 0.25  # a waiter re-reads the approval this often, hint or not
_SWEEP_BATCH = 100
_STATE_OF: dict[Decision, ApprovalState] = {"approve": "approved", "deny": "denied"}


# -- models (the JSON of every API) --------------------------------------------------------------------------------


class ApprovalInfo(BaseModel):
    """An approval as REST, MCP, the CLI's --json and the hub-wide stream show it."""

    model_config = ConfigDict(frozen=True)

    approval_id: str
    kind: ApprovalKind
    subject: str = Field(description="The account it is about: agent:{id} or requester:{id}.")
    reason: str
    detail: dict[str, Any]
    requested_by: str = Field(description="An agent id, or 'hub'.")
    state: ApprovalState
    decision: Decision | None = Field(description="approved/denied: that decision; expired: the default applied.")
    default_decision: Decision = Field(description="What expiry applies.")
    decided_by: str | None = Field(description="The deciding operator's token id, or 'expiry'.")
    note: str | None
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None


class ApprovalList(BaseModel):
    approvals: list[ApprovalInfo]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class _Strict(Storable):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


ApprovalIdField = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=MAX_REASON_CHARS), AfterValidator(_not_blank)]
Note = Annotated[str, StringConstraints(max_length=MAX_REASON_CHARS)]
WaitSeconds = Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS, description="Wait this long for the decision "
                                     "(the hub caps it).")]


class RequestApprovalInput(_Strict):
    agent_id: Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
    reason: Reason = Field(description="One line for the operator.")
    detail: Annotated[dict[str, Any], Field(max_length=MAX_DETAIL_KEYS)] = Field(default_factory=dict)
    expires_seconds: Annotated[float, Field(gt=0, le=MAX_EXPIRES_SECONDS)] | None = None
    wait_seconds: WaitSeconds = 0


class ApprovalRef(_Strict):
    approval_id: ApprovalIdField
    wait_seconds: WaitSeconds = 0


class ListApprovalsInput(_Strict):
    state: Annotated[list[ApprovalState], Field(max_length=4)] | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50


class DecisionBody(_Strict):
    decision: Decision
    note: Note | None = None


class DecideApprovalInput(DecisionBody):
    approval_id: ApprovalIdField


class ApprovalsQuery(Storable):
    model_config = ConfigDict(extra="forbid")
    state: list[ApprovalState] | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50


class WaitQuery(Storable):
    model_config = ConfigDict(extra="forbid")
    wait_seconds: WaitSeconds = 0


class _Hint(BaseModel):
    """NATS `approvals.{id}`: the approval changed; read it from PostgreSQL."""

    approval_id: str
    state: ApprovalState


# -- the service ---------------------------------------------------------------------------------------------------

Decided = Callable[[Connection, ApprovalInfo], Awaitable[None]]
Committed = Callable[[ApprovalInfo], Awaitable[None]]
_COLUMNS = ("id, kind, subject, reason, detail::text AS detail, requested_by, state, decision, default_decision, "
            "decided_by, note, created_at, expires_at, decided_at")


def _info(row: asyncpg.Record) -> ApprovalInfo:
    return ApprovalInfo(approval_id=row["id"], kind=row["kind"], subject=row["subject"], reason=row["reason"],
                        detail=json.loads(row["detail"]), requested_by=row["requested_by"], state=row["state"],
                        decision=row["decision"], default_decision=row["default_decision"],
                        decided_by=row["decided_by"], note=row["note"], created_at=row["created_at"],
                        expires_at=row["expires_at"], decided_at=row["decided_at"])


def new_approval_id() -> str:
    return f"apr_{secrets.token_hex(8)}"


def _already_decided(info: ApprovalInfo) -> ApprovalAlreadyDecided:
    at = info.decided_at.isoformat() if info.decided_at is not None else None
    return ApprovalAlreadyDecided(info.approval_id, info.state, info.decided_by, at)


class Approvals:
    def __init__(self, pool: asyncpg.Pool, bus: Bus, metrics: HubMetrics, settings: ApprovalSettings) -> None:
        self._pool = pool
        self._bus = bus
        self._metrics = metrics
        self.settings = settings
        self._handlers: dict[ApprovalKind, list[Decided]] = defaultdict(list)
        self._committed: dict[ApprovalKind, list[Committed]] = defaultdict(list)

    def children(self) -> list[ChildSpec]:
        return [ChildSpec(id="approval-sweep", start=task_child(self._sweep_forever))]

    def on_decided(self, kind: ApprovalKind, handler: Decided) -> None:
        """Run `handler` in the transaction that decides each approval of `kind` (approved, denied or expired),
        after its row is updated: the decision and the handler's effect commit together, or neither does."""
        self._handlers[kind].append(handler)

    def on_committed(self, kind: ApprovalKind, callback: Committed) -> None:
        """Run `callback` once a decision of an approval of `kind` committed, on the replica that decided it (to
        announce what the decision's handlers changed); a failure is logged, the decision stands."""
        self._committed[kind].append(callback)

    # -- raising ---------------------------------------------------------------------------------------------------

    async def request(self, conn: Connection, *, kind: ApprovalKind, subject: str, reason: str,
                      detail: dict[str, Any], requested_by: str, expires_seconds: float | None = None,
                      default: Decision | None = None, dedupe_key: str | None = None) -> ApprovalInfo:
        """Raise an approval inside the caller's transaction (it exists once that commits), with its `approval`
        activity event. With `dedupe_key`, a pending approval with the same key is returned instead of a new one."""
        expires = timedelta(seconds=expires_seconds if expires_seconds is not None else self.settings.expires_seconds)
        default_decision = default or self.settings.default_decision
        for _ in range(3):  # a pending twin decided between our insert and our read: insert again
            row = await conn.fetchrow(
                f"INSERT INTO approvals (id, kind, subject, reason, detail, requested_by, default_decision, "
                f"dedupe_key, expires_at) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, now() + $9::interval) "
                f"ON CONFLICT (dedupe_key) WHERE state = 'pending' AND dedupe_key IS NOT NULL DO NOTHING "
                f"RETURNING {_COLUMNS}",
                new_approval_id(), kind, subject, reason, json.dumps(detail), requested_by, default_decision,
                dedupe_key, expires)
            if row is not None:
                info = _info(row)
                await activity.record(conn, "approval", {"change": "requested", **info.model_dump(mode="json")})
                self._metrics.approvals_requested.labels(kind).inc()
                logger.info("approval %s requested by %s (%s, %s)", info.approval_id, requested_by, kind, subject)
                return info
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM approvals WHERE dedupe_key = $1 AND state = 'pending'",
                                      dedupe_key)
            if row is not None:
                return _info(row)
        raise RuntimeError(f"approval with dedupe key {dedupe_key!r} kept being decided while it was requested")

    async def request_agent(self, who: Principal, req: RequestApprovalInput) -> ApprovalInfo:
        """An agent asks an operator (kind `agent`, about its own account); with `wait_seconds`, waits for the
        answer."""
        who.require_acting_as(req.agent_id)
        async with self._pool.acquire() as conn, conn.transaction():
            info = await self.request(conn, kind="agent", subject=f"agent:{req.agent_id}", reason=req.reason,
                                      detail=req.detail, requested_by=req.agent_id,
                                      expires_seconds=req.expires_seconds)
        if req.wait_seconds > 0:
            return await self.wait(who, info.approval_id, req.wait_seconds)
        return info

    # -- deciding --------------------------------------------------------------------------------------------------

    async def decide(self, who: Principal, approval_id: str, decision: Decision, note: str | None) -> ApprovalInfo:
        """An operator's decision, exactly once: a second one (or one after expiry) is ApprovalAlreadyDecided."""
        who.require_operator()
        decided_by = who.token_id or "operator"  # no token: authentication is off, the single local operator
        info: ApprovalInfo | None = None
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE approvals SET state = $2, decision = $3, decided_by = $4, note = $5, decided_at = now() "
                f"WHERE id = $1 AND state = 'pending' AND expires_at > now() RETURNING {_COLUMNS}",
                approval_id, _STATE_OF[decision], decision, decided_by, note)
            if row is not None:
                info = await self._decided(conn, _info(row), "decided")
        if info is None:  # unknown, decided already, or past its expiry (which then applies)
            raise _already_decided(await self._expire_or_read(approval_id))
        await self._published(info)
        return info

    async def _expire_or_read(self, approval_id: str) -> ApprovalInfo:
        """An approval a decision did not find pending: expired now if it was past due (the sweep had not got to
        it yet), else as it is."""
        expired = await self._expire(approval_id)
        if expired is not None:
            return expired
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM approvals WHERE id = $1", approval_id)
        if row is None:
            raise ApprovalNotFound(approval_id)
        return _info(row)

    async def _decided(self, conn: Connection, info: ApprovalInfo, change: str) -> ApprovalInfo:
        """What every decision does in its transaction: the activity event, then the kind's handlers."""
        await activity.record(conn, "approval", {"change": change, **info.model_dump(mode="json")})
        for handler in self._handlers.get(info.kind, ()):
            await handler(conn, info)
        return info

    async def _published(self, info: ApprovalInfo) -> None:
        """After the commit: count it, log it and wake the waiters."""
        self._metrics.approval_decisions.labels(info.state).inc()
        logger.info("approval %s %s by %s", info.approval_id, info.state, info.decided_by)
        await self._bus.publish(self._bus.subject(f"approvals.{info.approval_id}"),
                                _Hint(approval_id=info.approval_id, state=info.state))
        for callback in self._committed.get(info.kind, ()):
            try:
                await callback(info)
            except Exception:  # the decision committed: what announces it must not undo or hide it
                logger.exception("after approval %s was decided", info.approval_id)

    async def _expire(self, approval_id: str) -> ApprovalInfo | None:
        """Apply the default decision to one pending approval past its expiry; None if it is not (any more)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE approvals SET state = 'expired', decision = default_decision, decided_by = $2, "
                f"decided_at = now() WHERE id = $1 AND state = 'pending' AND expires_at <= now() RETURNING {_COLUMNS}",
                approval_id, EXPIRY)
            if row is None:
                return None
            info = await self._decided(conn, _info(row), "expired")
        await self._published(info)
        return info

    async def sweep(self) -> int:
        """Expire the pending approvals past due, each in a transaction of its own (with its handlers), and refresh
        the pending gauge; returns how many expired."""
        due = await self._pool.fetch("SELECT id FROM approvals WHERE state = 'pending' AND expires_at <= now() "
                                     "ORDER BY expires_at LIMIT $1", _SWEEP_BATCH)
        expired = 0
        for row in due:
            try:
                expired += await self._expire(row["id"]) is not None
            except UNAVAILABLE:  # PostgreSQL away: the whole round is retried
                raise
            except Exception:  # one approval's failing handler must not keep the others from expiring
                logger.exception("expiring approval %s failed; it is tried again next sweep", row["id"])
        self._metrics.approvals_pending.set(await self.pending_count())
        return expired

    async def pending_count(self) -> int:
        """How many approvals wait for an operator (the dashboard's counter, `agenthub_approvals_pending`)."""
        count: int = await self._pool.fetchval("SELECT count(*) FROM approvals WHERE state = 'pending'")
        return count

    async def _sweep_forever(self, task_status: TaskStatus[None]) -> None:
        task_status.started()
        while True:
            try:
                await self.sweep()
            except DATABASE_ERRORS as exc:  # PostgreSQL away for a moment: the next round retries
                log_failure(logger, "the approval sweep failed", exc)
            await anyio.sleep(self.settings.sweep_seconds)

    # -- reading ---------------------------------------------------------------------------------------------------

    async def get(self, who: Principal, approval_id: str) -> ApprovalInfo:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM approvals WHERE id = $1", approval_id)
        if row is None:
            raise ApprovalNotFound(approval_id)
        info = _info(row)
        if who.role is Role.AGENT and who.agent_id not in (info.requested_by, info.subject.removeprefix("agent:")):
            raise Forbidden(f"this token belongs to agent {who.agent_id!r}: approval {approval_id!r} is neither "
                            "requested by it nor about its account")
        return info

    async def list(self, who: Principal, *, state: list[ApprovalState] | None, limit: int) -> list[ApprovalInfo]:
        """Newest first; an agent's own only (requested by it or about its account)."""
        agent = who.agent_id if who.role is Role.AGENT else None
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM approvals WHERE ($1::text[] IS NULL OR state = ANY($1)) AND ($2::text IS NULL "
            f"OR requested_by = $2 OR subject = 'agent:' || $2) ORDER BY created_at DESC, id DESC LIMIT $3",
            state, agent, limit)
        return [_info(r) for r in rows]

    async def listed(self, who: Principal, req: ListApprovalsInput) -> ApprovalList:
        """`list` as the tool and REST answer it."""
        return ApprovalList(approvals=await self.list(who, state=req.state, limit=req.limit))

    async def wait(self, who: Principal, approval_id: str, seconds: float) -> ApprovalInfo:
        """The approval once decided, or as it is after `seconds` (at most `max_wait_seconds`)."""
        info = await self.get(who, approval_id)
        bound = min(max(seconds, 0.0), self.settings.max_wait_seconds)
        if info.state != "pending" or bound <= 0:
            return info
        woken = anyio.Event()

        async def heard(msg: Any) -> None:
            woken.set()

        hints = None
        try:
            with anyio.move_on_after(_POLL_SECONDS):  # NATS slow or away: the re-reads alone see the decision
                hints = await self._bus.subscribe(f"approvals.{approval_id}", heard)
        except Exception:  # NATS refused: the same
            logger.warning("approval %s: cannot hear decision hints; polling only", approval_id)
        try:
            with anyio.move_on_after(bound):
                while info.state == "pending":
                    with anyio.move_on_after(_POLL_SECONDS):
                        await woken.wait()
                    woken = anyio.Event()
                    info = await self.get(who, approval_id)
        finally:
            if hints is not None:
                with anyio.move_on_after(1, shield=True):
                    try:
                        await hints.unsubscribe()
                    except Exception:  # the connection is gone: so is the subscription
                        logger.debug("approval %s: unsubscribe failed", approval_id, exc_info=True)
        return info
