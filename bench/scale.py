"""Issue 11: the hub at scale. Every figure is printed beside its baseline measured in the same run.

- **Reads at 1,000,000 discoveries ÷ the same at 10,000.** Two hub children on two databases of one embedded
  PostgreSQL, loaded through the JSON Lines import (`agenthub discoveries import`, a subprocess, as an operator
  would) from the same generated data: 10,000 discoveries into one, `--discoveries` into the other. The same calls
  on both: `poll_discoveries` (MCP, 2026-07-28) and `GET /api/v1/discoveries` filtered on one rare agent (its 20
  discoveries, all among the first 10,000) from cursor 0; `GET /api/v1/status`; MCP `resources/list`;
  `GET /metrics/system`. Calls alternate between the two hubs, so a busy machine slows both alike. Each figure is
  the median of `--calls` calls made after 6 × the hub's PostgreSQL pool size warm-up calls, so every pooled
  connection has run each statement more than five times (where PostgreSQL may switch to a generic plan).
  Bar: ratio ≤ 2.
- **Import rate.** Lines per second of the big import, end to end (informative; the issue asks for "minutes").
- **Catch-up memory.** A replica of the big hub (same database) is frozen (SIGSTOP) during the big import, so
  its live feed falls `--discoveries` behind, then resumed: its peak RSS until its feed has delivered everything
  (`agenthub_feed_sequence`), ÷ its idle RSS measured just before. Bar ≤ 1.5.
- **Spawn burst** (`bench/scale_spawn.py`) and **clearing stall** (`bench/scale_clearing.py`): each also runs on its
  own, with its own knobs; their docstrings say what they measure.

Run `python bench/scale.py` (about 8 minutes at 1,000,000); `--discoveries 200000` for a quicker look, `--only`
for one part.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (  # noqa: E402
    MODERN_PROTOCOL,
    ChildServer,
    Row,
    add_hub_child_arguments,
    cpu_count_note,
    embedded_services,
    fmt,
    hub_child_args,
    hub_settings,
    operator_token,
    print_table,
    run_child,
    serve_hub,
    tool_call_body,
    tool_call_headers,
)
from scale_clearing import measure_clearing_stall  # noqa: E402
from scale_spawn import measure_spawn_burst  # noqa: E402

SMALL = 10_000
RARE = "rare-agent"
RARE_COUNT = 20
_AGENTS = [f"agent-{i:02d}" for i in range(40)]
_TYPES = ["pattern", "anomaly", "connection", "solution", "question", "insight"]
_ROLES = ["Analyzer", "Critic", "Builder", "Researcher"]
_CATCH_UP_SECONDS = 600.0
_POOL_SIZE = 10  # the hub's default db_pool_size


def write_discoveries(path: Path, first: int, count: int) -> None:
    """`count` export lines numbered from `first`, spread over the last 30 days; the rare agent's few all fall
    among the first SMALL."""
    now = time.time()
    rare_every = SMALL // RARE_COUNT
    with path.open("w") as out:
        for i in range(first, first + count):
            agent = RARE if i < SMALL and i % rare_every == 7 else _AGENTS[i % len(_AGENTS)]
            at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 30 * 86400 + i * 2.5)) + "Z"
            out.write(json.dumps({
                "kind": "discovery", "discovery_id": f"disc_{i:016x}", "agent_id": agent,
                "agent_role": _ROLES[i % len(_ROLES)], "discovery_type": _TYPES[i % len(_TYPES)],
                "content": f"observation {i}: the cache hit rate of shard {i % 97} fell while queue depth rose",
                "confidence": round((i % 100) / 100, 2), "tags": ["bench", f"shard-{i % 97}"], "timestamp": at,
            }, separators=(",", ":")) + "\n")


def import_file(hub: ChildServer, data_dir: Path, path: Path) -> float:
    """`agenthub discoveries import` against the hub (its operator token is in `data_dir`); returns the seconds it
    took."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTHUB_")}
    started = time.monotonic()
    subprocess.run(["agenthub", "discoveries", "import", str(path), "--url", hub.url,
                    "--data-dir", str(data_dir)], check=True, env=env, stderr=subprocess.DEVNULL,
                   timeout=_CATCH_UP_SECONDS)
    return time.monotonic() - started


def _timed(call: Callable[[], None]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def _reads(hub: ChildServer, token: str, http: httpx2.Client, subscription_id: str) -> dict[str, Callable[[], None]]:
    """Each read the issue names, as a call that checks its answer."""

    def ok(resp: httpx2.Response) -> dict[str, Any]:
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def poll() -> None:
        body = tool_call_body(1, "poll_discoveries", {"subscription_id": subscription_id, "cursor": 0, "limit": 100})
        answer = ok(http.post("/mcp", content=body, headers={**tool_call_headers(token),
                                                             "mcp-name": "poll_discoveries"}))
        assert len(answer["result"]["structuredContent"]["discoveries"]) == RARE_COUNT, answer

    def rest_list() -> None:
        page = ok(http.get("/api/v1/discoveries", params={"agent_id": RARE, "cursor": 0, "limit": 100}))
        assert len(page["items"]) == RARE_COUNT

    def resources() -> None:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "resources/list", "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": MODERN_PROTOCOL,
            "io.modelcontextprotocol/clientCapabilities": {}}}}).encode()
        answer = ok(http.post("/mcp", content=body, headers={**tool_call_headers(token),
                                                             "mcp-method": "resources/list"}))
        assert len(answer["result"]["resources"]) == len(_AGENTS) + 1, answer

    return {
        "poll_discoveries, one rare agent, cursor 0": poll,
        "GET /api/v1/discoveries?agent_id=rare, cursor 0": rest_list,
        "GET /api/v1/status": lambda: ok(http.get("/api/v1/status")) and None,
        "MCP resources/list": resources,
        "GET /metrics/system": lambda: ok(http.get("/metrics/system")) and None,
    }


def measure_reads(small: tuple[ChildServer, str, str], big: tuple[ChildServer, str, str], calls: int
                  ) -> dict[str, tuple[float, float]]:
    """(median ms at the small size, at the big size) per read. Calls alternate between the two hubs, so a busy
    machine slows both alike; each measured series follows 6 × the pool size warm-up calls."""
    (s_hub, s_token, s_sub), (b_hub, b_token, b_sub) = small, big
    with httpx2.Client(base_url=s_hub.url, headers={"authorization": f"Bearer {s_token}"}, timeout=60) as s_http, \
            httpx2.Client(base_url=b_hub.url, headers={"authorization": f"Bearer {b_token}"}, timeout=60) as b_http:
        s_reads, b_reads = _reads(s_hub, s_token, s_http, s_sub), _reads(b_hub, b_token, b_http, b_sub)
        out = {}
        for name in s_reads:
            for _ in range(6 * _POOL_SIZE):
                s_reads[name]()
                b_reads[name]()
            s_times, b_times = [], []
            for _ in range(calls):
                s_times.append(_timed(s_reads[name]))
                b_times.append(_timed(b_reads[name]))
            out[name] = (statistics.median(s_times), statistics.median(b_times))
        return out


def _newest(hub: ChildServer, token: str) -> int:
    with httpx2.Client(base_url=hub.url, headers={"authorization": f"Bearer {token}"}, timeout=60) as http:
        return int(http.get("/api/v1/status").json()["newest_sequence"])


def catch_up_peak_rss(replica: ChildServer, newest: int) -> tuple[int, float]:
    """Resume the frozen replica and sample its RSS until its feed has delivered `newest`: (peak, seconds)."""
    assert replica.process is not None
    peak, stop = replica.rss(), threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, replica.rss())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    try:
        replica.process.send_signal(signal.SIGCONT)
        while replica.metric("agenthub_feed_sequence") < newest:
            if time.monotonic() - started > _CATCH_UP_SECONDS:
                raise RuntimeError(f"the replica did not catch up within {_CATCH_UP_SECONDS:.0f} s")
            time.sleep(0.2)
    finally:
        stop.set()
        sampler.join()
    return peak, time.monotonic() - started


def _subscribe_to_rare(hub: ChildServer, token: str) -> str:
    with httpx2.Client(base_url=hub.url, headers={"authorization": f"Bearer {token}"}, timeout=60) as http:
        resp = http.post("/api/v1/subscriptions", json={"subscriber_agent_id": "bench", "agent_ids": [RARE],
                                                         "start": "beginning"})
        return str(resp.json()["subscription_id"])


async def _create_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def bench_log(total: int, calls: int) -> list[Row]:
    """A hub holding SMALL discoveries and one holding `total` (same generated data, first SMALL in common), read
    alternately; and a replica of the big one that misses the whole import and then catches up."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="agenthub-scale-") as tmp, embedded_services() as services:
        data = Path(tmp) / "discoveries.jsonl"
        write_discoveries(data, 0, SMALL)
        small_db = anyio.run(_create_database, services.database_url, "small")
        small_args = ["--serve-hub", *hub_child_args(services, "small"), "--subject-prefix", "small."]
        small_args[small_args.index("--database-url") + 1] = small_db  # its own log, so its own NATS subjects
        me = str(Path(__file__).resolve())
        with ChildServer(me, small_args) as small_hub, \
                ChildServer(me, ["--serve-hub", *hub_child_args(services, "big")]) as big_hub, \
                ChildServer(me, ["--serve-hub", *hub_child_args(services, "replica")]) as replica:
            small_token, big_token = operator_token(services, "small"), operator_token(services, "big")
            import_file(small_hub, services.root / "small", data)
            write_discoveries(data, 0, total)
            idle_rss = replica.rss()
            assert replica.process is not None
            replica.process.send_signal(signal.SIGSTOP)
            try:
                seconds = import_file(big_hub, services.root / "big", data)
            finally:
                newest = _newest(big_hub, big_token)
                peak_rss, catch_up = catch_up_peak_rss(replica, newest)
            figures = measure_reads((small_hub, small_token, _subscribe_to_rare(small_hub, small_token)),
                                    (big_hub, big_token, _subscribe_to_rare(big_hub, big_token)), calls)
    assert newest == total, (newest, total)
    for name, (at_small, at_big) in figures.items():
        ratio = at_big / at_small
        rows.append(Row(figure=f"{name} at {total:,} (ms, median)", value=fmt(at_big, 2),
                        baseline=f"{fmt(at_small, 2)} at {SMALL:,}", ratio=fmt(ratio, 2), bar="≤ 2",
                        passed=ratio <= 2))
    rows.append(Row(figure=f"import of {total:,} discoveries (CLI, lines/s)", value=fmt(total / seconds, 0),
                    baseline=f"{fmt(seconds, 0)} s in all"))
    ratio = peak_rss / idle_rss
    rows.append(Row(figure=f"replica RSS catching up {total:,} missed (MiB, peak)", value=fmt(peak_rss / 2**20),
                    baseline=f"idle {fmt(idle_rss / 2**20)}", ratio=fmt(ratio, 2), bar="≤ 1.5",
                    passed=ratio <= 1.5))
    rows.append(Row(figure="replica catch-up time (s, informative)", value=fmt(catch_up)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--discoveries", type=int, default=1_000_000, help="log size for the big half (≤ 2M)")
    parser.add_argument("--calls", type=int, default=60, help="measured calls per read figure")
    parser.add_argument("--only", choices=["log", "spawn", "clearing"], help="run one part")
    parser.add_argument("--serve-hub", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--subject-prefix", default="", help=argparse.SUPPRESS)
    add_hub_child_arguments(parser)
    args = parser.parse_args()
    if args.serve_hub:
        settings = hub_settings(args, nats_subject_prefix=args.subject_prefix)
        run_child(lambda sock: serve_hub(settings, sock), args.port)
        return
    if not SMALL * 2 <= args.discoveries <= 2_000_000:
        parser.error(f"--discoveries must be between {SMALL * 2} and 2,000,000")
    print(f"bench/scale.py: {cpu_count_note()}")
    rows: list[Row] = []
    if args.only in (None, "log"):
        rows += bench_log(args.discoveries, args.calls)
    if args.only in (None, "spawn"):
        with embedded_services() as services:
            rows += anyio.run(measure_spawn_burst, services, backend_options={"use_uvloop": True})
    if args.only in (None, "clearing"):
        with embedded_services() as services:
            rows += anyio.run(measure_clearing_stall, services, backend_options={"use_uvloop": True})
    if not print_table("hub at scale", rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
