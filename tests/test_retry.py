"""Retrying transient failures: backoff between attempts, a cause's own `retry_after` respected, limits kept."""

import random
import time

import anyio
import pytest

from agent_pool.retry import retry
from agenthub.errors import LogicalAgentError, TransientAgentError
from supervisor.policy import Backoff

NO_WAIT = Backoff(initial=0.0, maximum=0.0, jitter=0.0)


async def test_a_transient_error_is_retried_until_it_succeeds() -> None:
    calls: list[float] = []

    async def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise TransientAgentError("not yet")
        return "done"

    assert await retry(flaky, retry_on=(TransientAgentError,), attempts=5, backoff=NO_WAIT) == "done"
    assert len(calls) == 3


async def test_a_retry_after_is_waited_for_even_when_the_backoff_is_shorter() -> None:
    calls: list[float] = []

    async def breaker_open_once() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise TransientAgentError("breaker open", retry_after=0.3)
        return "through"

    with anyio.fail_after(5):
        assert await retry(breaker_open_once, retry_on=(TransientAgentError,), attempts=3, backoff=NO_WAIT,
                           rng=random.Random(1)) == "through"
    assert calls[1] - calls[0] >= 0.3


async def test_attempts_are_bounded_and_other_errors_are_not_retried() -> None:
    calls = 0

    async def always(exc: Exception) -> None:
        nonlocal calls
        calls += 1
        raise exc

    with pytest.raises(TransientAgentError):
        await retry(lambda: always(TransientAgentError("down")), retry_on=(TransientAgentError,), attempts=4,
                    backoff=NO_WAIT)
    assert calls == 4
    calls = 0
    with pytest.raises(LogicalAgentError):
        await retry(lambda: always(LogicalAgentError("bad key")), retry_on=(TransientAgentError,), attempts=4,
                    backoff=NO_WAIT)
    assert calls == 1
