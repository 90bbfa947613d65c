"""Benchmark: what a verified settlement costs (issue 16), against the requester checking the result itself.

A hub runs in a child process (embedded NATS and PostgreSQL, default settings). Tasks are submitted through REST,
a bid is placed on each (by an agent of its own) and the auctions cleared; then each awarded task is settled, one
at a time, in one of four ways, interleaved round by round so that host drift hits all alike:

- **schema (hub)**: the task carries a JSON Schema acceptance check; the winner's `report` (completed) makes the
  hub check the result (in its warm checker process) and release the escrow. One request.
- **schema (baseline)**: the same task without a check, settled as a requester would without the feature: the
  winner's `report`, the requester validating the result with `jsonschema` in its own process, then `accept`.
- **evaluator (hub)**: the task carries a WASM evaluator (tests/wasm/evaluator_needle.wat); the `report` runs it
  in the hub's sandbox and releases the escrow.
- **evaluator (baseline)**: `report`, the requester running the same module with raw `wasmtime` (instantiate,
  WASI stdin, run) in its own process, then `accept`.

Figures: the median time from sending the `report` to the escrow released, hub ÷ baseline, per kind of check (info:
no bar; a ratio under 1 means the hub settles faster than the requester's own check plus its `accept`). The first
schema check of a run starts the checker process; it is left out (`--warmup`). Checks: every escrow released and
every check passed.

Run: `python bench/settlement.py` (`--help` for the knobs); about 30 s.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jsonschema
import wasmtime
from harness import (
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
)

HUB_NAME = "hub"
EVALUATOR = Path(__file__).resolve().parents[1] / "tests" / "wasm" / "evaluator_needle.wat"
SCHEMA = {"type": "object", "required": ["worker", "words", "summary"],
          "properties": {"worker": {"type": "string", "pattern": "^[a-z]+$"}, "words": {"type": "integer"},
                         "summary": {"type": "string", "maxLength": 200}}}
RESULT = {"worker": "careful", "words": 5, "summary": "five words in the report"}
KINDS = ("schema-hub", "schema-base", "evaluator-hub", "evaluator-base")


def serve_child(args: argparse.Namespace) -> None:
    settings = hub_settings(args, market={"close_interval_seconds": 0.05})
    run_child(lambda sock: serve_hub(settings, sock), args.port)


class Requester:
    """The requester's own check, for the baselines: `jsonschema`, or the evaluator on raw wasmtime."""

    def __init__(self) -> None:
        self.validator = jsonschema.Draft202012Validator(SCHEMA)
        self.engine = wasmtime.Engine()
        self.module = wasmtime.Module(self.engine, EVALUATOR.read_text())
        self.linker = wasmtime.Linker(self.engine)
        self.linker.define_wasi()

    def schema_passes(self, result: dict[str, Any]) -> bool:
        return not any(True for _ in self.validator.iter_errors(result))

    def evaluator_passes(self, task: dict[str, Any], result: dict[str, Any]) -> bool:
        with tempfile.NamedTemporaryFile() as stdin:
            stdin.write(json.dumps({"task": task, "result": result}).encode())
            stdin.flush()
            wasi = wasmtime.WasiConfig()
            wasi.stdin_file = stdin.name
            store = wasmtime.Store(self.engine)
            store.set_wasi(wasi)
            instance = self.linker.instantiate(store, self.module)
            try:
                instance.exports(store)["_start"](store)  # type: ignore[operator]
            except wasmtime.ExitTrap as exit_:
                return exit_.code == 0
            return True


async def prepare(http: httpx2.AsyncClient, count: int, evaluator: str) -> dict[str, list[dict[str, Any]]]:
    """`count` awarded tasks of each kind, each bid on by an agent of its own (an agent wins one task per clearing
    batch), waiting for their auctions to clear."""
    tasks: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    checks = {"schema-hub": {"json_schema": SCHEMA}, "evaluator-hub": {"evaluator": evaluator}}
    for _ in range(count):
        for kind in KINDS:
            body: dict[str, Any] = {"requester_id": "alice", "description": "Summarise the report", "budget": 100,
                                    "bidding_seconds": 0.3, "idempotency_key": str(uuid.uuid4())}
            if kind in checks:
                body["acceptance"] = checks[kind]
            r = await http.post("/api/v1/tasks", json=body)
            r.raise_for_status()
            task = r.json()
            task["bidder"] = f"bidder{len(tasks[kind])}-{kind}"
            r = await http.post(f"/api/v1/tasks/{task['task_id']}/bids",
                                json={"agent_id": task["bidder"], "price": 50, "estimated_seconds": 1})
            r.raise_for_status()
            tasks[kind].append(task)
    with anyio.fail_after(120):
        for task in [t for kind in KINDS for t in tasks[kind]]:
            while (await http.get(f"/api/v1/tasks/{task['task_id']}")).json()["state"] != "assigned":  # noqa: ASYNC110
                await anyio.sleep(0.05)  # the hub's REST answer is what a requester sees
    return tasks


async def settle(http: httpx2.AsyncClient, kind: str, task: dict[str, Any], requester: Requester) -> float:
    """Seconds from the winner's report to the escrow released, the requester's own check included."""
    report = {"agent_id": task["bidder"], "status": "completed", "result": RESULT}
    started = time.perf_counter()
    r = await http.post(f"/api/v1/tasks/{task['task_id']}/report", json=report)
    r.raise_for_status()
    got = r.json()
    if kind.endswith("-base"):
        passes = (requester.schema_passes(got["result"]) if kind == "schema-base"
                  else requester.evaluator_passes({"task_id": task["task_id"]}, got["result"]))
        assert passes, (kind, got)
        r = await http.post(f"/api/v1/tasks/{task['task_id']}/accept", json={"idempotency_key": str(uuid.uuid4())})
        r.raise_for_status()
        got = r.json()
    took = time.perf_counter() - started
    assert got["escrow_state"] == "released", (kind, got)
    assert kind.endswith("-base") or got["check"]["passed"], (kind, got["check"])
    return took


async def measure(url: str, token: str, args: argparse.Namespace) -> dict[str, list[float]]:
    requester = Requester()
    async with httpx2.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        r = await http.post("/api/v1/accounts/requester:alice/deposit",
                            json={"amount": 10**9, "idempotency_key": str(uuid.uuid4())})
        r.raise_for_status()
        r = await http.post("/api/v1/evaluators", content=bytes(wasmtime.wat2wasm(EVALUATOR.read_text())),
                            headers={"Content-Type": "application/wasm"})
        r.raise_for_status()
        tasks = await prepare(http, args.tasks + args.warmup, r.json()["sha256"])
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for i in range(args.tasks + args.warmup):
            for kind in KINDS:
                took = await settle(http, kind, tasks[kind][i], requester)
                if i >= args.warmup:
                    times[kind].append(took)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=40, help="measured settlements per kind")
    parser.add_argument("--warmup", type=int, default=2, help="settlements per kind left out at the start")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    add_hub_child_arguments(parser)
    args = parser.parse_args()
    if args.serve:
        serve_child(args)
        return
    print(f"settlement benchmark: {cpu_count_note()}", flush=True)
    with embedded_services() as services, \
            ChildServer(__file__, ["--serve", *hub_child_args(services, HUB_NAME)]) as hub:
        times = anyio.run(measure, hub.url, operator_token(services, HUB_NAME), args)
    median = {kind: statistics.median(values) * 1000 for kind, values in times.items()}
    rows = [Row(figure=f"{what}: report -> released, median (ms)", value=fmt(median[f"{kind}-hub"], 2),
                baseline=f"{fmt(median[f'{kind}-base'], 2)} ({base})",
                ratio=fmt(median[f"{kind}-hub"] / median[f"{kind}-base"], 2))
            for kind, what, base in (("schema", "JSON Schema check in the hub", "report + jsonschema + accept"),
                                     ("evaluator", "WASM evaluator in the hub", "report + raw wasmtime + accept"))]
    ok = print_table("A verified settlement against the requester's own check and accept, same run", rows)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
