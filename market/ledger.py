"""The credit ledger: accounts, double-entry transfers, balances, history and the audit.

Accounts are named by what owns them (`AccountId`):

    mint                 where deposited credits come from; the only account that goes negative
    platform             collects the platform fee
    agent:{agent_id}     what an agent earns
    requester:{id}       what a requester (whoever submits tasks) spends
    escrow:{escrow_id}   what one escrow holds

The owner id after the colon uses the agent-id alphabet (letters, digits, `_`, `-`; 1..64). `mint` and
`platform` exist from the migration on; every other account is created by the first transfer that touches it.

Money moves only through `post_transfer`, inside the caller's transaction: it locks every touched account row
(`SELECT … FOR UPDATE`, in sorted id order, so concurrent transfers serialise without deadlocks under READ
COMMITTED), refuses an overdraft with `InsufficientFunds`, and writes one transfer, its postings (summing to
zero) and the new balances. The database checks the same things again (non-negative balances, balanced
transfers at commit, an append-only journal). Credits are `int`; one request is at most `MAX_AMOUNT`.

Results are frozen dataclasses (`Account`, `Transfer`, `LedgerPage`, `Audit`); the edges turn them into
pydantic models or JSON with `pydantic.TypeAdapter`.
"""

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import NewType

import asyncpg

from agenthub import activity
from agenthub.database import Connection
from agenthub.errors import (
    AccountNotFound,
    InsufficientFunds,
    MalformedAccountId,
    ValueOutOfRange,
    WrongAccountKind,
)
from market.idempotency import run_once

AccountId = NewType("AccountId", str)

MINT = AccountId("mint")
PLATFORM = AccountId("platform")
MAX_AMOUNT = 10**12
MAX_MEMO_LENGTH = 1_000
MAX_HISTORY_PAGE = 500

_ACCOUNT_RE = re.compile(r"mint|platform|(?:agent|requester|escrow|bond):[A-Za-z0-9_-]{1,64}")


class AccountKind(StrEnum):
    MINT = "mint"
    PLATFORM = "platform"
    AGENT = "agent"
    REQUESTER = "requester"
    ESCROW = "escrow"
    BOND = "bond"  # a task's bid bonds (market.bonds)


# Accounts that belong to someone outside the hub: they receive deposits, pay for tasks and are paid.
PARTY_KINDS = (AccountKind.AGENT, AccountKind.REQUESTER)


class TransferKind(StrEnum):
    DEPOSIT = "deposit"    # mint → party, by an operator
    HOLD = "hold"          # payer → escrow, when a task is submitted
    AWARD = "award"        # escrow → payer, the budget above the awarded price
    RELEASE = "release"    # escrow → payee and platform (the fee)
    REFUND = "refund"      # escrow → payer, all of it
    SPLIT = "split"        # escrow → payee, platform and payer, as an arbiter ruled
    BOND = "bond"          # bidder → the task's bond account, when it bids on a task that asks a bond
    BOND_RETURN = "bond_return"  # bond account → bidders, when they lose or deliver
    SLASH = "slash"        # bond account → requester and platform (the fee), when the winner never delivers


def parse_account_id(value: str) -> AccountId:
    """Check that `value` follows the naming scheme. Raises `MalformedAccountId`."""
    if not _ACCOUNT_RE.fullmatch(value):
        raise MalformedAccountId(value)
    return AccountId(value)


def agent_account(agent_id: str) -> AccountId:
    return parse_account_id(f"agent:{agent_id}")


def requester_account(requester_id: str) -> AccountId:
    return parse_account_id(f"requester:{requester_id}")


def escrow_account(escrow_id: str) -> AccountId:
    return parse_account_id(f"escrow:{escrow_id}")


def bond_account(task_id: str) -> AccountId:
    return parse_account_id(f"bond:{task_id}")


def account_kind(account: AccountId) -> AccountKind:
    return AccountKind(account.split(":", 1)[0])


def require_kind(account: AccountId, allowed: Iterable[AccountKind]) -> None:
    """Raise `WrongAccountKind` unless `account` is of one of the `allowed` kinds."""
    allowed = tuple(allowed)
    kind = account_kind(parse_account_id(account))
    if kind not in allowed:
        raise WrongAccountKind(account, kind.value, tuple(k.value for k in allowed))


def check_amount(name: str, amount: int, maximum: int = MAX_AMOUNT) -> None:
    if not 1 <= amount <= maximum:
        raise ValueOutOfRange(name, amount, 1, maximum)


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    id: AccountId
    kind: AccountKind
    balance: int
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Posting:
    account_id: AccountId
    amount: int
    balance_after: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfer:
    id: int
    kind: TransferKind
    memo: str
    escrow_id: str | None
    created_at: datetime
    postings: tuple[Posting, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerEntry:
    """One posting on one account, with what its transfer was."""

    posting_id: int
    transfer_id: int
    kind: TransferKind
    amount: int
    balance_after: int
    memo: str
    escrow_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerPage:
    """Newest first. `next_before` is the cursor for the next (older) page, None on the last page."""

    account_id: AccountId
    entries: tuple[LedgerEntry, ...]
    next_before: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceMismatch:
    account_id: AccountId
    balance: int
    posted: int             # Σ postings
    last_balance_after: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Audit:
    """What `Ledger.verify` found; `ok` when every invariant holds."""

    accounts: int
    transfers: int
    total_balance: int                          # Σ balances: conservation means 0
    balance_mismatches: tuple[BalanceMismatch, ...]
    unbalanced_transfers: tuple[int, ...]       # postings not summing to 0, or fewer than two
    negative_accounts: tuple[AccountId, ...]    # below zero and not the mint
    escrow_mismatches: tuple[str, ...]          # escrow account ≠ amount held (open) or ≠ 0 (ended)
    bond_mismatches: tuple[str, ...] = ()       # a task's bond account ≠ the bonds it holds

    @property
    def ok(self) -> bool:
        return (self.total_balance == 0 and not self.balance_mismatches and not self.unbalanced_transfers
                and not self.negative_accounts and not self.escrow_mismatches and not self.bond_mismatches)


async def lock_accounts(conn: Connection, accounts: Iterable[AccountId]) -> dict[AccountId, int]:
    """Create the accounts that do not exist yet, lock them all for the caller's transaction, return balances.

    Both happen in id order, so transactions that lock accounts only through here queue on the same rows in the
    same order and cannot deadlock. `post_transfer` calls it; a transaction that makes several transfers should
    call it first with every account they touch, so that its later locks are ones it already holds.
    """
    ids = sorted(set(accounts))
    await conn.execute(
        "INSERT INTO accounts (id, kind) SELECT id, split_part(id, ':', 1) FROM unnest($1::text[]) AS n(id)"
        " ORDER BY id ON CONFLICT (id) DO NOTHING", ids)
    rows = await conn.fetch("SELECT id, balance FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE", ids)
    return {AccountId(r["id"]): r["balance"] for r in rows}


async def post_transfer(conn: Connection, kind: TransferKind, legs: Iterable[tuple[AccountId, int]], *,
                        memo: str = "", escrow_id: str | None = None, scope: str | None = None,
                        key: str | None = None) -> Transfer:
    """Move credits between accounts, in the caller's transaction. The only writer of postings.

    Args:
        conn: a connection inside a transaction; the locks taken here are held until it ends.
        kind: what the transfer is.
        legs: (account, amount) pairs; negative amounts leave an account. Legs on the same account are added up
            and zero legs dropped; what remains must be two or more legs summing to zero.
        memo: a line for people reading the ledger.
        escrow_id: the escrow the transfer belongs to (every kind but deposit).
        scope: the idempotency scope of the request that made the transfer.
        key: the idempotency key of that request.

    Raises:
        InsufficientFunds: an account other than the mint would go below zero.
    """
    net: defaultdict[AccountId, int] = defaultdict(int)
    for account, amount in legs:
        net[account] += amount
    ids = sorted(a for a, amount in net.items() if amount != 0)
    amounts = [net[a] for a in ids]
    if len(ids) < 2 or sum(amounts) != 0:
        raise ValueError(f"a transfer needs two or more legs summing to zero, got {dict(net)}")

    balances = await lock_accounts(conn, ids)
    after = []
    for account, amount in zip(ids, amounts, strict=True):
        balance = balances[account]
        if amount < 0 and account != MINT and balance + amount < 0:
            raise InsufficientFunds(account, -amount, balance)
        after.append(balance + amount)

    written = await conn.fetch(
        "WITH t AS (INSERT INTO transfers (kind, memo, escrow_id, idempotency_scope, idempotency_key)"
        "           VALUES ($1, $2, $3, $4, $5) RETURNING id, created_at),"
        " p AS (INSERT INTO postings (transfer_id, account_id, amount, balance_after)"
        "       SELECT t.id, x.id, x.amount, x.after FROM t, unnest($6::text[], $7::bigint[], $8::bigint[])"
        "       AS x(id, amount, after) RETURNING transfer_id, account_id, amount, balance_after),"
        " b AS (UPDATE accounts SET balance = balance + x.amount FROM unnest($6::text[], $7::bigint[]) AS x(id, amount)"
        "       WHERE accounts.id = x.id)"
        " SELECT t.id, t.created_at, p.account_id, p.amount, p.balance_after FROM t JOIN p ON p.transfer_id = t.id"
        " ORDER BY p.account_id",
        kind.value, memo, escrow_id, scope, key, ids, amounts, after)
    transfer = Transfer(
        id=written[0]["id"], kind=kind, memo=memo, escrow_id=escrow_id, created_at=written[0]["created_at"],
        postings=tuple(Posting(account_id=AccountId(r["account_id"]), amount=r["amount"],
                               balance_after=r["balance_after"]) for r in written),
    )
    await activity.record(conn, "transfer", {
        "transfer_id": transfer.id, "kind": kind.value, "memo": memo, "escrow_id": escrow_id,
        "postings": [{"account_id": p.account_id, "amount": p.amount, "balance_after": p.balance_after}
                     for p in transfer.postings]})
    return transfer


class Ledger:
    """Deposits, balances, history and the audit, over the pool. Escrows are in `market.escrow`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def deposit(self, account: AccountId, amount: int, *, key: str, scope: str, memo: str = "") -> Transfer:
        """Credit `account` from the mint (an operator's action).

        Args:
            account: an agent or requester account; created if new.
            amount: 1..MAX_AMOUNT credits.
            key: the idempotency key; a retry with the same key and arguments returns the first transfer.
            scope: who is asking (`market.idempotency.scope_of`: for an operator, its token's id).
            memo: up to 1,000 characters for the ledger.
        """
        require_kind(account, PARTY_KINDS)
        check_amount("amount", amount)
        if len(memo) > MAX_MEMO_LENGTH:
            raise ValueOutOfRange("memo length", len(memo), 0, MAX_MEMO_LENGTH)

        async def effect(conn: Connection) -> Transfer:
            return await post_transfer(conn, TransferKind.DEPOSIT, [(MINT, -amount), (account, amount)],
                                       memo=memo, scope=scope, key=key)

        request = {"op": "ledger.deposit", "account": account, "amount": amount, "memo": memo}
        return await run_once(self._pool, scope=scope, key=key, request=request, result_type=Transfer,
                              effect=effect)

    async def balance(self, account: AccountId) -> int:
        """The account's balance; 0 for a well-formed account nothing has moved through yet."""
        balance: int | None = await self._pool.fetchval("SELECT balance FROM accounts WHERE id = $1",
                                                        parse_account_id(account))
        return balance or 0

    async def account(self, account: AccountId) -> Account:
        """The account's row. Raises `AccountNotFound` if nothing has moved through it yet."""
        row = await self._pool.fetchrow("SELECT * FROM accounts WHERE id = $1", parse_account_id(account))
        if row is None:
            raise AccountNotFound(account)
        return Account(id=AccountId(row["id"]), kind=AccountKind(row["kind"]), balance=row["balance"],
                       created_at=row["created_at"])

    async def history(self, account: AccountId, *, limit: int = 50, before: int | None = None) -> LedgerPage:
        """The account's postings, newest first, `limit` (1..500) at a time, older than posting `before`."""
        parse_account_id(account)
        check_amount("limit", limit, MAX_HISTORY_PAGE)
        rows = await self._pool.fetch(
            "SELECT p.id, p.transfer_id, p.amount, p.balance_after, t.kind, t.memo, t.escrow_id, t.created_at"
            " FROM postings p JOIN transfers t ON t.id = p.transfer_id"
            " WHERE p.account_id = $1 AND ($2::bigint IS NULL OR p.id < $2) ORDER BY p.id DESC LIMIT $3",
            account, before, limit + 1)
        entries = tuple(
            LedgerEntry(posting_id=r["id"], transfer_id=r["transfer_id"], kind=TransferKind(r["kind"]),
                        amount=r["amount"], balance_after=r["balance_after"], memo=r["memo"],
                        escrow_id=r["escrow_id"], created_at=r["created_at"])
            for r in rows[:limit])
        next_before = entries[-1].posting_id if len(rows) > limit else None
        return LedgerPage(account_id=account, entries=entries, next_before=next_before)

    async def verify(self, accounts: Sequence[AccountId] | None = None) -> Audit:
        """Check the ledger's invariants in one snapshot: over every account, or only over `accounts`.

        Balance = Σ postings = the newest posting's `balance_after`; no account but the mint below 0; every
        transfer touching the accounts has two or more postings summing to 0; every open escrow's account holds
        its amount and every ended escrow's account is empty; every task's bond account holds its bonds still held.
        Σ balances (conservation) is always over all.
        """
        only = list(accounts) if accounts is not None else None
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            mismatches = await conn.fetch(
                "SELECT a.id, a.balance, s.posted, l.balance_after AS last FROM accounts a"
                " CROSS JOIN LATERAL (SELECT coalesce(sum(amount), 0) AS posted FROM postings p"
                "                     WHERE p.account_id = a.id) s"
                " LEFT JOIN LATERAL (SELECT balance_after FROM postings p WHERE p.account_id = a.id"
                "                    ORDER BY p.id DESC LIMIT 1) l ON true"
                " WHERE ($1::text[] IS NULL OR a.id = ANY($1))"
                "   AND (a.balance <> s.posted OR a.balance <> coalesce(l.balance_after, 0))"
                " ORDER BY a.id", only)
            totals = await conn.fetchrow(
                "SELECT count(*) AS accounts, coalesce(sum(balance), 0) AS total,"
                " (SELECT count(*) FROM transfers) AS transfers FROM accounts")
            assert totals is not None
            unbalanced = await conn.fetch(
                "SELECT t.id FROM transfers t LEFT JOIN postings p ON p.transfer_id = t.id"
                " WHERE $1::text[] IS NULL OR t.id IN (SELECT transfer_id FROM postings WHERE account_id = ANY($1))"
                " GROUP BY t.id HAVING count(p.id) < 2 OR coalesce(sum(p.amount), 0) <> 0 ORDER BY t.id", only)
            negative = await conn.fetch(
                "SELECT id FROM accounts WHERE kind <> 'mint' AND balance < 0"
                " AND ($1::text[] IS NULL OR id = ANY($1)) ORDER BY id", only)
            escrows = await conn.fetch(
                "SELECT e.id FROM escrows e LEFT JOIN accounts a ON a.id = 'escrow:' || e.id"
                " WHERE ($1::text[] IS NULL OR 'escrow:' || e.id = ANY($1))"
                "   AND coalesce(a.balance, 0) <> CASE WHEN e.state IN ('held', 'disputed') THEN e.amount ELSE 0 END"
                " ORDER BY e.id", only)
            bonds = await conn.fetch(
                "SELECT a.id FROM accounts a LEFT JOIN (SELECT 'bond:' || task_id AS id, sum(amount) AS held"
                "                FROM bonds WHERE state = 'held' GROUP BY task_id) b ON b.id = a.id"
                " WHERE a.kind = 'bond' AND ($1::text[] IS NULL OR a.id = ANY($1))"
                "   AND a.balance <> coalesce(b.held, 0) ORDER BY a.id", only)
        return Audit(
            accounts=totals["accounts"], transfers=totals["transfers"], total_balance=int(totals["total"]),
            balance_mismatches=tuple(
                BalanceMismatch(account_id=AccountId(r["id"]), balance=r["balance"], posted=int(r["posted"]),
                                last_balance_after=r["last"]) for r in mismatches),
            unbalanced_transfers=tuple(r["id"] for r in unbalanced),
            negative_accounts=tuple(AccountId(r["id"]) for r in negative),
            escrow_mismatches=tuple(r["id"] for r in escrows),
            bond_mismatches=tuple(r["id"] for r in bonds),
        )
