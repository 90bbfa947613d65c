"""Escrows: a task's budget, held from its requester until the work is paid for or the money goes back.

    hold ──▶ held ──reduce (award)──▶ held, with a payee and the price
              │ ├──release──▶ released    payee gets amount − fee, platform the fee
              │ ├──refund───▶ refunded    payer gets everything back
              │ └──dispute──▶ disputed    frozen: no reduce, release or refund
              │                  └──resolve (arbiter)──▶ released | refunded | split
              ▼
    released, refunded and split are final: an escrow ends exactly once.

Two layers. The module functions (`hold`, `reduce`, `release`, `refund`, `dispute`, `resolve`) take a connection
inside the caller's transaction, so a task change and its money move commit together (submit = hold + insert the
task; auction close = reduce or refund + assign or expire). `Escrows` runs each of them in its own transaction
under an idempotency key (`market.idempotency.run_once`), for callers that move money on its own.

Each operation locks the escrow row, decides in Python whether the change is allowed (refusals raise and move
nothing), then changes the state with an `UPDATE … WHERE state = ANY(allowed) RETURNING` and writes the transfer
through `market.ledger.post_transfer`. A partial unique index allows one settlement transfer per escrow, so even a
bug here cannot pay twice.

Lock order: the task's row, then the escrow row, then its accounts in id order (`market.ledger.lock_accounts`).
The operations here lock the escrow and its accounts; a caller settling a task locks the task first
(`market.tasks.TaskStore.lock`), since its task events lock the task too and would otherwise invert the order
against a caller that did. A transaction that works on several escrows (the auction closer) locks their tasks,
then the escrows (`lock`), then every account it will touch, up front and in id order.

Rounding (integers, floor): the fee is `gross * fee_percent // 100` of what goes to the payee, so the platform
never takes more than its percentage and the payee keeps the remainder; in a split the payee's gross share is
`amount * payee_share_percent // 100` and the payer gets the rest. Release at 10 % of 600: 540 + 60; a split of
601 at 50 % with a 10 % fee: payee gross 300 → 270 to the payee, 30 to the platform, 301 back to the payer.

Who may act is the caller's business (the operator role for `resolve`), except for disputes: only the payer or
the payee can open one (`NotEscrowParty` otherwise), so `dispute` takes the disputing account.
"""

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, NewType

import asyncpg

from agenthub.database import Connection
from agenthub.errors import (
    EscrowAlreadyAwarded,
    EscrowAlreadySettled,
    EscrowDisputed,
    EscrowNotAwarded,
    EscrowNotDisputed,
    EscrowNotFound,
    InvalidInput,
    NotEscrowParty,
    TaskAlreadyEscrowed,
    ValueOutOfRange,
)
from market.idempotency import run_once
from market.ledger import (
    PARTY_KINDS,
    PLATFORM,
    AccountId,
    TransferKind,
    check_amount,
    escrow_account,
    post_transfer,
    require_kind,
)

EscrowId = NewType("EscrowId", str)
Outcome = Literal["release", "refund", "split"]

MAX_EVIDENCE_LENGTH = 16_000
MAX_TASK_ID_LENGTH = 255
MAX_ARBITER_LENGTH = 255


class EscrowState(StrEnum):
    HELD = "held"
    DISPUTED = "disputed"
    RELEASED = "released"
    REFUNDED = "refunded"
    SPLIT = "split"


SETTLED = frozenset({EscrowState.RELEASED, EscrowState.REFUNDED, EscrowState.SPLIT})
_ENDS_AS: dict[Outcome, EscrowState] = {
    "release": EscrowState.RELEASED, "refund": EscrowState.REFUNDED, "split": EscrowState.SPLIT,
}
_TRANSFER_KIND: dict[Outcome, TransferKind] = {
    "release": TransferKind.RELEASE, "refund": TransferKind.REFUND, "split": TransferKind.SPLIT,
}


def new_escrow_id() -> EscrowId:
    return EscrowId(f"esc_{secrets.token_hex(8)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Settlement:
    """Where the held amount goes when an escrow ends."""

    to_payee: int
    fee: int
    to_payer: int


def settle_amounts(amount: int, outcome: Outcome, *, fee_percent: int, payee_share_percent: int = 0) -> Settlement:
    """Split `amount` for `outcome`, in integers, rounding down what the payee and the platform get."""
    gross = {"release": amount, "refund": 0, "split": amount * payee_share_percent // 100}[outcome]
    fee = gross * fee_percent // 100
    return Settlement(to_payee=gross - fee, fee=fee, to_payer=amount - gross)


@dataclass(frozen=True, slots=True, kw_only=True)
class Escrow:
    """An escrow as an operation left it. `amount` is what is (or was, once ended) held: the budget until the
    award, the price after it. `refunded` counts everything returned to the payer, the award's difference
    included; once ended, `paid_to_payee + fee + refunded == budget`."""

    id: EscrowId
    task_id: str
    payer: AccountId
    payee: AccountId | None
    budget: int
    amount: int
    state: EscrowState
    disputed_by: AccountId | None
    dispute_evidence: str | None
    resolution: Outcome | None
    resolved_by: str | None
    payee_share_percent: int | None
    fee_percent: int | None
    paid_to_payee: int
    fee: int
    refunded: int
    created_at: datetime
    awarded_at: datetime | None
    disputed_at: datetime | None
    settled_at: datetime | None


def _escrow(row: asyncpg.Record) -> Escrow:
    return Escrow(
        id=EscrowId(row["id"]), task_id=row["task_id"], payer=AccountId(row["payer"]),
        payee=AccountId(row["payee"]) if row["payee"] is not None else None, budget=row["budget"],
        amount=row["amount"], state=EscrowState(row["state"]),
        disputed_by=AccountId(row["disputed_by"]) if row["disputed_by"] is not None else None,
        dispute_evidence=row["dispute_evidence"], resolution=row["resolution"], resolved_by=row["resolved_by"],
        payee_share_percent=row["payee_share_percent"], fee_percent=row["fee_percent"],
        paid_to_payee=row["paid_to_payee"], fee=row["fee"], refunded=row["refunded"], created_at=row["created_at"],
        awarded_at=row["awarded_at"], disputed_at=row["disputed_at"], settled_at=row["settled_at"],
    )


def _check_percent(name: str, value: int) -> None:
    if not 0 <= value <= 100:
        raise ValueOutOfRange(name, value, 0, 100)


def _check_length(name: str, value: str, maximum: int) -> None:
    if not 1 <= len(value) <= maximum:
        raise ValueOutOfRange(f"{name} length", len(value), 1, maximum)


def _refuse_unless_open(escrow: Escrow, *, disputed_ok: bool = False) -> None:
    if escrow.state in SETTLED:
        raise EscrowAlreadySettled(escrow.id, escrow.state.value)
    if escrow.state is EscrowState.DISPUTED and not disputed_ok:
        raise EscrowDisputed(escrow.id)


# -- the operations, inside the caller's transaction ---------------------------------------------------------------
# Each one locks what it changes and raises (moving nothing) when the escrow's state does not allow it. `scope` and
# `key` only label the transfers with the request that made them; idempotency is the caller's (see `Escrows`).


async def hold(conn: Connection, payer: AccountId, amount: int, task_id: str, *, scope: str | None = None,
               key: str | None = None) -> Escrow:
    """Move `amount` from `payer` into a new escrow for `task_id` (one escrow per task).

    Raises:
        InsufficientFunds: the payer's balance is below `amount` (a budget above the balance).
        TaskAlreadyEscrowed: the task already has an escrow.
    """
    require_kind(payer, PARTY_KINDS)
    check_amount("amount", amount)
    _check_length("task id", task_id, MAX_TASK_ID_LENGTH)
    escrow_id = new_escrow_id()
    row = await conn.fetchrow(
        "INSERT INTO escrows (id, task_id, payer, budget, amount, state) VALUES ($1, $2, $3, $4, $4, 'held')"
        " ON CONFLICT (task_id) DO NOTHING RETURNING *", escrow_id, task_id, payer, amount)
    if row is None:
        existing = await conn.fetchval("SELECT id FROM escrows WHERE task_id = $1", task_id)
        raise TaskAlreadyEscrowed(task_id, existing)
    await post_transfer(conn, TransferKind.HOLD, [(payer, -amount), (escrow_account(escrow_id), amount)],
                        memo=f"budget of task {task_id}", escrow_id=escrow_id, scope=scope, key=key)
    return _escrow(row)


async def reduce(conn: Connection, escrow_id: str, new_amount: int, payee: AccountId, *, scope: str | None = None,
                 key: str | None = None) -> Escrow:
    """At award: keep `new_amount` (the price, 1..amount held) for `payee` and refund the rest to the payer.

    Raises:
        EscrowAlreadyAwarded: the escrow already has a payee.
        EscrowDisputed, EscrowAlreadySettled: the escrow is frozen or ended.
    """
    require_kind(payee, PARTY_KINDS)
    escrow = await _locked(conn, escrow_id)
    _refuse_unless_open(escrow)
    if escrow.payee is not None:
        raise EscrowAlreadyAwarded(escrow.id, escrow.payee)
    check_amount("new amount", new_amount, escrow.amount)
    difference = escrow.amount - new_amount
    row = await _change(conn, escrow.id, [EscrowState.HELD],
                        "amount = $3, payee = $4, awarded_at = now(), refunded = refunded + $5",
                        new_amount, payee, difference)
    if difference:
        await post_transfer(conn, TransferKind.AWARD,
                            [(escrow_account(escrow.id), -difference), (escrow.payer, difference)],
                            memo=f"task {escrow.task_id} awarded to {payee} for {new_amount}",
                            escrow_id=escrow.id, scope=scope, key=key)
    return _escrow(row)


async def release(conn: Connection, escrow_id: str, fee_percent: int, *, scope: str | None = None,
                  key: str | None = None) -> Escrow:
    """Pay the payee the amount held less `fee_percent` (0..100), the fee to the platform. Ends the escrow.

    Raises:
        EscrowNotAwarded: there is no payee yet.
        EscrowDisputed, EscrowAlreadySettled: the escrow is frozen or ended.
    """
    _check_percent("fee percent", fee_percent)
    escrow = await _locked(conn, escrow_id)
    _refuse_unless_open(escrow)
    return await _settle(conn, escrow, "release", fee_percent=fee_percent, share=None, arbiter=None, scope=scope,
                         key=key)


async def refund(conn: Connection, escrow_id: str, *, scope: str | None = None, key: str | None = None) -> Escrow:
    """Return everything held to the payer. Ends the escrow.

    Raises:
        EscrowDisputed, EscrowAlreadySettled: the escrow is frozen or ended.
    """
    escrow = await _locked(conn, escrow_id)
    _refuse_unless_open(escrow)
    return await _settle(conn, escrow, "refund", fee_percent=None, share=None, arbiter=None, scope=scope, key=key)


async def dispute(conn: Connection, escrow_id: str, by: AccountId, evidence: str) -> Escrow:
    """Freeze the escrow until an arbiter resolves it. Only the payer or the payee may.

    Raises:
        NotEscrowParty: `by` is neither the payer nor the payee.
        EscrowDisputed, EscrowAlreadySettled: already disputed, or ended.
    """
    _check_length("evidence", evidence, MAX_EVIDENCE_LENGTH)
    escrow = await _locked(conn, escrow_id)
    if by not in (escrow.payer, escrow.payee):
        raise NotEscrowParty(escrow.id, by)
    _refuse_unless_open(escrow)
    row = await _change(conn, escrow.id, [EscrowState.HELD],
                        "state = 'disputed', disputed_by = $3, dispute_evidence = $4, disputed_at = now()",
                        by, evidence)
    return _escrow(row)


async def resolve(conn: Connection, escrow_id: str, outcome: Outcome, *, arbiter: str, fee_percent: int,
                  payee_share_percent: int | None = None, scope: str | None = None,
                  key: str | None = None) -> Escrow:
    """End a disputed escrow as an arbiter ruled: release (as `release`), refund, or split.

    Args:
        conn: a connection inside a transaction.
        escrow_id: the disputed escrow.
        outcome: release, refund or split.
        arbiter: who ruled, for the record (the caller checks that they may).
        fee_percent: the platform fee on what the payee gets (0..100).
        payee_share_percent: for a split only, the payee's share before the fee (0..100).
        scope: the idempotency scope of the request, for the transfer's record.
        key: its idempotency key, likewise.

    Raises:
        EscrowNotDisputed: nobody disputed the escrow.
        EscrowNotAwarded: a release or split of an escrow with no payee.
        EscrowAlreadySettled: the escrow ended already.
    """
    _check_length("arbiter", arbiter, MAX_ARBITER_LENGTH)
    _check_percent("fee percent", fee_percent)
    if outcome not in _ENDS_AS:
        raise InvalidInput(f"outcome must be release, refund or split, got {outcome!r}")
    if (outcome == "split") != (payee_share_percent is not None):
        raise InvalidInput("payee_share_percent is required for a split and only for a split")
    if payee_share_percent is not None:
        _check_percent("payee share percent", payee_share_percent)
    escrow = await _locked(conn, escrow_id)
    _refuse_unless_open(escrow, disputed_ok=True)
    if escrow.state is not EscrowState.DISPUTED:
        raise EscrowNotDisputed(escrow.id, escrow.state.value)
    return await _settle(conn, escrow, outcome, fee_percent=fee_percent, share=payee_share_percent, arbiter=arbiter,
                         scope=scope, key=key)


async def lock(conn: Connection, escrow_ids: list[str]) -> None:
    """Lock the escrows' rows for the caller's transaction, in id order (after their tasks: see above)."""
    await conn.execute("SELECT 1 FROM escrows WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", sorted(escrow_ids))


# -- the same, each in its own idempotent transaction ----------------------------------------------------------------


class Escrows:
    """The escrow operations over the pool: each runs in its own transaction under an idempotency `key` in the
    caller's `scope` (`market.idempotency.run_once`), and returns the escrow as the operation left it; a retry
    returns that same snapshot and changes nothing."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, escrow_id: str) -> Escrow:
        row = await self._pool.fetchrow("SELECT * FROM escrows WHERE id = $1", escrow_id)
        if row is None:
            raise EscrowNotFound(escrow_id)
        return _escrow(row)

    async def for_task(self, task_id: str) -> Escrow | None:
        row = await self._pool.fetchrow("SELECT * FROM escrows WHERE task_id = $1", task_id)
        return _escrow(row) if row is not None else None

    async def hold(self, payer: AccountId, amount: int, task_id: str, *, key: str, scope: str) -> Escrow:
        return await self._once({"op": "escrow.hold", "payer": payer, "amount": amount, "task_id": task_id},
                                lambda conn: hold(conn, payer, amount, task_id, scope=scope, key=key), key, scope)

    async def reduce(self, escrow_id: str, new_amount: int, payee: AccountId, *, key: str, scope: str) -> Escrow:
        return await self._once(
            {"op": "escrow.reduce", "escrow_id": escrow_id, "new_amount": new_amount, "payee": payee},
            lambda conn: reduce(conn, escrow_id, new_amount, payee, scope=scope, key=key), key, scope)

    async def release(self, escrow_id: str, fee_percent: int, *, key: str, scope: str) -> Escrow:
        return await self._once({"op": "escrow.release", "escrow_id": escrow_id, "fee_percent": fee_percent},
                                lambda conn: release(conn, escrow_id, fee_percent, scope=scope, key=key), key, scope)

    async def refund(self, escrow_id: str, *, key: str, scope: str) -> Escrow:
        return await self._once({"op": "escrow.refund", "escrow_id": escrow_id},
                                lambda conn: refund(conn, escrow_id, scope=scope, key=key), key, scope)

    async def dispute(self, escrow_id: str, by: AccountId, evidence: str, *, key: str, scope: str) -> Escrow:
        return await self._once({"op": "escrow.dispute", "escrow_id": escrow_id, "by": by, "evidence": evidence},
                                lambda conn: dispute(conn, escrow_id, by, evidence), key, scope)

    async def resolve(self, escrow_id: str, outcome: Outcome, *, arbiter: str, fee_percent: int,
                      payee_share_percent: int | None = None, key: str, scope: str) -> Escrow:
        request = {"op": "escrow.resolve", "escrow_id": escrow_id, "outcome": outcome, "arbiter": arbiter,
                   "fee_percent": fee_percent, "payee_share_percent": payee_share_percent}
        return await self._once(request, lambda conn: resolve(
            conn, escrow_id, outcome, arbiter=arbiter, fee_percent=fee_percent,
            payee_share_percent=payee_share_percent, scope=scope, key=key), key, scope)

    async def _once(self, request: dict[str, Any], effect: Callable[[Connection], Awaitable[Escrow]], key: str,
                    scope: str) -> Escrow:
        return await run_once(self._pool, scope=scope, key=key, request=request, result_type=Escrow, effect=effect)


# -- helpers ---------------------------------------------------------------------------------------------------------


async def _locked(conn: Connection, escrow_id: str) -> Escrow:
    row = await conn.fetchrow("SELECT * FROM escrows WHERE id = $1 FOR UPDATE", escrow_id)
    if row is None:
        raise EscrowNotFound(escrow_id)
    return _escrow(row)


async def _change(conn: Connection, escrow_id: str, allowed: list[EscrowState], sets: str,
                  *args: object) -> asyncpg.Record:
    """The guarded state change: it happens only from an `allowed` state. The row is locked and checked by the
    caller, so it always matches; the guard is what makes a double settlement impossible, not a hope."""
    row = await conn.fetchrow(f"UPDATE escrows SET {sets} WHERE id = $1 AND state = ANY($2) RETURNING *",
                              escrow_id, [s.value for s in allowed], *args)
    if row is None:
        state = await conn.fetchval("SELECT state FROM escrows WHERE id = $1", escrow_id)
        raise EscrowAlreadySettled(escrow_id, state)
    return row


async def _settle(conn: Connection, escrow: Escrow, outcome: Outcome, *, fee_percent: int | None,
                  share: int | None, arbiter: str | None, scope: str | None, key: str | None) -> Escrow:
    """End an open escrow (locked and checked by the caller) and pay out what it held."""
    if outcome != "refund" and escrow.payee is None:
        raise EscrowNotAwarded(escrow.id)
    fee_percent = fee_percent if outcome != "refund" else None
    split = settle_amounts(escrow.amount, outcome, fee_percent=fee_percent or 0, payee_share_percent=share or 0)
    row = await _change(
        conn, escrow.id, [EscrowState.HELD, EscrowState.DISPUTED],
        "state = $3, settled_at = now(), fee_percent = $4, paid_to_payee = $5, fee = $6, refunded = refunded + $7,"
        " resolution = $8, resolved_by = $9, payee_share_percent = $10",
        _ENDS_AS[outcome].value, fee_percent, split.to_payee, split.fee, split.to_payer,
        outcome if arbiter is not None else None, arbiter, share)
    legs = [(escrow_account(escrow.id), -escrow.amount), (PLATFORM, split.fee), (escrow.payer, split.to_payer)]
    if escrow.payee is not None:
        legs.append((escrow.payee, split.to_payee))
    memo = (f"{outcome} of task {escrow.task_id}: {split.to_payee} to {escrow.payee}, {split.fee} fee to platform,"
            f" {split.to_payer} to {escrow.payer}" + (f"; ruled by {arbiter}" if arbiter is not None else ""))
    await post_transfer(conn, _TRANSFER_KIND[outcome], legs, memo=memo, escrow_id=escrow.id, scope=scope, key=key)
    return _escrow(row)
