"""Wall-clock deadlines through the engine's epoch, which is a doorbell here, not a clock.

Every store's epoch deadline is the next increment, with a deadline callback. `EpochClock`'s timer thread rings
(increments the epoch once) when the earliest pending deadline is due, and `ring()` rings at once (a run was
stopped). Each running guest's callback then asks its `Guest` whether it must stop: past its own deadline on the
monotonic clock, or stopped. If so the guest ends there; else it runs on until the next ring.

So no run stops before its deadline (the clock decides, never a count of ticks), a late timer delays a run by its
own lateness only, and one increment reaches every store at once: stopping all guests at shutdown costs one ring.
(An epoch of 1 ms ticks had to be caught up one increment per tick, each a native call that hands the GIL over:
60-165 ms past the deadline beside guests that spin on Python host functions.)

wasm code checks the epoch at function entries and loop heads only; host calls check the guest themselves
(`sandbox.wasi`). The callback uses wasmtime's C API for epoch deadline callbacks, which wasmtime-py binds
(`wasmtime._bindings`) but does not wrap; the wasmtime version is pinned.
"""

import ctypes
import heapq
import itertools
import math
import threading
import time
from types import TracebackType
from typing import Any, Self

from wasmtime import Engine, Store, _bindings
from wasmtime._ffi import dll

from sandbox.guest import current_guest

_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE: run on, the deadline moved by `*delta`
_STOP_MESSAGE = b"agenthub: the run must stop (its deadline passed, or it was stopped)"
_Callback = _bindings._wasmtime_store_epoch_deadline_callback.argtypes[1]
_NO_FINALIZER = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))
# wasmtime_error_new, returning the address as an int: casting wasmtime-py's pointer would leave a reference cycle
_error_new = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(("wasmtime_error_new", dll))


def _on_epoch(context: Any, env: Any, delta: Any, kind: Any) -> int:
    """Called on the guest's thread when the epoch passes its store's deadline: a new wasmtime error (which ends
    the call) if the guest must stop, else 0 with the next increment as the deadline."""
    guest = current_guest()
    if guest is None or guest.must_stop():
        error: int = _error_new(_STOP_MESSAGE)
        return error
    delta[0] = 1
    kind[0] = _CONTINUE
    return 0


_ON_EPOCH = _Callback(_on_epoch)  # module-level: wasmtime calls it for as long as the process lives


class EpochClock:
    """Wall-clock deadlines for the stores of one engine (see the module's docstring). Use as a context manager (it
    owns the timer thread); `arm(store, deadline_ns)` arms a store for its guest's deadline until `disarm`.

    The timer thread is woken only for a deadline earlier than the one it sleeps until: runs one after another
    (each with a later deadline than the last) wake it once per deadline span, not once per run."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._wake = threading.Condition()
        self._due: list[list[Any]] = []  # a heap of [deadline (monotonic ns), run number, still armed]
        self._runs = itertools.count()
        self._alarm_ns: float = math.inf  # when the timer thread wakes by itself
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="wasm-epoch")

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    def ring(self) -> None:
        """Move the epoch now: every running guest checks whether it must stop."""
        self._engine.increment_epoch()

    def arm(self, store: Store, deadline_ns: int) -> list[Any]:
        """Make `store` ask its guest (`current_guest()`) whether to stop whenever the epoch moves, and ring at
        `deadline_ns` (monotonic) unless `disarm`ed first with what this returns."""
        store.set_epoch_deadline(1)
        _bindings.wasmtime_store_epoch_deadline_callback(store.ptr(), _ON_EPOCH, None, _NO_FINALIZER)
        entry = [deadline_ns, next(self._runs), True]
        with self._wake:
            heapq.heappush(self._due, entry)
            if deadline_ns < self._alarm_ns:
                self._wake.notify()
        return entry

    def disarm(self, entry: list[Any]) -> None:
        """The run of `entry` (from `arm`) ended: its deadline needs no ring."""
        with self._wake:
            entry[2] = False
            while self._due and not self._due[0][2]:
                heapq.heappop(self._due)

    def _run(self) -> None:
        """Sleep until the earliest pending deadline, then ring once for every deadline due by then."""
        with self._wake:
            while not self._closed:
                if not self._due:
                    self._alarm_ns = math.inf
                    self._wake.wait()
                    continue
                now = time.monotonic_ns()
                if now < self._due[0][0]:
                    self._alarm_ns = self._due[0][0]
                    self._wake.wait((self._due[0][0] - now) / 1e9)
                    continue
                due = False
                while self._due and (self._due[0][0] <= now or not self._due[0][2]):
                    due |= heapq.heappop(self._due)[2]
                if due:
                    self._engine.increment_epoch()
