"""Running a compiled module: a fresh store per run, hard limits, stdio in memory, distinct outcomes, and nothing
of a run left behind.

Every run gets a new `Store` with its fuel, its memory cap and its deadline (`sandbox.epoch`), and a WASI context
that grants nothing: no arguments, no environment, no preopened directories (so no files), no sockets. The WASI
calls that could outlast the run (stdio, sleeping, randomness) are host functions of ours (`sandbox.wasi`).

Runs are synchronous native calls that release the GIL. `Runner.execute` runs a module inline first, on the
caller's thread, when a runner thread is free and none waits: most modules end within a slice of it (about a
millisecond, `sandbox.guest`), and a hand-off to another thread and back costs more than a small module's whole
run. A guest that outlasts its slice yields and runs again, whole, in one of the runner's own `concurrency`
threads (and the module's next 16 runs go there directly), so the event loop stays responsive and at most that
many modules run at once.

Bounded in every way: a run ends at its deadline, in wasm code or in a host call; a cancelled caller stops its
run (or takes it out of the queue) and waits only for it to stop; leaving the runner stops every run at once
(their callers get `ServiceUnavailable`) and refuses new ones. A run's store is closed when the run ends, and the
exception that ended it loses its frames: the guest's memory is given back then, not whenever the cyclic garbage
collector (which the hub all but turns off) reaches the reference cycles a traceback leaves (63 MiB a run, kept,
for a module that fills its memory).
"""

import asyncio
import json
import queue
import threading
import time
import traceback
import weakref
from types import TracebackType
from typing import Any, Self

import anyio
from wasmtime import (
    Config,
    Engine,
    ExitTrap,
    InstancePre,
    Module,
    Store,
    Trap,
    TrapCode,
    WasiConfig,
    WasmtimeError,
)

from agenthub.errors import ServiceUnavailable
from sandbox import native
from sandbox.epoch import EpochClock
from sandbox.guest import Guest, GuestStopped, OutputTooLarge, StopReason, set_current_guest
from sandbox.models import Outcome, RunLimits, RunResult
from sandbox.wasi import wasi_linker

PAGE = 65536
_THREADED_RUNS = 16  # a slice wasted in every 17 runs of a module that outlasts it: under 6% of their time


def engine_config() -> Config:
    """The one engine configuration: modules compiled for it (also in the compiler process) run only on it."""
    config = Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    config.wasm_threads = False  # no shared memory, no atomics waits: one thread per run
    return config


def _stopped() -> ServiceUnavailable:
    return ServiceUnavailable("the sandbox runner stopped (the hub or agent is shutting down); run it again later")


def _settle(done: "asyncio.Future[RunResult]", result: RunResult | None, exc: BaseException | None) -> None:
    if done.done():
        return
    if exc is not None:
        done.set_exception(exc)
    else:
        done.set_result(result)  # type: ignore[arg-type]


class _Job:
    """A run asked for. A worker admits it (gives it a `Guest`) unless its caller gave it up first. `started_ns`:
    the run began in an inline attempt that yielded."""

    __slots__ = ("pre", "stdin", "limits", "started_ns", "loop", "done", "guest", "abandoned")

    def __init__(self, pre: InstancePre, stdin: bytes, limits: RunLimits, started_ns: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.pre = pre
        self.stdin = stdin
        self.limits = limits
        self.started_ns = started_ns
        self.loop = loop
        self.done: asyncio.Future[RunResult] = loop.create_future()
        self.guest: Guest | None = None
        self.abandoned = False

    def settle(self, result: RunResult | None, exc: BaseException | None) -> None:
        """Hand the outcome to the caller's event loop (from a runner thread)."""
        try:
            self.loop.call_soon_threadsafe(_settle, self.done, result, exc)
        except RuntimeError:  # the loop is closed: nobody waits for this run any more
            pass


class Runner:
    """Runs modules compiled for its engine, in `concurrency` threads of its own. Use as a context manager: it
    owns those threads and the epoch clock; leaving it stops the runs in progress and joins the threads."""

    def __init__(self, *, concurrency: int = 2) -> None:
        self.engine = Engine(engine_config())
        self._linker = wasi_linker(self.engine)
        self._pres: weakref.WeakKeyDictionary[Module, InstancePre] = weakref.WeakKeyDictionary()
        # Runs of a module that outlasted its inline slice go to the threads, this many before it is tried inline again
        self._threaded: weakref.WeakKeyDictionary[Module, int] = weakref.WeakKeyDictionary()
        self._concurrency = concurrency
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"wasm-run-{n}") for n in range(concurrency)]
        self._clock = EpochClock(self.engine)
        self._wake = threading.Condition()  # sleeping host calls wait on it; `Guest.stop` notifies it
        self._lock = threading.Lock()  # guards `_closed`, `_active` and each job's admission
        self._active: set[Guest] = set()
        self._closed = False

    @property
    def active_runs(self) -> int:
        """Runs in progress: each holds one of the runner's threads."""
        return len(self._active)

    def __enter__(self) -> Self:
        self._clock.__enter__()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()  # each run ends at its next host call or epoch check
        self._clock.__exit__(kind, exc, tb)

    def stop(self) -> None:
        """Stop the runs in progress at once and refuse the rest, queued or new (their callers get
        `ServiceUnavailable`). From any thread, as often as wanted: leaving the runner calls it, and a hub can call
        it as its shutdown starts, so that requests waiting for runs end without waiting for them."""
        with self._lock:
            self._closed = True
            for guest in self._active:
                guest.stop()
        self._clock.ring()

    def load(self, artifact: bytes) -> Module:
        """A module from the compiler's serialized output (trusted: we produced it with this engine's config)."""
        module = Module.deserialize(self.engine, artifact)
        self._pre(module)
        return module

    def _pre(self, module: Module) -> InstancePre:
        """`module` with its imports resolved by the runner's linker, once per module."""
        pre = self._pres.get(module)
        if pre is None:
            pre = self._pres[module] = self._linker.instantiate_pre(module)
        return pre

    async def execute(self, module: Module, stdin: bytes, limits: RunLimits) -> RunResult:
        """Run inline on this thread if a runner thread is free and none waits, else (or once the guest outlasts its
        slice) in one of the runner's threads: at most `concurrency` runs at once, the others wait their turn.

        A cancelled caller stops its run, or takes it out of the queue, and waits only for it to stop: nothing
        outlives the call. Raises `ServiceUnavailable` when the runner stops before the run ends.
        """
        await anyio.lowlevel.checkpoint()  # the loop's other tasks get their turn before a run that may hold it
        pre = self._pre(module)
        with self._lock:
            if self._closed:
                raise _stopped()
            threaded = self._threaded.get(module, 0)
            if threaded:
                self._threaded[module] = threaded - 1
            inline = not threaded and len(self._active) + self._jobs.qsize() < self._concurrency
            guest = Guest(stdin, limits, self._wake, inline=True) if inline else None
            if guest is not None:
                self._active.add(guest)
        started_ns = 0
        if guest is not None:
            try:
                result = self._run(pre, guest, limits)
            finally:
                with self._lock:
                    self._active.discard(guest)
            if result is not None:
                return result
            self._threaded[module] = _THREADED_RUNS
            started_ns = guest.started_ns
        job = _Job(pre, stdin, limits, started_ns, asyncio.get_running_loop())
        with self._lock:
            if self._closed:
                raise _stopped()
            self._jobs.put(job)
        try:
            return await asyncio.shield(job.done)
        except asyncio.CancelledError:
            if self._abandon(job):
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([job.done])
                if not job.done.cancelled():
                    job.done.exception()  # retrieved: the caller that wanted it is gone
            raise

    def _abandon(self, job: _Job) -> bool:
        """Give a job up: True if it had started (its guest is told to stop, and will be settled soon)."""
        with self._lock:
            job.abandoned = True
            guest = job.guest
            if guest is not None:
                guest.stop()
        if guest is not None:
            self._clock.ring()
        return guest is not None

    def _admit(self, job: _Job) -> Guest | None:
        with self._lock:
            if job.abandoned:
                return None
            if self._closed:
                job.settle(None, _stopped())
                return None
            job.guest = Guest(job.stdin, job.limits, self._wake, started_ns=job.started_ns)
            self._active.add(job.guest)
            return job.guest

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._serve(job)

    def _serve(self, job: _Job) -> None:
        guest = self._admit(job)
        if guest is None:
            return
        result: RunResult | None = None
        error: BaseException | None = None
        try:
            result = self._run(job.pre, guest, job.limits)  # not inline: never yields
        except BaseException as exc:  # handed to the waiting caller, which re-raises it
            error = exc
        with self._lock:
            self._active.discard(guest)  # before the caller hears of it: a settled run holds no thread
        job.settle(result, error)

    def _run(self, pre: InstancePre, guest: Guest, limits: RunLimits) -> RunResult | None:
        """The run's result; None if `guest` is inline and yielded (it must run again on a runner thread)."""
        store = Store(self.engine)
        try:
            return self._run_in(store, pre, guest, limits)
        finally:
            store.close()  # the guest's memory goes now, whatever still refers to the store object

    def _run_in(self, store: Store, pre: InstancePre, guest: Guest, limits: RunLimits) -> RunResult | None:
        store.set_fuel(guest.fuel)
        store.set_limits(memory_size=limits.memory_bytes, table_elements=100_000, instances=1, tables=10,
                         memories=1)
        store.set_wasi(WasiConfig())
        guest.clock_started()
        guest.start()
        context = native.context(store)
        instance: Any = None
        exit_code: int | None = None
        failure: tuple[Outcome, str] | None = None
        set_current_guest(guest)
        armed = self._clock.arm(store, guest.deadline_ns)  # an inline guest's fuel and host calls keep its slice
        try:
            guest.check()  # stopped before its store could hear a ring
            instance = native.instantiate(pre, context)
            native.call(context, native.export(context, instance, b"_start"))  # checked at upload: a function
            exit_code = 0
        except ExitTrap as exc:
            exit_code = exc.code
            _drop_frames(exc)
        except (Trap, WasmtimeError, GuestStopped, OutputTooLarge) as exc:
            if guest.inline and _out_of_fuel(exc) and guest.fuel < limits.fuel:
                guest.stop_reason = StopReason.YIELDED
            failure = _failure(exc, guest, limits, instantiated=instance is not None)
            _drop_frames(exc)
        finally:
            self._clock.disarm(armed)
            set_current_guest(None)
        duration_ms = (time.monotonic_ns() - guest.started_ns) / 1e6
        if failure is not None and guest.stop_reason is StopReason.STOPPED:
            raise _stopped()
        if failure is not None and guest.stop_reason is StopReason.YIELDED:
            return None
        memory_bytes = native.memory_size(context, native.export(context, instance, b"memory")) \
            if instance is not None else 0
        # A failed `memory.grow` is not a trap: the guest sees -1 and gives up its own way (a trap, an exit code).
        gave_up = exit_code not in (0, None) or (failure is not None and failure[0] is Outcome.TRAPPED)
        if gave_up and instance is not None and memory_bytes + PAGE > limits.memory_bytes:
            failure = (Outcome.MEMORY_LIMIT, f"the module's memory reached its cap of {limits.memory_bytes} bytes; "
                                             + (failure[1] if failure else f"it exited with code {exit_code}"))
        result = _result(guest, exit_code, failure)
        # Built from checked values: no validation pass (it would be a tenth of a trivial run).
        return RunResult.model_construct(**result, exit_code=exit_code, log=guest.err.decode(errors="replace"),
                                         fuel_used=None if result["outcome"] is Outcome.DEADLINE_EXCEEDED else
                                         guest.fuel - store.get_fuel(), memory_bytes=memory_bytes,
                                         duration_ms=round(duration_ms, 3))


def _drop_frames(exc: BaseException) -> None:
    """Clear the frames of `exc`'s traceback and of the exceptions it chains: they refer to the store (the run's
    own frame does), and the exception to them, so it would keep the guest's memory until the cyclic collector ran."""
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current.__traceback__ = None
        pending += (current.__context__, current.__cause__)


def _out_of_fuel(exc: BaseException) -> bool:
    return isinstance(exc, Trap) and exc.trap_code == TrapCode.OUT_OF_FUEL


def _failure(exc: BaseException, guest: Guest, limits: RunLimits, *, instantiated: bool) -> tuple[Outcome, str]:
    """What ended the run: the guest's own record first."""
    if guest.overflow:  # whatever trap stopping the flood raised
        return Outcome.OUTPUT_TOO_LARGE, f"the module wrote more than {limits.output_bytes} bytes to stdout"
    if guest.stop_reason is StopReason.DEADLINE:
        return Outcome.DEADLINE_EXCEEDED, f"the module ran past its deadline of {limits.deadline_seconds} s"
    if isinstance(exc, Trap):
        return _trap_outcome(exc, limits)
    if isinstance(exc, WasmtimeError):  # instantiation refused (a memory above the cap), or a WASI call failed
        return (Outcome.TRAPPED, f"a WASI call failed: {_cause(str(exc))}") if instantiated else \
            _instantiation_outcome(exc, limits)
    return Outcome.TRAPPED, "trap: a host call failed"


def _trap_outcome(exc: Trap, limits: RunLimits) -> tuple[Outcome, str]:
    if exc.trap_code == TrapCode.OUT_OF_FUEL:
        return Outcome.OUT_OF_FUEL, f"the module used all its fuel ({limits.fuel})"
    if exc.trap_code == TrapCode.INTERRUPT:
        return Outcome.DEADLINE_EXCEEDED, f"the module ran past its deadline of {limits.deadline_seconds} s"
    return Outcome.TRAPPED, f"trap: {_cause(exc.message)}"


def _cause(message: str) -> str:
    """The reason at the end of wasmtime's report ("Caused by: ... wasm trap: call stack exhausted")."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown"
    if last[:1].isdigit() and ": " in last:  # a numbered cause: "1: wasm trap: out of bounds memory access"
        last = last.split(": ", 1)[1]
    return last.removeprefix("wasm trap: ")


def _instantiation_outcome(exc: WasmtimeError, limits: RunLimits) -> tuple[Outcome, str]:
    message = str(exc).splitlines()[0]
    if "memory" in message and "limit" in message:
        return Outcome.MEMORY_LIMIT, f"the module needs more memory than its cap of {limits.memory_bytes} bytes " \
                                     f"({message})"
    return Outcome.TRAPPED, f"the module could not be instantiated: {message}"


def _result(guest: Guest, exit_code: int | None, failure: tuple[Outcome, str] | None) -> dict[str, Any]:
    if failure is not None:
        outcome, error = failure
        return {"outcome": outcome, "output": None, "error": error}
    if exit_code != 0:
        return {"outcome": Outcome.EXITED, "output": None, "error": f"the module exited with code {exit_code}"}
    try:
        output = json.loads(guest.out.decode())  # JSON is UTF-8: no encoding to detect
    except ValueError as exc:
        return {"outcome": Outcome.INVALID_OUTPUT, "output": None, "error": f"stdout is not JSON: {exc}"}
    if not isinstance(output, dict):
        return {"outcome": Outcome.INVALID_OUTPUT, "output": None,
                "error": f"stdout is JSON but not an object (a {type(output).__name__})"}
    return {"outcome": Outcome.OK, "output": output, "error": None}
