"""A Hypothesis state machine over human approvals: random requests (some deduplicated by key), decisions (some by
two operators at once), expiries and handlers that refuse, against a running hub and a pure-Python model, with the
invariants checked after every step: the database holds what the model says, each approval is decided at most
once with exactly one event for it on the activity log, a handler's effect committed exactly when its decision did,
and at most one approval per dedupe key is pending. Requests without a key hold credits in an escrow, as a task
over its requester's approval threshold does, and a denial refunds it in the deciding transaction: the ledger's
invariants hold throughout and each escrow is refunded exactly when its approval was denied.

The hub runs in an anyio blocking portal (its own event loop thread) for the whole test; each example uses fresh
subject and key names."""

import secrets
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from agenthub.auth import Principal, Role
from agenthub.database import Connection
from agenthub.errors import ApprovalAlreadyDecided, Conflict, HubError
from agenthub.ids import TokenId
from governance.approvals import ApprovalInfo, Approvals
from market import escrow as escrows
from market.ledger import escrow_account, requester_account
from tests.conftest import HubFactory, RunningHub

SETTINGS = settings(max_examples=200, stateful_step_count=15, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
Decision = Literal["approve", "deny"]
OPERATORS = (Principal(token_id=TokenId("tok_sm_one"), role=Role.OPERATOR),
             Principal(token_id=TokenId("tok_sm_two"), role=Role.OPERATOR))
STATE_OF = {"approve": "approved", "deny": "denied"}
FUNDS = 1_000_000  # each example's requester
HELD = 10  # what each request without a key holds in escrow


@dataclass
class ModelApproval:
    id: str
    key: str | None
    default: Decision
    refuses: bool  # its handler raises: it can never be decided
    escrow: str | None  # the escrow its request held (requests without a key hold one)
    state: str = "pending"
    decision: str | None = None
    decided_by: str | None = None

    @property
    def escrow_state(self) -> str:
        return "refunded" if self.decision == "deny" else "held"


class Effects:
    """What the handlers did, by approval id: committed with the decision (a table) and attempted (a count)."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}

    async def handler(self, conn: Connection, info: ApprovalInfo) -> None:
        self.attempts[info.approval_id] = self.attempts.get(info.approval_id, 0) + 1
        await conn.execute("INSERT INTO sm_effects (approval_id, state) VALUES ($1, $2)", info.approval_id, info.state)
        if info.decision == "deny" and info.detail.get("escrow"):  # denied: what was held for it goes back
            await escrows.refund(conn, info.detail["escrow"])
        if info.detail.get("refuse"):
            raise Conflict("the handler refuses")


class ApprovalMachine(RuleBasedStateMachine):
    def __init__(self, portal: BlockingPortal, hub: RunningHub, effects: Effects) -> None:
        super().__init__()
        self.portal = portal
        self.hub = hub
        self.approvals: Approvals = hub.state.approvals
        self.effects = effects
        self.prefix = f"sm{secrets.token_hex(4)}"
        self.model: list[ModelApproval] = []
        self.payer = requester_account(self.prefix)
        self._run(hub.state.market.ledger.deposit, self.payer, FUNDS, key=self.prefix, scope=self.prefix)

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.portal.call(partial(fn, *args, **kwargs))

    # -- rules -----------------------------------------------------------------------------------------------------

    @rule(key=st.sampled_from([None, "a", "b"]), default=st.sampled_from(["approve", "deny"]),
          refuses=st.booleans())
    def request(self, key: str | None, default: Decision, refuses: bool) -> None:
        dedupe = f"{self.prefix}:{key}" if key is not None else None

        async def raise_one() -> tuple[ApprovalInfo, str | None]:
            async with self.hub.state.pool.acquire() as conn, conn.transaction():
                task = f"{self.prefix}-{len(self.model)}"
                held = None if dedupe else await escrows.hold(conn, self.payer, HELD, task)
                info = await self.approvals.request(
                    conn, kind="budget", subject=f"agent:{self.prefix}", reason="over the soft limit",
                    detail={"refuse": refuses, "escrow": held.id if held else None}, requested_by="hub",
                    default=default, dedupe_key=dedupe)
                return info, held.id if held else None

        info, escrow = self._run(raise_one)
        twin = next((a for a in self.model if a.key == dedupe and a.state == "pending"), None) if dedupe else None
        if twin is not None:
            assert info.approval_id == twin.id and info.state == "pending"
            return
        assert info.state == "pending" and all(a.id != info.approval_id for a in self.model)
        self.model.append(ModelApproval(id=info.approval_id, key=dedupe, default=default, refuses=refuses,
                                        escrow=escrow))

    @precondition(lambda self: self.model)
    @rule(data=st.data(), decision=st.sampled_from(["approve", "deny"]), race=st.booleans())
    def decide(self, data: st.DataObject, decision: Decision, race: bool) -> None:
        approval = data.draw(st.sampled_from(self.model))
        deciders = OPERATORS if race else OPERATORS[:1]
        outcomes: list[ApprovalInfo | HubError] = []

        async def one(who: Principal, what: Decision) -> None:
            try:
                outcomes.append(await self.approvals.decide(who, approval.id, what, "by the machine"))
            except HubError as exc:
                outcomes.append(exc)

        async def all_at_once() -> None:
            async with anyio.create_task_group() as tg:
                for i, who in enumerate(deciders):
                    tg.start_soon(one, who, decision if i == 0 else ("deny" if decision == "approve" else "approve"))

        self._run(all_at_once)
        wins = [o for o in outcomes if isinstance(o, ApprovalInfo)]
        if approval.state != "pending":
            assert all(isinstance(o, ApprovalAlreadyDecided) for o in outcomes), outcomes
        elif approval.refuses:  # the handler's refusal undoes the decision: still pending, each decider refused
            assert not wins and all(type(o) is Conflict for o in outcomes), outcomes
        else:
            assert len(wins) == 1, outcomes
            assert all(isinstance(o, ApprovalAlreadyDecided) for o in outcomes if o is not wins[0]), outcomes
            won = wins[0]
            approval.state, approval.decision, approval.decided_by = won.state, won.decision, won.decided_by
            assert won.state == STATE_OF[str(won.decision)]

    @precondition(lambda self: any(a.state == "pending" for a in self.model))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        approval = data.draw(st.sampled_from([a for a in self.model if a.state == "pending"]))
        self._run(self.hub.state.pool.execute,  # its time has come (the clock, moved for this approval only)
                  "UPDATE approvals SET expires_at = now() - interval '1 second' WHERE id = $1", approval.id)
        self._run(self.approvals.sweep)
        if not approval.refuses:
            approval.state, approval.decision, approval.decided_by = "expired", approval.default, "expiry"

    # -- invariants --------------------------------------------------------------------------------------------------

    @invariant()
    def the_database_is_the_model(self) -> None:
        ids = [a.id for a in self.model]
        rows = self._run(self.hub.state.pool.fetch, "SELECT id, state, decision, decided_by FROM approvals "
                         "WHERE id = ANY($1)", ids)
        assert {r["id"]: (r["state"], r["decision"], r["decided_by"]) for r in rows} == {
            a.id: (a.state, a.decision, a.decided_by) for a in self.model}

    @invariant()
    def each_is_decided_once_with_one_event_and_one_committed_effect(self) -> None:
        events = self._run(self.hub.state.pool.fetch, "SELECT data->>'approval_id' AS approval_id, data->>'change' "
                           "AS change FROM activity WHERE kind = 'approval' AND data->>'approval_id' = ANY($1) "
                           "ORDER BY id", [a.id for a in self.model])
        effects = self._run(self.hub.state.pool.fetch, "SELECT approval_id, state FROM sm_effects "
                            "WHERE approval_id = ANY($1)", [a.id for a in self.model])
        committed = {e["approval_id"]: e["state"] for e in effects}
        assert len(committed) == len(effects), "a handler's effect committed twice"
        for a in self.model:
            changes = [e["change"] for e in events if e["approval_id"] == a.id]
            final = {"pending": [], "expired": ["expired"]}.get(a.state, ["decided"])
            assert changes == ["requested", *final], (a, changes)
            assert committed.get(a.id) == (None if a.state == "pending" else a.state), (a, committed.get(a.id))
            if a.state != "pending":
                assert self.effects.attempts[a.id] == 1, a  # decided at the first attempt that did not refuse

    @invariant()
    def the_ledger_holds_what_was_not_denied(self) -> None:
        escrowed = {a.escrow: a.escrow_state for a in self.model if a.escrow is not None}
        rows = self._run(self.hub.state.pool.fetch, "SELECT id, state FROM escrows WHERE id = ANY($1)", list(escrowed))
        assert {r["id"]: r["state"] for r in rows} == escrowed
        held = sum(HELD for state in escrowed.values() if state == "held")
        assert self._run(self.hub.state.market.ledger.balance, self.payer) == FUNDS - held
        audit = self._run(self.hub.state.market.ledger.verify, [self.payer, *map(escrow_account, escrowed)])
        assert audit.ok, audit

    @invariant()
    def one_pending_per_key(self) -> None:
        pending = [a.key for a in self.model if a.state == "pending" and a.key is not None]
        assert len(pending) == len(set(pending))

    def teardown(self) -> None:
        # Approvals left pending whose handler refuses would be swept (and refused) by later examples: gone.
        self._run(self.hub.state.pool.execute, "DELETE FROM approvals WHERE subject = $1", f"agent:{self.prefix}")


def test_approvals_keep_their_invariants_under_random_operations(anyio_backend: str,
                                                                  hub_factory: HubFactory) -> None:
    effects = Effects()
    with start_blocking_portal(anyio_backend) as portal:
        settings_ = hub_factory.settings(approvals={"sweep_seconds": 3600})  # sweeps only when the machine says
        with portal.wrap_async_context_manager(hub_factory.run(settings_)) as hub:
            portal.call(hub.state.pool.execute, "CREATE TABLE sm_effects (approval_id text, state text)")
            hub.state.approvals.on_decided("budget", effects.handler)
            run_state_machine_as_test(  # type: ignore[no-untyped-call]  # hypothesis leaves it unannotated
                lambda: ApprovalMachine(portal, hub, effects), settings=SETTINGS)
            decided = portal.call(hub.state.pool.fetchval, "SELECT count(*) FROM sm_effects")
            assert decided > SETTINGS.max_examples // 2  # the examples really decided approvals
