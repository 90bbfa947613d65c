"""Running a compiled module: a fresh store per run, hard limits, stdio in memory, distinct outcomes.

Every run gets a new `Store` with its fuel, its memory cap and an epoch deadline, and a WASI context that grants
nothing: no arguments, no environment, no preopened directories (so no files), no sockets. WASI's `fd_read` and
`fd_write` are replaced by host functions over in-memory buffers: stdin is the input, stdout is bounded (the
guest is stopped the moment it writes past `output_bytes`) and stderr keeps its first `log_bytes`.

Deadlines are wall-clock time (`EpochClock`): the engine's epoch is a clock of `_TICK_SECONDS` ticks, anchored to
`time.monotonic()`. A run's store traps when the epoch reaches the tick of its deadline; one timer thread sleeps
until the earliest pending deadline and then sets the epoch to what the monotonic clock says, however late it
woke. So a late wake-up (a busy machine, a held GIL) delays the trap by that wake-up's lateness only, never by an
accumulation of late ticks, and the epoch never runs ahead of the clock (no run stops early).

Runs are synchronous native calls that release the GIL; `Runner.execute` hands them to the runner's own
`concurrency` threads, so the event loop stays responsive and at most that many modules run at once. (Its own
threads, not `anyio.to_thread`: the hand-off then costs about half as much, which matters for small modules.)
"""

import asyncio
import ctypes
import heapq
import json
import math
import queue
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any, NamedTuple, Self

import anyio
from wasmtime import (
    Caller,
    Config,
    Engine,
    ExitTrap,
    FuncType,
    Linker,
    Memory,
    Module,
    Store,
    Trap,
    TrapCode,
    ValType,
    WasiConfig,
    WasmtimeError,
)

from sandbox.models import Outcome, RunLimits, RunResult

WASI = "wasi_snapshot_preview1"
PAGE = 65536
_TICK_SECONDS = 0.001  # the epoch's unit: deadlines are rounded up to it
_EBADF, _EFAULT, _EINVAL = 8, 21, 28  # WASI errno values
_IOV_MAX = 1024  # iovecs per call, as POSIX's IOV_MAX: a guest cannot make the host build a huge list
_U32_MASK = 0xFFFF_FFFF
_IOVEC = struct.Struct("<II")
_U32 = struct.Struct("<I")


def engine_config() -> Config:
    """The one engine configuration: modules compiled for it (also in the compiler process) run only on it."""
    config = Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    config.wasm_threads = False  # no shared memory, no atomics waits: one thread per run
    return config


class _OutputTooLarge(Exception):
    """Raised by `fd_write` to stop a guest that writes past its stdout limit."""


class _Stdio:
    """One run's stdin, stdout and stderr."""

    __slots__ = ("stdin", "read", "out", "out_limit", "err", "err_limit", "overflow")

    def __init__(self, stdin: bytes, limits: RunLimits) -> None:
        self.stdin = stdin
        self.read = 0
        self.out = bytearray()
        self.out_limit = limits.output_bytes
        self.err = bytearray()
        self.err_limit = limits.log_bytes
        self.overflow = False


_current = threading.local()  # the running store's stdio: a run executes wholly on one thread


def _settle(done: "asyncio.Future[RunResult]", result: RunResult | None, exc: BaseException | None) -> None:
    if exc is not None:
        done.set_exception(exc)
    else:
        done.set_result(result)  # type: ignore[arg-type]


def _memory(caller: Caller) -> tuple[int, int] | None:
    """The guest memory's address and size, valid until the guest runs again."""
    memory = caller["memory"]
    if not isinstance(memory, Memory):
        return None
    return ctypes.addressof(memory.data_ptr(caller).contents), memory.data_len(caller)


class _Call(NamedTuple):
    """A checked fd_read or fd_write: the guest memory's address, its buffers and where the count goes."""

    base: int
    vecs: list[tuple[int, int]]
    result: int


def _io_call(caller: Caller, iovs: int, count: int, result: int) -> _Call | int:
    """The call's arguments if the iovec array, every buffer it names and the result slot lie inside the guest's
    memory (guest pointers arrive as signed i32 values and are unsigned addresses: masked, never trusted);
    otherwise the errno to return."""
    iovs, count, result = iovs & _U32_MASK, count & _U32_MASK, result & _U32_MASK
    if count > _IOV_MAX:
        return _EINVAL
    memory = _memory(caller)
    if memory is None:
        return _EBADF
    base, size = memory
    if iovs + 8 * count > size or result + 4 > size:
        return _EFAULT
    vecs = list(_IOVEC.iter_unpack(ctypes.string_at(base + iovs, 8 * count)))
    if any(ptr + length > size for ptr, length in vecs):
        return _EFAULT
    return _Call(base, vecs, result)


def _fd_read(caller: Caller, fd: int, iovs: int, count: int, nread: int) -> int:
    io: _Stdio = _current.stdio
    call = _io_call(caller, iovs, count, nread) if fd == 0 else _EBADF
    if isinstance(call, int):
        return call
    base, vecs, nread = call
    total = 0
    for ptr, length in vecs:
        chunk = io.stdin[io.read:io.read + length]
        ctypes.memmove(base + ptr, chunk, len(chunk))
        io.read += len(chunk)
        total += len(chunk)
        if len(chunk) < length:
            break
    ctypes.memmove(base + nread, _U32.pack(total), 4)
    return 0


def _fd_write(caller: Caller, fd: int, iovs: int, count: int, nwritten: int) -> int:
    io: _Stdio = _current.stdio
    call = _io_call(caller, iovs, count, nwritten) if fd in (1, 2) else _EBADF
    if isinstance(call, int):
        return call
    base, vecs, nwritten = call
    total = sum(length for _, length in vecs)
    if fd == 1:
        if len(io.out) + total > io.out_limit:
            io.overflow = True
            raise _OutputTooLarge
        for ptr, length in vecs:
            io.out += ctypes.string_at(base + ptr, length)
    else:
        for ptr, length in vecs:
            room = io.err_limit - len(io.err)
            if room > 0:
                io.err += ctypes.string_at(base + ptr, min(length, room))
    ctypes.memmove(base + nwritten, _U32.pack(total), 4)
    return 0


def wasi_linker(engine: Engine) -> Linker:
    """WASI preview 1 with stdin and stdout/stderr replaced by the in-memory host functions."""
    linker = Linker(engine)
    linker.define_wasi()
    linker.allow_shadowing = True
    io_type = FuncType([ValType.i32()] * 4, [ValType.i32()])
    linker.define_func(WASI, "fd_read", io_type, _fd_read, access_caller=True)
    linker.define_func(WASI, "fd_write", io_type, _fd_write, access_caller=True)
    linker.allow_shadowing = False
    return linker


class _Job(NamedTuple):
    module: Module
    stdin: bytes
    limits: RunLimits
    loop: asyncio.AbstractEventLoop
    done: "asyncio.Future[RunResult]"


class EpochClock:
    """Wall-clock deadlines for the stores of one engine, through its epoch (see the module's docstring).

    Use as a context manager (it owns the timer thread); `deadline(store, seconds)` arms a store before it runs.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._wake = threading.Condition()
        self._epoch = 0  # the engine's epoch: only this clock increments it, under `_wake`
        self._origin = time.monotonic()  # the instant of epoch 0 (moved while no run is armed)
        self._due: list[list[Any]] = []  # a heap of [deadline (monotonic), its tick, run number, still armed]
        self._runs = 0
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

    @contextmanager
    def deadline(self, store: Store, seconds: float) -> Iterator[None]:
        """Make `store` trap once `seconds` have passed (wall clock), while the block runs."""
        with self._wake:
            now = time.monotonic()
            if not self._due:
                # Nothing depends on the epoch's origin: move it so that the epoch is the clock's now, and the
                # timer never has to catch up on idle time.
                self._origin = now - self._epoch * _TICK_SECONDS
            # The first tick at or after the deadline; the epoch is at most the clock's, so it is ahead of it.
            tick = math.ceil((now + seconds - self._origin) / _TICK_SECONDS)
            store.set_epoch_deadline(tick - self._epoch)
            self._runs += 1
            entry = [self._origin + tick * _TICK_SECONDS, tick, self._runs, True]
            if not self._due or entry[0] < self._due[0][0]:
                self._wake.notify()
            heapq.heappush(self._due, entry)
        try:
            yield
        finally:
            with self._wake:
                entry[3] = False
                while self._due and not self._due[0][3]:  # ended runs need no wake-up
                    heapq.heappop(self._due)

    def _run(self) -> None:
        """Sleep until the earliest pending deadline, then bring the epoch up to the clock."""
        with self._wake:
            while not self._closed:
                if not self._due:
                    self._wake.wait()
                    continue
                now = time.monotonic()
                if now < self._due[0][0]:
                    self._wake.wait(self._due[0][0] - now)
                    continue
                ticks = math.floor((now - self._origin) / _TICK_SECONDS)
                while self._due and (self._due[0][0] <= now or not self._due[0][3]):
                    due, tick, _, armed = heapq.heappop(self._due)
                    if armed and due <= now:
                        ticks = max(ticks, tick)  # whatever the float rounding says
                for _ in range(ticks - self._epoch):
                    self._engine.increment_epoch()
                self._epoch = max(self._epoch, ticks)


class Runner:
    """Runs modules compiled for its engine, in `concurrency` threads of its own. Use as a context manager: it
    owns those threads and the epoch clock, and joins them on exit."""

    def __init__(self, *, concurrency: int = 2) -> None:
        self.engine = Engine(engine_config())
        self._linker = wasi_linker(self.engine)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"wasm-run-{n}") for n in range(concurrency)]
        self._clock = EpochClock(self.engine)

    def __enter__(self) -> Self:
        self._clock.__enter__()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()  # each finishes its run first: bounded by the run's deadline
        self._clock.__exit__(kind, exc, tb)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                result = self.run(job.module, job.stdin, job.limits)
            except BaseException as exc:  # handed to the waiting caller, which re-raises it
                job.loop.call_soon_threadsafe(_settle, job.done, None, exc)
            else:
                job.loop.call_soon_threadsafe(_settle, job.done, result, None)

    def load(self, artifact: bytes) -> Module:
        """A module from the compiler's serialized output (trusted: we produced it with this engine's config)."""
        return Module.deserialize(self.engine, artifact)

    async def execute(self, module: Module, stdin: bytes, limits: RunLimits) -> RunResult:
        """Run in one of the runner's threads (at most `concurrency` at once, the others wait their turn). A
        cancelled caller still waits for its run to end, which its deadline bounds: nothing outlives the call."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[RunResult] = loop.create_future()
        self._jobs.put(_Job(module, stdin, limits, loop, done))
        with anyio.CancelScope(shield=True):
            result = await done
        return result

    def run(self, module: Module, stdin: bytes, limits: RunLimits) -> RunResult:
        io = _Stdio(stdin, limits)
        store = Store(self.engine)
        store.set_fuel(limits.fuel)
        store.set_limits(memory_size=limits.memory_bytes, table_elements=100_000, instances=1, tables=10,
                         memories=1)
        store.set_wasi(WasiConfig())
        exports: Mapping[str, Any] | None = None
        exit_code: int | None = None
        failure: tuple[Outcome, str] | None = None
        started = time.perf_counter()
        with self._clock.deadline(store, limits.deadline_seconds):
            _current.stdio = io
            try:
                exports = self._linker.instantiate(store, module).exports(store)
                exports["_start"](store)  # type: ignore[operator]  # checked at upload: a function
                exit_code = 0
            except ExitTrap as exc:
                exit_code = exc.code
            except _OutputTooLarge:
                failure = (Outcome.OUTPUT_TOO_LARGE, f"the module wrote more than {limits.output_bytes} bytes "
                                                     "to stdout")
            except Trap as exc:
                failure = _trap_outcome(exc, limits)
            except WasmtimeError as exc:  # instantiation refused (a memory above the cap), or a WASI call failed
                failure = _instantiation_outcome(exc, limits) if exports is None else \
                    (Outcome.TRAPPED, f"a WASI call failed: {_cause(str(exc))}")
            finally:
                _current.stdio = None
        duration_ms = (time.perf_counter() - started) * 1000
        memory = exports.get("memory") if exports is not None else None
        memory_bytes = memory.data_len(store) if isinstance(memory, Memory) else 0
        # A failed `memory.grow` is not a trap: the guest sees -1 and gives up its own way (a trap, an exit code).
        gave_up = exit_code not in (0, None) or (failure is not None and failure[0] is Outcome.TRAPPED)
        if gave_up and exports is not None and memory_bytes + PAGE > limits.memory_bytes:
            failure = (Outcome.MEMORY_LIMIT, f"the module's memory reached its cap of {limits.memory_bytes} bytes; "
                                             + (failure[1] if failure else f"it exited with code {exit_code}"))
        result = _result(io, exit_code, failure)
        # Built from checked values: no validation pass (it would be a tenth of a trivial run).
        return RunResult.model_construct(**result, exit_code=exit_code, log=io.err.decode(errors="replace"),
                         fuel_used=None if result["outcome"] is Outcome.DEADLINE_EXCEEDED else
                         limits.fuel - store.get_fuel(), memory_bytes=memory_bytes,
                         duration_ms=round(duration_ms, 3))


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


def _result(io: _Stdio, exit_code: int | None, failure: tuple[Outcome, str] | None) -> dict[str, Any]:
    if failure is not None:
        outcome, error = failure
        if io.overflow:  # a trap raised while stopping a flood is still the flood
            outcome, error = Outcome.OUTPUT_TOO_LARGE, f"the module wrote more than {io.out_limit} bytes to stdout"
        return {"outcome": outcome, "output": None, "error": error}
    if exit_code != 0:
        return {"outcome": Outcome.EXITED, "output": None, "error": f"the module exited with code {exit_code}"}
    try:
        output = json.loads(io.out)
    except ValueError as exc:
        return {"outcome": Outcome.INVALID_OUTPUT, "output": None, "error": f"stdout is not JSON: {exc}"}
    if not isinstance(output, dict):
        return {"outcome": Outcome.INVALID_OUTPUT, "output": None,
                "error": f"stdout is JSON but not an object (a {type(output).__name__})"}
    return {"outcome": Outcome.OK, "output": output, "error": None}
