"""One run as the code around its guest sees it: the host functions, the epoch clock and the runner.

A `Guest` holds the run's stdio in memory, its deadline and, once it must stop, why. A run executes wholly on one
thread, where `current_guest()` finds it: host functions and the epoch callback get no other context. Other
threads only call `stop` (the runner, when the caller gave up or the runner shuts down); a stopped guest ends at
its next host call or epoch check, and a host call asleep in `sleep_until` wakes at once.

An inline guest (run on its caller's thread, `Runner.execute`) has a slice: `INLINE_FUEL` of its fuel, and
`INLINE_NS` of its thread's CPU time as its host calls see it (CPU time, so that a busy machine taking the CPU away
does not count), and it never sleeps. Past its slice, or asking to sleep, it yields: it ends, and runs again, whole,
on a runner thread, with what is left of its deadline. (A run is a function of its stdin and of what WASI tells it,
the clocks and random bytes: nothing of the first attempt is seen.)
"""

import math
import threading
import time
from enum import StrEnum

from sandbox.models import RunLimits

INLINE_FUEL = 1_000_000  # about a millisecond of wasm code on this machine's loops
INLINE_NS = 1_000_000


class StopReason(StrEnum):
    DEADLINE = "deadline"  # the run's wall-clock limit passed
    STOPPED = "stopped"  # the runner stopped it: its caller gave up, or the runner is shutting down
    YIELDED = "yielded"  # an inline guest's slice is over: it runs again on a runner thread


class GuestStopped(Exception):
    """Raised by a host function to end a guest that must stop (the reason is the guest's `stop_reason`)."""


class OutputTooLarge(Exception):
    """Raised by `fd_write` to end a guest that writes past its stdout limit."""


_current = threading.local()


def current_guest() -> "Guest | None":
    """The guest running on this thread, if any."""
    guest: Guest | None = getattr(_current, "guest", None)
    return guest


def set_current_guest(guest: "Guest | None") -> None:
    _current.guest = guest


class Guest:
    """One run's stdin, stdout, stderr, fuel, deadline and stop reason. `wake` is shared by the runner's guests:
    `stop` notifies it, and every sleeping host call checks whether it was meant. `inline`: the guest has a slice
    (see the module's docstring). `started_ns`: the run began then, in an inline attempt that yielded."""

    __slots__ = ("stdin", "read", "out", "out_limit", "err", "err_limit", "overflow", "fuel", "inline", "started_ns",
                 "deadline_ns", "clock_origin_ns", "stop_reason", "_slice_wall_ns", "_slice_end_ns",
                 "_deadline_seconds", "_wake")

    def __init__(self, stdin: bytes, limits: RunLimits, wake: threading.Condition, *, inline: bool = False,
                 started_ns: int = 0) -> None:
        self.stdin = stdin
        self.read = 0
        self.out = bytearray()
        self.out_limit = limits.output_bytes
        self.err = bytearray()
        self.err_limit = limits.log_bytes
        self.overflow = False
        self.inline = inline
        self.fuel = min(limits.fuel, INLINE_FUEL) if inline else limits.fuel
        self._deadline_seconds = limits.deadline_seconds
        self.started_ns = started_ns
        self.deadline_ns = self.clock_origin_ns = self._slice_wall_ns = self._slice_end_ns = 0  # set by `start`
        self.stop_reason: StopReason | None = None
        self._wake = wake

    def start(self) -> None:
        """The run begins now, unless it began in an inline attempt: its deadline counts from then."""
        now = time.monotonic_ns()
        self.started_ns = self.started_ns or now
        self.deadline_ns = self.started_ns + math.ceil(self._deadline_seconds * 1e9)
        if self.inline:
            self._slice_wall_ns = now + INLINE_NS  # CPU time is never ahead of wall time: no need to ask before
            self._slice_end_ns = time.thread_time_ns() + INLINE_NS

    def clock_started(self) -> None:
        """The guest's WASI context exists now. wasmtime's monotonic clock counts from its creation, so this instant
        (taken just after) is where the guest's clock is at about zero: never behind it, so an absolute sleep never
        ends before the guest's own clock reaches its time."""
        self.clock_origin_ns = time.monotonic_ns()

    def must_stop(self) -> bool:
        """Whether the guest must end now: stopped, or past its deadline or its slice (which then becomes the
        reason)."""
        if self.stop_reason is None:
            now = time.monotonic_ns()
            if now >= self.deadline_ns:
                self.stop_reason = StopReason.DEADLINE
            elif self.inline and now >= self._slice_wall_ns and time.thread_time_ns() >= self._slice_end_ns:
                self.stop_reason = StopReason.YIELDED
        return self.stop_reason is not None

    def check(self) -> None:
        """Raise `GuestStopped` if the guest must end now. Every host function calls this first."""
        if self.must_stop():
            raise GuestStopped(self.stop_reason)

    def sleep_until(self, wake_ns: int) -> None:
        """Sleep until `wake_ns` (monotonic) but not past the deadline, and wake at once if the run is stopped; then
        `check`. An inline guest yields instead: it would hold its caller's thread."""
        if self.inline and self.stop_reason is None and wake_ns > time.monotonic_ns():
            self.stop_reason = StopReason.YIELDED
        end = min(wake_ns, self.deadline_ns)
        with self._wake:
            while self.stop_reason is None and (left := end - time.monotonic_ns()) > 0:
                self._wake.wait(left / 1e9)
        self.check()

    def stop(self, reason: StopReason = StopReason.STOPPED) -> None:
        """Make the guest end (from any thread). Host calls see it at once; running wasm code sees it when the
        epoch next moves (the caller rings it)."""
        with self._wake:
            if self.stop_reason is None:
                self.stop_reason = reason
            self._wake.notify_all()
