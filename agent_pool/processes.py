"""An agent's process as the pool holds it: what this replica knows of a running agent (`LiveAgent`), a worker
process as its supervisor's child (`WorkerChild`), and the programs the pool starts (`WORKER_*`).
"""

import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import psutil
from anyio.abc import TaskGroup

from agent_pool import worker
from agent_pool.states import AgentState
from supervisor import Exit, ExitKind, RestartType
from supervisor.process import GroupLeader

logger = logging.getLogger(__name__)

WORKER_ARGV = (sys.executable, "-m", "agent_pool.worker")
WORKER_ENTRY = "agent_pool.worker:main"
WORKER_PREPARE = "agent_pool.worker:prepare"
# What the fork server imports once for every agent process it forks (a worker started from scratch imports the
# same before it drops its privileges): forked, a worker spends about 0.04 s of CPU until it announces itself.
WORKER_PRELOAD = worker.MODULES
# A cancelled start ends at once, unless it is killing a process it had just started (bounded in `start_process`).
_CANCELLED_START_WAIT = 15.0

# Records a worker's exit.
Recorder = Callable[["WorkerChild", Exit], Awaitable[None]]


def _set_event() -> anyio.Event:
    event = anyio.Event()
    event.set()
    return event


@dataclass(slots=True, kw_only=True)
class LiveAgent:
    """An agent whose process this replica runs (or is about to run)."""

    role: str
    capabilities: frozenset[str]
    heartbeat_seconds: float
    restart: RestartType
    instance: str = ""
    process: GroupLeader | None = None
    state: AgentState = AgentState.CREATED
    last_beat: float = field(default_factory=time.monotonic)
    announced: bool = False
    up: anyio.Event = field(default_factory=anyio.Event)  # the current process announced itself or ended
    ended: anyio.Event = field(default_factory=_set_event)  # the current process's exit is recorded (or none is)
    # The current process's start is recorded (state starting): its pid, announce and exit are recorded after it.
    recorded: anyio.Event = field(default_factory=anyio.Event)
    heartbeat_lost: bool = False  # the watcher killed it: its exit is that failure, not a second one
    work_done: int = 0
    metrics: dict[str, Any] | None = None


class WorkerChild:
    """A worker process as its supervisor's child, from before the process exists: the pool starts it (in
    `bringing_up`, which a stop cancels) and hands it over with `started`, or ends with `unstarted` and no process.
    When the process ends on its own, `wait` has the exit recorded (`record`: state, breaker) in `tg` while the
    supervisor decides and the next process starts, and sets `ended` once it is: the next process's start is
    recorded only then, so a restart always follows the recorded failure. A process that could not start counts as
    a crash. Its `live` agent's events (`up`, `recorded`, `ended`) are this process's, taken when it is made: the
    next process gets new ones."""

    def __init__(self, live: LiveAgent, agent_id: str, *, tg: TaskGroup, record: Recorder) -> None:
        self._record_exit = record
        self.live = live
        self.agent_id = agent_id
        self.instance = live.instance
        self.up, self.recorded, self.ended = live.up, live.recorded, live.ended
        self.heartbeat_lost = False  # the heartbeat watcher killed it (as it ended): its exit is that failure
        self._tg = tg
        self.process: GroupLeader | None = None
        self.bringing_up = anyio.CancelScope()
        self._settled = anyio.Event()  # the process exists, or never will
        self._unstarted = Exit(kind=ExitKind.SHUTDOWN, detail="stopped before its process started")
        self._recording = False
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def started(self, process: GroupLeader) -> None:
        self.process = process
        self._settled.set()

    def unstarted(self, exit_: Exit | None = None) -> None:
        """The bring-up ended without a process (`exit_`: why, else a stop cancelled it)."""
        if exit_ is not None:
            self._unstarted = exit_
        self._settled.set()

    async def wait(self) -> Exit:
        await self._settled.wait()  # as long as the bring-up takes, which is bounded (see `_bring_up`)
        exit_ = self._unstarted if self.process is None else await self.process.wait()
        self.up.set()
        if not self._recording:
            self._recording = True
            self.heartbeat_lost = self.live.heartbeat_lost  # before the next process starts and clears it
            self._tg.start_soon(self._record, exit_, name=f"record the exit of agent {self.agent_id}")
        return exit_

    async def _record(self, exit_: Exit) -> None:
        try:
            if not self._stopping:  # a stop is the supervisor's doing, not a failure
                await self._record_exit(self, exit_)
        finally:
            self.ended.set()

    async def stop(self, timeout: float | None) -> Exit:  # noqa: ASYNC109 (the Child protocol's kill grace)
        self._stopping = True  # the supervisor's doing, not a failure
        self.bringing_up.cancel()
        with anyio.move_on_after(_CANCELLED_START_WAIT):
            await self._settled.wait()
        if self.process is None:
            return self._unstarted
        return await self.process.stop(timeout)




def kill_leftover(pid: int, agent_id: str) -> None:
    """Kill a worker that outlived its hub (SIGKILL of the hub leaves it orphaned), if the pid is still it."""
    try:
        process = psutil.Process(pid)
        cmdline = process.cmdline()
        if "agent_pool.worker" not in cmdline:
            return
        env = process.environ()
    except (psutil.Error, OSError):
        return
    if f'"agent_id":"{agent_id}"' in env.get("AGENTHUB_WORKER", ""):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        logger.warning("agent %s: killed process %d left from the previous hub", agent_id, pid)

