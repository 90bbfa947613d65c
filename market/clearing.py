"""Sealed-bid reverse auctions: which agent does which task, and what each winner is paid.

Agents ask a price (credits) to do a task; the requester set a budget. `clear` takes the auctions that close
together and returns the awards. It is a pure function of its input: no I/O, and the same auctions give the
same `Clearing` whatever the order of the auctions or of their bids.

Scaled cost and eligibility
    A bid's scaled cost is `price / reputation` (reputation in (0, 1]): a cheap bidder that keeps failing has a
    low reputation, so a high scaled cost, and stops winning. A bid is eligible when its scaled cost is at most
    its task's budget. Giving task t to bid b creates welfare `budget_t - scaled_cost_b` (>= 0).

Live bids
    One live bid per agent and task: when the input holds several, the one with the highest `placed_seq` counts
    (even if it is no longer eligible). Two different bids of one agent on one task with the same `placed_seq`
    are ambiguous and raise `ValueError`.

Allocation
    Each task goes to at most one agent and each agent wins at most one task per clearing; tasks and agents may
    stay unassigned. The allocation maximises total welfare. One task is an O(n) scan: the lowest scaled cost
    wins. A batch is an assignment problem solved with `scipy.optimize.linear_sum_assignment` on a tasks x
    agents welfare matrix in which missing and ineligible bids are 0. Zero means "unassigned" as well, so no
    padding with "unassigned" options is needed: a matching that uses a zero entry is worth the same as leaving
    that task and agent out, and such pairs are dropped (zero columns are added only for speed, when there are a
    few more tasks than agents).

Payments (VCG)
    A winner's payment in scaled units is its scaled cost plus its externality: optimal welfare with everyone
    minus optimal welfare without that agent. For one task this is the critical price: the runner-up's scaled
    cost, or the budget when no other bid is eligible, i.e. the most the winner could have asked and still won.
    A batch re-solves the assignment once per winner. The payment lies between the winner's scaled cost and the
    task's budget (in exact arithmetic; the float result is clamped to that range). In credits it is the
    scaled payment times the winner's reputation, rounded down: credits are whole, and rounding up would pay a
    fraction of a credit more than the winner's externality. Float noise is forgiven first: a product within
    one part in 10^9 below a whole number counts as that number, so a runner-up at 60 credits with the
    winner's own reputation sets a payment of exactly 60. The result is never below the winner's bid price
    (individual rationality: exact arithmetic already guarantees it, since scaled payment >= scaled cost means
    payment x reputation >= price, an integer, so the floor cannot drop below the price; the bound only guards
    against float error) and never above the budget (also implied, as reputation <= 1).

Truthfulness
    Asking one's true price is a dominant strategy in scaled units. It carries over to credits whenever a
    bidder's reputation is the same on all its bids of the clearing (always for one task; for a batch, when
    reputation is per agent rather than per capability), up to the one-credit rounding above.

Ties
    Within a task bids rank by (scaled cost, placed_seq, agent_id): equal scaled costs (compared exactly; in
    practice the same price at the same reputation) go to the earlier bid, then to the lower agent id. For one
    task that is the whole rule. For a batch, the solver runs on matrices ordered by task id and agent id (so its
    choice among equal-welfare allocations depends only on the input), and its allocation is then adjusted,
    keeping the welfare, until (1) no task is unassigned while an agent without an award has an eligible bid on
    it, and (2) no winner could be replaced on its task by an agent without an award whose bid has the same
    scaled cost and ranks earlier. Ties that only a swap between two winners would settle stay as the solver
    left them. Payments do not depend on how ties are broken.

Pruning
    Before a batch is solved, the bids that cannot change its outcome are left out of the matrix. Rank a task's
    eligible live bids by (scaled cost, placed_seq, agent_id) and let S be the bidders ranked above bidder b on
    task t. If some D within S has at least |N(D) - {t}| + 2 members, where N(D) is the set of tasks D's members
    have eligible bids on, then b on t is left out. Why it cannot matter: in any allocation giving t to b, the
    members of D can only be on tasks of N(D) - {t}, one each, so two of them are idle; even without any one agent
    (a VCG re-solve) one idle member d remains, and moving t from b to d keeps the allocation feasible and does
    not lower its welfare (d's scaled cost is at most b's). Each such move gives t a bidder ranked strictly
    higher and leaves the other tasks alone, so repeating it ends, in an allocation of the same welfare that uses
    no left-out bid: the optimum, and the optimum without each winner, hence every VCG payment, are those of the
    whole batch. The tie rules hold against every bid too: a winner's earlier-ranked rivals rank above it and are
    kept, and a task left unassigned while it has a left-out bidder has, among its kept bidders, the two idle
    members of D. Which allocation the solver picks among equal-welfare ones may differ, as it may anyway.
    Two such D are checked, both growing as one walks down a task's ranking: the bidders with no other eligible
    bid in the batch (N(D) - {t} is empty), and every bidder ranked so far. With n tasks, N(D) - {t} has at most
    n - 1 tasks, so at most n + 1 bidders per task are kept; a batch of bidders that each bid on one task keeps
    two per task (100 tasks x 10,000 such bidders: a 100 x 200 matrix instead of 100 x 10,000).

Cost: one task O(n) in the number of bids; a batch O(bids log bids) to rank, prune and build the matrix plus
(1 + winners) assignment solves, each O(n^3) in C (about 0.2 ms for 100 x 100). The solves release the GIL.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from operator import attrgetter

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

_PAYMENT_SLACK = 1e-9  # relative float noise forgiven before rounding a payment down to whole credits

_FloatMatrix = npt.NDArray[np.float64]
_IntArray = npt.NDArray[np.intp]
_BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True, kw_only=True)
class Bid:
    """An agent's sealed ask to do a task.

    Attributes:
        task_id: the task bid on.
        agent_id: the bidder.
        price: credits asked, > 0.
        estimated_seconds: the bidder's own estimate of the work (> 0); reputation judges it against the truth.
        reputation: the bidder's reputation when the auction closes, in (0, 1].
        placed_seq: order of arrival; a later bid by the same agent on the same task replaces an earlier one,
            and among equal scaled costs the earlier bid wins.
    """

    task_id: str
    agent_id: str
    price: int
    estimated_seconds: float
    reputation: float
    placed_seq: int

    def __post_init__(self) -> None:
        # The service validates requests before building bids; a bad value here is a programming error.
        if self.price <= 0:
            raise ValueError(f"bid price must be > 0, got {self.price}")
        if not 0.0 < self.reputation <= 1.0:
            raise ValueError(f"bid reputation must be in (0, 1], got {self.reputation}")
        if not 0.0 < self.estimated_seconds < math.inf:
            raise ValueError(f"estimated_seconds must be positive and finite, got {self.estimated_seconds}")

    @property
    def scaled_cost(self) -> float:
        """`price / reputation`: what the auction compares."""
        return self.price / self.reputation


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskAuction:
    """One task's sealed-bid auction at close: its budget (credits, > 0) and every bid placed on it."""

    task_id: str
    budget: int
    bids: tuple[Bid, ...]

    def __post_init__(self) -> None:
        if self.budget <= 0:
            raise ValueError(f"task budget must be > 0, got {self.budget}")
        for bid in self.bids:
            if bid.task_id != self.task_id:
                raise ValueError(f"bid for task {bid.task_id!r} in the auction of task {self.task_id!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Award:
    """A task given to an agent.

    Attributes:
        price: credits the winner is paid (VCG), bid_price <= price <= the task's budget.
        bid_price: what the winner asked.
        scaled_cost: the winning bid's `price / reputation`.
        welfare: `budget - scaled_cost`, this award's share of the clearing's welfare.
    """

    task_id: str
    agent_id: str
    price: int
    bid_price: int
    scaled_cost: float
    welfare: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Clearing:
    """The outcome of `clear`: awards and unassigned task ids, both in task id order, and the total welfare.

    `assignment_size` is (tasks, agents) of the assignment problem solved, after pruning; (0, 0) when none was
    (one task, or no eligible bid).
    """

    awards: tuple[Award, ...]
    unassigned: tuple[str, ...]
    welfare: float
    assignment_size: tuple[int, int] = (0, 0)


def clear(auctions: Sequence[TaskAuction]) -> Clearing:
    """Assign tasks to bidders for maximum welfare and price each award by VCG (see the module docstring).

    Args:
        auctions: the auctions closing together, at most one per task id.

    Returns:
        The awards (one per assigned task), the task ids nobody eligible bid on, and the total welfare.

    Raises:
        ValueError: two auctions for one task id, or two different bids of one agent on one task with the same
            `placed_seq`.
    """
    ordered = sorted(auctions, key=attrgetter("task_id"))
    for before, after in pairwise(ordered):
        if before.task_id == after.task_id:
            raise ValueError(f"two auctions for task {after.task_id!r} in one clearing")
    size = (0, 0)
    if len(ordered) == 1:
        award = _clear_single(ordered[0])
        awards = [] if award is None else [award]
    else:
        awards, size = _clear_batch(ordered)
    won = {award.task_id for award in awards}
    return Clearing(
        awards=tuple(awards),
        unassigned=tuple(a.task_id for a in ordered if a.task_id not in won),
        welfare=_total_welfare(awards, {a.task_id: a.budget for a in ordered}),
        assignment_size=size,
    )


# -- one task: a scan ----------------------------------------------------------------------------------------------


def _clear_single(auction: TaskAuction) -> Award | None:
    """The lowest scaled cost wins and is paid the runner-up's scaled cost (or the budget) times its reputation."""
    bids = _live_bids(auction.bids)
    costs = [bid.price / bid.reputation for bid in bids]
    best = min(costs, default=math.inf)
    if best > auction.budget:
        return None
    if costs.count(best) == 1:
        index = costs.index(best)
        costs[index] = math.inf
        critical = min(min(costs), auction.budget)
    else:
        index = min((i for i, cost in enumerate(costs) if cost == best),
                    key=lambda i: (bids[i].placed_seq, bids[i].agent_id))
        critical = best
    return _award(auction, bids[index], critical)


def _live_bids(bids: Sequence[Bid]) -> Sequence[Bid]:
    """Each agent's latest bid (all bids are on one task)."""
    if len({bid.agent_id for bid in bids}) == len(bids):
        return bids
    latest: dict[str, Bid] = {}
    for bid in bids:
        current = latest.get(bid.agent_id)
        if current is None or bid.placed_seq > current.placed_seq:
            latest[bid.agent_id] = bid
        elif bid.placed_seq == current.placed_seq and bid != current:
            raise ValueError(f"two bids of agent {bid.agent_id!r} on task {bid.task_id!r} "
                             f"with placed_seq {bid.placed_seq}")
    return list(latest.values())


def _award(auction: TaskAuction, bid: Bid, scaled_payment: float) -> Award:
    scaled_cost = bid.price / bid.reputation
    scaled_payment = min(max(scaled_payment, scaled_cost), float(auction.budget))
    credits = math.floor(scaled_payment * bid.reputation * (1.0 + _PAYMENT_SLACK))
    return Award(task_id=auction.task_id, agent_id=bid.agent_id, price=min(auction.budget, max(bid.price, credits)),
                 bid_price=bid.price, scaled_cost=scaled_cost, welfare=auction.budget - scaled_cost)


def _total_welfare(awards: Iterable[Award], budgets: dict[str, int]) -> float:
    # Summing budgets and costs separately (exactly, with fsum) keeps the total independent of award order.
    return math.fsum(term for award in awards for term in (budgets[award.task_id], -award.scaled_cost))


# -- a batch: an assignment problem --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Market:
    """The live eligible bids of a batch as matrices: rows are tasks, columns agents (both in id order), then
    any zero-welfare padding columns."""

    auctions: list[TaskAuction]  # one per row
    agents: int  # columns that are agents, before the padding
    budget: npt.NDArray[np.float64]  # per row
    cost: _FloatMatrix  # scaled cost; inf where there is no eligible live bid
    seq: npt.NDArray[np.int64]  # placed_seq of the live bid
    bid: npt.NDArray[np.int64]  # index into the flat bid list; -1 where none
    flat: list[Bid]

    def welfare(self) -> _FloatMatrix:
        eligible = np.isfinite(self.cost)
        return np.where(eligible, self.budget[:, None] - np.where(eligible, self.cost, 0.0), 0.0)


def _clear_batch(auctions: list[TaskAuction]) -> tuple[list[Award], tuple[int, int]]:
    """The awards, and (tasks, agents) of the assignment problem solved."""
    market = _market(auctions)
    if market is None:
        return [], (0, 0)
    if len(market.auctions) == 1:
        award = _clear_single(market.auctions[0])
        return ([] if award is None else [award]), (0, 0)
    welfare = market.welfare()
    winner = _optimal_columns(market, welfare)
    _settle_ties(market, winner)
    awards = []
    for row in map(int, np.flatnonzero(winner >= 0)):
        column = int(winner[row])
        without = welfare.copy()
        without[:, column] = 0.0  # the agent takes no task: the same as removing its column
        alternative = _optimal_columns(market, without, excluded=column)
        awards.append(_award(market.auctions[row], market.flat[market.bid[row, column]],
                             _vcg_payment(market, row, winner, alternative)))
    return awards, (len(market.auctions), market.agents)


def _market(auctions: list[TaskAuction]) -> _Market | None:
    """Index every live eligible bid that can change the outcome (see Pruning); None when there is none. Rows and
    columns without one are left out."""
    flat = [bid for auction in auctions for bid in auction.bids]
    if not flat:
        return None
    rows = np.repeat(np.arange(len(auctions)), [len(auction.bids) for auction in auctions])
    # One comprehension per field: several times faster than building a tuple per bid.
    agent_ids = [bid.agent_id for bid in flat]
    names = sorted(set(agent_ids))
    rank = {name: i for i, name in enumerate(names)}
    cols = np.fromiter(map(rank.__getitem__, agent_ids), dtype=np.intp, count=len(flat))
    seq = np.array([bid.placed_seq for bid in flat], dtype=np.int64)
    cost = (np.array([bid.price for bid in flat], dtype=np.float64)
            / np.array([bid.reputation for bid in flat], dtype=np.float64))

    # Live bids: the last of each (task, agent) pair in placed_seq order.
    pair = rows * len(names) + cols
    order = np.lexsort((seq, pair))
    last = np.ones(len(flat), dtype=bool)
    last[:-1] = pair[order[1:]] != pair[order[:-1]]
    _reject_ambiguous(flat, order, pair, seq)
    live = order[last]
    budget = np.array([auction.budget for auction in auctions], dtype=np.float64)
    live = live[cost[live] <= budget[rows[live]]]
    if live.size == 0:
        return None
    live = live[_relevant(rows[live], cols[live], cost[live], seq[live])]

    task_rows, row_of = np.unique(rows[live], return_inverse=True)
    agent_cols, col_of = np.unique(cols[live], return_inverse=True)
    n_rows, n_cols = len(task_rows), len(agent_cols)
    if n_cols < n_rows <= 2 * n_cols:
        # The solver transposes a matrix with more rows than columns, and is then several times slower when
        # the two are close (100 tasks x 99 agents: 0.75 ms, padded to 100 x 100: 0.2 ms); far apart, the small
        # transposed problem is the faster one (100 x 30: 0.03 ms, padded: 0.15 ms).
        n_cols = n_rows
    shape = (n_rows, n_cols)
    cost_m = np.full(shape, np.inf)
    cost_m[row_of, col_of] = cost[live]
    seq_m = np.zeros(shape, dtype=np.int64)
    seq_m[row_of, col_of] = seq[live]
    bid_m = np.full(shape, -1, dtype=np.int64)
    bid_m[row_of, col_of] = live
    return _Market(auctions=[auctions[r] for r in task_rows], agents=len(agent_cols), budget=budget[task_rows],
                   cost=cost_m, seq=seq_m, bid=bid_m, flat=flat)


def _relevant(rows: _IntArray, cols: _IntArray, cost: _FloatMatrix, seq: npt.NDArray[np.int64]) -> _BoolArray:
    """Which of the live eligible bids (parallel arrays: task row, agent column, scaled cost, placed_seq) can change
    the outcome: per task, a prefix of its ranking, cut where the bidders above have a deficiency of two (module
    docstring, Pruning)."""
    task_of, task_index = np.unique(rows, return_inverse=True)
    agent_of, agent_index = np.unique(cols, return_inverse=True)
    n_tasks, n_agents = len(task_of), len(agent_of)
    # agent -> the tasks it has an eligible bid on; a last all-False row stands for "no bidder" in the padding.
    covers = np.zeros((n_agents + 1, n_tasks), dtype=bool)
    covers[agent_index, task_index] = True
    alone = covers.sum(axis=1) == 1  # bidders with no other eligible bid in the batch
    # Only a task's first n + 1 bidders can be kept: n - 1 other tasks cannot absorb n + 1 bidders ranked above.
    depth = n_tasks + 1
    order = np.lexsort((cols, seq, cost, task_index))  # by task, then rank (cols follow agent ids)
    first = np.searchsorted(task_index[order], np.arange(n_tasks))
    position = np.arange(len(order)) - first[task_index[order]]
    shown = position < depth
    ranked = np.full((n_tasks, depth), n_agents)  # [task, position] -> agent, padded with the empty row
    ranked[task_index[order[shown]], position[shown]] = agent_index[order[shown]]
    kept = np.empty(n_tasks, dtype=np.intp)
    # A few tasks at a time: each step builds a tasks x depth x n_tasks array, kept to a few megabytes.
    step = max(1, 4_000_000 // (depth * n_tasks))
    for lo in range(0, n_tasks, step):
        block = ranked[lo:lo + step]
        seen = np.logical_or.accumulate(covers[block], axis=1).sum(axis=2) - 1  # other tasks of the first i + 1
        deficiency = np.maximum(np.cumsum(alone[block], axis=1),
                                np.maximum.accumulate(np.arange(1, depth + 1) - seen, axis=1))
        reached = deficiency >= 2  # never goes back to False along a row
        # The bidder at position i is cut once the i bidders above it reach two.
        kept[lo:lo + step] = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, depth)
    keep = np.zeros(len(rows), dtype=bool)
    keep[order] = position < kept[task_index[order]]
    return keep


def _reject_ambiguous(flat: list[Bid], order: _IntArray, pair: _IntArray, seq: npt.NDArray[np.int64]) -> None:
    same = (pair[order[1:]] == pair[order[:-1]]) & (seq[order[1:]] == seq[order[:-1]])
    for k in np.flatnonzero(same):
        first, second = flat[order[k]], flat[order[k + 1]]
        if first != second:
            raise ValueError(f"two bids of agent {first.agent_id!r} on task {first.task_id!r} "
                             f"with placed_seq {first.placed_seq}")


def _optimal_columns(market: _Market, welfare: _FloatMatrix, excluded: int = -1) -> _IntArray:
    """A maximum-welfare allocation: the column awarded to each row, or -1 (pairs without a bid dropped)."""
    rows, cols = linear_sum_assignment(welfare, maximize=True)
    winner = np.full(len(market.auctions), -1, dtype=np.intp)
    real = np.isfinite(market.cost[rows, cols]) & (cols != excluded)
    winner[rows[real]] = cols[real]
    return winner


def _settle_ties(market: _Market, winner: _IntArray) -> None:
    """Apply the batch tie rules (module docstring) to `winner` in place; welfare never decreases.

    Each step strictly improves one task's outcome (unassigned -> assigned, or a winner -> an earlier-ranked
    bidder) and leaves the others alone, so the loop ends; the first task in id order is fixed first.
    """
    cost, seq = market.cost, market.seq
    n_rows, n_cols = cost.shape
    every_row, column = np.arange(n_rows), np.arange(n_cols)
    eligible = np.isfinite(cost)
    while True:
        free = np.ones(n_cols, dtype=bool)
        free[winner[winner >= 0]] = False
        assigned = winner >= 0
        current = np.where(assigned, winner, 0)
        current_cost = cost[every_row, current][:, None]
        current_seq = seq[every_row, current][:, None]
        earlier = (seq < current_seq) | ((seq == current_seq) & (column < current[:, None]))
        better = np.where(assigned[:, None], (cost == current_cost) & earlier, eligible) & free
        rows = np.flatnonzero(better.any(axis=1))
        if rows.size == 0:
            return
        row = rows[0]
        candidates = np.flatnonzero(better[row])
        winner[row] = candidates[np.lexsort((candidates, seq[row, candidates], cost[row, candidates]))[0]]


def _vcg_payment(market: _Market, row: int, winner: _IntArray, alternative: _IntArray) -> float:
    """Scaled cost + welfare(winner) - welfare(alternative), summed over the rows where the two differ.

    Rows the two allocations share cancel exactly, and fsum over budgets and costs (rather than over their
    rounded differences) keeps a single task's payment exactly the runner-up's scaled cost.
    """
    terms = [market.cost[row, winner[row]]]
    for r in np.flatnonzero(winner != alternative):
        budget = market.budget[r]
        if winner[r] >= 0:
            terms += (budget, -market.cost[r, winner[r]])
        if alternative[r] >= 0:
            terms += (-budget, market.cost[r, alternative[r]])
    return math.fsum(terms)
