"""The asyncio circuit breaker over pybreaker: tripping, fast rejection, a single half-open trial, timeouts,
concurrency, outcomes recorded outside calls, and state-change notifications."""

import math
from collections.abc import Callable

import anyio
import pytest

from agenthub.errors import CircuitOpen, ServiceUnavailable
from supervisor import Breaker, BreakerState

RESET = 0.2


class Boom(Exception):
    pass


class Dependency:
    """A fake remote dependency that counts its calls and fails or succeeds on command."""

    def __init__(self) -> None:
        self.calls = 0
        self.in_flight = 0
        self.peak = 0

    async def fail(self) -> str:
        self.calls += 1
        raise Boom("dependency down")

    async def ok(self) -> str:
        self.calls += 1
        return "ok"

    async def slow(self, seconds: float) -> str:
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await anyio.sleep(seconds)
        finally:
            self.in_flight -= 1
        return "ok"

    async def gated(self, gate: anyio.Event, result: Callable[[], str]) -> str:
        self.calls += 1
        await gate.wait()
        return result()


def state(breaker: Breaker) -> BreakerState:
    # A call, not the property: mypy would keep the property's type narrowed by an earlier assert across awaits.
    return breaker.state


async def trip(breaker: Breaker, dependency: Dependency, times: int = 5) -> None:
    for _ in range(times):
        with pytest.raises(Boom):
            await breaker.call(dependency.fail)


async def wait_reset() -> None:
    # The breaker half-opens on the first call after reset_timeout: the only thing to wait for is time passing.
    await anyio.sleep(RESET * 1.25)


async def test_five_consecutive_failures_open_the_breaker_and_the_fifth_raises_its_own_error() -> None:
    breaker = Breaker("agent-1", fail_max=5, reset_timeout=RESET)
    dependency = Dependency()
    await trip(breaker, dependency, 4)
    assert (state(breaker), breaker.fail_counter) == (BreakerState.CLOSED, 4)
    with pytest.raises(Boom, match="dependency down"):  # the tripping call: the original exception, not pybreaker's
        await breaker.call(dependency.fail)
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allows_calls


async def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = Breaker("agent-1", fail_max=3, reset_timeout=RESET)
    dependency = Dependency()
    await trip(breaker, dependency, 2)
    assert await breaker.call(dependency.ok) == "ok"
    await trip(breaker, dependency, 2)
    assert (state(breaker), breaker.fail_counter) == (BreakerState.CLOSED, 2)


async def test_excluded_exceptions_do_not_count_as_failures() -> None:
    breaker = Breaker("agent-1", fail_max=2, reset_timeout=RESET, exclude=[KeyError])

    async def not_found() -> None:
        raise KeyError("no such item")

    for _ in range(5):
        with pytest.raises(KeyError):
            await breaker.call(not_found)
    assert (state(breaker), breaker.fail_counter) == (BreakerState.CLOSED, 0)


async def test_an_open_breaker_rejects_calls_without_calling_the_dependency() -> None:
    breaker = Breaker("agent-1", fail_max=5, reset_timeout=60.0)
    dependency = Dependency()
    await trip(breaker, dependency)
    calls = dependency.calls
    for _ in range(50):
        with pytest.raises(CircuitOpen) as rejected:
            await breaker.call(dependency.ok)
    assert dependency.calls == calls  # failing fast: the dependency was not called
    assert isinstance(rejected.value, ServiceUnavailable)
    assert rejected.value.name == "agent-1"
    assert 59.0 < rejected.value.retry_after <= 60.0
    assert 59.0 < breaker.retry_after <= 60.0


async def test_after_the_reset_timeout_exactly_one_of_100_concurrent_callers_runs_the_trial() -> None:
    breaker = Breaker("agent-1", fail_max=5, reset_timeout=RESET)
    dependency = Dependency()
    await trip(breaker, dependency)
    await wait_reset()
    assert state(breaker) is BreakerState.OPEN  # it half-opens on the next call, not on a timer
    assert breaker.allows_calls and breaker.retry_after == 0.0
    calls_before = dependency.calls
    gate = anyio.Event()
    results: list[str] = []
    rejected: list[CircuitOpen] = []

    async def caller() -> None:
        try:
            results.append(await breaker.call(dependency.gated, gate, lambda: "ok"))
        except CircuitOpen as exc:
            rejected.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
            assert state(breaker) is BreakerState.HALF_OPEN
            assert not breaker.allows_calls  # the trial is in flight
            assert len(rejected) == 99
            gate.set()
    assert dependency.calls - calls_before == 1
    assert results == ["ok"]
    assert state(breaker) is BreakerState.CLOSED


async def test_a_failed_trial_opens_the_breaker_for_another_reset_timeout() -> None:
    breaker = Breaker("agent-1", fail_max=5, reset_timeout=RESET)
    dependency = Dependency()
    await trip(breaker, dependency)
    await wait_reset()
    with pytest.raises(Boom):  # the trial's own error
        await breaker.call(dependency.fail)
    assert state(breaker) is BreakerState.OPEN
    assert RESET * 0.5 < breaker.retry_after <= RESET
    with pytest.raises(CircuitOpen):
        await breaker.call(dependency.ok)


async def test_a_successful_trial_closes_the_breaker() -> None:
    breaker = Breaker("agent-1", fail_max=5, reset_timeout=RESET)
    dependency = Dependency()
    await trip(breaker, dependency)
    await wait_reset()
    assert await breaker.call(dependency.ok) == "ok"
    assert (state(breaker), breaker.fail_counter) == (BreakerState.CLOSED, 0)
    assert [await breaker.call(dependency.ok) for _ in range(3)] == ["ok"] * 3


async def test_a_call_exceeding_call_timeout_raises_timeout_error_and_counts_as_a_failure() -> None:
    breaker = Breaker("agent-1", fail_max=2, reset_timeout=RESET, call_timeout=0.05)
    dependency = Dependency()
    with pytest.raises(TimeoutError):  # the dependency would never answer
        await breaker.call(dependency.slow, math.inf)
    assert breaker.fail_counter == 1
    with pytest.raises(TimeoutError):  # the tripping call
        await breaker.call(dependency.slow, math.inf)
    assert state(breaker) is BreakerState.OPEN
    assert dependency.in_flight == 0  # the hung calls were cancelled, not left behind


async def test_100_concurrent_calls_on_a_closed_breaker_run_in_parallel() -> None:
    breaker = Breaker("agent-1", fail_max=5, reset_timeout=RESET)
    dependency = Dependency()
    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(breaker.call, dependency.slow, 0.2)
    assert dependency.peak == 100  # all of them in flight at once: the breaker serialises nothing
    assert (state(breaker), breaker.fail_counter) == (BreakerState.CLOSED, 0)


async def test_outcomes_recorded_outside_calls_count_like_calls() -> None:
    breaker = Breaker("agent-1", fail_max=3, reset_timeout=RESET)
    crash = Boom("agent process exited with code 1")
    breaker.record_failure(crash)
    breaker.record_failure(crash)
    assert breaker.fail_counter == 2
    breaker.record_success()
    assert breaker.fail_counter == 0
    for _ in range(3):
        breaker.record_failure(crash)
    assert state(breaker) is BreakerState.OPEN
    assert crash.__traceback__ is None  # recording did not leave pybreaker's frames on the caller's exception

    breaker.record_success()  # too early: an open breaker stays open until its reset timeout
    assert state(breaker) is BreakerState.OPEN
    await wait_reset()
    breaker.record_failure(crash)  # due for a trial: the failure counts as a failed trial
    assert state(breaker) is BreakerState.OPEN and breaker.retry_after > RESET * 0.5
    await wait_reset()
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED


async def test_on_change_sees_every_transition() -> None:
    changes: list[tuple[str, BreakerState, BreakerState]] = []
    breaker = Breaker("agent-1", fail_max=1, reset_timeout=RESET,
                      on_change=lambda name, old, new: changes.append((name, old, new)))
    dependency = Dependency()
    await trip(breaker, dependency, 1)
    await wait_reset()
    await trip(breaker, dependency, 1)  # failed trial
    await wait_reset()
    await breaker.call(dependency.ok)
    closed, opened, half = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
    assert changes == [("agent-1", closed, opened), ("agent-1", opened, half), ("agent-1", half, opened),
                       ("agent-1", opened, half), ("agent-1", half, closed)]


async def test_a_raising_on_change_callback_does_not_break_the_breaker() -> None:
    def broken(name: str, old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("metrics backend down")

    breaker = Breaker("agent-1", fail_max=1, reset_timeout=RESET, on_change=broken)
    dependency = Dependency()
    await trip(breaker, dependency, 1)
    assert state(breaker) is BreakerState.OPEN
    await wait_reset()
    assert await breaker.call(dependency.ok) == "ok"
    assert state(breaker) is BreakerState.CLOSED
