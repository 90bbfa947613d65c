"""Budgets and spend caps: per subject (`agent:{id}`, `requester:{id}`) and metric, a soft and a hard limit.

Contract:

* `reserve` before a piece of work, `settle` after it with what it really cost. A reservation checks
  spent + reserved + amount against the hard limit and records itself in one transaction with the subject's meter
  row locked (`SELECT ... FOR UPDATE`), so racing reservations cannot overshoot; past the hard limit it raises
  `BudgetExhausted` and writes nothing. `record` adds spend after the fact (a usage report, work time);
  `charge` is reserve-and-settle at once (a tool call).
* Crossing the soft limit (spent + reserved going from at most `soft` to above it) raises one approval
  (`Approvals.request`, kind "budget", deduplicated per subject and metric) and the work goes on. An operator who
  denies it exhausts the metric until they set its limits again; approving changes nothing.
* A reservation never settled (its agent crashed) is settled at its reserved amount after
  `reservation_expiry_seconds` by the sweep, a child of the hub's root supervisor (credits excepted: a task's
  reservation lives as long as the task, and the market settles it when the task's escrow ends). The sweep also
  writes the spend counted in memory and, once a minute, deletes spend and settled reservations past the retention.
* Cheap without limits: most subjects have none. Each replica keeps the set of subjects with limits, read at start,
  again every `cache_seconds` and at once when any replica changes limits (a hint on `hub.budgets.changed`, which
  only makes replicas read the database again). For a subject without limits `reserve` returns None and writes
  nothing, and `count` adds to a counter in memory that the sweep writes in one statement.
* Spend is kept as a total per meter and in per-minute buckets (the plot of spend over time).
"""

import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
from anyio.abc import TaskStatus
from prometheus_client import Counter
from pydantic import BaseModel

from agenthub import activity
from agenthub.auth import Principal, Role
from agenthub.bus import Bus, BusListener
from agenthub.database import DATABASE_ERRORS, Connection, log_failure
from agenthub.errors import BudgetExhausted, Forbidden, InvalidInput, NotFound
from agenthub.metrics import HubMetrics
from agenthub.settings import BudgetSettings
from governance.models import (
    METRICS,
    SUBJECT_PATTERN,
    BudgetInfo,
    BudgetList,
    Limit,
    Metric,
    ReportUsageInput,
    Reservation,
    ReserveUsageInput,
    SetBudgetInput,
    SpendPoint,
    SpendSeries,
    UsageReported,
)
from supervisor import ChildSpec, task_child

if TYPE_CHECKING:
    from governance.approvals import ApprovalInfo, Approvals

logger = logging.getLogger(__name__)

CHANGED_SUBJECT = "hub.budgets.changed"
_SWEEP_BATCH = 500
_RETENTION_SECONDS = 60.0  # how often the sweep deletes spend and reservations past the retention


class BudgetsChanged(BaseModel):
    """Hub to hub: a subject's limits changed; read them again."""

    subject: str


class ReservationNotFound(NotFound):
    def __init__(self, reservation_id: str) -> None:
        super().__init__(f"no reservation {reservation_id!r} of yours")
        self.reservation_id = reservation_id


def parse_subject(value: str) -> str:
    """`value` if it names an agent or requester account, else `InvalidInput`."""
    if not re.fullmatch(SUBJECT_PATTERN, value):
        raise InvalidInput(f"{value!r} is not a budget subject: expected 'agent:<id>' or 'requester:<id>'")
    return value


def agent_subject(agent_id: str) -> str:
    return f"agent:{agent_id}"


def _new_reservation_id() -> str:
    return f"rsv_{secrets.token_hex(8)}"


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


class Budgets(BusListener[BudgetsChanged]):
    """Enter it (once) to hear other replicas' changes; `children()` is the sweep."""

    def __init__(self, pool: asyncpg.Pool, bus: Bus, metrics: HubMetrics, settings: BudgetSettings,
                 approvals: "Approvals | None" = None) -> None:
        super().__init__(bus, CHANGED_SUBJECT, BudgetsChanged, settings.cache_seconds)
        self._pool = pool
        self._metrics = metrics
        self.settings = settings
        self._approvals = approvals
        self._limited: dict[str, frozenset[str]] = {}  # subject -> metrics with a limit (or a denial)
        self._generation = 0  # moves on every change heard: a read that spans one is not kept
        self._pending: dict[tuple[str, str], int] = {}  # spend of subjects without limits, not written yet
        self._next_retention = 0.0
        self._counters: dict[tuple[str, str], Counter] = {}
        if approvals is not None:
            approvals.on_decided("budget", self._decided)

    async def __aenter__(self) -> "Budgets":
        await self.refresh()
        await super().__aenter__()
        return self

    def children(self) -> list[ChildSpec]:
        return [ChildSpec(id="budget-sweep", start=task_child(self._sweep_forever))]

    def limited(self, subject: str, metric: str) -> bool:
        """Whether this replica knows of a limit on the subject's metric (no I/O)."""
        metrics = self._limited.get(subject)
        return metrics is not None and metric in metrics

    # -- the cache of subjects with limits -------------------------------------------------------------------------

    async def refresh(self) -> None:
        generation = self._generation
        rows = await self._pool.fetch("SELECT subject, array_agg(metric) AS metrics FROM budget_meters"
                                      " WHERE soft IS NOT NULL OR hard IS NOT NULL OR denied GROUP BY subject")
        if generation == self._generation:
            self._limited = {r["subject"]: frozenset(r["metrics"]) for r in rows}

    async def on_payload(self, payload: BudgetsChanged) -> None:
        self._generation += 1
        try:
            await self.refresh()
        except DATABASE_ERRORS as exc:  # the next tick reads again
            log_failure(logger, "budgets: reading the limits failed", exc)

    async def tick(self) -> None:
        """Read the limits again and write the spend counted in memory (also once more on exit)."""
        try:
            await self.refresh()
            await self.flush()
        except DATABASE_ERRORS as exc:  # both are tried again at the next tick
            log_failure(logger, "budgets: reading the limits or writing spend failed", exc)

    async def _changed(self, subject: str) -> None:
        self._generation += 1
        await self.refresh()
        await self._bus.publish(self._bus.subject(CHANGED_SUBJECT), BudgetsChanged(subject=subject))

    # -- reserve, settle, record ------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _transaction(self, conn: Connection | None) -> AsyncIterator[Connection]:
        """The caller's connection (in its transaction), or a pool connection in a transaction of our own."""
        if conn is not None:
            yield conn
            return
        async with self._pool.acquire() as own, own.transaction():
            yield own

    async def _meter(self, c: Connection, subject: str, metric: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await c.fetchrow(
            "SELECT soft, hard, spent, reserved, denied FROM budget_meters WHERE subject = $1 AND metric = $2"
            " FOR UPDATE", subject, metric)
        return row

    async def _ensure_meter(self, c: Connection, subject: str, metric: str) -> asyncpg.Record:
        await c.execute("INSERT INTO budget_subjects (subject) VALUES ($1) ON CONFLICT DO NOTHING", subject)
        await c.execute("INSERT INTO budget_meters (subject, metric) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        subject, metric)
        row = await self._meter(c, subject, metric)
        assert row is not None
        return row

    def _refuse(self, subject: str, metric: str, row: asyncpg.Record, amount: int) -> BudgetExhausted:
        self._metrics.budget_refused.labels(subject, metric).inc()
        return BudgetExhausted(subject, metric, spent=row["spent"], reserved=row["reserved"], limit=row["hard"],
                               amount=amount, denied=row["denied"])

    @staticmethod
    def _over(row: asyncpg.Record, amount: int) -> bool:
        hard = row["hard"]
        return bool(row["denied"]) or (hard is not None and row["spent"] + row["reserved"] + amount > hard)

    async def reserve(self, subject: str, metric: Metric, amount: int, *, ref: str,
                      conn: Connection | None = None) -> str | None:
        """Hold `amount` of the subject's metric for a piece of work named `ref`: the reservation id, or None when
        the subject has no limit on the metric (then nothing is written). Raises `BudgetExhausted` past the hard
        limit (or after an operator denied going past the soft one)."""
        if not self.limited(subject, metric):
            return None
        self._check_amount(amount)
        async with self._transaction(conn) as c:
            row = await self._meter(c, subject, metric)
            if row is None or (row["soft"] is None and row["hard"] is None and not row["denied"]):
                return None  # the limit went away since this replica last looked
            if self._over(row, amount):
                raise self._refuse(subject, metric, row, amount)
            reservation_id = _new_reservation_id()
            await c.execute("INSERT INTO budget_reservations (id, subject, metric, amount, ref) VALUES"
                            " ($1, $2, $3, $4, $5)", reservation_id, subject, metric, amount, ref[:200])
            await c.execute("UPDATE budget_meters SET reserved = reserved + $3 WHERE subject = $1 AND metric = $2",
                            subject, metric, amount)
            await self._crossed(c, subject, metric, row, level=row["spent"] + row["reserved"] + amount,
                                spent=row["spent"])
        return reservation_id

    async def settle(self, reservation_id: str | None, actual: int, *, conn: Connection | None = None) -> None:
        """The reservation becomes spend of `actual` (below or above what was reserved); None is a no-op, and so is
        a reservation settled (or expired) already."""
        if reservation_id is None:
            return
        self._check_amount(actual)
        async with self._transaction(conn) as c:
            held = await c.fetchrow(
                "UPDATE budget_reservations SET state = 'settled', actual = $2, settled_at = now()"
                " WHERE id = $1 AND state = 'open' RETURNING subject, metric, amount", reservation_id, actual)
            if held is None:
                if await c.fetchval("SELECT 1 FROM budget_reservations WHERE id = $1", reservation_id) is None:
                    raise ReservationNotFound(reservation_id)
                return
            await self._spend(c, held["subject"], held["metric"], actual, release=held["amount"])

    async def record(self, subject: str, metric: Metric, amount: int, *, conn: Connection | None = None) -> None:
        """Spend that already happened (a usage report, work time): never refused, but it can exhaust the metric
        and cross the soft limit."""
        self._check_amount(amount)
        if amount == 0:
            return
        async with self._transaction(conn) as c:
            await self._spend(c, subject, metric, amount, release=0)

    async def charge(self, subject: str, metric: Metric, amount: int, *, conn: Connection | None = None) -> None:
        """Reserve and settle `amount` at once: refused (`BudgetExhausted`) past the hard limit."""
        self._check_amount(amount)
        async with self._transaction(conn) as c:
            row = await self._ensure_meter(c, subject, metric)
            if self._over(row, amount):
                raise self._refuse(subject, metric, row, amount)
            await self._spend(c, subject, metric, amount, release=0, row=row)

    async def work_time(self, agent_id: str, seconds: int) -> None:
        """Seconds an agent's process spent on work items, as the hub heard them from its own NATS subject (only
        that agent's process may publish there: agenthub.nats_auth)."""
        await self.record(agent_subject(agent_id), "work_seconds", seconds)

    def count(self, subject: str, metric: Metric, amount: int = 1) -> bool:
        """Spend of a subject without a limit on `metric`, counted in memory (written by the sweep); False when the
        subject has a limit on it and the caller must `charge` instead."""
        if self.limited(subject, metric):
            return False
        key = (subject, metric)
        self._pending[key] = self._pending.get(key, 0) + amount
        self._spend_counter(subject, metric).inc(amount)
        return True

    def _spend_counter(self, subject: str, metric: str) -> Counter:
        """The Prometheus child of this subject and metric, looked up once (`labels` takes a lock each time)."""
        key = (subject, metric)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self._metrics.budget_spend.labels(subject, metric)
        return counter

    async def _spend(self, c: Connection, subject: str, metric: str, amount: int, *, release: int,
                     row: asyncpg.Record | None = None) -> None:
        """Add `amount` to spent (and its minute), releasing `release` of what was reserved; the row is locked."""
        if row is None:
            row = await self._ensure_meter(c, subject, metric)
        await c.execute("UPDATE budget_meters SET spent = spent + $3, reserved = greatest(reserved - $4, 0)"
                        " WHERE subject = $1 AND metric = $2", subject, metric, amount, release)
        await self._add_to_minute(c, subject, metric, amount)
        self._spend_counter(subject, metric).inc(amount)
        await self._crossed(c, subject, metric, row, level=row["spent"] + row["reserved"] - release + amount,
                            spent=row["spent"] + amount)

    @staticmethod
    async def _add_to_minute(c: Connection, subject: str, metric: str, amount: int) -> None:
        if amount:
            await c.execute("INSERT INTO budget_spend (subject, metric, minute, amount)"
                            " VALUES ($1, $2, date_trunc('minute', now()), $3) ON CONFLICT (subject, metric, minute)"
                            " DO UPDATE SET amount = budget_spend.amount + EXCLUDED.amount", subject, metric, amount)

    async def _crossed(self, c: Connection, subject: str, metric: str, before: asyncpg.Record, *, level: int,
                       spent: int) -> None:
        """After a change of the meter `before` to `level` (spent + reserved) and `spent`: an approval when the
        level crossed the soft limit, an activity event when spent reached the hard one."""
        soft, hard = before["soft"], before["hard"]
        if soft is not None and before["spent"] + before["reserved"] <= soft < level:
            detail: dict[str, Any] = {"metric": metric, "spent": spent, "soft": soft, "hard": hard}
            if self._approvals is not None:
                await self._approvals.request(
                    c, kind="budget", subject=subject, reason=f"{subject} passed its soft limit of {soft} on {metric}",
                    detail=detail, requested_by="hub", dedupe_key=f"budget:{subject}:{metric}")
            await activity.record(c, "budget", {"event": "soft_limit", "subject": subject, **detail})
        if hard is not None and before["spent"] < hard <= spent:
            await activity.record(c, "budget", {"event": "exhausted", "subject": subject, "metric": metric,
                                                "spent": spent, "hard": hard})

    @staticmethod
    def _check_amount(amount: int) -> None:
        if amount < 0:
            raise InvalidInput(f"an amount must not be negative, got {amount}")

    async def _decided(self, conn: Connection, info: "ApprovalInfo") -> None:
        """An operator's answer to a soft limit: a denial exhausts the metric until its limits are set again."""
        metric = info.detail.get("metric")
        if info.decision == "deny" and metric in METRICS:
            await conn.execute("UPDATE budget_meters SET denied = true WHERE subject = $1 AND metric = $2",
                               info.subject, metric)
            await activity.record(conn, "budget", {"event": "denied", "subject": info.subject, "metric": metric})

    # -- what the market and dispatch ask ---------------------------------------------------------------------------

    async def require_dispatch(self, subject: str, *, conn: Connection | None = None) -> None:
        """Raises `BudgetExhausted` when any metric of the subject is exhausted (at or past hard, or denied)."""
        if subject not in self._limited:
            return
        row = await (conn or self._pool).fetchrow(
            "SELECT metric, soft, hard, spent, reserved, denied FROM budget_meters WHERE subject = $1"
            " AND (denied OR spent >= hard) ORDER BY metric LIMIT 1", subject)
        if row is not None:
            raise self._refuse(subject, row["metric"], row, 0)

    async def approval_threshold(self, subject: str, *, conn: Connection | None = None) -> int | None:
        value: int | None = await (conn or self._pool).fetchval(
            "SELECT approval_threshold FROM budget_subjects WHERE subject = $1", subject)
        return value

    # -- REST, MCP and CLI ------------------------------------------------------------------------------------------

    async def get(self, who: Principal, subject: str) -> BudgetInfo:
        """A subject's budget; an agent reads only its own."""
        subject = parse_subject(subject)
        if who.role is Role.AGENT and subject != agent_subject(who.agent_id or ""):
            raise Forbidden(f"this token belongs to agent {who.agent_id!r} and can read only its own budget")
        infos = await self._infos(subject=subject, limit=1)
        return infos[0] if infos else BudgetInfo(subject=subject, limits={}, spent={}, reserved={}, exhausted=[],
                                                 approval_threshold=None, updated_at=None)

    async def list_budgets(self, who: Principal, *, limit: int = 200) -> BudgetList:
        """Every subject with limits or spend (operators and viewers)."""
        if who.role is Role.AGENT:
            raise Forbidden("an agent token reads only its own budget: GET /api/v1/budgets/agent:<your id>")
        return BudgetList(budgets=await self._infos(subject=None, limit=limit))

    async def _infos(self, *, subject: str | None, limit: int) -> list[BudgetInfo]:
        """The budget of `subject`, or of every subject (by name, at most `limit`)."""
        rows = await self._pool.fetch(
            "SELECT s.subject, s.approval_threshold, s.updated_at, coalesce(json_agg(json_build_object("
            "'metric', m.metric, 'soft', m.soft, 'hard', m.hard, 'spent', m.spent, 'reserved', m.reserved, "
            "'denied', m.denied)) FILTER (WHERE m.metric IS NOT NULL), '[]')::text AS meters"
            " FROM budget_subjects s LEFT JOIN budget_meters m USING (subject) WHERE $1::text IS NULL OR"
            " s.subject = $1 GROUP BY s.subject ORDER BY s.subject LIMIT $2", subject, limit)
        return [_info(r) for r in rows]

    async def set_limits(self, who: Principal, req: SetBudgetInput) -> BudgetInfo:
        """Set limits (operators); a metric set again is no longer denied."""
        who.require_operator()
        subject = parse_subject(req.subject)
        async with self._pool.acquire() as c, c.transaction():
            await c.execute("INSERT INTO budget_subjects (subject) VALUES ($1) ON CONFLICT DO NOTHING", subject)
            if "approval_threshold" in req.model_fields_set:
                await c.execute("UPDATE budget_subjects SET approval_threshold = $2 WHERE subject = $1", subject,
                                req.approval_threshold)
            await c.execute("UPDATE budget_subjects SET updated_at = now() WHERE subject = $1", subject)
            for metric, limit in req.limits.items():
                await c.execute(
                    "INSERT INTO budget_meters (subject, metric, soft, hard) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (subject, metric) DO UPDATE SET soft = $3, hard = $4, denied = false",
                    subject, metric, limit.soft, limit.hard)
            await activity.record(c, "budget", {
                "event": "limits_set", "subject": subject, "by": who.token_id,
                "limits": {m: limit.model_dump() for m, limit in req.limits.items()},
                **({"approval_threshold": req.approval_threshold} if "approval_threshold" in req.model_fields_set
                   else {})})
        await self._changed(subject)
        logger.info("budget of %s set: %s", subject, req.model_dump(exclude={"subject"}))
        return await self.get(who, subject)

    async def spend(self, who: Principal, subject: str, metric: Metric, since: datetime | None) -> SpendSeries:
        """Spend per minute from `since` (default: the last 24 hours), with the running total."""
        info = await self.get(who, subject)  # the same rights as reading the budget
        since = since or datetime.now(UTC) - timedelta(days=1)
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        rows = await self._pool.fetch(
            "SELECT minute, amount, sum(amount) OVER (ORDER BY minute) + (SELECT coalesce(sum(amount), 0)"
            " FROM budget_spend WHERE subject = $1 AND metric = $2 AND minute < $3) AS total"
            " FROM budget_spend WHERE subject = $1 AND metric = $2 AND minute >= $3 ORDER BY minute LIMIT $4",
            info.subject, metric, _minute(since), self.settings.max_series_points)
        return SpendSeries(subject=info.subject, metric=metric,
                           points=[SpendPoint(at=r["minute"], amount=r["amount"], total=r["total"]) for r in rows])

    async def reserve_usage(self, who: Principal, req: ReserveUsageInput) -> Reservation:
        who.require_acting_as(req.agent_id)
        reservation_id = await self.reserve(agent_subject(req.agent_id), req.metric, req.amount,
                                            ref=f"reserve_usage by {who.token_id or 'local operator'}")
        return Reservation(reservation_id=reservation_id)

    async def report_usage(self, who: Principal, req: ReportUsageInput) -> UsageReported:
        """Settle the agent's reservations with the amounts reported for their metrics, and record the rest; all
        or nothing."""
        who.require_acting_as(req.agent_id)
        subject = agent_subject(req.agent_id)
        amounts = req.amounts()
        async with self._pool.acquire() as c, c.transaction():
            held = await c.fetch("SELECT id, metric FROM budget_reservations WHERE id = any($1::text[])"
                                 " AND subject = $2 ORDER BY metric, id", req.reservations(), subject)
            found = {r["id"]: r["metric"] for r in held}
            for reservation_id in req.reservations():
                if reservation_id not in found:
                    raise ReservationNotFound(reservation_id)
            settled: list[str] = []
            for reservation_id, metric in found.items():
                if metric not in amounts:
                    raise InvalidInput(f"reservation {reservation_id} is for {metric}: report {metric} to settle it")
                await self.settle(reservation_id, amounts[metric], conn=c)
                settled.append(reservation_id)
            covered = set(found.values())
            recorded = {m: v for m, v in amounts.items() if m not in covered}
            for metric, amount in recorded.items():
                await self.record(subject, metric, amount, conn=c)
        return UsageReported(subject=subject, settled=settled, recorded=recorded)

    # -- the sweep ----------------------------------------------------------------------------------------------------

    async def _sweep_forever(self, task_status: TaskStatus[None]) -> None:
        task_status.started()
        while True:
            await anyio.sleep(self.settings.sweep_seconds)
            try:
                await self.sweep()
            except DATABASE_ERRORS as exc:  # the next sweep tries again
                log_failure(logger, "budgets: the sweep failed", exc)

    async def sweep(self) -> int:
        """Write the spend counted in memory, settle expired reservations at their reserved amount, delete spend past
        the retention; returns how many reservations expired."""
        await self.flush()
        expired = 0
        while True:
            async with self._pool.acquire() as c, c.transaction():
                rows = await c.fetch(
                    "SELECT id, subject, metric, amount FROM budget_reservations WHERE state = 'open'"
                    " AND metric <> 'credits' AND at < now() - make_interval(secs => $1) ORDER BY subject, metric, id"
                    " LIMIT $2 FOR UPDATE SKIP LOCKED", self.settings.reservation_expiry_seconds, _SWEEP_BATCH)
                for r in rows:
                    await c.execute("UPDATE budget_reservations SET state = 'expired', actual = amount,"
                                    " settled_at = now() WHERE id = $1", r["id"])
                    await self._spend(c, r["subject"], r["metric"], r["amount"], release=r["amount"])
                    logger.warning("reservation %s of %s (%s %s) expired unsettled; counted in full", r["id"],
                                   r["subject"], r["amount"], r["metric"])
            expired += len(rows)
            if len(rows) < _SWEEP_BATCH:
                break
        if time.monotonic() >= self._next_retention:
            self._next_retention = time.monotonic() + _RETENTION_SECONDS
            keep = timedelta(days=self.settings.spend_retention_days)
            await self._pool.execute("DELETE FROM budget_spend WHERE minute < now() - $1::interval", keep)
            await self._pool.execute("DELETE FROM budget_reservations WHERE state <> 'open' AND settled_at < now() -"
                                     " $1::interval", keep)
        return expired

    async def flush(self) -> None:
        """Write the spend counted in memory (subjects without limits) in one transaction."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        subjects = [s for s, _ in pending]
        metrics = [m for _, m in pending]
        amounts = list(pending.values())
        try:
            async with self._pool.acquire() as c, c.transaction():
                await c.execute("INSERT INTO budget_subjects (subject) SELECT DISTINCT unnest($1::text[])"
                                " ON CONFLICT DO NOTHING", subjects)
                await c.execute(
                    "INSERT INTO budget_meters (subject, metric, spent) SELECT * FROM unnest($1::text[], $2::text[],"
                    " $3::bigint[]) ORDER BY 1, 2 ON CONFLICT (subject, metric) DO UPDATE"
                    " SET spent = budget_meters.spent + EXCLUDED.spent", subjects, metrics, amounts)
                await c.execute(
                    "INSERT INTO budget_spend (subject, metric, minute, amount) SELECT s, m, date_trunc('minute',"
                    " now()), a FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t (s, m, a) ON CONFLICT"
                    " (subject, metric, minute) DO UPDATE SET amount = budget_spend.amount + EXCLUDED.amount",
                    subjects, metrics, amounts)
        except BaseException:
            for key, amount in pending.items():  # counted again with what came since, written next time
                self._pending[key] = self._pending.get(key, 0) + amount
            raise


def _info(row: asyncpg.Record) -> BudgetInfo:
    meters = json.loads(row["meters"])
    limits: dict[Metric, Limit] = {}
    spent: dict[Metric, int] = {}
    reserved: dict[Metric, int] = {}
    exhausted: list[Metric] = []
    for m in sorted(meters, key=lambda m: METRICS.index(m["metric"])):
        metric: Metric = m["metric"]
        if m["soft"] is not None or m["hard"] is not None:
            limits[metric] = Limit(soft=m["soft"], hard=m["hard"])
        spent[metric] = m["spent"]
        reserved[metric] = m["reserved"]
        if m["denied"] or (m["hard"] is not None and m["spent"] >= m["hard"]):
            exhausted.append(metric)
    return BudgetInfo(subject=row["subject"], limits=limits, spent=spent, reserved=reserved, exhausted=exhausted,
                      approval_threshold=row["approval_threshold"], updated_at=row["updated_at"])
