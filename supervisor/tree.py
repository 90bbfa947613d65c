"""An Erlang/OTP-style supervisor for anyio: start children in order, restart them by policy, stop them in reverse.

Contract (OTP `supervisor`, see `supervisor.policy` for the pure rules):

* Children start left to right; if one fails to start, the started ones are stopped in reverse order and `start`
  raises. `stop` terminates them in reverse start order (SIMPLE_ONE_FOR_ONE: all at once), each with its
  `shutdown` grace (None = kill at once, `math.inf` = wait, for child supervisors).
* When a child exits on its own, `should_restart` decides. Not restarted: it becomes STOPPED (temporary: its spec is
  dropped) and `auto_shutdown` may end the supervisor. Restarted: the restart is added to the intensity window; a
  breach stops all children in reverse order and ends the supervisor with `Exit(SHUTDOWN, INTENSITY_REACHED)`, which
  its parent sees as its child's exit (escalation). Otherwise the strategy picks the children to restart
  (one_for_one: it; one_for_all: all; rest_for_one: it and those started after it); siblings are stopped in reverse
  order and everything is restarted in start order after the child's `Backoff` delay (temporary siblings are dropped,
  never restarted). A failing restart emits "start_failed", counts in the intensity window and is retried later.
* Serialization: every decision (an exit, a delayed restart, an API call) runs under one `anyio.Lock`, so decisions
  never interleave. Backoff delays are slept outside the lock, so the supervisor answers while children restart.
* Generations: each slot counts its instances. A watcher task carries the generation it watches; when the supervisor
  replaces or stops an instance it bumps the generation first, so that instance's exit is not taken for a failure.
* Tasks: the supervisor's tasks and its children's helper tasks run in a task group it owns inside the task group
  given to `start`; that inner group is shielded so that cancelling the outer group still stops the children in
  order (bounded by `CANCELLED_STOP_TIMEOUT`) instead of tearing them down at once.
* Events go to the listener in order through a bounded stream read by one task; a raising listener is logged, a
  listener that falls `_EVENT_BUFFER` events behind loses events (logged), and neither blocks the supervisor.
"""

import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Literal, Protocol, Self

import anyio
from anyio.abc import TaskGroup, TaskStatus

from supervisor.policy import Backoff, Exit, ExitKind, RestartIntensity, RestartType, Strategy, should_restart

logger = logging.getLogger(__name__)

INTENSITY_REACHED = "reached maximum restart intensity"
# Bound on the orderly stop a supervisor performs when its owner's task group is cancelled without stop().
CANCELLED_STOP_TIMEOUT = 60.0
_EVENT_BUFFER = 1024
_EVENT_DRAIN_TIMEOUT = 5.0
# A cancelled task child normally ends at once; this only bounds a task that shields its own cleanup for too long.
_TASK_CANCEL_WAIT = 10.0


class Child(Protocol):
    """A started child instance: an OS process, a task, or another supervisor."""

    @property
    def pid(self) -> int | None: ...

    async def wait(self) -> Exit:
        """Return once the child has exited; safe to await from several tasks, and after it exited."""
        ...

    # `timeout` is the grace before the kill (OTP's shutdown value), part of the protocol, not a call deadline.
    async def stop(self, timeout: float | None) -> Exit:  # noqa: ASYNC109
        """Stop politely, then kill after `timeout` seconds; None kills at once, `math.inf` waits forever."""
        ...


StartFn = Callable[[TaskGroup], Awaitable[Child]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSpec:
    """How to start one child and what to do when it exits."""

    id: str
    start: StartFn
    restart: RestartType = RestartType.PERMANENT
    shutdown: float | None = 5.0
    significant: bool = False
    backoff: Backoff = Backoff()


class ChildStatus(StrEnum):
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildInfo:
    """A snapshot of one child, as `which_children` reports it."""

    id: str
    status: ChildStatus
    pid: int | None
    restarts: int
    started_at: float | None
    last_exit: Exit | None


EventKind = Literal["started", "exited", "restarting", "start_failed", "shutdown"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorEvent:
    supervisor: str
    kind: EventKind
    child_id: str | None = None
    pid: int | None = None
    exit: Exit | None = None
    delay: float | None = None


Listener = Callable[[SupervisorEvent], Awaitable[None]]


@dataclass(slots=True, kw_only=True, eq=False)  # eq=False: slots compare and hash by identity
class _Slot:
    """The supervisor's mutable bookkeeping for one child spec; written only under the supervisor's lock."""

    spec: ChildSpec
    status: ChildStatus = ChildStatus.STOPPED
    instance: Child | None = None
    generation: int = 0
    starts: int = 0
    started_at: float | None = None
    last_exit: Exit | None = None
    attempt: int = 0  # consecutive restarts, for the backoff
    pending: object | None = None  # token of the scheduled restart this slot belongs to


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Supervisor:
    """A supervisor of child instances; itself a `Child`, so supervisors nest into trees."""

    def __init__(self, name: str, children: Sequence[ChildSpec] = (), *, strategy: Strategy = Strategy.ONE_FOR_ONE,
                 max_restarts: int = 1, period: float = 5.0,
                 auto_shutdown: Literal["never", "any_significant", "all_significant"] = "never",
                 listener: Listener | None = None, rng: random.Random | None = None) -> None:
        self.name = name
        self.strategy = strategy
        self.auto_shutdown = auto_shutdown
        self._intensity = RestartIntensity(max_restarts, period)
        self._listener = listener
        self._rng = rng if rng is not None else random.Random()
        self._slots: dict[str, _Slot] = {}
        for spec in children:
            self._check_spec(spec)
            if spec.id in self._slots:
                raise ValueError(f"supervisor {name!r}: duplicate child id {spec.id!r}")
            self._slots[spec.id] = _Slot(spec=spec)
        self._lock = anyio.Lock()
        self._started = False
        self._shutting_down = False
        self._exit: Exit | None = None
        self._stopped = anyio.Event()  # every child stopped and the "shutdown" event emitted
        self._ended = anyio.Event()  # and the supervisor's own tasks have finished: wait() returns
        self._events_drained = anyio.Event()
        self._events_send, self._events_receive = anyio.create_memory_object_stream[SupervisorEvent](_EVENT_BUFFER)
        self._work_tg: TaskGroup | None = None
        self._exit_stack: AsyncExitStack | None = None

    # ----------------------------------------------------------------------------------------------- lifecycle

    async def start(self, tg: TaskGroup) -> Self:
        """Start the children left to right; the supervisor's own tasks run inside `tg`.

        Raises:
            RuntimeError: this supervisor was started before (build a new one, see `child_spec`).
            Exception: whatever the failing child's start raised, after the started ones were stopped.
        """
        if self._started:
            raise RuntimeError(f"supervisor {self.name!r} was already started; a restart needs a new one "
                               "(Supervisor.child_spec)")
        self._started = True
        self._work_tg = await tg.start(self._host)
        try:
            async with self._lock:
                for slot in list(self._slots.values()):
                    await self._start_instance(slot)
        except BaseException as exc:
            logger.error("supervisor %s: failed to start: %s", self.name, _describe(exc))
            with anyio.CancelScope(shield=True):
                async with self._lock:
                    await self._shutdown(Exit(kind=ExitKind.SHUTDOWN, detail=f"failed to start: {_describe(exc)}"),
                                         brutal=False)
                await self._ended.wait()
            raise
        logger.info("supervisor %s started (%s, %d children)", self.name, self.strategy, len(self._slots))
        return self

    async def __aenter__(self) -> Self:
        if self._started:
            raise RuntimeError(f"supervisor {self.name!r} was already started")
        stack = AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        try:
            await self.start(tg)
        except BaseException:
            # start() has already stopped what it started; closing the group cleanly lets the caller see the
            # original exception rather than an ExceptionGroup around it.
            await stack.aclose()
            raise
        self._exit_stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop(math.inf)
        if self._exit_stack is not None:
            # Closed without the body's exception: every task is finished, and that exception propagates unwrapped.
            await self._exit_stack.aclose()

    async def _host(self, *, task_status: TaskStatus[TaskGroup]) -> None:
        async with anyio.create_task_group() as local:
            work_tg = await local.start(self._work)
            task_status.started(work_tg)
            try:
                await self._ended.wait()
            except anyio.get_cancelled_exc_class():
                logger.warning("supervisor %s: its task group was cancelled without stop(); stopping the children",
                               self.name)
                with anyio.CancelScope(shield=True):
                    await self.stop(CANCELLED_STOP_TIMEOUT)
                raise

    async def _work(self, *, task_status: TaskStatus[TaskGroup]) -> None:
        # Shielded: the children are stopped by the supervisor in order, never torn down by an outer cancellation
        # (_host turns that into a bounded stop()); this group is cancelled only once every child is stopped.
        with anyio.CancelScope(shield=True):
            try:
                async with anyio.create_task_group() as events_tg:
                    if self._listener is not None:
                        events_tg.start_soon(self._deliver_events, self._listener, name=f"{self.name} events")
                    else:
                        self._events_drained.set()
                    async with anyio.create_task_group() as work_tg:
                        task_status.started(work_tg)
                        await self._stopped.wait()
                        work_tg.cancel_scope.cancel()
                    self._events_send.close()
                    with anyio.move_on_after(_EVENT_DRAIN_TIMEOUT):
                        await self._events_drained.wait()
                    events_tg.cancel_scope.cancel()
            finally:
                self._ended.set()

    async def _deliver_events(self, listener: Listener) -> None:
        try:
            async with self._events_receive:
                async for event in self._events_receive:
                    try:
                        await listener(event)
                    except Exception:  # a faulty listener must not take the supervisor down
                        logger.exception("supervisor %s: event listener failed on %s", self.name, event)
        finally:
            self._events_drained.set()

    # ------------------------------------------------------------------------------------------ Child protocol

    @property
    def pid(self) -> None:
        return None

    @property
    def exit(self) -> Exit | None:
        """Why the supervisor ended, or None while it runs."""
        return self._exit

    async def wait(self) -> Exit:
        """Return once the supervisor has stopped, with why it stopped."""
        await self._ended.wait()
        return self._exit if self._exit is not None else Exit(kind=ExitKind.ABNORMAL, detail="supervisor crashed")

    async def stop(self, timeout: float | None) -> Exit:  # noqa: ASYNC109 (the Child protocol's kill grace)
        """Terminate all children (reverse start order), then end the supervisor.

        Args:
            timeout: seconds for the orderly stop, after which remaining children are killed; None kills them at
                once; `math.inf` gives each child its full `shutdown` grace.
        """
        if not self._started:
            self._started = True
            self._exit = Exit(kind=ExitKind.SHUTDOWN)
            self._stopped.set()
            self._ended.set()
            return self._exit
        self._shutting_down = True  # pending restarts and late exits are ignored from here on
        # Shielded: a caller giving up half-way must not leave half a tree running. Bounded by `timeout` plus the
        # decision in progress (itself bounded by its children's shutdown graces).
        with anyio.CancelScope(shield=True):
            if not self._stopped.is_set() and timeout is not None:
                with anyio.move_on_after(timeout):
                    async with self._lock:
                        await self._shutdown(Exit(kind=ExitKind.SHUTDOWN), brutal=False)
            if not self._stopped.is_set():
                if timeout is not None:
                    logger.warning("supervisor %s: not stopped within %.1f s; killing the remaining children",
                                   self.name, timeout)
                async with self._lock:
                    await self._shutdown(Exit(kind=ExitKind.SHUTDOWN), brutal=True)
            await self._ended.wait()
        return await self.wait()

    # -------------------------------------------------------------------------------------------- child specs

    def as_child(self, *, restart: RestartType = RestartType.PERMANENT, significant: bool = False) -> ChildSpec:
        """A spec that runs this very supervisor as another supervisor's child.

        The object can start only once, so a parent's attempt to restart it fails ("start_failed") and ends in the
        parent's intensity; use `child_spec` with a factory when the parent should restart it.
        """

        async def start(tg: TaskGroup) -> Child:
            return await self.start(tg)

        return ChildSpec(id=self.name, start=start, restart=restart, shutdown=math.inf, significant=significant)

    @staticmethod
    def child_spec(id: str, factory: Callable[[], "Supervisor"], *, restart: RestartType = RestartType.PERMANENT,
                   significant: bool = False) -> ChildSpec:
        """A spec for a child supervisor built afresh by `factory()` on every (re)start."""

        async def start(tg: TaskGroup) -> Child:
            return await factory().start(tg)

        return ChildSpec(id=id, start=start, restart=restart, shutdown=math.inf, significant=significant)

    # ------------------------------------------------------------------------------------- dynamic children

    async def start_child(self, spec: ChildSpec) -> ChildInfo:
        """Start a new child after the existing ones; nothing is kept if its start fails.

        Raises:
            ValueError: a child with this id exists (running or not), or the spec is invalid.
            RuntimeError: the supervisor is not running.
            Exception: whatever the child's start raised.
        """
        self._check_spec(spec)
        async with self._decision():
            if spec.id in self._slots:
                raise ValueError(f"supervisor {self.name!r} already has a child {spec.id!r}")
            slot = _Slot(spec=spec)
            self._slots[spec.id] = slot
            try:
                await self._start_instance(slot)
            except BaseException:
                if self._slots.get(spec.id) is slot:
                    del self._slots[spec.id]
                raise
            return self._info(slot)

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child (or cancel its pending restart) without restarting it; temporary children are dropped.

        Raises:
            KeyError: no child with this id.
        """
        async with self._decision():
            slot = self._slot(child_id)
            if slot.instance is not None:
                await self._stop_slot(slot, slot.spec.shutdown)
            self._retire(slot)
            logger.info("supervisor %s: terminated child %s", self.name, child_id)

    async def delete_child(self, child_id: str) -> None:
        """Forget a terminated child's spec.

        Raises:
            KeyError: no child with this id.
            ValueError: the child is running or restarting.
        """
        async with self._decision():
            slot = self._slot(child_id)
            if slot.status is not ChildStatus.STOPPED:
                raise ValueError(f"child {child_id!r} of supervisor {self.name!r} is {slot.status}; terminate it first")
            del self._slots[child_id]

    async def restart_child(self, child_id: str) -> ChildInfo:
        """Start a terminated child again.

        Raises:
            KeyError: no child with this id.
            ValueError: the child is running or restarting.
            Exception: whatever the child's start raised (it stays stopped).
        """
        async with self._decision():
            slot = self._slot(child_id)
            if slot.status is not ChildStatus.STOPPED:
                raise ValueError(f"child {child_id!r} of supervisor {self.name!r} is {slot.status}")
            slot.attempt = 0
            await self._start_instance(slot)
            return self._info(slot)

    def which_children(self) -> list[ChildInfo]:
        """Every child, in start order."""
        return [self._info(slot) for slot in self._slots.values()]

    def child(self, child_id: str) -> Child | None:
        """The running instance of a child, e.g. to signal it; None if it is not running or unknown."""
        slot = self._slots.get(child_id)
        return slot.instance if slot is not None else None

    # ------------------------------------------------------------------------------------------ decisions

    @asynccontextmanager
    async def _decision(self) -> AsyncIterator[None]:
        async with self._lock:
            if not self._started or self._shutting_down:
                raise RuntimeError(f"supervisor {self.name!r} is not running")
            # Shielded once the lock is held: a caller that gives up must not leave a child half-stopped.
            with anyio.CancelScope(shield=True):
                yield

    async def _watch(self, slot: _Slot, generation: int, child: Child) -> None:
        try:
            exit = await child.wait()
        except Exception as exc:  # a broken Child implementation counts as a crash of that child
            logger.exception("supervisor %s: waiting on child %s failed", self.name, slot.spec.id)
            exit = Exit(kind=ExitKind.ABNORMAL, detail=_describe(exc))
        try:
            async with self._lock:
                if self._is_current(slot, generation):
                    await self._handle_exit(slot, exit)
        except Exception as exc:  # a fault in this supervisor ends it (as OTP's would crash), not its parent
            logger.exception("supervisor %s: handling the exit of %s failed", self.name, slot.spec.id)
            await self._crash(exc)

    def _is_current(self, slot: _Slot, generation: int) -> bool:
        return (not self._shutting_down and self._slots.get(slot.spec.id) is slot
                and slot.generation == generation)

    async def _handle_exit(self, slot: _Slot, exit: Exit) -> None:
        spec = slot.spec
        now = time.monotonic()
        uptime = now - slot.started_at if slot.started_at is not None else 0.0
        pid = slot.instance.pid if slot.instance is not None else None
        slot.generation += 1
        slot.instance = None
        slot.started_at = None
        slot.last_exit = exit
        self._emit("exited", child_id=spec.id, pid=pid, exit=exit)
        if not should_restart(spec.restart, exit):
            logger.info("supervisor %s: %s child %s (pid %s) exited (%s); not restarted", self.name, spec.restart,
                        spec.id, pid, exit.detail or exit.kind)
            self._retire(slot)
            if spec.significant:
                await self._check_auto_shutdown(spec.id)
            return
        logger.warning("supervisor %s: child %s (pid %s) exited (%s)", self.name, spec.id, pid,
                       exit.detail or exit.kind)
        if self._intensity.add(now):
            await self._give_up()
            return
        if uptime >= spec.backoff.reset_after:
            slot.attempt = 0
        delay = spec.backoff.delay(slot.attempt, self._rng)
        slot.attempt += 1
        group = [slot]
        if self.strategy in (Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE):
            siblings = self._affected_siblings(slot)
            for sibling in reversed(siblings):
                if sibling.instance is not None:
                    await self._stop_slot(sibling, sibling.spec.shutdown)
            for sibling in siblings:
                if sibling.spec.restart is RestartType.TEMPORARY:  # OTP: never restarted, not even now; dropped
                    self._retire(sibling)
            keep = {s for s in siblings if s.spec.restart is not RestartType.TEMPORARY} | {slot}
            group = [s for s in self._slots.values() if s in keep]
        await self._schedule_restart(group, delay, inline=True)

    def _affected_siblings(self, slot: _Slot) -> list[_Slot]:
        """The other children the strategy restarts with `slot`, in start order (explicitly stopped ones stay so)."""
        order = list(self._slots.values())
        if self.strategy is Strategy.ONE_FOR_ALL:
            candidates = [s for s in order if s is not slot]
        else:
            candidates = order[order.index(slot) + 1:]
        return [s for s in candidates if s.status is not ChildStatus.STOPPED]

    async def _schedule_restart(self, group: list[_Slot], delay: float, *, inline: bool) -> None:
        token = object()
        for slot in group:
            slot.status = ChildStatus.RESTARTING
            slot.pending = token
        for slot in group:
            self._emit("restarting", child_id=slot.spec.id, delay=delay)
        if inline and delay <= 0:
            await self._restart_group(group, token)
        else:
            assert self._work_tg is not None
            self._work_tg.start_soon(self._restart_later, group, token, delay, name=f"{self.name} restart")

    async def _restart_later(self, group: list[_Slot], token: object, delay: float) -> None:
        try:
            await anyio.sleep(delay)  # outside the lock: the supervisor keeps answering meanwhile
            async with self._lock:
                if not self._shutting_down:
                    await self._restart_group(group, token)
        except Exception as exc:  # a fault in this supervisor ends it, not its parent
            logger.exception("supervisor %s: restarting %s failed", self.name, [s.spec.id for s in group])
            await self._crash(exc)

    async def _restart_group(self, group: list[_Slot], token: object) -> None:
        if self._shutting_down:  # stop() came in while this decision was under way
            return
        # Slots terminated, deleted or taken over by a later restart since scheduling are no longer ours.
        live = [s for s in group if s.pending is token and self._slots.get(s.spec.id) is s]
        started: list[_Slot] = []
        for index, slot in enumerate(live):
            try:
                await self._start_instance(slot)
            except Exception:  # one child's failed start is retried later; it must not stop the supervisor
                logger.exception("supervisor %s: restarting child %s failed", self.name, slot.spec.id)
                if self._intensity.add(time.monotonic()):
                    await self._give_up()
                    return
                retry = live[index:]
                if self.strategy is Strategy.ONE_FOR_ALL and started:
                    for done in reversed(started):
                        await self._stop_slot(done, done.spec.shutdown)
                    retry = live
                delay = slot.spec.backoff.delay(slot.attempt, self._rng)
                slot.attempt += 1
                await self._schedule_restart(retry, delay, inline=False)
                return
            started.append(slot)

    async def _start_instance(self, slot: _Slot) -> None:
        assert self._work_tg is not None
        spec = slot.spec
        try:
            child = await spec.start(self._work_tg)
        except Exception as exc:
            self._emit("start_failed", child_id=spec.id, exit=Exit(kind=ExitKind.ABNORMAL, detail=_describe(exc)))
            raise
        slot.generation += 1
        slot.instance = child
        slot.status = ChildStatus.RUNNING
        slot.started_at = time.monotonic()
        slot.pending = None
        slot.starts += 1
        self._work_tg.start_soon(self._watch, slot, slot.generation, child, name=f"{self.name} watch {spec.id}")
        self._emit("started", child_id=spec.id, pid=child.pid)
        if slot.starts == 1:
            logger.info("supervisor %s: started child %s (pid %s)", self.name, spec.id, child.pid)
        else:
            logger.info("supervisor %s: restarted child %s (pid %s, restart %d)", self.name, spec.id, child.pid,
                        slot.starts - 1)

    async def _stop_slot(self, slot: _Slot, grace: float | None) -> Exit:
        child = slot.instance
        assert child is not None
        slot.generation += 1  # this exit is the supervisor's doing, not a failure to act on
        try:
            exit = await child.stop(grace)
        except Exception as exc:  # one child failing to stop must not keep the others running
            logger.exception("supervisor %s: stopping child %s failed", self.name, slot.spec.id)
            exit = Exit(kind=ExitKind.ABNORMAL, detail=_describe(exc))
        slot.instance = None
        slot.started_at = None
        slot.last_exit = exit
        self._emit("exited", child_id=slot.spec.id, pid=child.pid, exit=exit)
        logger.info("supervisor %s: stopped child %s (pid %s): %s", self.name, slot.spec.id, child.pid,
                    exit.detail or exit.kind)
        return exit

    def _retire(self, slot: _Slot) -> None:
        """Mark a child that is not running and not to be restarted; temporary children are forgotten."""
        slot.pending = None
        slot.status = ChildStatus.STOPPED
        if slot.spec.restart is RestartType.TEMPORARY and self._slots.get(slot.spec.id) is slot:
            del self._slots[slot.spec.id]

    async def _check_auto_shutdown(self, child_id: str) -> None:
        if self.auto_shutdown == "never":
            return
        if self.auto_shutdown == "all_significant" and any(
                s.spec.significant and s.status is not ChildStatus.STOPPED for s in self._slots.values()):
            return
        logger.info("supervisor %s: significant child %s exited; auto_shutdown=%s", self.name, child_id,
                    self.auto_shutdown)
        detail = f"auto_shutdown ({self.auto_shutdown}): significant child {child_id!r} exited"
        await self._shutdown(Exit(kind=ExitKind.SHUTDOWN, detail=detail), brutal=False)

    async def _give_up(self) -> None:
        logger.error("supervisor %s: more than %d restarts within %.1f s; %s, shutting down", self.name,
                     self._intensity.max_restarts, self._intensity.period, INTENSITY_REACHED)
        await self._shutdown(Exit(kind=ExitKind.SHUTDOWN, detail=INTENSITY_REACHED), brutal=False)

    async def _crash(self, exc: Exception) -> None:
        with anyio.CancelScope(shield=True):
            async with self._lock:
                await self._shutdown(Exit(kind=ExitKind.ABNORMAL, detail=f"supervisor failed: {_describe(exc)}"),
                                     brutal=False)

    async def _shutdown(self, exit: Exit, *, brutal: bool) -> None:
        """Stop every running child (reverse start order) and end the supervisor; the lock is held.

        Safe to call again after an interrupted call (stop()'s timeout): it goes on with the children left.
        """
        if self._stopped.is_set():
            return
        if self._exit is None:
            self._exit = exit
        self._shutting_down = True
        running = [s for s in self._slots.values() if s.instance is not None]
        if self.strategy is Strategy.SIMPLE_ONE_FOR_ONE:  # homogeneous children: no order to keep (OTP: async)
            async with anyio.create_task_group() as tg:
                for slot in running:
                    tg.start_soon(self._stop_slot, slot, None if brutal else slot.spec.shutdown)
        else:
            for slot in reversed(running):
                await self._stop_slot(slot, None if brutal else slot.spec.shutdown)
        for slot in self._slots.values():
            slot.pending = None
            slot.status = ChildStatus.STOPPED
        self._emit("shutdown", exit=self._exit)
        logger.info("supervisor %s stopped: %s", self.name, self._exit.detail or self._exit.kind)
        self._stopped.set()

    # ------------------------------------------------------------------------------------------------ helpers

    def _check_spec(self, spec: ChildSpec) -> None:
        if spec.significant and spec.restart is RestartType.PERMANENT:
            raise ValueError(f"child {spec.id!r}: a significant child must be transient or temporary (OTP)")

    def _slot(self, child_id: str) -> _Slot:
        try:
            return self._slots[child_id]
        except KeyError:
            raise KeyError(f"supervisor {self.name!r} has no child {child_id!r}") from None

    def _info(self, slot: _Slot) -> ChildInfo:
        return ChildInfo(id=slot.spec.id, status=slot.status,
                         pid=slot.instance.pid if slot.instance is not None else None,
                         restarts=max(0, slot.starts - 1), started_at=slot.started_at, last_exit=slot.last_exit)

    def _emit(self, kind: EventKind, *, child_id: str | None = None, pid: int | None = None, exit: Exit | None = None,
              delay: float | None = None) -> None:
        if self._listener is None:
            return
        event = SupervisorEvent(supervisor=self.name, kind=kind, child_id=child_id, pid=pid, exit=exit, delay=delay)
        try:
            self._events_send.send_nowait(event)
        except anyio.WouldBlock:
            logger.warning("supervisor %s: listener is %d events behind; dropped %s", self.name, _EVENT_BUFFER, event)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the supervisor has ended; nobody listens any more


class _ReadyStatus:
    """Wraps a TaskStatus to learn whether the task signalled readiness before it ended."""

    def __init__(self, inner: TaskStatus[None]) -> None:
        self._inner = inner
        self.ready = False

    def started(self, value: None = None) -> None:
        self.ready = True
        self._inner.started()


class _TaskChild:
    """A task in the supervisor's task group, as a `Child`; cancelling it is both its polite stop and its kill."""

    def __init__(self) -> None:
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._exit: Exit | None = None

    @property
    def pid(self) -> None:
        return None

    async def wait(self) -> Exit:
        await self._done.wait()
        assert self._exit is not None
        return self._exit

    async def stop(self, timeout: float | None) -> Exit:  # noqa: ASYNC109 (the Child protocol's kill grace)
        self._scope.cancel()
        with anyio.move_on_after(timeout if timeout is not None else _TASK_CANCEL_WAIT):
            await self._done.wait()
        if not self._done.is_set():
            logger.warning("task child still finishing %.1f s after it was cancelled", timeout or _TASK_CANCEL_WAIT)
            return Exit(kind=ExitKind.SHUTDOWN, detail="cancelled; still finishing")
        return await self.wait()

    async def run(self, fn: Callable[[TaskStatus[None]], Awaitable[None]], *, task_status: TaskStatus[None]) -> None:
        status = _ReadyStatus(task_status)
        exit = Exit(kind=ExitKind.SHUTDOWN, detail="cancelled")  # unless it ends otherwise below
        try:
            with self._scope:
                try:
                    await fn(status)
                except Exception as exc:
                    if not status.ready:
                        raise  # it never came up: its start fails, and the supervisor reports that
                    # One child's failure is reported as its exit; it must not take down the supervisor's group.
                    logger.exception("task child %s failed", getattr(fn, "__qualname__", fn))
                    exit = Exit(kind=ExitKind.ABNORMAL, detail=_describe(exc))
                else:
                    exit = Exit(kind=ExitKind.NORMAL)
            if self._scope.cancel_called and exit.kind is not ExitKind.ABNORMAL:
                exit = Exit(kind=ExitKind.SHUTDOWN)
        finally:
            self._exit = exit
            self._done.set()
        if not status.ready:
            task_status.started()  # it finished before signalling readiness: it came up and went


def task_child(fn: Callable[[TaskStatus[None]], Awaitable[None]]) -> StartFn:
    """A start function running `fn` as a task in the supervisor's task group.

    `fn` signals readiness with `task_status.started()` (its start fails if it raises before that). Returning is a
    NORMAL exit, raising an ABNORMAL one with the exception's text, being cancelled by the supervisor a SHUTDOWN.
    """

    async def start(tg: TaskGroup) -> Child:
        child = _TaskChild()
        await tg.start(child.run, fn)
        return child

    return start
