"""A circuit breaker for asyncio code, built on pybreaker 1.4.1.

Contract:

* CLOSED: calls run; `fail_max` consecutive failures (a success resets the count; `exclude`d exceptions count as
  successes, as in pybreaker) open the breaker. The call that trips it raises its own exception, so callers see
  what failed.
* OPEN: calls raise `CircuitOpen(name, retry_after)` at once, without calling the function. After `reset_timeout`
  the next call (or `record_*`) half-opens it; `state` reports OPEN until then.
* HALF_OPEN: exactly one trial call runs; concurrent callers get `CircuitOpen` meanwhile. Its success closes the
  breaker, its failure opens it again for another `reset_timeout`.
* `call_timeout` bounds every call; expiry raises `TimeoutError` and counts as a failure (a slow dependency is a
  failing one). A call cancelled from outside counts as a failure too: pybreaker sees the cancellation as the
  call's outcome, and a caller giving up on a dependency is what a breaker is meant to notice.
* No lock is held across the await: calls on a closed breaker run concurrently.

Why not `breaker.call(async_fn)`: pybreaker sees the un-awaited coroutine as a success and never counts a failure
(notes/stack-facts.md §6). `with cb.calling(): await ...` records the awaited outcome; pybreaker's own lock is held
only while it decides, not across the await. pybreaker lets every concurrent caller through in half-open state, so
the single trial is enforced here; asyncio's single thread makes the check-and-claim atomic (no await between them).
"""

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from enum import StrEnum
from typing import Any, TypeVar

import anyio
import pybreaker

from agenthub.errors import CircuitOpen

logger = logging.getLogger(__name__)

T = TypeVar("T")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class _StateListener(pybreaker.CircuitBreakerListener):
    def __init__(self, breaker: "Breaker") -> None:
        self._breaker = breaker

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: pybreaker.CircuitBreakerState | None,
                     new_state: pybreaker.CircuitBreakerState) -> None:
        self._breaker._state_changed(old_state.name if old_state is not None else None, new_state.name)


class Breaker:
    """One circuit breaker per dependency (e.g. per agent)."""

    def __init__(self, name: str, *, fail_max: int = 5, reset_timeout: float = 60.0, call_timeout: float | None = None,
                 exclude: Sequence[type[BaseException]] = (),
                 on_change: Callable[[str, BreakerState, BreakerState], None] | None = None) -> None:
        if fail_max < 1:
            raise ValueError(f"fail_max must be >= 1, not {fail_max}")
        if reset_timeout < 0:
            raise ValueError(f"reset_timeout must be >= 0, not {reset_timeout}")
        self.name = name
        self.call_timeout = call_timeout
        self._on_change = on_change
        self._opened_at = 0.0  # time.monotonic() of the last opening; pybreaker's own clock is the wall clock
        self._trial_in_flight = False
        self._cb = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=reset_timeout, exclude=list(exclude),
                                            listeners=[_StateListener(self)], name=name,
                                            throw_new_error_on_trip=False)

    @property
    def state(self) -> BreakerState:
        return BreakerState(self._cb.current_state)

    @property
    def fail_counter(self) -> int:
        return self._cb.fail_counter

    @property
    def reset_timeout(self) -> float:
        return self._cb.reset_timeout

    @property
    def allows_calls(self) -> bool:
        """Whether a call made now would run (rather than be refused with `CircuitOpen`)."""
        match self.state:
            case BreakerState.CLOSED:
                return True
            case BreakerState.OPEN:
                return self.retry_after <= 0 and not self._trial_in_flight
            case BreakerState.HALF_OPEN:
                return not self._trial_in_flight

    @property
    def retry_after(self) -> float:
        """Seconds until an open breaker lets a trial call through; 0 when it is not open."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._cb.reset_timeout - time.monotonic())

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await `fn(*args)` through the breaker.

        Raises:
            CircuitOpen: the breaker is open, or a trial call is already in flight; `fn` was not called.
            TimeoutError: the call exceeded `call_timeout` (counted as a failure).
            Exception: whatever `fn` raised (counted as a failure unless excluded).
        """
        state = self.state
        if self._trial_in_flight or (state is BreakerState.OPEN and self.retry_after > 0):
            raise CircuitOpen(self.name, self.retry_after)
        trial = state is not BreakerState.CLOSED
        if trial:
            self._trial_in_flight = True
        entered = False
        try:
            with self._cb.calling():
                entered = True
                if self.call_timeout is None:
                    return await fn(*args)
                with anyio.fail_after(self.call_timeout):
                    return await fn(*args)
        except pybreaker.CircuitBreakerError as exc:
            if entered:  # raised by fn itself (a nested breaker), not a refusal by ours
                raise
            # Our clock said the reset timeout had elapsed, pybreaker's wall clock disagreed by a hair.
            raise CircuitOpen(self.name, self.retry_after) from exc
        finally:
            if trial:
                self._trial_in_flight = False

    def record_failure(self, exc: BaseException) -> None:
        """Count a failure observed outside a call (e.g. the agent process crashed), like a failed call."""
        traceback = exc.__traceback__
        try:
            with self._cb.calling():
                raise exc
        except pybreaker.CircuitBreakerError:
            pass  # open and not yet due for a trial: nothing to count
        except BaseException as raised:
            if raised is not exc:
                raise
        finally:
            exc.__traceback__ = traceback  # raising it here appended our frames; the caller's exception is theirs

    def record_success(self) -> None:
        """Count a success observed outside a call (e.g. the agent answered a heartbeat)."""
        try:
            with self._cb.calling():
                pass
        except pybreaker.CircuitBreakerError:
            pass  # open and not yet due for a trial: a success cannot close it early

    def _state_changed(self, old: str | None, new: str) -> None:
        if new == pybreaker.STATE_OPEN:
            self._opened_at = time.monotonic()
        if old is None or old == new:
            return
        before, after = BreakerState(old), BreakerState(new)
        if after is BreakerState.OPEN:
            logger.warning("circuit breaker %s opened (%s -> %s)", self.name, before, after)
        else:
            logger.info("circuit breaker %s: %s -> %s", self.name, before, after)
        if self._on_change is not None:
            try:
                self._on_change(self.name, before, after)
            except Exception:  # raising inside pybreaker's transition would leave its state half-changed
                logger.exception("circuit breaker %s: on_change callback failed", self.name)
