"""The ledger and escrows against the real PostgreSQL: balances, history, the escrow life cycle, bad input that
moves nothing, idempotent retries, the database's own guards, and concurrency. Every test ends with the audit."""

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import anyio
import asyncpg
import pytest

from agenthub.database import open_pool
from agenthub.errors import (
    EscrowAlreadyAwarded,
    EscrowAlreadySettled,
    EscrowDisputed,
    EscrowNotAwarded,
    EscrowNotDisputed,
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidInput,
    MalformedAccountId,
    NotEscrowParty,
    TaskAlreadyEscrowed,
    ValueOutOfRange,
    WrongAccountKind,
)
from market import escrow as escrow_ops
from market import idempotency
from market.escrow import Escrow, Escrows, EscrowState, Settlement, settle_amounts
from market.ledger import (
    MINT,
    PLATFORM,
    AccountId,
    Ledger,
    TransferKind,
    agent_account,
    escrow_account,
    lock_accounts,
    parse_account_id,
    requester_account,
)

OPERATOR = "tok_operator"
REQUESTER = requester_account("alice")
AGENT = agent_account("worker-1")


def key() -> str:
    return str(uuid.uuid4())


@dataclass
class Market:
    pool: asyncpg.Pool
    ledger: Ledger
    escrows: Escrows

    async def balances(self, *accounts: AccountId) -> list[int]:
        return [await self.ledger.balance(a) for a in accounts]

    async def fund(self, account: AccountId, amount: int) -> None:
        await self.ledger.deposit(account, amount, key=key(), scope=OPERATOR)

    async def awarded(self, budget: int = 1000, price: int = 600, task_id: str = "task-1") -> Escrow:
        """A funded requester's escrow for `task_id`, awarded to AGENT at `price`."""
        await self.fund(REQUESTER, budget)
        escrow = await self.escrows.hold(REQUESTER, budget, task_id, key=key(), scope="alice")
        return await self.escrows.reduce(escrow.id, price, AGENT, key=key(), scope="hub")

    async def disputed(self, **kwargs: Any) -> Escrow:
        escrow = await self.awarded(**kwargs)
        return await self.escrows.dispute(escrow.id, AGENT, "I did the work", key=key(), scope="worker-1")

    async def snapshot(self) -> tuple[Any, ...]:
        """Everything money: balances, transfer count and escrows, to show that nothing moved."""
        async with self.pool.acquire() as conn:
            accounts = await conn.fetch("SELECT id, balance FROM accounts ORDER BY id")
            transfers = await conn.fetchval("SELECT count(*) FROM transfers")
            escrows = await conn.fetch("SELECT * FROM escrows ORDER BY id")
        return tuple(map(tuple, accounts)), transfers, tuple(map(tuple, escrows))


@pytest.fixture
async def market(database_url: str) -> AsyncIterator[Market]:
    async with open_pool(database_url, size=60) as pool:
        m = Market(pool=pool, ledger=Ledger(pool), escrows=Escrows(pool))
        yield m
        audit = await m.ledger.verify()
        assert audit.ok, audit


async def gather(calls: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Start every call at once; each result is its return value or the exception it raised."""
    results: list[Any] = [None] * len(calls)
    go = anyio.Event()

    async def one(i: int) -> None:
        await go.wait()
        try:
            results[i] = await calls[i]()
        except Exception as exc:  # noqa: BLE001 - the exception is the result under test
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(one, i)
        await anyio.sleep(0.05)
        go.set()
    return results


# -- accounts, deposits, history ---------------------------------------------------------------------------------------


async def test_a_deposit_moves_credits_from_the_mint(market: Market) -> None:
    transfer = await market.ledger.deposit(REQUESTER, 1000, key=key(), scope=OPERATOR, memo="first funding")

    assert transfer.kind is TransferKind.DEPOSIT
    assert {(p.account_id, p.amount, p.balance_after) for p in transfer.postings} == {
        (MINT, -1000, -1000), (REQUESTER, 1000, 1000)}
    assert await market.balances(REQUESTER, MINT, PLATFORM) == [1000, -1000, 0]
    account = await market.ledger.account(REQUESTER)
    assert (account.kind, account.balance) == ("requester", 1000)


async def test_an_account_nothing_moved_through_has_balance_zero_and_no_history(market: Market) -> None:
    assert await market.ledger.balance(agent_account("nobody")) == 0
    page = await market.ledger.history(agent_account("nobody"))
    assert page.entries == () and page.next_before is None


async def test_history_lists_postings_newest_first_page_by_page(market: Market) -> None:
    for amount in (100, 200, 300):
        await market.fund(REQUESTER, amount)
    escrow = await market.escrows.hold(REQUESTER, 250, "task-h", key=key(), scope="alice")

    first = await market.ledger.history(REQUESTER, limit=2)
    assert [(e.kind, e.amount, e.balance_after) for e in first.entries] == [
        (TransferKind.HOLD, -250, 350), (TransferKind.DEPOSIT, 300, 600)]
    assert first.entries[0].escrow_id == escrow.id
    assert first.next_before is not None
    second = await market.ledger.history(REQUESTER, limit=2, before=first.next_before)
    assert [(e.amount, e.balance_after) for e in second.entries] == [(200, 300), (100, 100)]
    assert second.next_before is None


async def test_account_ids_follow_the_naming_scheme(market: Market) -> None:
    assert parse_account_id("escrow:esc_1") == escrow_account("esc_1")
    for bad in ("", "agent:", "agent:a b", "agent:a\n", "bank:x", "mint:x", "agent:" + "x" * 65):
        with pytest.raises(MalformedAccountId):
            parse_account_id(bad)
    with pytest.raises(WrongAccountKind):
        await market.ledger.deposit(PLATFORM, 10, key=key(), scope=OPERATOR)
    with pytest.raises(WrongAccountKind):
        await market.ledger.deposit(escrow_account("esc_x"), 10, key=key(), scope=OPERATOR)


# -- the escrow life cycle ---------------------------------------------------------------------------------------------


async def test_award_refunds_the_rest_and_release_pays_the_agent_less_the_fee(market: Market) -> None:
    await market.fund(REQUESTER, 1500)
    held = await market.escrows.hold(REQUESTER, 1000, "task-1", key=key(), scope="alice")
    assert (held.state, held.amount, held.payee) == (EscrowState.HELD, 1000, None)
    assert await market.balances(REQUESTER, escrow_account(held.id)) == [500, 1000]

    awarded = await market.escrows.reduce(held.id, 600, AGENT, key=key(), scope="hub")
    assert (awarded.amount, awarded.payee, awarded.refunded) == (600, AGENT, 400)
    assert await market.balances(REQUESTER, escrow_account(held.id)) == [900, 600]

    released = await market.escrows.release(held.id, 10, key=key(), scope="alice")
    assert released.state is EscrowState.RELEASED
    assert (released.paid_to_payee, released.fee, released.refunded) == (540, 60, 400)
    assert await market.balances(REQUESTER, AGENT, PLATFORM, escrow_account(held.id)) == [900, 540, 60, 0]
    assert await market.escrows.for_task("task-1") == await market.escrows.get(held.id)


async def test_a_refund_returns_everything_to_the_payer(market: Market) -> None:
    await market.fund(REQUESTER, 1000)
    held = await market.escrows.hold(REQUESTER, 700, "task-r", key=key(), scope="alice")

    refunded = await market.escrows.refund(held.id, key=key(), scope="hub")

    assert (refunded.state, refunded.refunded, refunded.paid_to_payee) == (EscrowState.REFUNDED, 700, 0)
    assert await market.balances(REQUESTER, escrow_account(held.id), PLATFORM) == [1000, 0, 0]


async def test_a_dispute_freezes_the_escrow_until_an_arbiter_resolves_it(market: Market) -> None:
    disputed = await market.disputed()
    assert (disputed.state, disputed.disputed_by) == (EscrowState.DISPUTED, AGENT)
    before = await market.snapshot()

    with pytest.raises(EscrowDisputed):
        await market.escrows.release(disputed.id, 10, key=key(), scope="alice")
    with pytest.raises(EscrowDisputed):
        await market.escrows.refund(disputed.id, key=key(), scope="hub")
    with pytest.raises(EscrowDisputed):
        await market.escrows.dispute(disputed.id, REQUESTER, "me too", key=key(), scope="alice")
    assert await market.snapshot() == before

    resolved = await market.escrows.resolve(disputed.id, "release", arbiter="operator-1", fee_percent=10,
                                            key=key(), scope=OPERATOR)
    assert (resolved.state, resolved.resolution, resolved.resolved_by) == (EscrowState.RELEASED, "release",
                                                                           "operator-1")
    assert await market.balances(AGENT, PLATFORM) == [540, 60]


@pytest.mark.parametrize(("outcome", "share", "state", "agent", "platform", "requester"), [
    ("release", None, EscrowState.RELEASED, 541, 60, 399),
    ("refund", None, EscrowState.REFUNDED, 0, 0, 1000),
    ("split", 50, EscrowState.SPLIT, 270, 30, 700),     # gross 300 of 601: fee 30, 301 back on top of 399
    ("split", 0, EscrowState.SPLIT, 0, 0, 1000),
    ("split", 100, EscrowState.SPLIT, 541, 60, 399),
])
async def test_an_arbiter_resolves_a_dispute_as_release_refund_or_split(
        market: Market, outcome: Any, share: int | None, state: EscrowState, agent: int, platform: int,
        requester: int) -> None:
    disputed = await market.disputed(budget=1000, price=601)

    resolved = await market.escrows.resolve(disputed.id, outcome, arbiter="operator-1", fee_percent=10,
                                            payee_share_percent=share, key=key(), scope=OPERATOR)

    assert resolved.state is state
    assert (resolved.paid_to_payee, resolved.fee) == (agent, platform)
    assert resolved.paid_to_payee + resolved.fee + resolved.refunded == resolved.budget
    assert await market.balances(AGENT, PLATFORM, REQUESTER, escrow_account(disputed.id)) == [
        agent, platform, requester, 0]


def test_rounding_floors_the_fee_then_the_payee_share() -> None:
    assert settle_amounts(600, "release", fee_percent=10) == Settlement(to_payee=540, fee=60, to_payer=0)
    assert settle_amounts(19, "release", fee_percent=10) == Settlement(to_payee=18, fee=1, to_payer=0)
    assert settle_amounts(9, "release", fee_percent=10) == Settlement(to_payee=9, fee=0, to_payer=0)
    assert settle_amounts(601, "split", fee_percent=10, payee_share_percent=50) == Settlement(
        to_payee=270, fee=30, to_payer=301)
    assert settle_amounts(601, "refund", fee_percent=10) == Settlement(to_payee=0, fee=0, to_payer=601)


# -- bad input: clear errors, nothing moves ----------------------------------------------------------------------------


async def test_a_budget_above_the_balance_is_refused_and_nothing_moves(market: Market) -> None:
    await market.fund(REQUESTER, 500)
    before = await market.snapshot()

    with pytest.raises(InsufficientFunds) as caught:
        await market.escrows.hold(REQUESTER, 501, "task-big", key=key(), scope="alice")

    assert (caught.value.account_id, caught.value.needed, caught.value.available) == (REQUESTER, 501, 500)
    assert await market.snapshot() == before
    assert await market.escrows.for_task("task-big") is None
    with pytest.raises(InsufficientFunds):
        await market.escrows.hold(requester_account("broke"), 1, "task-broke", key=key(), scope="broke")


async def test_releasing_twice_is_refused_and_pays_once(market: Market) -> None:
    escrow = await market.awarded()
    await market.escrows.release(escrow.id, 10, key=key(), scope="alice")
    before = await market.snapshot()

    with pytest.raises(EscrowAlreadySettled) as caught:
        await market.escrows.release(escrow.id, 10, key=key(), scope="alice")
    assert caught.value.state == "released"
    with pytest.raises(EscrowAlreadySettled):
        await market.escrows.refund(escrow.id, key=key(), scope="hub")
    with pytest.raises(EscrowAlreadySettled):
        await market.escrows.dispute(escrow.id, REQUESTER, "late", key=key(), scope="alice")
    assert await market.snapshot() == before


async def test_a_stranger_cannot_open_a_dispute(market: Market) -> None:
    escrow = await market.awarded()
    before = await market.snapshot()

    with pytest.raises(NotEscrowParty):
        await market.escrows.dispute(escrow.id, agent_account("mallory"), "gimme", key=key(), scope="mallory")

    assert await market.snapshot() == before


async def test_escrow_steps_out_of_order_are_refused(market: Market) -> None:
    await market.fund(REQUESTER, 1000)
    held = await market.escrows.hold(REQUESTER, 300, "task-o", key=key(), scope="alice")
    before = await market.snapshot()

    with pytest.raises(EscrowNotAwarded):
        await market.escrows.release(held.id, 10, key=key(), scope="alice")
    with pytest.raises(EscrowNotDisputed):
        await market.escrows.resolve(held.id, "refund", arbiter="op", fee_percent=10, key=key(), scope=OPERATOR)
    with pytest.raises(ValueOutOfRange):
        await market.escrows.reduce(held.id, 301, AGENT, key=key(), scope="hub")
    with pytest.raises(TaskAlreadyEscrowed):
        await market.escrows.hold(REQUESTER, 10, "task-o", key=key(), scope="alice")
    assert await market.snapshot() == before

    await market.escrows.reduce(held.id, 300, AGENT, key=key(), scope="hub")
    with pytest.raises(EscrowAlreadyAwarded):
        await market.escrows.reduce(held.id, 100, AGENT, key=key(), scope="hub")


async def test_out_of_range_values_are_refused(market: Market) -> None:
    escrow = await market.awarded()
    before = await market.snapshot()

    for amount in (0, -5, 10**12 + 1):
        with pytest.raises(ValueOutOfRange):
            await market.ledger.deposit(REQUESTER, amount, key=key(), scope=OPERATOR)
    with pytest.raises(ValueOutOfRange):
        await market.escrows.release(escrow.id, 101, key=key(), scope="alice")
    with pytest.raises(ValueOutOfRange):
        await market.ledger.deposit(REQUESTER, 5, key="k" * 256, scope=OPERATOR)
    with pytest.raises(ValueOutOfRange):
        await market.ledger.deposit(REQUESTER, 5, key="", scope=OPERATOR)
    with pytest.raises(ValueOutOfRange):
        await market.escrows.dispute(escrow.id, AGENT, "", key=key(), scope="worker-1")
    with pytest.raises(InvalidInput):
        await market.escrows.resolve(escrow.id, "split", arbiter="op", fee_percent=10, key=key(), scope=OPERATOR)
    assert await market.snapshot() == before


# -- idempotency -------------------------------------------------------------------------------------------------------


async def test_a_retry_with_the_same_key_returns_the_first_answer_and_moves_nothing(market: Market) -> None:
    k = key()
    first = await market.ledger.deposit(REQUESTER, 1000, key=k, scope=OPERATOR)
    again = await market.ledger.deposit(REQUESTER, 1000, key=k, scope=OPERATOR)
    assert again == first
    assert await market.ledger.balance(REQUESTER) == 1000

    hold_key = key()
    held = await market.escrows.hold(REQUESTER, 800, "task-i", key=hold_key, scope="alice")
    await market.escrows.reduce(held.id, 500, AGENT, key=key(), scope="hub")
    release_key = key()
    released = await market.escrows.release(held.id, 10, key=release_key, scope="alice")
    before = await market.snapshot()

    assert await market.escrows.hold(REQUESTER, 800, "task-i", key=hold_key, scope="alice") == held
    assert await market.escrows.release(held.id, 10, key=release_key, scope="alice") == released
    assert await market.snapshot() == before


async def test_the_same_key_with_a_different_request_is_refused(market: Market) -> None:
    k = key()
    await market.ledger.deposit(REQUESTER, 1000, key=k, scope=OPERATOR)
    before = await market.snapshot()

    with pytest.raises(IdempotencyKeyReused):
        await market.ledger.deposit(REQUESTER, 999, key=k, scope=OPERATOR)
    with pytest.raises(IdempotencyKeyReused):
        await market.escrows.hold(REQUESTER, 1000, "task-k", key=k, scope=OPERATOR)
    assert await market.snapshot() == before
    # Keys are per caller: another scope may use the same key.
    await market.ledger.deposit(REQUESTER, 1, key=k, scope="another-operator")
    assert await market.ledger.balance(REQUESTER) == 1001


async def test_a_failed_request_stores_nothing_so_its_retry_runs_again(market: Market) -> None:
    k = key()
    with pytest.raises(InsufficientFunds):
        await market.escrows.hold(REQUESTER, 100, "task-f", key=k, scope="alice")
    await market.fund(REQUESTER, 100)

    held = await market.escrows.hold(REQUESTER, 100, "task-f", key=k, scope="alice")

    assert held.state is EscrowState.HELD
    assert await market.ledger.balance(REQUESTER) == 0


async def test_keys_older_than_a_day_can_be_pruned_and_then_run_again(market: Market) -> None:
    k = key()
    await market.ledger.deposit(REQUESTER, 10, key=k, scope=OPERATOR)
    assert await idempotency.prune(market.pool) == 0
    with pytest.raises(ValueOutOfRange):
        await idempotency.prune(market.pool, timedelta(hours=1))
    await market.pool.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")

    assert await idempotency.prune(market.pool) == 1
    await market.ledger.deposit(REQUESTER, 10, key=k, scope=OPERATOR)
    assert await market.ledger.balance(REQUESTER) == 20


# -- what the database refuses on its own ------------------------------------------------------------------------------


async def test_the_database_refuses_unbalanced_transfers_edits_and_overdrafts(market: Market) -> None:
    await market.fund(REQUESTER, 100)
    async with market.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError, match="sum"):
            async with conn.transaction():
                tid = await conn.fetchval("INSERT INTO transfers (kind) VALUES ('deposit') RETURNING id")
                await conn.execute("INSERT INTO postings (transfer_id, account_id, amount, balance_after)"
                                   " VALUES ($1, 'mint', -5, 0), ($1, $2, 4, 0)", tid, REQUESTER)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("UPDATE postings SET amount = amount * 2")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("DELETE FROM transfers")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE accounts SET balance = -1 WHERE id = $1", REQUESTER)
    assert await market.ledger.balance(REQUESTER) == 100


# -- concurrency -------------------------------------------------------------------------------------------------------


async def test_fifty_simultaneous_releases_and_refunds_move_money_once(market: Market) -> None:
    escrow = await market.awarded(budget=1000, price=600)

    results = await gather([
        partial(market.escrows.release, escrow.id, 10, key=key(), scope="alice") if i % 2 else
        partial(market.escrows.refund, escrow.id, key=key(), scope="hub") for i in range(50)])

    won = [r for r in results if isinstance(r, Escrow)]
    assert len(won) == 1, results
    assert all(isinstance(r, EscrowAlreadySettled) for r in results if r is not won[0])
    agent, platform, requester = await market.balances(AGENT, PLATFORM, REQUESTER)
    if won[0].state is EscrowState.RELEASED:
        assert (agent, platform, requester) == (540, 60, 400)
    else:
        assert (agent, platform, requester) == (0, 0, 1000)


async def test_fifty_simultaneous_resolutions_move_money_once(market: Market) -> None:
    escrow = await market.disputed(budget=1000, price=600)
    outcomes: list[tuple[Any, int | None]] = [("release", None), ("refund", None), ("split", 50)]

    results = await gather([
        partial(market.escrows.resolve, escrow.id, outcomes[i % 3][0], arbiter=f"op-{i}", fee_percent=10,
                payee_share_percent=outcomes[i % 3][1], key=key(), scope=OPERATOR)
        for i in range(50)])

    won = [r for r in results if isinstance(r, Escrow)]
    assert len(won) == 1, results
    assert all(isinstance(r, EscrowAlreadySettled) for r in results if r is not won[0])
    async with market.pool.acquire() as conn:
        settlements = await conn.fetchval(
            "SELECT count(*) FROM transfers WHERE escrow_id = $1 AND kind IN ('release', 'refund', 'split')",
            escrow.id)
    assert settlements == 1
    assert sum(await market.balances(AGENT, PLATFORM, REQUESTER)) == 1000


async def test_twenty_concurrent_spenders_never_overdraw_one_balance(market: Market) -> None:
    await market.fund(REQUESTER, 1000)

    results = await gather([
        partial(market.escrows.hold, REQUESTER, 150, f"task-{i}", key=key(), scope="alice") for i in range(20)])

    held = [r for r in results if isinstance(r, Escrow)]
    assert len(held) == 1000 // 150
    assert all(isinstance(r, InsufficientFunds) for r in results if not isinstance(r, Escrow))
    assert sum(e.amount for e in held) <= 1000
    assert await market.ledger.balance(REQUESTER) == 1000 - 150 * len(held)


async def test_twenty_concurrent_identical_requests_have_one_effect_and_one_answer(market: Market) -> None:
    await market.fund(REQUESTER, 1000)
    k = key()

    results = await gather([
        lambda: market.escrows.hold(REQUESTER, 300, "task-same", key=k, scope="alice") for _ in range(20)])

    assert all(isinstance(r, Escrow) for r in results), results
    assert all(r == results[0] for r in results)
    assert await market.ledger.balance(REQUESTER) == 700
    async with market.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM escrows") == 1


async def test_batches_that_lock_their_accounts_first_do_not_deadlock(market: Market) -> None:
    payers = [requester_account("p"), requester_account("q")]
    for payer in payers:
        await market.fund(payer, 100)
    held = {}
    for n, payer in enumerate(payers * 2):
        held[n] = await market.escrows.hold(payer, 10, f"task-b{n}", key=key(), scope="hub")

    async def batch(first: Escrow, second: Escrow) -> None:
        # Payer order p, q in one batch and q, p in the other: without the up-front lock, each would hold one payer
        # (taken by its first refund) while waiting for the other's.
        async with market.pool.acquire() as conn, conn.transaction():
            await lock_accounts(conn, payers)
            await escrow_ops.refund(conn, first.id)
            await conn.execute("SELECT pg_sleep(0.2)")
            await escrow_ops.refund(conn, second.id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(batch, held[0], held[1])
        tg.start_soon(batch, held[3], held[2])

    assert await market.balances(*payers) == [100, 100]
