"""Sealed-bid reverse auctions: worked single-task and batch examples, and, on random small instances, the
clearing against a brute-force search over every feasible matching (welfare, VCG payments, individual
rationality, truthfulness, tie rules, determinism)."""

import dataclasses
import math
from collections.abc import Callable, Sequence
from random import Random

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

from market.clearing import Award, Bid, Clearing, TaskAuction, clear

PROPERTY = settings(max_examples=400, deadline=None)
AGENTS = ("a0", "a1", "a2", "a3", "a4")
NICE_REPUTATIONS = (0.25, 0.5, 0.6, 0.7, 0.75, 1.0)


def bid(task: str, agent: str, price: int, reputation: float = 1.0, seq: int = 0) -> Bid:
    return Bid(task_id=task, agent_id=agent, price=price, estimated_seconds=60.0, reputation=reputation,
               placed_seq=seq)


def auction(task: str, budget: int, *bids: Bid) -> TaskAuction:
    return TaskAuction(task_id=task, budget=budget, bids=bids)


def only_award(clearing: Clearing) -> Award:
    assert len(clearing.awards) == 1
    return clearing.awards[0]


# -- worked examples: one task -------------------------------------------------------------------------------------


def test_the_runner_up_sets_the_price() -> None:
    award = only_award(clear([auction("t", 100, bid("t", "a", 40, seq=1), bid("t", "b", 60, seq=2),
                                      bid("t", "c", 75, seq=3))]))
    assert (award.agent_id, award.price, award.bid_price) == ("a", 60, 40)
    assert award.welfare == 60.0


def test_a_runner_up_with_the_winners_reputation_sets_its_exact_price() -> None:
    # 63 / 0.7 * 0.7 is 62.99999999999999 in floats; the payment is still 63.
    award = only_award(clear([auction("t", 100, bid("t", "a", 50, 0.7, seq=1), bid("t", "b", 63, 0.7, seq=2))]))
    assert (award.agent_id, award.price) == ("a", 63)


def test_reputation_scales_bids_so_a_cheap_unreliable_bidder_loses() -> None:
    # a asks less, but 40 / 0.25 = 160 > 60 / 1.0: b wins and is paid up to a's scaled cost, capped by the budget.
    award = only_award(clear([auction("t", 150, bid("t", "a", 40, 0.25, seq=1), bid("t", "b", 60, 1.0, seq=2))]))
    assert (award.agent_id, award.price, award.scaled_cost) == ("b", 150, 60.0)
    award = only_award(clear([auction("t", 200, bid("t", "a", 40, 0.25, seq=1), bid("t", "b", 60, 1.0, seq=2))]))
    assert (award.agent_id, award.price) == ("b", 160)


def test_the_critical_price_is_converted_with_the_winners_reputation() -> None:
    # a: 40 / 0.8 = 50 beats b's 60; a would still win up to scaled 60, i.e. 60 x 0.8 = 48 credits.
    award = only_award(clear([auction("t", 100, bid("t", "a", 40, 0.8, seq=1), bid("t", "b", 60, 1.0, seq=2))]))
    assert (award.agent_id, award.price, award.scaled_cost) == ("a", 48, 50.0)


def test_a_lone_bidder_is_paid_the_budget_times_its_reputation_rounded_down() -> None:
    assert only_award(clear([auction("t", 100, bid("t", "a", 30, 0.6))])).price == 60
    assert only_award(clear([auction("t", 101, bid("t", "a", 30, 0.6))])).price == 60  # 60.6 -> 60
    assert only_award(clear([auction("t", 100, bid("t", "a", 30, 1.0))])).price == 100


def test_a_bid_exactly_at_the_budget_wins_at_its_price() -> None:
    award = only_award(clear([auction("t", 100, bid("t", "a", 50, 0.5))]))
    assert (award.price, award.welfare) == (50, 0.0)


def test_ineligible_bids_are_ignored() -> None:
    # a's 90 / 0.5 = 180 is over the budget: b is alone among eligible bids and gets the budget.
    clearing = clear([auction("t", 100, bid("t", "a", 90, 0.5, seq=1), bid("t", "b", 70, 1.0, seq=2))])
    assert (only_award(clearing).agent_id, only_award(clearing).price) == ("b", 100)


def test_a_task_without_eligible_bids_is_unassigned() -> None:
    assert clear([auction("t", 100, bid("t", "a", 101))]) == Clearing(awards=(), unassigned=("t",), welfare=0.0)
    assert clear([auction("t", 100)]) == Clearing(awards=(), unassigned=("t",), welfare=0.0)
    assert clear([]) == Clearing(awards=(), unassigned=(), welfare=0.0)


def test_equal_scaled_costs_go_to_the_earlier_bid_then_the_lower_agent_id() -> None:
    award = only_award(clear([auction("t", 100, bid("t", "a", 50, seq=2), bid("t", "b", 50, seq=1),
                                      bid("t", "c", 80, seq=0))]))
    assert (award.agent_id, award.price) == ("b", 50)  # the tied runner-up sets the price
    award = only_award(clear([auction("t", 100, bid("t", "b", 50, seq=1), bid("t", "a", 50, seq=1))]))
    assert award.agent_id == "a"
    # Same scaled cost from different prices and reputations: 30 / 0.5 = 60 / 1.0.
    award = only_award(clear([auction("t", 100, bid("t", "a", 60, 1.0, seq=5), bid("t", "b", 30, 0.5, seq=4))]))
    assert (award.agent_id, award.price) == ("b", 30)


def test_an_agents_latest_bid_replaces_its_earlier_ones() -> None:
    clearing = clear([auction("t", 100, bid("t", "a", 40, seq=1), bid("t", "b", 60, seq=2),
                              bid("t", "a", 70, seq=5))])
    assert (only_award(clearing).agent_id, only_award(clearing).price) == ("b", 70)
    # A replacement above the budget withdraws the agent, even though its first bid was eligible.
    clearing = clear([auction("t", 100, bid("t", "a", 40, seq=1), bid("t", "a", 140, seq=2))])
    assert clearing.unassigned == ("t",)


# -- worked examples: a batch ---------------------------------------------------------------------------------------


def test_a_batch_maximises_welfare_and_pays_each_winner_its_externality() -> None:
    # a -> x and b -> y is worth 90 + 20 = 110; a -> y and b -> x is worth 70 + 80 = 150.
    # Without a, b takes x alone (80): a is paid 30 + 150 - 80 = 100. Without b, a takes x (90): b gets 20 + 60.
    clearing = clear([
        auction("x", 100, bid("x", "a", 10, seq=1), bid("x", "b", 20, seq=2)),
        auction("y", 100, bid("y", "a", 30, seq=3), bid("y", "b", 80, seq=4)),
    ])
    assert [(w.task_id, w.agent_id, w.price) for w in clearing.awards] == [("x", "b", 80), ("y", "a", 100)]
    assert clearing.welfare == 150.0
    assert clearing.unassigned == ()


def test_one_agent_wins_at_most_one_task_and_the_rest_stay_unassigned() -> None:
    clearing = clear([auction("x", 100, bid("x", "a", 10, seq=1)), auction("y", 100, bid("y", "a", 20, seq=2))])
    assert [(w.task_id, w.agent_id, w.price) for w in clearing.awards] == [("x", "a", 100)]
    assert clearing.unassigned == ("y",)


def test_a_batch_hands_a_tie_to_the_earlier_bid() -> None:
    clearing = clear([
        auction("x", 100, bid("x", "late", 50, seq=9), bid("x", "early", 50, seq=1)),
        auction("y", 100, bid("y", "other", 10, seq=2)),
    ])
    assert [(w.task_id, w.agent_id, w.price) for w in clearing.awards] == [("x", "early", 50), ("y", "other", 100)]


def test_a_batch_assigns_a_task_whose_only_bid_is_worth_exactly_its_budget() -> None:
    clearing = clear([auction("x", 100, bid("x", "a", 100, seq=1)), auction("y", 100, bid("y", "b", 10, seq=2))])
    assert [(w.task_id, w.agent_id, w.price) for w in clearing.awards] == [("x", "a", 100), ("y", "b", 100)]


# -- pruning: bidders that cannot change the outcome are left out of the matrix -------------------------------------


def test_a_task_keeps_its_bidders_down_to_the_second_that_bids_on_nothing_else() -> None:
    # 50 bidders on x alone, 50 on y alone, and c on both (the cheapest on each): c and the two best of the others
    # remain on each task, the other 96 bidders are left out.
    x = [bid("x", f"x{i:02d}", 20 + i, seq=i) for i in range(50)]
    y = [bid("y", f"y{i:02d}", 30 + i, seq=100 + i) for i in range(50)]
    clearing = clear([auction("x", 100, bid("x", "c", 10, seq=200), *x),
                      auction("y", 100, bid("y", "c", 25, seq=201), *y)])
    # c takes x (welfare 90 + 70) rather than y (80 + 75); without c, x00 (20) and y00 (30) would win: 80 + 70.
    # c is paid 10 + 160 - 150 = 20, y00 the runner-up's 31.
    assert [(w.task_id, w.agent_id, w.price) for w in clearing.awards] == [("x", "c", 20), ("y", "y00", 31)]
    assert clearing.assignment_size == (2, 5)  # c, x00, x01, y00, y01
    # Bidders on one task each: two per task.
    assert clear([auction("x", 100, *x), auction("y", 100, *y)]).assignment_size == (2, 4)


def test_a_task_keeps_at_most_one_more_bidder_than_there_are_tasks() -> None:
    # Four agents on all three tasks: a fourth-ranked bidder can still matter, and nobody is left out.
    agents = ("a", "b", "c", "d")
    tasks = [auction(t, 100, *(bid(t, agent, 10 + 5 * i + k, seq=10 * k + i) for i, agent in enumerate(agents)))
             for k, t in enumerate(("x", "y", "z"))]
    assert clear(tasks).assignment_size == (3, 4)
    # Twelve agents on all three tasks: each keeps its four best, and here they are the same four.
    many = [f"m{i:02d}" for i in range(12)]
    tasks = [auction(t, 100, *(bid(t, agent, 10 + i + k, seq=100 * k + i) for i, agent in enumerate(many)))
             for k, t in enumerate(("x", "y", "z"))]
    assert clear(tasks).assignment_size == (3, 4)


def full_solve(auctions: Sequence[TaskAuction]) -> tuple[dict[str, str], dict[str, float]]:
    """The unpruned oracle: scipy on the whole tasks x agents welfare matrix. Returns the maximum-welfare
    allocation (task -> agent) and each winner's scaled VCG payment (scaled cost + W - W without it)."""
    live = live_bids(auctions)
    agents = sorted({agent for _, agent in live})
    welfare = np.zeros((len(auctions), len(agents)))
    for row, a in enumerate(auctions):
        for col, agent in enumerate(agents):
            b = live.get((a.task_id, agent))
            if b is not None and b.price / b.reputation <= a.budget:
                welfare[row, col] = a.budget - b.price / b.reputation

    def solve(matrix: npt.NDArray[np.float64]) -> tuple[float, dict[int, int]]:
        rows, cols = linear_sum_assignment(matrix, maximize=True)
        pairs = {int(r): int(c) for r, c in zip(rows, cols, strict=True) if matrix[r, c] > 0}
        return math.fsum(matrix[r, c] for r, c in pairs.items()), pairs

    best, pairs = solve(welfare)
    allocation = {auctions[r].task_id: agents[c] for r, c in pairs.items()}
    payments = {}
    for r, c in pairs.items():
        without = welfare.copy()
        without[:, c] = 0.0
        b = live[auctions[r].task_id, agents[c]]
        payments[auctions[r].task_id] = b.price / b.reputation + best - solve(without)[0]
    return allocation, payments


def random_batch(rng: Random) -> list[TaskAuction]:
    """2-8 tasks; up to 40 agents with continuous reputations (so no ties), each bidding on one task, a few, or
    all of them; budgets that leave some bids ineligible."""
    n_tasks = rng.randint(2, 8)
    auctions = []
    reputation = {f"a{i:02d}": rng.uniform(0.2, 1.0) for i in range(rng.randint(1, 40))}
    reach = {agent: rng.sample(range(n_tasks), rng.choice((1, 1, 2, n_tasks))) for agent in reputation}
    for t in range(n_tasks):
        bids = [bid(f"t{t}", agent, rng.randint(1, 200), reputation[agent], seq=rng.randint(0, 10**6))
                for agent in reputation if t in reach[agent]]
        auctions.append(TaskAuction(task_id=f"t{t}", budget=rng.randint(50, 300), bids=tuple(bids)))
    return auctions


def test_the_pruned_clearing_equals_the_full_solve_on_random_batches() -> None:
    rng = Random(20260511)
    pruned = 0
    for _ in range(400):
        auctions = random_batch(rng)
        clearing = clear(auctions)
        allocation, payments = full_solve(auctions)
        live = live_bids(auctions)
        budget = {a.task_id: a.budget for a in auctions}
        assert {w.task_id: w.agent_id for w in clearing.awards} == allocation
        for award in clearing.awards:
            winning = live[award.task_id, award.agent_id]
            assert award.price in credits_for(payments[award.task_id], winning, budget[award.task_id])
        eligible = {agent for (task, agent), b in live.items() if b.price / b.reputation <= budget[task]}
        pruned += 0 < clearing.assignment_size[1] < len(eligible)
    assert pruned > 100  # the comparison is about pruned matrices, not only whole ones


@pytest.mark.parametrize("make", [
    lambda: bid("t", "a", 0),
    lambda: bid("t", "a", -5),
    lambda: bid("t", "a", 10, reputation=0.0),
    lambda: bid("t", "a", 10, reputation=1.5),
    lambda: bid("t", "a", 10, reputation=math.nan),
    lambda: Bid(task_id="t", agent_id="a", price=1, estimated_seconds=0.0, reputation=1.0, placed_seq=0),
    lambda: auction("t", 0),
    lambda: auction("t", 10, bid("u", "a", 5)),
    lambda: clear([auction("t", 10), auction("t", 20)]),
    lambda: clear([auction("t", 10, bid("t", "a", 5, seq=3), bid("t", "a", 6, seq=3))]),
    lambda: clear([auction("t", 10, bid("t", "a", 5, seq=3), bid("t", "a", 6, seq=3)), auction("u", 10)]),
])
def test_nonsense_is_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


# -- random instances against brute force --------------------------------------------------------------------------


@st.composite
def instances(draw: st.DrawFn, max_tasks: int = 4) -> list[TaskAuction]:
    """≤ 4 tasks, ≤ 5 agents (each with one reputation), random budgets, prices and bid subsets; small price
    ranges and shared reputations make ties common; some agents replaced an earlier bid."""
    agents = AGENTS[:draw(st.integers(1, len(AGENTS)))]
    reputation = {agent: draw(st.sampled_from(NICE_REPUTATIONS) | st.floats(0.05, 1.0)) for agent in agents}
    price = st.integers(1, 12) | st.integers(1, 150)
    auctions = []
    for t in range(draw(st.integers(1, max_tasks))):
        task = f"t{t}"
        bids = []
        for agent in agents:
            if not draw(st.booleans()):
                continue
            seq = draw(st.integers(5, 30))
            if draw(st.integers(0, 4)) == 0:
                bids.append(bid(task, agent, draw(price), reputation[agent], seq - draw(st.integers(1, 5))))
            bids.append(bid(task, agent, draw(price), reputation[agent], seq))
        bids = draw(st.permutations(bids))
        auctions.append(TaskAuction(task_id=task, budget=draw(st.integers(1, 130)), bids=tuple(bids)))
    return auctions


def live_bids(auctions: Sequence[TaskAuction]) -> dict[tuple[str, str], Bid]:
    """(task, agent) -> the agent's latest bid on that task."""
    latest: dict[tuple[str, str], Bid] = {}
    for a in auctions:
        for b in a.bids:
            key = (a.task_id, b.agent_id)
            if key not in latest or b.placed_seq > latest[key].placed_seq:
                latest[key] = b
    return latest


def max_welfare(auctions: Sequence[TaskAuction], without: str | None = None) -> float:
    """The best total welfare over every matching of tasks to eligible live bids (agents used once each)."""
    options = [[(b.agent_id, a.budget - b.price / b.reputation)
                for (task, _), b in live_bids(auctions).items()
                if task == a.task_id and b.agent_id != without and b.price / b.reputation <= a.budget]
               for a in auctions]

    def best(i: int, used: frozenset[str]) -> float:
        if i == len(options):
            return 0.0
        result = best(i + 1, used)
        for agent, welfare in options[i]:
            if agent not in used:
                result = max(result, welfare + best(i + 1, used | {agent}))
        return result

    return best(0, frozenset())


def close(x: float, y: float) -> bool:
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)


def credits_for(scaled_payment: float, b: Bid, budget: int) -> set[int]:
    """The payments the documented rounding allows: scaled x reputation rounded down, float noise either way."""
    x = scaled_payment * b.reputation
    return {min(budget, max(b.price, math.floor(x * (1 + s)))) for s in (-1e-9, 1e-9)}


def utility(clearing: Clearing, agent: str, true_price: dict[str, int]) -> int:
    return next((w.price - true_price[w.task_id] for w in clearing.awards if w.agent_id == agent), 0)


@PROPERTY
@given(instances())
def test_the_clearing_equals_a_brute_force_search(auctions: list[TaskAuction]) -> None:
    clearing = clear(auctions)
    budget = {a.task_id: a.budget for a in auctions}
    live = live_bids(auctions)
    best = max_welfare(auctions)

    assert close(clearing.welfare, best)
    assert close(clearing.welfare, math.fsum(w.welfare for w in clearing.awards))
    assert len({w.agent_id for w in clearing.awards}) == len(clearing.awards)
    assert sorted([w.task_id for w in clearing.awards] + list(clearing.unassigned)) == sorted(budget)
    for award in clearing.awards:
        winning = live[award.task_id, award.agent_id]
        assert award.bid_price == winning.price
        assert award.scaled_cost == winning.price / winning.reputation <= budget[award.task_id]
        assert close(award.welfare, budget[award.task_id] - award.scaled_cost)
        # VCG: scaled cost + (welfare with everyone - welfare without the winner), in credits as documented.
        externality = best - max_welfare(auctions, without=award.agent_id)
        assert award.price in credits_for(award.scaled_cost + externality, winning, budget[award.task_id])
        assert winning.price <= award.price <= budget[award.task_id]


@PROPERTY
@given(instances())
def test_ties_follow_the_documented_rules(auctions: list[TaskAuction]) -> None:
    clearing = clear(auctions)
    live = live_bids(auctions)
    budget = {a.task_id: a.budget for a in auctions}
    rank = {key: (b.price / b.reputation, b.placed_seq, b.agent_id) for key, b in live.items()}
    eligible = {key for key, b in live.items() if b.price / b.reputation <= budget[key[0]]}
    winners = {w.agent_id for w in clearing.awards}
    if len(auctions) == 1:
        expected = min((rank[key] for key in eligible), default=None)
        assert (None if expected is None else expected[2]) == next((w.agent_id for w in clearing.awards), None)
        return
    for task in clearing.unassigned:  # no idle agent could take it
        assert not [key for key in eligible if key[0] == task and key[1] not in winners]
    for award in clearing.awards:  # no idle agent with the same scaled cost bid earlier
        mine = rank[award.task_id, award.agent_id]
        assert not [key for key in eligible if key[0] == award.task_id and key[1] not in winners
                    and rank[key][0] == mine[0] and rank[key] < mine]


@PROPERTY
@given(instances(), st.data())
def test_no_unilateral_misreport_improves_a_bidders_utility(auctions: list[TaskAuction], data: st.DataObject) -> None:
    live = live_bids(auctions)
    if not live:
        return
    task, agent = data.draw(st.sampled_from(sorted(live)))
    true_price = {t: b.price for (t, a), b in live.items() if a == agent}
    lie = data.draw(st.integers(1, 200).filter(lambda p: p != true_price[task]))
    truthful = utility(clear(auctions), agent, true_price)
    lied = [dataclasses.replace(a, bids=tuple(dataclasses.replace(b, price=lie) if b is live[task, agent] else b
                                              for b in a.bids)) for a in auctions]
    assert utility(clear(lied), agent, true_price) <= truthful
    assert truthful >= 0  # individual rationality


@PROPERTY
@given(instances(), st.randoms(use_true_random=False))
def test_the_clearing_does_not_depend_on_input_order(auctions: list[TaskAuction], rng: Random) -> None:
    shuffled = [dataclasses.replace(a, bids=tuple(rng.sample(a.bids, len(a.bids)))) for a in auctions]
    rng.shuffle(shuffled)
    assert clear(shuffled) == clear(auctions)


@PROPERTY
@given(instances(max_tasks=1))
def test_the_single_task_scan_agrees_with_the_assignment_solver(auctions: list[TaskAuction]) -> None:
    # A second task with its own bidder makes `clear` solve an assignment problem; the first task's award and the
    # rest of the outcome must not change.
    alone = clear(auctions)
    extra = auction("zz", 100, bid("zz", "zz", 10, seq=0))
    together = clear([*auctions, extra])
    assert together.awards[:-1] == alone.awards
    assert together.unassigned == alone.unassigned
    assert close(together.welfare, alone.welfare + 90.0)
