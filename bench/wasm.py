"""Benchmark: running a trivial WASM module through the sandbox's executor against raw wasmtime (issue 5).

The module is a WASI command whose `_start` writes `{}` to stdout. It is compiled once by the sandbox's
limited compiler process and loaded into the runner's engine; every figure runs that same precompiled module,
in this one process, interleaved block by block (the order rotates) so host drift hits all alike:

- executor: `Runner.execute` from the event loop (uvloop, as the hub runs it; `--asyncio` for the plain loop agent
  processes use), one call at a time: a fresh store with fuel, memory cap and epoch deadline, WASI granting nothing,
  in-memory stdio, the outcome classified and stdout parsed as JSON. The run is inline, on the loop's thread: this
  module ends well within the slice a run gets there before it would yield to a runner thread.
- raw (output captured): `Store` + `WasiConfig` with wasmtime's own `stdout_custom` capture + `instantiate` +
  call `_start`, on the calling thread: the least raw wasmtime needs to run the module and get its output back.
- raw (output discarded): the same with no stdout configured, so that WASI's stdout is a sink (`fd_write` succeeds
  and the bytes go nowhere): the real anchor of issue 15.
- raw (stdout to /dev/null): the same with `stdout_file = "/dev/null"`, opened for each store (info).
- executor, 2 callers: two concurrent callers through a runner with 2 threads (info): each run inline in turn.

Bars: executor ÷ raw with output discarded <= 2 (issue 15), and executor ÷ raw with output captured <= 2 (issue 5),
both as raw executions/s ÷ executor executions/s.

Run: `python bench/wasm.py` (`--budget` seconds of measurement, default 12).
"""

import argparse
import gc
import sys
import time
from collections.abc import Callable
from typing import Literal

import anyio
from harness import Row, cpu_count_note, fmt, percentile, print_table
from wasmtime import Linker, Module, Store, WasiConfig, wat2wasm

from sandbox.compiler import compile_module
from sandbox.models import MIB, CompileLimits, Outcome, RunLimits
from sandbox.runner import Runner

TRIVIAL = r"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 2))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""
BLOCK = 200
LIMITS = CompileLimits(max_module_bytes=MIB, cpu_seconds=10, memory_bytes=1024 * MIB, memory_cap_bytes=64 * MIB)


def raw_runner(runner: Runner, module: Module, *, stdout: Literal["capture", "none", "devnull"]
               ) -> Callable[[], bytes]:
    linker = Linker(runner.engine)
    linker.define_wasi()

    def run() -> bytes:
        chunks: list[bytes] = []
        wasi = WasiConfig()
        if stdout == "capture":
            wasi.stdout_custom = chunks.append
        elif stdout == "devnull":
            wasi.stdout_file = "/dev/null"
        store = Store(runner.engine)
        store.set_fuel(10**9)  # the engine meters fuel and epochs: a store needs both to run at all
        store.set_epoch_deadline(10**6)
        store.set_wasi(wasi)
        linker.instantiate(store, module).exports(store)["_start"](store)  # type: ignore[operator]
        return b"".join(chunks)

    return run


async def measure(budget: float) -> list[Row]:
    compiled = await compile_module(bytes(wat2wasm(TRIVIAL)), LIMITS)
    timings: dict[str, list[float]] = {"executor": [], "raw-captured": [], "raw-discarded": [], "raw-devnull": []}
    spent = dict.fromkeys(timings, 0.0)
    with Runner(concurrency=2) as runner:
        module = runner.load(compiled.artifact)
        limits = RunLimits()
        raws = {"raw-captured": raw_runner(runner, module, stdout="capture"),
                "raw-discarded": raw_runner(runner, module, stdout="none"),
                "raw-devnull": raw_runner(runner, module, stdout="devnull")}
        assert raws["raw-captured"]() == b"{}"
        check = await runner.execute(module, b"{}", limits)
        assert check.outcome is Outcome.OK and check.output == {}, check

        async def executor_block() -> None:
            for _ in range(BLOCK):
                started = time.perf_counter()
                result = await runner.execute(module, b"{}", limits)
                timings["executor"].append(time.perf_counter() - started)
                assert result.outcome is Outcome.OK

        def raw_block(name: str) -> None:
            for _ in range(BLOCK):
                started = time.perf_counter()
                raws[name]()
                timings[name].append(time.perf_counter() - started)

        order = list(timings)
        end = time.monotonic() + budget
        rounds = 0
        while time.monotonic() < end or rounds < 3:
            for name in order:
                block_start = time.perf_counter()
                if name == "executor":
                    await executor_block()
                else:
                    raw_block(name)
                spent[name] += time.perf_counter() - block_start
            order = order[1:] + order[:1]
            rounds += 1

        pair_calls = 0
        pair_start = time.perf_counter()
        pair_end = pair_start + min(3.0, budget / 4)

        async def caller() -> None:
            nonlocal pair_calls
            while time.perf_counter() < pair_end:
                await runner.execute(module, b"{}", limits)
                pair_calls += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            tg.start_soon(caller)
        pair_rate = pair_calls / (time.perf_counter() - pair_start)
        raws.clear()
        gc.collect()  # drop the stores that used a Python stdout callback before the interpreter exits

    rate = {name: len(timings[name]) / spent[name] for name in timings}
    p99 = {name: percentile(timings[name], 99) * 1e6 for name in timings}
    p50 = {name: percentile(timings[name], 50) * 1e6 for name in timings}
    ratio = rate["raw-captured"] / rate["executor"]
    discarded = rate["raw-discarded"] / rate["executor"]
    print(f"{rounds} rounds of {BLOCK} calls per figure", flush=True)

    def p50_p99(name: str) -> str:
        return f"{fmt(p50[name], 0)} / {fmt(p99[name], 0)}"

    return [
        Row(figure="executor ÷ raw, output discarded: executions/s", value=fmt(rate["executor"], 0),
            baseline=fmt(rate["raw-discarded"], 0) + " raw", ratio=f"{discarded:.2f}x", bar="<= 2x (issue 15)",
            passed=discarded <= 2),
        Row(figure="  p50 / p99 (us), output discarded", value=p50_p99("executor"),
            baseline=p50_p99("raw-discarded"), ratio=f"{p50['executor'] / p50['raw-discarded']:.2f}x p50"),
        Row(figure="executor ÷ raw, output captured: executions/s", value=fmt(rate["executor"], 0),
            baseline=fmt(rate["raw-captured"], 0) + " raw", ratio=f"{ratio:.2f}x", bar="<= 2x (issue 5)",
            passed=ratio <= 2),
        Row(figure="  p50 / p99 (us), output captured", value=p50_p99("executor"),
            baseline=p50_p99("raw-captured"), ratio=f"{p99['executor'] / p99['raw-captured']:.2f}x p99"),
        Row(figure="executor ÷ raw, stdout to /dev/null: executions/s", value=fmt(rate["executor"], 0),
            baseline=fmt(rate["raw-devnull"], 0) + " raw",
            ratio=f"{rate['raw-devnull'] / rate['executor']:.2f}x"),
        Row(figure="executor executions/s, two callers, 2 threads", value=fmt(pair_rate, 0),
            baseline=fmt(rate["raw-captured"], 0) + " raw", ratio=f"{rate['raw-captured'] / pair_rate:.2f}x"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=12.0, help="seconds of interleaved measurement (max 60)")
    parser.add_argument("--asyncio", action="store_true", help="the plain asyncio loop instead of uvloop")
    args = parser.parse_args()
    print(f"wasm benchmark: {cpu_count_note()}", flush=True)
    rows = anyio.run(measure, min(args.budget, 60.0), backend_options={"use_uvloop": not args.asyncio})
    ok = print_table("A trivial module through the sandbox's executor against raw wasmtime, same run", rows)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
