"""Benchmark: how closely two replicas together hold one token's request rate.

Two hubs in this process share one embedded NATS and PostgreSQL (as tests/test_replicas.py runs them), with a
per-token limit of `--rate` requests a second and bursts of `--burst`. `--clients` workers send `GET
/api/v1/whoami` back to back with one agent token, alternating between the replicas, for `--seconds`. A limit that
each replica kept alone would admit about twice the rate; one bucket shared over NATS admits the rate plus the burst
plus what one replica admits before it hears of the other's use. Figures: admitted requests against `rate x seconds
+ burst`, per replica, and 429s. Run: `python bench/rate_limits.py`.
"""

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

import anyio
from harness import Row, cpu_count_note, embedded_services, print_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' way of running replicas in one process
from tests.conftest import HubFactory, Services  # noqa: E402

BAR = 1.25  # admitted / (rate x seconds + burst)


async def measure(args: argparse.Namespace) -> bool:
    with embedded_services() as services, tempfile.TemporaryDirectory(prefix="agenthub-rl-") as tmp:
        database = services.database_url
        factory = HubFactory(services=Services(nats_url=services.nats_url, nats_monitor_url="",
                                               nats_dir=services.nats_dir, admin_database_url=database),
                             database_url=database, prefix=f"rl{secrets.token_hex(3)}.", tmp_path=Path(tmp))
        limits = {"requests_per_second": args.rate, "request_burst": args.burst}
        async with factory.run(factory.settings(rate_limits=limits)) as a, \
                factory.run(factory.settings(rate_limits=limits)) as b:
            async with a.http() as http:
                token = (await http.post("/api/v1/tokens", json={"role": "agent", "agent_id": "bench"})).json()
            admitted = {"a": 0, "b": 0}
            refused = 0
            deadline = time.monotonic() + args.seconds

            async def worker(index: int) -> None:
                nonlocal refused
                hub, name = (a, "a") if index % 2 else (b, "b")
                async with hub.http(token["token"]) as client:
                    while time.monotonic() < deadline:
                        r = await client.get("/api/v1/whoami")
                        if r.status_code == 200:
                            admitted[name] += 1
                        elif r.status_code == 429:
                            refused += 1
                        else:
                            raise AssertionError(r.text)

            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                for i in range(args.clients):
                    tg.start_soon(worker, i)
            elapsed = time.monotonic() - started
    allowed = args.rate * elapsed + args.burst
    total = admitted["a"] + admitted["b"]
    rows = [
        Row(figure="admitted on both replicas", value=f"{total:,}", baseline=f"{allowed:,.0f} (rate x s + burst)",
            ratio=f"{total / allowed:.2f}", bar=f"<= {BAR}", passed=total / allowed <= BAR),
        Row(figure="admitted on a / on b", value=f"{admitted['a']:,} / {admitted['b']:,}"),
        Row(figure="refused (429)", value=f"{refused:,}"),
        Row(figure="one replica alone would admit about", value=f"{2 * allowed:,.0f}"),
    ]
    return print_table(f"one token's rate across two replicas: {args.rate:g}/s, bursts of {args.burst}, "
                       f"{args.clients} clients, {elapsed:.1f} s", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(f"rate limits benchmark: {cpu_count_note()}", flush=True)
    sys.exit(0 if anyio.run(measure, args) else 1)


if __name__ == "__main__":
    main()
