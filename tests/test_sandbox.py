"""The sandbox on its own: the example modules, every hostile module in `tests/wasm/`, and what the limited
compiler refuses. Each run goes through `Runner.execute` (a worker thread) as the hub and agents use it."""

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from wasmtime import wat2wasm

from agenthub.errors import InvalidModule
from sandbox.compiler import compile_module
from sandbox.models import MIB, CompileLimits, Outcome, RunLimits, RunResult
from sandbox.modules import ModuleCache
from sandbox.runner import Runner

ROOT = Path(__file__).resolve().parent.parent
LIMITS = CompileLimits(max_module_bytes=50 * MIB, cpu_seconds=10, memory_bytes=1024 * MIB,
                       memory_cap_bytes=64 * MIB)
TASK = {"task_id": "t_1", "description": "Count these words please", "parameters": {"text": "a b  c\td\n e"},
        "required_capabilities": ["count"], "budget": 400}


def wasm(name: str) -> bytes:
    """A module from `examples/wasm/` or `tests/wasm/`, compiled from its WAT source."""
    for folder in (ROOT / "examples" / "wasm", ROOT / "tests" / "wasm"):
        path = folder / f"{name}.wat"
        if path.exists():
            return bytes(wat2wasm(path.read_text()))
    raise FileNotFoundError(name)


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    with Runner(concurrency=2) as r:
        yield r


@pytest.fixture
async def cache(runner: Runner, tmp_path: Path) -> AsyncIterator[ModuleCache]:
    async def source(sha256: str) -> bytes:
        raise AssertionError("every module is added before it is run")

    yield ModuleCache(runner, LIMITS, source, artifacts=tmp_path / "compiled")


async def run(runner: Runner, name: str, stdin: object = TASK, **limits: float) -> RunResult:
    compiled = await compile_module(wasm(name), LIMITS)
    module = runner.load(compiled.artifact)
    return await runner.execute(module, json.dumps(stdin).encode(), RunLimits(**limits))  # type: ignore[arg-type]


async def test_the_word_counter_counts_the_text_of_a_task(runner: Runner) -> None:
    result = await run(runner, "word_count")
    assert result.outcome is Outcome.OK, result
    assert result.output == {"words": 5}
    assert result.exit_code == 0 and result.error is None and result.fuel_used and result.fuel_used > 0
    no_text = await run(runner, "word_count", {"description": "three plain words"})
    assert no_text.output == {"words": 3}


async def test_the_number_summariser_and_its_own_failures(runner: Runner) -> None:
    result = await run(runner, "sum_numbers", {**TASK, "parameters": {"numbers": [3, -1, 4, 1, 5]}})
    assert result.output == {"count": 5, "sum": 12, "min": -1, "max": 5}
    bad = await run(runner, "sum_numbers", {"numbers": [1, 2.5]})
    assert bad.outcome is Outcome.EXITED and bad.exit_code == 1
    assert bad.log.startswith("sum_numbers: ") and bad.output is None


async def test_the_same_input_gives_the_same_output_and_cached_and_cold_runs_agree(
        runner: Runner, cache: ModuleCache, tmp_path: Path) -> None:
    module = wasm("word_count")
    compiled = await compile_module(module, LIMITS)
    cold = runner.load(compiled.artifact)
    stdin = json.dumps(TASK).encode()
    results = [await runner.execute(cold, stdin, RunLimits()) for _ in range(3)]
    await cache.add(compiled.info.sha256, compiled.artifact)
    results.append(await runner.execute(await cache.get(compiled.info.sha256), stdin, RunLimits()))
    # A fresh cache finds the artifact on disk instead of compiling (its source would fail the test).
    fresh = ModuleCache(runner, LIMITS, cache._source, artifacts=tmp_path / "compiled")  # noqa: SLF001
    results.append(await runner.execute(await fresh.get(compiled.info.sha256), stdin, RunLimits()))
    assert {(r.outcome, json.dumps(r.output), r.fuel_used, r.memory_bytes) for r in results} == {
        (Outcome.OK, '{"words": 5}', results[0].fuel_used, results[0].memory_bytes)}


@pytest.mark.parametrize("deadline", [0.2, 0.5])
async def test_an_infinite_loop_is_stopped_by_its_deadline_never_before_it(runner: Runner, deadline: float) -> None:
    result = await run(runner, "loop", deadline_seconds=deadline, fuel=10**12)
    assert result.outcome is Outcome.DEADLINE_EXCEEDED, result
    assert result.duration_ms >= deadline * 1000, result
    assert result.fuel_used is None and "deadline" in (result.error or "")


@contextmanager
def cpu_burners(count: int) -> Iterator[None]:
    """`count` processes spinning on the CPU while the block runs."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


async def test_a_deadline_is_wall_clock_time_while_cpu_burners_load_the_machine(runner: Runner) -> None:
    # Three burners on top of whatever else runs: the run still ends by its deadline (the epoch is a clock the timer
    # thread reads at the deadline, not a count of ticks) and never before it. How far past it, idle and loaded,
    # is measured by `bench/wasm_deadline.py`.
    module = runner.load((await compile_module(wasm("loop"), LIMITS)).artifact)
    with cpu_burners(3):
        results = [await runner.execute(module, b"{}", RunLimits(deadline_seconds=1.5, fuel=10**12))
                   for _ in range(2)]
    for result in results:
        assert result.outcome is Outcome.DEADLINE_EXCEEDED, result
        assert result.duration_ms >= 1500, result  # never before its deadline; how far past: bench/wasm_deadline.py


async def test_a_loop_runs_out_of_fuel_before_a_long_deadline(runner: Runner) -> None:
    result = await run(runner, "loop", fuel=1_000_000, deadline_seconds=30)
    assert result.outcome is Outcome.OUT_OF_FUEL and result.fuel_used == 1_000_000


async def test_deep_recursion_traps_with_the_reason(runner: Runner) -> None:
    result = await run(runner, "recursion")
    assert result.outcome is Outcome.TRAPPED
    assert result.error == "trap: call stack exhausted"


async def test_a_memory_bomb_stops_at_its_memory_cap(runner: Runner) -> None:
    result = await run(runner, "memory_bomb", memory_bytes=8 * MIB)
    assert result.outcome is Outcome.MEMORY_LIMIT, result
    assert result.memory_bytes <= 8 * MIB
    assert "8388608" in (result.error or "")


async def test_a_module_starting_above_the_memory_cap_is_refused_at_run_time(runner: Runner) -> None:
    limits = LIMITS.model_copy(update={"memory_cap_bytes": 256 * MIB})
    module = runner.load((await compile_module(wasm("big_memory"), limits)).artifact)
    result = await runner.execute(module, b"{}", RunLimits(memory_bytes=64 * MIB))
    assert result.outcome is Outcome.MEMORY_LIMIT and result.memory_bytes == 0


async def test_a_stdout_flood_is_stopped_at_the_output_limit(runner: Runner) -> None:
    result = await run(runner, "stdout_flood", output_bytes=256 * 1024, deadline_seconds=60, fuel=10**12)
    assert result.outcome is Outcome.OUTPUT_TOO_LARGE, result  # stopped at the limit, not by the deadline


async def test_files_environment_and_sockets_are_out_of_reach(runner: Runner) -> None:
    result = await run(runner, "escape")
    assert result.outcome is Outcome.OK, result
    assert result.output is not None
    assert result.output["environ_count"] == 0
    for errno in ("prestat_errno", "open_errno", "accept_errno"):
        assert result.output[errno] != 0, result.output  # EBADF: no preopened directory, no socket


async def test_output_that_is_not_a_json_object_is_invalid(runner: Runner) -> None:
    result = await run(runner, "not_json")
    assert result.outcome is Outcome.INVALID_OUTPUT and "not JSON" in (result.error or "")
    echoed = await run(runner, "echo", [1, 2, 3])
    assert echoed.outcome is Outcome.INVALID_OUTPUT and "not an object" in (echoed.error or "")


async def test_a_non_zero_exit_is_a_failure_with_the_log(runner: Runner) -> None:
    result = await run(runner, "exit_code")
    assert result.outcome is Outcome.EXITED and result.exit_code == 3
    assert result.log == "exit_code: failing on purpose\n"


async def test_stderr_is_kept_up_to_the_log_limit(runner: Runner) -> None:
    result = await run(runner, "word_count", {"nothing": "here"}, log_bytes=10)
    assert result.outcome is Outcome.EXITED and result.log == "word_count"


async def test_the_event_loop_stays_responsive_while_two_modules_spin(runner: Runner) -> None:
    module = runner.load((await compile_module(wasm("loop"), LIMITS)).artifact)
    results: list[RunResult] = []
    turns_while_spinning = 0

    async def spin() -> None:
        results.append(await runner.execute(module, b"{}", RunLimits(deadline_seconds=1, fuel=10**12)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(spin)
        tg.start_soon(spin)
        while not results:  # the loop's own turns, each a short sleep, while both modules still spin
            await anyio.sleep(0.005)
            turns_while_spinning += not results
    assert [r.outcome for r in results] == [Outcome.DEADLINE_EXCEEDED] * 2
    # A loop blocked by the runs (on it, or holding the GIL) would get no turn before they end.
    assert turns_while_spinning >= 10, turns_while_spinning


@pytest.mark.parametrize(("module", "reason"), [
    (b"\0asm\x01\0\0\0\x01\xff\xff", "not a valid WebAssembly module"),
    (b"(module)", "not a WebAssembly binary module"),
    (b"\0asm\x0d\0\x01\0", "component"),
    (b"", "not a WebAssembly binary module"),
])
async def test_corrupt_modules_are_refused_with_the_reason(module: bytes, reason: str) -> None:
    with pytest.raises(InvalidModule, match=reason):
        await compile_module(module, LIMITS)


@pytest.mark.parametrize(("name", "reason"), [
    ("no_start", "does not export a function `_start`"),
    ("bad_import", "imports env.host_secret: only wasi_snapshot_preview1"),
    ("big_memory", "starts with 134217728 bytes of memory; the cap is 67108864"),
])
async def test_modules_outside_the_abi_are_refused_with_the_reason(name: str, reason: str) -> None:
    with pytest.raises(InvalidModule, match=reason):
        await compile_module(wasm(name), LIMITS)


async def test_a_truncated_module_is_refused() -> None:
    module = wasm("word_count")
    with pytest.raises(InvalidModule, match="not a valid WebAssembly module"):
        await compile_module(module[: len(module) // 2], LIMITS)


async def test_an_oversized_module_is_refused_before_compiling() -> None:
    with pytest.raises(InvalidModule, match="the limit is 1024"):
        await compile_module(wasm("echo") + b"\0" * 2000, LIMITS.model_copy(update={"max_module_bytes": 1024}))


def _costly_module(functions: int) -> bytes:
    """A module that is valid and cheap to send but costly to compile: many functions with long bodies."""
    body = "(local.set 0 (i32.add (local.get 0) (i32.mul (local.get 0) (i32.const 7))))" * 400
    funcs = "".join(f"(func (param i32) (result i32) {body} (local.get 0))" for _ in range(functions))
    return bytes(wat2wasm(f'(module (memory (export "memory") 1) {funcs} (func (export "_start")))'))


async def test_compiling_is_bounded_by_the_cpu_budget() -> None:
    module = _costly_module(3000)
    with pytest.raises(InvalidModule, match="more than 1 s of CPU"):  # stopped by its CPU budget, not finished
        await compile_module(module, LIMITS.model_copy(update={"cpu_seconds": 1}))


async def test_pointers_outside_the_guest_memory_get_errors_not_host_memory(runner: Runner) -> None:
    result = await run(runner, "bad_pointers")
    assert (result.outcome, result.output) == (Outcome.OK, {"ok": True}), result
