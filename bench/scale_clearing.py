"""Benchmark: does a replica keep answering while it clears a batch of 100 auctions with 10,000 bids (issue 11)?

A hub runs in a child process (embedded NATS and PostgreSQL, default market settings: the closer wakes every
0.25 s). Each round:

1. **Idle.** This process sends `GET /health` 200 times a second for `--idle` seconds, on a fixed schedule (open
   loop: a stalled hub gets every request it would have got, and each one's latency counts from when it was due,
   so a stall shows as many slow requests, not as one); their latencies are the baseline.
2. **Load.** 100 tasks are submitted through the REST API (each budget held in escrow from a requester funded by
   a deposit: the ledger's real paths) with a long bidding window, then 10,000 bids go straight into the `bids`
   table in one statement (10,000 REST calls would take longer than the whole measurement; the closer reads the
   same rows either way). Two shapes alternate: *spread*, 1,000 bidders on 10 random tasks each (pruning leaves
   almost everything in the matrix, so the solve is the full 100 x 1,000 problem), and *single*, 10,000 bidders
   on one task each (pruning leaves two per task).
3. **Clearing.** The requests start again; after 0.2 s every task's closing time is set to now in one statement,
   and the round ends when none of them is bidding any more (watched through PostgreSQL, not the hub). Latencies
   of requests due from the update until then are the clearing window.

Figures: `/health` p99 during the clearing windows ÷ p99 of the idle windows (bar: <= 3), per shape; and, to
inform, the time from the close to the last task assigned, p50 and max. Checks: every task assigned (each has
eligible bids and fewer tasks than bidders), each winner paid within [its bid, the budget], and the ledger
balanced at the end.

Run: `python bench/scale_clearing.py` (`--help` for the knobs); about 40 s.
"""

import argparse
import itertools
import random
import sys
import time
import uuid
from dataclasses import dataclass, field

import anyio
import asyncpg
import httpx2
from harness import (
    ChildServer,
    Row,
    Services,
    add_hub_child_arguments,
    cpu_count_note,
    embedded_services,
    fmt,
    hub_child_args,
    hub_settings,
    operator_token,
    percentile,
    print_table,
    run_child,
    serve_hub,
)

from market.ledger import Ledger

SCRIPT = __file__
HUB_NAME = "hub"
BAR_RATIO = 3.0
TASKS = 100
BIDS = 10_000
BUDGET = 1_000
RATE = 200.0  # /health requests per second, while idle and while clearing
LEAD_IN = 0.2  # seconds of polling before the close, so that the pollers are running when it happens
SHAPES = ("spread", "single")
REQUESTER = "bench"


@dataclass(slots=True, kw_only=True)
class Window:
    """`/health` latencies (seconds) of one kind of window, over all rounds."""

    latencies: list[float] = field(default_factory=list)
    clear_seconds: list[float] = field(default_factory=list)


def bids_for(shape: str, task_ids: list[str], rng: random.Random, round_no: int) -> list[tuple[str, str, int, float]]:
    """`BIDS` rows (task, agent, price, estimated seconds): every price eligible at a new agent's reputation."""
    per_bidder = 10 if shape == "spread" else 1
    return [(task_id, f"r{round_no}-{shape}-{n:05d}", rng.randint(10, BUDGET // 2), 60.0)
            for n in range(BIDS // per_bidder) for task_id in rng.sample(task_ids, per_bidder)]


async def submit_tasks(http: httpx2.AsyncClient, count: int) -> list[str]:
    ids: list[str] = []

    async def one() -> None:
        r = await http.post("/api/v1/tasks", json={
            "requester_id": REQUESTER, "description": "scale benchmark task", "required_capabilities": [],
            "budget": BUDGET, "bidding_seconds": 3600, "idempotency_key": str(uuid.uuid4())})
        r.raise_for_status()
        ids.append(r.json()["task_id"])

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one)
    return ids


async def poll_health(client: httpx2.AsyncClient, stop: anyio.Event) -> list[tuple[float, float]]:
    """(scheduled time, latency) of `GET /health` requests sent `RATE` times a second until `stop`.

    Open loop: each request goes out on schedule whether or not the earlier ones were answered, and its latency
    counts from its scheduled time. Pollers that wait for each answer would send one request into a stalled loop
    and then nothing, so a one-second stall would be a single slow sample.
    """
    samples: list[tuple[float, float]] = []

    async def one(scheduled: float) -> None:
        r = await client.get("/health")
        samples.append((scheduled, time.perf_counter() - scheduled))
        r.raise_for_status()

    async with anyio.create_task_group() as tg:
        first = time.perf_counter()
        for n in itertools.count():
            scheduled = first + n / RATE
            with anyio.move_on_after(scheduled - time.perf_counter()):
                await stop.wait()
            if stop.is_set():
                break
            tg.start_soon(one, scheduled)
    return samples


async def idle_window(client: httpx2.AsyncClient, seconds: float) -> list[float]:
    stop = anyio.Event()
    samples: list[tuple[float, float]] = []

    async def run() -> None:
        samples.extend(await poll_health(client, stop))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await anyio.sleep(seconds)
        stop.set()
    return [latency for _, latency in samples]


async def clearing_window(client: httpx2.AsyncClient, db: asyncpg.Pool, task_ids: list[str],
                          deadline: float) -> tuple[list[float], float]:
    """Close the tasks while polling; returns the latencies of requests scheduled from the close until no task was
    bidding, and the seconds that took."""
    stop = anyio.Event()
    samples: list[tuple[float, float]] = []
    closed_at = cleared_at = 0.0

    async def run() -> None:
        samples.extend(await poll_health(client, stop))

    with anyio.fail_after(deadline):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await anyio.sleep(LEAD_IN)
            closed_at = time.perf_counter()
            await db.execute("UPDATE tasks SET bidding_closes_at = now() WHERE id = ANY($1)", task_ids)
            # The hub says nothing when it has cleared; PostgreSQL is asked, so that the hub is not.
            while await db.fetchval(  # noqa: ASYNC110
                    "SELECT count(*) FROM tasks WHERE id = ANY($1) AND state = 'bidding'", task_ids):
                await anyio.sleep(0.01)
            cleared_at = time.perf_counter()
            stop.set()
    return [latency for scheduled, latency in samples if closed_at <= scheduled <= cleared_at], cleared_at - closed_at


async def check_round(db: asyncpg.Pool, task_ids: list[str]) -> list[str]:
    """What is wrong with the round's outcome (nothing, normally)."""
    rows = await db.fetch(
        "SELECT t.id, t.state, t.price, b.price AS asked FROM tasks t"
        " LEFT JOIN bids b ON b.task_id = t.id AND b.agent_id = t.winner WHERE t.id = ANY($1)", task_ids)
    return [f"task {r['id']}: {r['state']}, paid {r['price']} for a bid of {r['asked']}" for r in rows
            if r["state"] != "assigned" or not r["asked"] <= r["price"] <= BUDGET]


def start_hub(services: Services) -> ChildServer:
    server = ChildServer(SCRIPT, ["--serve", *hub_child_args(services, HUB_NAME)])
    return server.__enter__()


async def measure_clearing_stall(services: Services, *, rounds: int = 4, idle_seconds: float = 1.5,
                                 deadline: float = 60.0, seed: int = 11) -> list[Row]:
    """`/health` latency on a hub child while it clears 100 x 10,000 batches, against the same hub idle.

    Args:
        services: embedded NATS and PostgreSQL, with no hub data yet.
        rounds: idle window + clearing window pairs; the shapes alternate (at least one round of each).
        idle_seconds: length of each idle window.
        deadline: seconds a round's clearing may take.
        seed: seed of the bid prices and of who bids on what.
    """
    rng = random.Random(seed)
    server = await anyio.to_thread.run_sync(start_hub, services)
    headers = {"authorization": f"Bearer {operator_token(services, HUB_NAME)}"}
    idle = Window()
    clearing = {shape: Window() for shape in SHAPES}
    problems: list[str] = []
    try:
        async with httpx2.AsyncClient(base_url=server.url, headers=headers, timeout=60) as http, \
                asyncpg.create_pool(services.database_url, min_size=1, max_size=2) as db:
            # Enough connections for every request of a stall of a few seconds to be in flight at once.
            poller = httpx2.AsyncClient(base_url=server.url, timeout=30, limits=httpx2.Limits(max_connections=1000))
            r = await http.post(f"/api/v1/accounts/requester:{REQUESTER}/deposit",
                                json={"amount": rounds * TASKS * BUDGET, "idempotency_key": str(uuid.uuid4())})
            r.raise_for_status()
            try:
                for n in range(rounds):
                    shape = SHAPES[n % len(SHAPES)]
                    quiet = await idle_window(poller, idle_seconds)
                    idle.latencies += quiet
                    task_ids = await submit_tasks(http, TASKS)
                    await db.execute(
                        "INSERT INTO bids (task_id, agent_id, price, estimated_seconds)"
                        " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::float8[])",
                        *map(list, zip(*bids_for(shape, task_ids, rng, n), strict=True)))
                    latencies, took = await clearing_window(poller, db, task_ids, deadline)
                    clearing[shape].latencies += latencies
                    clearing[shape].clear_seconds.append(took)
                    problems += await check_round(db, task_ids)
                    print(f"  round {n + 1} ({shape}): /health p99 idle {percentile(quiet, 99) * 1e3:.2f} ms, "
                          f"clearing {percentile(latencies, 99) * 1e3:.2f} ms ({len(latencies)} requests); "
                          f"cleared in {took * 1e3:,.0f} ms", flush=True)
            finally:
                await poller.aclose()
            audit = await Ledger(db).verify()
            if not audit.ok:
                problems.append(f"the ledger does not balance: {audit}")
    finally:
        await anyio.to_thread.run_sync(server.stop)
    return rows(idle, clearing, problems)


def rows(idle: Window, clearing: dict[str, Window], problems: list[str]) -> list[Row]:
    base = percentile(idle.latencies, 99)
    table = []
    for shape, window in clearing.items():
        if not window.latencies:
            continue
        p99 = percentile(window.latencies, 99)
        who = "1,000 bidders x 10 tasks" if shape == "spread" else "10,000 bidders x 1 task"
        table += [
            Row(figure=f"/health p99 while clearing {TASKS} x {BIDS:,} ({who}) (ms)", value=fmt(p99 * 1e3, 2),
                baseline=fmt(base * 1e3, 2) + " (idle)", ratio=f"{p99 / base:.2f}", bar=f"<= {BAR_RATIO:g}",
                passed=p99 / base <= BAR_RATIO),
            Row(figure=f"  {shape}: /health max while clearing (ms)", value=fmt(max(window.latencies) * 1e3, 2),
                baseline=fmt(max(idle.latencies) * 1e3, 2) + " (idle)"),
            Row(figure=f"  {shape}: close -> all assigned, p50 / max (ms)",
                value=f"{fmt(percentile(window.clear_seconds, 50) * 1e3, 0)} / "
                      f"{fmt(max(window.clear_seconds) * 1e3, 0)}"),
            Row(figure=f"  {shape}: /health requests during the clearing", value=f"{len(window.latencies):,}"),
        ]
    table.append(Row(figure="/health requests while idle", value=f"{len(idle.latencies):,}"))
    table.append(Row(figure="tasks not assigned, or paid outside [bid, budget]; ledger unbalanced",
                     value=str(len(problems)), bar="0", passed=not problems))
    for why in problems[:5]:
        print(f"  problem: {why}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="idle + clearing rounds, shapes alternating (2..20)")
    parser.add_argument("--idle", type=float, default=1.5, help="seconds of each idle window")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds a round's clearing may take")
    parser.add_argument("--seed", type=int, default=11, help="seed of the bids")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    add_hub_child_arguments(parser)
    args = parser.parse_args()
    if args.serve:
        settings = hub_settings(args)
        run_child(lambda sock: serve_hub(settings, sock), args.port)
        return
    if not 2 <= args.rounds <= 20:
        sys.exit("--rounds must be between 2 and 20")
    print(f"clearing stall benchmark: {cpu_count_note()}", flush=True)
    with embedded_services() as services:
        table = anyio.run(lambda: measure_clearing_stall(services, rounds=args.rounds, idle_seconds=args.idle,
                                                         deadline=args.deadline, seed=args.seed),
                          backend_options={"use_uvloop": True})
    ok = print_table(f"/health on a replica clearing {TASKS} auctions x {BIDS:,} bids, against the same replica "
                     "idle, same run", table)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
