"""The sandbox is bounded in every way: a guest asleep or spinning in host calls stops at its deadline, a cancelled
caller and a runner that shuts down stop their runs at once, a run that outlasts its slice on the caller's thread
runs again whole on a runner thread, and a run's memory is given back when it ends, with the cyclic garbage
collector off. How far past the deadline, and RSS over 1,000 runs: `bench/wasm_deadline.py`."""

import gc
import json
import time
from collections.abc import Iterator

import anyio
import psutil
import pytest
from wasmtime import Module, Store

from agenthub.errors import ServiceUnavailable
from sandbox.compiler import compile_module
from sandbox.guest import INLINE_FUEL
from sandbox.models import MIB, Outcome, RunLimits, RunResult
from sandbox.runner import Runner
from tests.agents_helpers import eventually
from tests.test_sandbox import LIMITS, TASK, wasm

STDIN = json.dumps(TASK).encode()


@pytest.fixture
def runner() -> Iterator[Runner]:
    with Runner(concurrency=2) as r:
        yield r


async def load(runner: Runner, name: str) -> Module:
    return runner.load((await compile_module(wasm(name), LIMITS)).artifact)


async def runs(runner: Runner, count: int) -> None:
    async def check() -> bool:
        return runner.active_runs == count

    await eventually(check, what=f"{count} runs in progress")


async def test_guests_asleep_in_poll_oneoff_stop_at_their_deadline_and_a_run_queued_behind_them_completes(
        runner: Runner) -> None:
    # Each guest asks for a 60 s sleep and would then print {"woke": true}; the deadline ends the sleep instead.
    sleep, word_count = await load(runner, "sleep"), await load(runner, "word_count")
    results: dict[str, RunResult] = {}

    async def run(name: str, module: Module, limits: RunLimits) -> None:
        results[name] = await runner.execute(module, STDIN, limits)

    async with anyio.create_task_group() as tg:
        for name in ("sleeper 1", "sleeper 2"):
            tg.start_soon(run, name, sleep, RunLimits(deadline_seconds=0.5))
        await runs(runner, 2)  # both of the runner's threads are taken
        tg.start_soon(run, "trivial", word_count, RunLimits())
    for name in ("sleeper 1", "sleeper 2"):
        assert results[name].outcome is Outcome.DEADLINE_EXCEEDED, results[name]
        assert results[name].duration_ms >= 500, results[name]  # never before its deadline
    assert (results["trivial"].outcome, results["trivial"].output) == (Outcome.OK, {"words": 5})


async def test_a_guest_that_outlasts_its_inline_slice_runs_again_whole_on_a_runner_thread(runner: Runner) -> None:
    # The guest writes {} and then counts for more than its slice of fuel on the caller's thread: it yields and runs
    # again on a runner thread, from the start, with all its fuel. Kept, the first attempt's {} would make the
    # output {}{} (not JSON), and its fuel would be missing from the second run's.
    module = await load(runner, "write_then_count")
    results = [await runner.execute(module, b"{}", RunLimits()) for _ in range(3)]
    for result in results:
        assert (result.outcome, result.output) == (Outcome.OK, {}), result
        assert result.fuel_used == results[0].fuel_used and result.fuel_used > INLINE_FUEL, result
    cut = await runner.execute(module, b"{}", RunLimits(fuel=INLINE_FUEL + 1))
    assert cut.outcome is Outcome.OUT_OF_FUEL and cut.fuel_used == INLINE_FUEL + 1, cut


async def test_a_guest_spinning_on_host_calls_stops_at_its_deadline_never_before(runner: Runner) -> None:
    result = await runner.execute(await load(runner, "poll_spin"), b"{}", RunLimits(deadline_seconds=0.3, fuel=10**12))
    assert result.outcome is Outcome.DEADLINE_EXCEEDED, result
    assert result.duration_ms >= 300 and result.fuel_used is None, result


async def test_one_long_host_call_ends_at_the_deadline(runner: Runner) -> None:
    # Four random_get calls over 64 MiB with no epoch check between them take wasmtime's own WASI about a second,
    # after which the guest would print {"filled": true}. Ours fills a MiB at a time and ends the guest at its
    # deadline, in the middle of a call.
    module = await load(runner, "random_fill")
    result = await runner.execute(module, b"{}", RunLimits(deadline_seconds=0.05, memory_bytes=128 * MIB))
    assert result.outcome is Outcome.DEADLINE_EXCEEDED, result
    filled = await runner.execute(module, b"{}", RunLimits(deadline_seconds=30, memory_bytes=128 * MIB))
    assert (filled.outcome, filled.output) == (Outcome.OK, {"filled": True}), filled


async def test_poll_oneoff_sleeps_by_the_guests_clock_reports_its_events_and_refuses_what_wasmtime_refuses(
        runner: Runner) -> None:
    # clocks.wat checks relative and absolute sleeps against clock_time_get, the events it gets, that stdin is
    # ready at once beside a 60 s clock, EINVAL/EBADF refusals and random_get; it exits with the failed check.
    result = await runner.execute(await load(runner, "clocks"), STDIN, RunLimits(deadline_seconds=10))
    assert (result.outcome, result.output) == (Outcome.OK, {"ok": True}), result


async def test_a_cancelled_caller_stops_its_run_and_frees_its_thread() -> None:
    with Runner(concurrency=1) as runner:
        sleep, word_count = await load(runner, "sleep"), await load(runner, "word_count")
        deadline = time.monotonic() + 60
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.execute, sleep, b"{}", RunLimits(deadline_seconds=60))
            await runs(runner, 1)
            queued = anyio.CancelScope()

            async def wait_in_queue() -> None:
                with queued:
                    await runner.execute(word_count, STDIN, RunLimits())

            tg.start_soon(wait_in_queue)
            await anyio.wait_all_tasks_blocked()
            queued.cancel()  # taken out of the queue
            tg.cancel_scope.cancel()  # the sleeping run is stopped, and the call returns once it has
        assert runner.active_runs == 0
        assert time.monotonic() < deadline  # stopped by the cancel, not by its deadline
        result = await runner.execute(word_count, STDIN, RunLimits())  # the thread is free again
        assert result.output == {"words": 5}, result


async def test_leaving_the_runner_stops_every_run_at_once_and_refuses_new_ones() -> None:
    refused: list[str] = []
    deadline = time.monotonic() + 60
    async with anyio.create_task_group() as tg:
        with Runner(concurrency=2) as runner:
            modules = {name: await load(runner, name) for name in ("sleep", "loop", "word_count")}

            async def run(name: str) -> None:
                try:
                    await runner.execute(modules[name], STDIN, RunLimits(deadline_seconds=60, fuel=10**12))
                except ServiceUnavailable:
                    refused.append(name)

            tg.start_soon(run, "sleep")
            tg.start_soon(run, "loop")
            await runs(runner, 2)
            tg.start_soon(run, "word_count")  # queued behind them
            await anyio.wait_all_tasks_blocked()
        # left with the runs in progress, as the hub's lifespan leaves it at shutdown
    assert sorted(refused) == ["loop", "sleep", "word_count"]
    assert time.monotonic() < deadline  # the runs were stopped, not waited for
    with pytest.raises(ServiceUnavailable):
        await runner.execute(modules["word_count"], STDIN, RunLimits())


async def test_memory_filling_runs_give_their_memory_back_without_the_cyclic_garbage_collector(
        runner: Runner) -> None:
    # The hub freezes the collector and sets its threshold so high that it hardly runs: with it off here, a run's
    # memory must come back through reference counting alone. Each run makes its 8 MiB cap resident.
    module = await load(runner, "memory_fill")
    limits = RunLimits(memory_bytes=8 * MIB)
    process = psutil.Process()
    gc.collect()
    gc.disable()
    try:
        for count in (10, 50):
            for _ in range(count):
                result = await runner.execute(module, b"{}", limits)
                assert result.outcome is Outcome.MEMORY_LIMIT, result
            if count == 10:
                after_10 = process.memory_info().rss
        after_60 = process.memory_info().rss
        stores = [o for o in gc.get_objects() if isinstance(o, Store)]
    finally:
        gc.enable()
    assert not stores  # nothing of the runs is left for the collector
    # 50 more runs kept would be 400 MiB more; allocator noise is a few MiB
    assert after_60 - after_10 < 48 * MIB, (after_10 / MIB, after_60 / MIB)
