"""Benchmark: clearing sealed-bid auctions (`market.clearing.clear`) against the bare work in the same run (issue 4).

Two figures, each beside a baseline timed in the same process, interleaved sample by sample so that host drift
hits both alike:

- single: one task with 1,000 bids (random prices and reputations, fixed seed). `clear` scans them once (no
  matrix) for the winner and its critical price. Baseline: `min()` over the 1,000 scaled costs, precomputed.
- batch: 100 tasks x 100 bidders, every bidder on every task (random prices, one reputation per bidder, fixed
  seed). `clear` builds the welfare matrix, solves the assignment, settles ties and re-solves once per winner
  for the VCG payments. Baseline: one `scipy.optimize.linear_sum_assignment` on the same 100 x 100 welfare
  matrix.

- ledger: escrow holds (the transfer every `submit_task` makes: idempotency key, two locked accounts, the escrow,
  the transfer, two postings, balanced-transfer triggers at commit) by 20 concurrent clients, each paying from
  its own account, for a few seconds, against an embedded PostgreSQL. Baseline: the same 20 clients doing raw
  single-row inserts into a one-column table of the same database, in the same run.

Run: `python bench/auction.py` (`--help` for the knobs).
"""

import argparse
import itertools
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import anyio
import numpy as np
from harness import Row, cpu_count_note, embedded_services, fmt, print_table
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

from agenthub.database import open_pool
from market import escrow
from market.clearing import Bid, TaskAuction, clear
from market.ledger import Ledger, requester_account

SINGLE_BIDS = 1000
BATCH_TASKS = 100
BATCH_BIDDERS = 100
SINGLE_BAR = 15.0  # clear(one task) / min() over precomputed scaled costs
BATCH_BAR = 150.0  # clear(batch) / one raw assignment solve
LEDGER_CLIENTS = 20
LEDGER_SECONDS = 3.0
# holds/s ÷ single-row inserts/s. A hold is one transaction of about ten round trips (lock both accounts, create the
# escrow and its account, the transfer, two postings, two balances, commit with the balance triggers) where the
# baseline makes one: about 0.1 at best; the bar allows 40 % on top of that.
LEDGER_BAR = 0.07


def timed(calls: int, fn: Callable[[], object]) -> float:
    """Seconds per call of `fn`, over `calls` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def compare(measured: Callable[[], object], baseline: Callable[[], object], *, calls: tuple[int, int],
            samples: int, budget: float) -> tuple[float, float, int]:
    """Median seconds per call of each, sampled alternately (the order flips each round) until `samples` pairs
    or `budget` seconds; returns (measured, baseline, pairs taken)."""
    measured(), baseline()  # warm up
    ours: list[float] = []
    theirs: list[float] = []
    deadline = time.monotonic() + budget
    while len(ours) < samples and (len(ours) < 3 or time.monotonic() < deadline):
        if len(ours) % 2:
            theirs.append(timed(calls[1], baseline))
            ours.append(timed(calls[0], measured))
        else:
            ours.append(timed(calls[0], measured))
            theirs.append(timed(calls[1], baseline))
    return statistics.median(ours), statistics.median(theirs), len(ours)


def single_task_rows(args: argparse.Namespace) -> list[Row]:
    rng = random.Random(args.seed)
    bids = tuple(Bid(task_id="t", agent_id=f"agent-{i:04d}", price=rng.randint(50, 1000), estimated_seconds=60.0,
                     reputation=rng.uniform(0.3, 1.0), placed_seq=i) for i in range(SINGLE_BIDS))
    auction = TaskAuction(task_id="t", budget=2000, bids=bids)
    costs = [b.price / b.reputation for b in bids]
    winner = min(bids, key=lambda b: b.price / b.reputation)
    award = clear([auction]).awards[0]
    ours, bare, pairs = compare(lambda: clear([auction]), lambda: min(costs), calls=(20, 200),
                                samples=args.samples, budget=args.budget)
    _, scan, _ = compare(lambda: clear([auction]), lambda: min(b.price / b.reputation for b in bids),
                         calls=(20, 20), samples=min(args.samples, 9), budget=args.budget / 4)
    return [
        Row(figure=f"single: clear, 1 task x {SINGLE_BIDS:,} bids (us)", value=fmt(ours * 1e6),
            baseline=fmt(bare * 1e6), ratio=f"{ours / bare:.1f}x", bar=f"<= {SINGLE_BAR:.0f}x",
            passed=ours / bare <= SINGLE_BAR),
        Row(figure="single: vs min() computing the scaled costs (us)", value=fmt(ours * 1e6),
            baseline=fmt(scan * 1e6), ratio=f"{ours / scan:.1f}x"),
        Row(figure="single: winner is the lowest scaled cost", value=award.agent_id, baseline=winner.agent_id,
            bar="same", passed=award.agent_id == winner.agent_id),
        Row(figure="single: samples (median of)", value=str(pairs)),
    ]


def batch_rows(args: argparse.Namespace) -> list[Row]:
    rng = np.random.default_rng(args.seed)
    budgets = rng.integers(1000, 2001, BATCH_TASKS)
    prices = rng.integers(100, 1001, (BATCH_TASKS, BATCH_BIDDERS))
    reputations = rng.uniform(0.5, 1.0, BATCH_BIDDERS)
    auctions = [TaskAuction(task_id=f"task-{t:03d}", budget=int(budgets[t]), bids=tuple(
        Bid(task_id=f"task-{t:03d}", agent_id=f"agent-{a:03d}", price=int(prices[t, a]), estimated_seconds=60.0,
            reputation=float(reputations[a]), placed_seq=t * BATCH_BIDDERS + a) for a in range(BATCH_BIDDERS)))
        for t in range(BATCH_TASKS)]
    cost = prices / reputations[None, :]
    welfare = np.where(cost <= budgets[:, None], budgets[:, None] - cost, 0.0)
    rows, cols = linear_sum_assignment(welfare, maximize=True)
    optimum = float(welfare[rows, cols].sum())
    clearing = clear(auctions)
    solves = 1 + len(clearing.awards)
    ours, raw, pairs = compare(lambda: clear(auctions), lambda: linear_sum_assignment(welfare, maximize=True),
                               calls=(1, 20), samples=args.samples, budget=args.budget)
    return [
        Row(figure=f"batch: clear, {BATCH_TASKS} tasks x {BATCH_BIDDERS} bidders (ms)", value=fmt(ours * 1e3, 2),
            baseline=fmt(raw * 1e3, 3), ratio=f"{ours / raw:.0f}x", bar=f"<= {BATCH_BAR:.0f}x",
            passed=ours / raw <= BATCH_BAR),
        Row(figure="batch: per solve (1 + winners = solves)", value=f"{solves} solves",
            ratio=f"{ours / raw / solves:.2f}x"),
        Row(figure="batch: welfare equals the raw solve's optimum", value=fmt(clearing.welfare, 3),
            baseline=fmt(optimum, 3), bar="same", passed=abs(clearing.welfare - optimum) <= 1e-6 * optimum),
        Row(figure="batch: winners paid within [bid, budget]", value=str(len(clearing.awards)), bar="all",
            passed=all(w.bid_price <= w.price <= budgets[int(w.task_id[5:])] for w in clearing.awards)),
        Row(figure="batch: samples (median of)", value=str(pairs)),
    ]


async def _rate(op: Callable[[int, int], Awaitable[None]]) -> float:
    """Operations per second by LEDGER_CLIENTS concurrent clients for LEDGER_SECONDS (each finishes the operation
    it has begun: cancelling one inside a transaction would measure the rollback too)."""
    done = [0] * LEDGER_CLIENTS
    started = time.perf_counter()
    end = started + LEDGER_SECONDS

    async def client(i: int) -> None:
        for n in itertools.count():
            if time.perf_counter() >= end:
                return
            await op(i, n)
            done[i] += 1

    with anyio.fail_after(LEDGER_SECONDS + 30):
        async with anyio.create_task_group() as tg:
            for i in range(LEDGER_CLIENTS):
                tg.start_soon(client, i)
    return sum(done) / (time.perf_counter() - started)


async def _ledger_rates(url: str) -> tuple[float, float]:
    async with open_pool(url, size=LEDGER_CLIENTS + 1) as pool:
        ledger = Ledger(pool)
        for i in range(LEDGER_CLIENTS):
            await ledger.deposit(requester_account(f"bench{i}"), 10**12, key=f"fund-{i}", scope="bench")
        await pool.execute("CREATE TABLE bench_rows (n bigint NOT NULL)")

        async def hold(i: int, n: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await escrow.hold(conn, requester_account(f"bench{i}"), 1, f"bench-{i}-{n}")

        async def insert(i: int, n: int) -> None:
            await pool.execute("INSERT INTO bench_rows (n) VALUES ($1)", n)

        inserts = await _rate(insert)
        holds = await _rate(hold)
        audit = await ledger.verify()
        if not audit.ok:
            raise SystemExit(f"the ledger does not balance after the benchmark: {audit}")
    return holds, inserts


def ledger_rows(args: argparse.Namespace) -> list[Row]:
    with embedded_services() as services:
        holds, inserts = anyio.run(_ledger_rates, services.database_url)
    ratio = holds / inserts
    return [Row(figure=f"ledger: escrow holds/s, {LEDGER_CLIENTS} clients", value=fmt(holds),
                baseline=f"{fmt(inserts)} single-row inserts/s", ratio=f"{ratio:.2f}", bar=f">= {LEDGER_BAR}",
                passed=ratio >= LEDGER_BAR)]


FIGURES: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "single": single_task_rows,
    "batch": batch_rows,
    "ledger": ledger_rows,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figures", default=",".join(FIGURES),
                        help=f"comma-separated, from: {', '.join(FIGURES)} (default: all)")
    parser.add_argument("--samples", type=int, default=31, help="timing samples per figure (median taken)")
    parser.add_argument("--budget", type=float, default=8.0, help="seconds per figure after 3 samples")
    parser.add_argument("--seed", type=int, default=4, help="seed of the random instances")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.figures.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(FIGURES))
    if unknown or not chosen:
        sys.exit(f"unknown figures {unknown}; choose from {', '.join(FIGURES)}")
    print(f"auction benchmark: {cpu_count_note()}", flush=True)
    rows = [row for name in chosen for row in FIGURES[name](args)]
    sys.exit(0 if print_table("Auction clearing and ledger transfers against bare baselines, same run", rows) else 1)


if __name__ == "__main__":
    main()
