"""Benchmark: how far past its wall-clock deadline a WASM guest runs, idle and beside CPU burners, whether it spins
in wasm, spins on host calls or sleeps in one (issues 12 and 13); how long leaving the runner takes while guests
sleep; and the process's memory after many runs of a guest that fills its memory.

Deadlines. Every run is a guest that never stops on its own, given a deadline and fuel it cannot use up; the
overrun is the run's duration minus its deadline. Runs are sequential, interleaved scenario by scenario, in two
phases:

- idle: nothing else of ours runs (the machine is shared: other load shows up as it is);
- burners: `--burners` processes (default 3, on a 2-core box) spin on the CPU for the whole phase.

Scenarios:

- executor, spin: `Runner.execute` of a guest that loops without host calls (the epoch must interrupt it);
- executor, stderr flood: a guest that calls `fd_write(2, ...)` in a loop, so a host function (Python, holding
  the GIL) runs most of the time;
- executor, poll spin: a guest that calls `poll_oneoff` with a zero timeout in a loop (the same, another call);
- executor, sleep: a guest asleep in `poll_oneoff` for `max(1 s, 3 x deadline)`, then spinning;
- raw wasmtime, spin: the spinning guest on the calling thread, with the least raw wasmtime needs for a wall-clock
  deadline: `set_epoch_deadline(1)` and a `threading.Timer` that increments the epoch at the deadline;
- raw wasmtime, sleep: the sleeping guest the same way, on wasmtime's own WASI (3 runs a phase): nothing
  interrupts its sleep, so its overrun is the rest of the sleep.

Figures: overrun p50 / p99 / max per scenario and phase; the caller's wait (from calling `execute` to getting the
result, which covers the whole time the run holds a runner thread) past the deadline, over every executor run;
the count of runs that stopped before their deadline. Bars: executor p99 overrun at most 50 ms in both phases, the
caller's wait at most deadline + 50 ms (p99), and no run stops early.

Shutdown. Leaving a runner whose two threads both hold a guest asleep for 120 s (deadline 60 s), 5 times: bar,
at most 50 ms each time, and every caller told `ServiceUnavailable`.

Memory. RSS after 10 and after `--fill-runs` (default 1,000) runs of a guest that writes every byte of its memory
up to the cap (64 MiB, the default) and then traps, under the hub's collector settings (`gc.freeze()`, thresholds
50,000/20/20). Baseline: the same guest on raw wasmtime, each store closed explicitly after its run (the least raw
wasmtime-py needs to give memory back; a store merely dropped after a trap stays in a reference cycle: shown, per
run, over 5 runs). Bar: the executor's RSS after `--fill-runs` runs at most 8 MiB above its RSS after 10.

Run: `python bench/wasm_deadline.py` (`--runs` per scenario and phase, default 12; `--deadline` seconds, 0.3;
`--burners`, 3; `--fill-runs`, 1,000). No services; about 2 minutes.
"""

import argparse
import gc
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import anyio
import psutil
from harness import Row, cpu_count_note, fmt, percentile, print_table
from wasmtime import Config, Engine, Linker, Module, Store, Trap, TrapCode, WasiConfig, wat2wasm

from agenthub.errors import ServiceUnavailable
from sandbox.compiler import compile_module
from sandbox.models import MIB, CompileLimits, Outcome, RunLimits
from sandbox.runner import Runner

SPIN = '(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))'
STDERR_FLOOD = r"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "a line of log that nobody will read\0a")
  (func (export "_start")
    (loop $l
      (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 36))
      (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $l))))"""
# A subscription at 0: a relative monotonic clock of `timeout` ns; events at 128, their count at 192.
POLL = """(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 1)) (i64.store (i32.const 24) (i64.const {timeout}))
    {body}))"""
POLL_CALL = "(drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 192)))"
POLL_SPIN = POLL.format(timeout=0, body=f"(loop $l {POLL_CALL} (br $l))")
MEMORY_FILL = """(module
  (memory (export "memory") 1)
  (func (export "_start")
    (local $old i32)
    (memory.fill (i32.const 0) (i32.const 0xab) (i32.const 65536))
    (loop $grow
      (local.set $old (memory.grow (i32.const 1)))
      (if (i32.ne (local.get $old) (i32.const -1))
        (then (memory.fill (i32.shl (local.get $old) (i32.const 16)) (i32.const 0xab) (i32.const 65536))
              (br $grow))))
    (unreachable)))"""
LIMITS = CompileLimits(max_module_bytes=MIB, cpu_seconds=10, memory_bytes=1024 * MIB, memory_cap_bytes=64 * MIB)
FUEL = 10**12
FILL_CAP = 64 * MIB
RAW_SLEEP_RUNS = 3


def sleeper(seconds: float) -> str:
    """A guest asleep in `poll_oneoff` for `seconds`, then spinning."""
    return POLL.format(timeout=round(seconds * 1e9), body=f"{POLL_CALL} (loop $l (br $l))")


@contextmanager
def burners(count: int) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5)  # let them take the CPU before the first run
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def raw_engine() -> tuple[Engine, Linker]:
    config = Config()
    config.epoch_interruption = True
    engine = Engine(config)
    linker = Linker(engine)
    linker.define_wasi()
    return engine, linker


def raw_run(engine: Engine, linker: Linker, module: Module, deadline: float) -> float:
    """Seconds the guest ran on raw wasmtime with a timer thread at its deadline."""
    store = Store(engine)
    store.set_epoch_deadline(1)
    store.set_wasi(WasiConfig())
    instance = linker.instantiate(store, module)
    timer = threading.Timer(deadline, engine.increment_epoch)
    started = time.perf_counter()
    timer.start()
    try:
        instance.exports(store)["_start"](store)  # type: ignore[operator]
    except Trap as exc:
        assert exc.trap_code == TrapCode.INTERRUPT, exc
    finally:
        timer.cancel()
    return time.perf_counter() - started


async def load(runner: Runner, wat: str) -> Module:
    return runner.load((await compile_module(bytes(wat2wasm(wat)), LIMITS)).artifact)


async def deadlines(runs: int, deadline: float, burner_count: int) -> list[Row]:
    engine, linker = raw_engine()
    sleep_seconds = max(1.0, 3 * deadline)
    raw_modules = {"spin": Module(engine, SPIN), "sleep": Module(engine, sleeper(sleep_seconds))}
    overruns: dict[tuple[str, str], list[float]] = {}
    waits: list[float] = []
    early = 0
    with Runner(concurrency=2) as runner:
        limits = RunLimits(deadline_seconds=deadline, fuel=FUEL)

        def executor(module: Module) -> Callable[[], Awaitable[float]]:
            async def one() -> float:
                called = time.perf_counter()
                result = await runner.execute(module, b"{}", limits)
                waits.append((time.perf_counter() - called - deadline) * 1000)
                assert result.outcome is Outcome.DEADLINE_EXCEEDED, result
                return result.duration_ms / 1000

            return one

        def raw(name: str) -> Callable[[], Awaitable[float]]:
            async def one() -> float:
                return await anyio.to_thread.run_sync(raw_run, engine, linker, raw_modules[name], deadline)

            return one

        scenarios = {"executor, spin": executor(await load(runner, SPIN)),
                     "executor, stderr flood": executor(await load(runner, STDERR_FLOOD)),
                     "executor, poll spin": executor(await load(runner, POLL_SPIN)),
                     "executor, sleep": executor(await load(runner, sleeper(sleep_seconds))),
                     "raw wasmtime, spin": raw("spin"), "raw wasmtime, sleep": raw("sleep")}
        for phase in ("idle", "burners"):
            with burners(burner_count if phase == "burners" else 0):
                for n in range(runs):
                    for name, one in scenarios.items():
                        if name == "raw wasmtime, sleep" and n >= RAW_SLEEP_RUNS:
                            continue
                        duration = await one()
                        early += duration < deadline
                        overruns.setdefault((name, phase), []).append((duration - deadline) * 1000)
    rows = []
    for name in scenarios:
        for phase in ("idle", "burners"):
            values = overruns[(name, phase)]
            p50, p99 = percentile(values, 50), percentile(values, 99)
            bar = name.startswith("executor")
            raw_name = "raw wasmtime, sleep" if name.endswith("sleep") else "raw wasmtime, spin"
            raw_values = overruns[(raw_name, phase)]
            rows.append(Row(figure=f"{name}, {phase}: overrun p50 / p99 / max (ms)",
                            value=f"{fmt(p50)} / {fmt(p99)} / {fmt(max(values))}",
                            baseline=f"{fmt(percentile(raw_values, 50))} / {fmt(percentile(raw_values, 99))} raw"
                            if bar else "-",
                            bar="p99 <= 50 ms" if bar else "-", passed=p99 <= 50 if bar else None))
    wait_p99 = percentile(waits, 99)
    rows.append(Row(figure="executor: caller's wait past the deadline p50 / p99 / max (ms)",
                    value=f"{fmt(percentile(waits, 50))} / {fmt(wait_p99)} / {fmt(max(waits))}",
                    bar="p99 <= 50 ms", passed=wait_p99 <= 50))
    rows.append(Row(figure="runs stopped before their deadline", value=str(early), bar="0", passed=early == 0))
    print(f"{runs} runs per scenario and phase ({RAW_SLEEP_RUNS} for raw sleep), deadline {deadline:g} s, "
          f"sleep {sleep_seconds:g} s, {burner_count} burners", flush=True)
    return rows


async def shutdown(times: int) -> list[Row]:
    exits: list[float] = []
    refused = 0

    async def run(runner: Runner, module: Module) -> None:
        nonlocal refused
        try:
            await runner.execute(module, b"{}", RunLimits(deadline_seconds=60, fuel=FUEL))
        except ServiceUnavailable:
            refused += 1

    for _ in range(times):
        async with anyio.create_task_group() as tg:
            with Runner(concurrency=2) as runner:
                module = await load(runner, sleeper(120))
                tg.start_soon(run, runner, module)
                tg.start_soon(run, runner, module)
                for _ in range(1000):  # both runner threads take a guest (at most 10 s)
                    if runner.active_runs == 2:
                        break
                    await anyio.sleep(0.01)
                await anyio.sleep(0.1)  # and both guests are asleep in poll_oneoff
                left = time.perf_counter()
            exits.append((time.perf_counter() - left) * 1000)
    worst = max(exits)
    return [Row(figure=f"leaving a runner with 2 guests asleep: worst of {times} (ms)", value=fmt(worst, 2),
                baseline="60,000 deadline", bar="<= 50 ms", passed=worst <= 50),
            Row(figure="callers told ServiceUnavailable", value=f"{refused} of {2 * times}", bar=f"{2 * times}",
                passed=refused == 2 * times)]


def rss() -> float:
    return psutil.Process().memory_info().rss / MIB


async def memory(fill_runs: int) -> list[Row]:
    checkpoints = (10, fill_runs)
    executor_rss: list[float] = []
    raw_rss: list[float] = []
    engine, linker = raw_engine()
    raw_fill = Module(engine, MEMORY_FILL)

    def raw_fill_run(*, close: bool) -> None:
        store = Store(engine)
        store.set_epoch_deadline(10**9)
        store.set_limits(memory_size=FILL_CAP)
        try:
            linker.instantiate(store, raw_fill).exports(store)["_start"](store)  # type: ignore[operator]
        except Trap:
            pass
        finally:
            if close:
                store.close()

    # The hub's collector settings (mcp_server/app.py `serve`): what exists now is frozen, collections are rare.
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(50_000, 20, 20)
    try:
        with Runner(concurrency=2) as runner:
            module = await load(runner, MEMORY_FILL)
            for n in range(1, fill_runs + 1):
                result = await runner.execute(module, b"{}", RunLimits(memory_bytes=FILL_CAP))
                assert result.outcome is Outcome.MEMORY_LIMIT, result
                if n in checkpoints:
                    executor_rss.append(rss())
        for n in range(1, fill_runs + 1):
            raw_fill_run(close=True)
            if n in checkpoints:
                raw_rss.append(rss())
        before = rss()
        for _ in range(5):
            raw_fill_run(close=False)
        kept = (rss() - before) / 5
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        gc.collect()
    growth = executor_rss[1] - executor_rss[0]
    return [Row(figure=f"executor: RSS after 10 / {fill_runs:,} memory-filling runs (MiB)",
                value=f"{fmt(executor_rss[0])} / {fmt(executor_rss[1])}",
                baseline=f"{fmt(raw_rss[0])} / {fmt(raw_rss[1])} raw, closed", ratio=f"+{fmt(growth)} MiB",
                bar="+<= 8 MiB", passed=growth <= 8),
            Row(figure="raw wasmtime, store dropped after the trap: RSS kept per run (MiB)", value=fmt(kept))]


async def measure(runs: int, deadline: float, burner_count: int, fill_runs: int) -> list[Row]:
    rows = await deadlines(runs, deadline, burner_count)
    rows += await shutdown(5)
    rows += await memory(fill_runs)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=12, help="runs per scenario and phase (max 100)")
    parser.add_argument("--deadline", type=float, default=0.3, help="each run's deadline in seconds (max 2)")
    parser.add_argument("--burners", type=int, default=3, help="CPU-burning processes in the second phase")
    parser.add_argument("--fill-runs", type=int, default=1000, help="memory-filling runs (at least 10)")
    args = parser.parse_args()
    print(f"wasm deadline and memory benchmark: {cpu_count_note()}", flush=True)
    rows = anyio.run(measure, min(args.runs, 100), min(args.deadline, 2.0), args.burners, max(args.fill_runs, 10))
    ok = print_table("WASM deadline overrun (idle and with CPU burners), shutdown and memory, same run", rows)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
