"""Pure restart policy of the supervision tree: restart types, strategies, exits, intensity and backoff.

Nothing here does I/O or reads a clock; callers pass the time in. The rules are Erlang/OTP's (`supervisor.erl`):

* `should_restart` is OTP's table: permanent children are always restarted, transient ones only after an abnormal
  exit, temporary ones never.
* `RestartIntensity` is the sliding window behind OTP's `intensity`/`period`: when MORE than `max_restarts`
  restarts fall within the last `period` seconds the supervisor must give up (stop its children and itself).
* `Backoff` is not OTP's; it spaces consecutive restarts of one child so a crash loop does not spin a CPU.
"""

import random
from collections import deque
from dataclasses import dataclass
from enum import StrEnum


class RestartType(StrEnum):
    """When a child that exited on its own is restarted."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class Strategy(StrEnum):
    """Which children a supervisor restarts when one of them dies."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"
    SIMPLE_ONE_FOR_ONE = "simple_one_for_one"


class ExitKind(StrEnum):
    """OTP's three classes of exit reason: `normal`, `shutdown` (asked to stop) and anything else."""

    NORMAL = "normal"
    SHUTDOWN = "shutdown"
    ABNORMAL = "abnormal"


@dataclass(frozen=True, slots=True, kw_only=True)
class Exit:
    """How one child instance (or a supervisor) ended."""

    kind: ExitKind
    detail: str = ""
    code: int | None = None


def should_restart(restart: RestartType, exit: Exit) -> bool:
    """OTP's restart table for a child that exited on its own.

    Args:
        restart: the child's restart type.
        exit: how the child ended.

    Returns:
        True when the supervisor has to restart the child.
    """
    match restart:
        case RestartType.PERMANENT:
            return True
        case RestartType.TRANSIENT:
            return exit.kind is ExitKind.ABNORMAL
        case RestartType.TEMPORARY:
            return False


class RestartIntensity:
    """Sliding window of restart times; breached when more than `max_restarts` fall within `period` seconds."""

    def __init__(self, max_restarts: int, period: float) -> None:
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, not {max_restarts}")
        if period <= 0:
            raise ValueError(f"period must be > 0, not {period}")
        self.max_restarts = max_restarts
        self.period = period
        self._times: deque[float] = deque()

    def add(self, now: float) -> bool:
        """Record one restart at monotonic time `now`.

        Returns:
            True when the restart breaches the intensity, i.e. the supervisor must shut down.
        """
        self._times.append(now)
        # OTP keeps the restarts at or after `now - period` (supervisor.erl, add_restart/drop_restarts).
        threshold = now - self.period
        while self._times and self._times[0] < threshold:
            self._times.popleft()
        return len(self._times) > self.max_restarts

    @property
    def recent(self) -> int:
        """How many recorded restarts are still in the window (as of the last `add`)."""
        return len(self._times)


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Exponential delay with jitter between consecutive restarts of one child."""

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    reset_after: float = 60.0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < 0 or self.jitter < 0 or self.reset_after < 0:
            raise ValueError(f"backoff values must not be negative: {self}")
        if self.multiplier < 1:
            raise ValueError(f"backoff multiplier must be >= 1, not {self.multiplier}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before restart number `attempt` of a run of consecutive restarts.

        Attempt 0 restarts at once (OTP restarts immediately; the first crash may be a fluke). Attempt n >= 1 waits
        `min(maximum, initial * multiplier ** (n - 1))` scaled by a uniform factor in `[1 - jitter, 1 + jitter]`,
        so a fleet of children that crashed together does not restart in lockstep.

        Args:
            attempt: 0 for the first restart after a stable run, then 1, 2, ...
            rng: the random source for the jitter (seeded in tests).
        """
        if attempt <= 0:
            return 0.0
        try:
            base = min(self.maximum, self.initial * self.multiplier ** (attempt - 1))
        except OverflowError:  # a child that failed thousands of times: the cap applies anyway
            base = self.maximum
        scaled = base * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return max(0.0, min(scaled, self.maximum * (1.0 + self.jitter)))
