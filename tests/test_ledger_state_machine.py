"""A Hypothesis state machine over the ledger, escrows and bid bonds: random deposits, holds, awards, releases,
refunds, disputes, resolutions, bonds posted, returned and slashed, and retries against the real PostgreSQL and a
pure-Python model, with the invariants checked after every step: the model's balances are the database's, credits
are conserved, nothing but the mint goes negative, each escrow ends at most once, each bond is settled at most once,
and a retry with the same key changes nothing.

The async ledger runs in an anyio blocking portal (its own event loop thread) with one pool for the whole test;
each example uses fresh account, task and scope names instead of a fresh database."""

import json
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import asyncpg
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from agenthub.database import Connection, open_pool
from agenthub.errors import (
    Conflict,
    EscrowAlreadyAwarded,
    EscrowAlreadySettled,
    EscrowDisputed,
    EscrowNotAwarded,
    EscrowNotDisputed,
    HubError,
    IdempotencyKeyReused,
    InsufficientFunds,
    NotEscrowParty,
    ValueOutOfRange,
)
from market import bonds
from market.escrow import Escrows
from market.ledger import (
    MINT,
    PLATFORM,
    AccountId,
    Ledger,
    agent_account,
    bond_account,
    escrow_account,
    requester_account,
)

SETTINGS = settings(max_examples=1000, stateful_step_count=15, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
Outcome = Literal["release", "refund", "split"]
FEES = (0, 10, 33, 100)


@dataclass
class ModelEscrow:
    id: str
    task_id: str
    payer: AccountId
    amount: int
    state: str = "held"
    payee: AccountId | None = None


def unawarded(escrow: ModelEscrow) -> bool:
    return escrow.state == "held" and escrow.payee is None


def awarded(escrow: ModelEscrow) -> bool:
    return escrow.state == "held" and escrow.payee is not None


def disputed(escrow: ModelEscrow) -> bool:
    return escrow.state == "disputed"


@dataclass
class Call:
    """A money-moving call that succeeded, to be retried with its key."""

    run: Callable[[str], Awaitable[Any]]   # the call, given the key
    key: str
    response: Any


@dataclass
class ModelBond:
    amount: int
    state: str = "held"


@dataclass
class Model:
    balances: dict[AccountId, int] = field(default_factory=dict)
    escrows: list[ModelEscrow] = field(default_factory=list)
    bonds: dict[tuple[str, str], ModelBond] = field(default_factory=dict)  # (task id, agent id)

    def move(self, *legs: tuple[AccountId, int]) -> None:
        for account, amount in legs:
            self.balances[account] = self.balances.get(account, 0) + amount

    def settle(self, escrow: ModelEscrow, outcome: Outcome, fee_percent: int, share: int) -> None:
        gross = escrow.amount if outcome == "release" else escrow.amount * share // 100 if outcome == "split" else 0
        fee = gross * fee_percent // 100
        assert escrow.payee is not None or gross == 0
        self.move((escrow_account(escrow.id), -escrow.amount), (escrow.payer, escrow.amount - gross), (PLATFORM, fee),
                  *([(escrow.payee, gross - fee)] if escrow.payee is not None else []))
        escrow.state = {"release": "released", "refund": "refunded", "split": "split"}[outcome]

    @staticmethod
    def refusal(escrow: ModelEscrow, *, disputed_ok: bool = False) -> type[HubError] | None:
        if escrow.state in ("released", "refunded", "split"):
            return EscrowAlreadySettled
        if escrow.state == "disputed" and not disputed_ok:
            return EscrowDisputed
        return None


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, portal: BlockingPortal, pool: asyncpg.Pool) -> None:
        super().__init__()
        self.portal = portal
        self.pool = pool
        self.ledger = Ledger(pool)
        self.escrows = Escrows(pool)
        prefix = secrets.token_hex(5)
        self.scope = f"sm-{prefix}"
        self.requesters = [requester_account(f"{prefix}-r{i}") for i in range(2)]
        self.agents = [agent_account(f"{prefix}-a{i}") for i in range(2)]
        self.stranger = agent_account(f"{prefix}-x")
        self.task_prefix = f"{prefix}-t"
        self.model = Model()
        self.calls: list[Call] = []
        # The mint and the platform are shared by every example: the model follows their changes from here.
        row = self.portal.call(partial(self.pool.fetchrow, """
            SELECT sum(balance) AS total, sum(balance) FILTER (WHERE id = 'mint') AS mint,
                   sum(balance) FILTER (WHERE id = 'platform') AS platform FROM accounts"""))
        assert row is not None and row["total"] == 0, "credits are not conserved"
        self.start: dict[AccountId, int] = {MINT: int(row["mint"]), PLATFORM: int(row["platform"])}

    # -- running calls -------------------------------------------------------------------------------------------

    def _call(self, run: Callable[[str], Awaitable[Any]], expected: type[HubError] | None) -> Any:
        """Run `run` with a fresh key; check it fails with `expected` or succeeds when None; keep successes."""
        key = str(uuid.uuid4())
        try:
            result = self.portal.call(run, key)
        except HubError as exc:
            assert expected is not None and isinstance(exc, expected), f"expected {expected}, got {exc!r}"
            return None
        assert expected is None, f"expected {expected.__name__}, got success {result!r}"
        self.calls.append(Call(run=run, key=key, response=result))
        return result

    def _escrow(self, i: int, fits: Callable[[ModelEscrow], bool]) -> ModelEscrow:
        """Mostly an escrow the operation `fits` (so that runs go deep), otherwise any, ended ones included."""
        fitting = [e for e in self.model.escrows if fits(e)]
        candidates = fitting if i < 75 else self.model.escrows
        return candidates[i % len(candidates)]

    # -- rules -----------------------------------------------------------------------------------------------------

    @initialize(first=st.integers(0, 2000), second=st.integers(0, 2000))
    def fund_the_requesters(self, first: int, second: int) -> None:
        for who, amount in enumerate((first, second)):
            if amount:
                self.deposit(who, amount)

    @rule(who=st.integers(0, 3), amount=st.integers(1, 1000))
    def deposit(self, who: int, amount: int) -> None:
        account = (self.requesters + self.agents)[who]
        self._call(lambda key: self.ledger.deposit(account, amount, key=key, scope=self.scope), None)
        self.model.move((MINT, -amount), (account, amount))

    @rule(who=st.integers(0, 1), percent=st.integers(1, 120))
    def hold(self, who: int, percent: int) -> None:
        payer = self.requesters[who]
        amount = max(1, self.model.balances.get(payer, 0) * percent // 100)   # above 100 %: a budget too big
        task_id = f"{self.task_prefix}{len(self.model.escrows)}-{secrets.token_hex(2)}"
        enough = self.model.balances.get(payer, 0) >= amount
        escrow = self._call(lambda key: self.escrows.hold(payer, amount, task_id, key=key, scope=self.scope),
                            None if enough else InsufficientFunds)
        if escrow is not None:
            self.model.escrows.append(ModelEscrow(id=escrow.id, task_id=task_id, payer=payer, amount=amount))
            self.model.move((payer, -amount), (escrow_account(escrow.id), amount))

    @precondition(lambda self: any(map(unawarded, self.model.escrows)))
    @rule(i=st.integers(0, 100), percent=st.integers(0, 110), who=st.integers(0, 1))
    def reduce(self, i: int, percent: int, who: int) -> None:
        escrow, payee = self._escrow(i, unawarded), self.agents[who]
        new_amount = max(1, escrow.amount * percent // 100)   # above 100 %: more than is held, refused
        expected = Model.refusal(escrow) or (
            EscrowAlreadyAwarded if escrow.payee is not None else ValueOutOfRange if new_amount > escrow.amount
            else None)
        if self._call(lambda key: self.escrows.reduce(escrow.id, new_amount, payee, key=key, scope=self.scope),
                      expected):
            self.model.move((escrow_account(escrow.id), new_amount - escrow.amount),
                            (escrow.payer, escrow.amount - new_amount))
            escrow.amount, escrow.payee = new_amount, payee

    @precondition(lambda self: any(map(awarded, self.model.escrows)))
    @rule(i=st.integers(0, 100), fee=st.sampled_from(FEES))
    def release(self, i: int, fee: int) -> None:
        escrow = self._escrow(i, awarded)
        expected = Model.refusal(escrow) or (EscrowNotAwarded if escrow.payee is None else None)
        if self._call(lambda key: self.escrows.release(escrow.id, fee, key=key, scope=self.scope), expected):
            self.model.settle(escrow, "release", fee, 0)

    @precondition(lambda self: any(map(unawarded, self.model.escrows)))
    @rule(i=st.integers(0, 100))
    def refund(self, i: int) -> None:
        escrow = self._escrow(i, unawarded)
        if self._call(lambda key: self.escrows.refund(escrow.id, key=key, scope=self.scope),
                      Model.refusal(escrow)):
            self.model.settle(escrow, "refund", 0, 0)

    @precondition(lambda self: any(map(awarded, self.model.escrows)))
    @rule(i=st.integers(0, 100), by=st.sampled_from(["payer", "payee", "stranger"]))
    def dispute(self, i: int, by: str) -> None:
        escrow = self._escrow(i, awarded)
        account = {"payer": escrow.payer, "payee": escrow.payee, "stranger": self.stranger}[by] or self.stranger
        expected = NotEscrowParty if account == self.stranger else Model.refusal(escrow)
        if self._call(lambda key: self.escrows.dispute(escrow.id, account, "evidence", key=key, scope=self.scope),
                      expected):
            escrow.state = "disputed"

    @precondition(lambda self: any(map(disputed, self.model.escrows)))
    @rule(i=st.integers(0, 100), outcome=st.sampled_from(["release", "refund", "split"]),
          share=st.integers(0, 100), fee=st.sampled_from(FEES))
    def resolve(self, i: int, outcome: Outcome, share: int, fee: int) -> None:
        escrow = self._escrow(i, disputed)
        expected = Model.refusal(escrow, disputed_ok=True) or (
            EscrowNotDisputed if escrow.state != "disputed"
            else EscrowNotAwarded if outcome != "refund" and escrow.payee is None else None)
        if self._call(lambda key: self.escrows.resolve(
                escrow.id, outcome, arbiter="arbiter", fee_percent=fee,
                payee_share_percent=share if outcome == "split" else None, key=key, scope=self.scope), expected):
            self.model.settle(escrow, outcome, fee, share)

    # Bonds run in the caller's transaction (a bid's, a clearing's, a settlement's): no idempotency key of their own.

    def _in_transaction(self, run: Callable[[Connection], Awaitable[Any]], expected: type[HubError] | None) -> Any:
        async def transaction() -> Any:
            async with self.pool.acquire() as conn, conn.transaction():
                return await run(conn)
        try:
            result = self.portal.call(transaction)
        except HubError as exc:
            assert expected is not None and isinstance(exc, expected), f"expected {expected}, got {exc!r}"
            return None
        assert expected is None, f"expected {expected.__name__}, got success {result!r}"
        return result

    @precondition(lambda self: self.model.escrows)
    @rule(i=st.integers(0, 100), who=st.integers(0, 1), percent=st.integers(1, 120))
    def post_a_bond(self, i: int, who: int, percent: int) -> None:
        escrow, agent = self._escrow(i, lambda e: True), self.agents[who]
        agent_id = agent.split(":", 1)[1]
        bond = self.model.bonds.get((escrow.task_id, agent_id))
        held = bond.amount if bond is not None and bond.state == "held" else 0
        amount = max(1, (self.model.balances.get(agent, 0) + held) * percent // 100)  # above 100 %: cannot cover
        expected = (Conflict if bond is not None and bond.state != "held"
                    else InsufficientFunds if amount - held > self.model.balances.get(agent, 0) else None)
        change = self._in_transaction(lambda conn: bonds.post(conn, task_id=escrow.task_id, escrow_id=escrow.id,
                                                               agent_id=agent_id, amount=amount), expected)
        if expected is None:
            assert change == amount - held
            self.model.move((agent, -change), (bond_account(escrow.task_id), change))
            self.model.bonds[escrow.task_id, agent_id] = ModelBond(amount=amount)

    @precondition(lambda self: self.model.bonds)
    @rule(i=st.integers(0, 100), keep=st.sampled_from([None, 0, 1]))
    def return_bonds(self, i: int, keep: int | None) -> None:
        task_id = sorted({t for t, _ in self.model.bonds})[i % len({t for t, _ in self.model.bonds})]
        kept = self.agents[keep].split(":", 1)[1] if keep is not None else None
        returned = self._in_transaction(lambda conn: bonds.give_back(conn, task_id, keep=kept, why="test"), None)
        total = 0
        for (task, agent_id), bond in self.model.bonds.items():
            if task == task_id and bond.state == "held" and agent_id != kept:
                self.model.move((bond_account(task), -bond.amount), (agent_account(agent_id), bond.amount))
                bond.state, total = "returned", total + bond.amount
        assert returned == total

    @precondition(lambda self: self.model.bonds)
    @rule(i=st.integers(0, 100), fee=st.sampled_from(FEES))
    def slash_a_bond(self, i: int, fee: int) -> None:
        (task_id, agent_id), bond = sorted(self.model.bonds.items())[i % len(self.model.bonds)]
        payer = next(e.payer for e in self.model.escrows if e.task_id == task_id)
        slashed = self._in_transaction(lambda conn: bonds.slash(conn, task_id, agent_id, to=payer, fee_percent=fee,
                                                                why="test"), None)
        if bond.state != "held":
            assert slashed == 0  # settled already: nothing moves
            return
        assert slashed == bond.amount
        cut = bond.amount * fee // 100
        self.model.move((bond_account(task_id), -bond.amount), (payer, bond.amount - cut), (PLATFORM, cut))
        bond.state = "slashed"

    @precondition(lambda self: self.calls)
    @rule(i=st.integers(0, 100))
    def retry_with_the_same_key(self, i: int) -> None:
        call = self.calls[i % len(self.calls)]
        assert self.portal.call(call.run, call.key) == call.response   # the model does not move: neither may the db

    @precondition(lambda self: self.calls)
    @rule(i=st.integers(0, 100))
    def reuse_a_key_for_another_request(self, i: int) -> None:
        call = self.calls[i % len(self.calls)]
        try:
            self.portal.call(partial(self.ledger.deposit, self.requesters[0], 1, key=call.key, scope=self.scope,
                                     memo="a different request"))
        except IdempotencyKeyReused:
            return
        raise AssertionError("a key reused for a different request was accepted")

    # -- invariants ------------------------------------------------------------------------------------------------

    @invariant()
    def the_database_agrees_with_the_model(self) -> None:
        escrow_ids = [e.id for e in self.model.escrows]
        accounts = [*self.requesters, *self.agents, *(escrow_account(e) for e in escrow_ids),
                    *(bond_account(e.task_id) for e in self.model.escrows), MINT, PLATFORM]

        # One statement, so one snapshot: the example's balances and escrows.
        row = self.portal.call(partial(self.pool.fetchrow, """
            SELECT (SELECT coalesce(jsonb_object_agg(id, balance), '{}') FROM accounts WHERE id = ANY($1)) AS balances,
                   (SELECT coalesce(jsonb_object_agg(e.id, jsonb_build_array(e.state,
                        (SELECT count(*) FROM transfers t WHERE t.escrow_id = e.id
                         AND t.kind IN ('release', 'refund', 'split')))), '{}')
                    FROM escrows e WHERE e.id = ANY($2)) AS escrows,
                   (SELECT coalesce(jsonb_object_agg(b.task_id || ' ' || b.agent_id, jsonb_build_array(b.state,
                        b.amount)), '{}') FROM bonds b WHERE b.escrow_id = ANY($2)) AS bonds""",
                                       accounts, escrow_ids))
        assert row is not None
        found = {a: json.loads(row["balances"]).get(a, 0) for a in accounts}
        expected = {a: self.model.balances.get(a, 0) for a in accounts}
        expected[MINT] += self.start[MINT]
        expected[PLATFORM] += self.start[PLATFORM]
        assert found == expected
        assert all(balance >= 0 for account, balance in found.items() if account != MINT), "an overdraft"
        # Only this example's accounts, the mint and the platform change while it runs, and the whole ledger summed
        # to zero when it began (checked in __init__): so conservation is that their changes sum to zero.
        assert sum(found.values()) == self.start[MINT] + self.start[PLATFORM], "credits are not conserved"
        states = {k: tuple(v) for k, v in json.loads(row["escrows"]).items()}
        assert states == {e.id: (e.state, 0 if e.state in ("held", "disputed") else 1) for e in self.model.escrows}
        found_bonds = {k: tuple(v) for k, v in json.loads(row["bonds"]).items()}
        assert found_bonds == {f"{t} {a}": (b.state, b.amount) for (t, a), b in self.model.bonds.items()}

    def teardown(self) -> None:
        # The example's own accounts; the whole ledger is audited once at the end of the test.
        accounts = [*self.requesters, *self.agents, *(escrow_account(e.id) for e in self.model.escrows),
                    *(bond_account(e.task_id) for e in self.model.escrows)]
        audit = self.portal.call(self.ledger.verify, accounts)
        assert audit.ok, audit


async def _commit_without_waiting_for_the_flush(database_url: str) -> None:
    """Durability is not under test here, and waiting for the WAL flush at each commit costs about a third of the
    run on this box (60 s against 90 s)."""
    conn = await asyncpg.connect(database_url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    finally:
        await conn.close()


def test_the_ledger_keeps_its_invariants_under_random_operations(anyio_backend: str, database_url: str) -> None:
    with start_blocking_portal(anyio_backend) as portal:
        portal.call(_commit_without_waiting_for_the_flush, database_url)
        with portal.wrap_async_context_manager(open_pool(database_url, size=2)) as pool:
            run_state_machine_as_test(  # type: ignore[no-untyped-call]  # hypothesis leaves it unannotated
                lambda: LedgerMachine(portal, pool), settings=SETTINGS)
            audit = portal.call(Ledger(pool).verify)
            assert audit.ok, audit
            assert audit.transfers > SETTINGS.max_examples   # the examples really moved money
            kinds = portal.call(partial(pool.fetch, "SELECT DISTINCT kind FROM transfers WHERE memo LIKE '%: test'"))
            assert {r["kind"] for r in kinds} == {"bond_return", "slash"}  # bonds were posted, returned and slashed
