"""A fork server: a process that imports a program's modules once and then forks ready copies of it on request.

Starting a Python program that imports a large library (the MCP SDK takes about half a second) makes every restart
at least that slow. The fork server pays for the imports once; each child is a `fork()` of it that runs the
program's entry point at once. Children are supervised like any process (`ForkedChild` is a `GroupLeader`), but
only the fork server can reap them, so it reports their exits.

Protocol (JSON lines): the hub writes `{"id", "env", "log"}` on the server's stdin; the server answers
`{"started": id, "pid"}` or `{"failed": id, "error"}`, and reports `{"exit": pid, "returncode"}` for every child
that ends (negative return code: killed by that signal). `{"ready": pid}` is its first line.

Load: the server is started as soon as `run` runs (with the hub), so that it warms up before the first agent is
wanted; `wait_ready` lets early callers wait for it instead of starting programs from scratch. Its imports take
seconds of CPU, and on a busy machine many more seconds of wall time, so the deadline for `ready` counts the
server's CPU time (`_READY_CPU_SECONDS`), with a much longer wall-clock bound only for a server that makes no
progress at all: a busy machine delays the server but never gets it restarted. A child whose requester gave up
waiting (a deadline, a cancellation) is killed when its `started` arrives, so no fork runs unsupervised.

The server has no threads and no event loop (so forking it is safe): it waits in `select` on its stdin and on a
SIGCHLD wake-up pipe. Each child starts its own session, sends its output to its log file (opened 0600 by the
server: a program that drops its privileges keeps writing to it), takes the requested
environment and runs the entry point. When its parent (the hub) goes away, or its stdin closes, the server kills
every child's process group and exits, so nothing outlives the hub.

Copy-on-write: a child shares the server's memory until it writes to it, and Python writes to every object it
touches (reference counts) and to every object a garbage collection visits. So the server runs the program's
`prepare` function once (work every child would otherwise repeat), collects, and freezes what it holds
(`gc.freeze`) before each fork: the children's collections then never walk the server's objects.

Run as `python -m supervisor.forkserver PRELOAD_MODULES MODULE:FUNCTION [MODULE:FUNCTION]` (the entry point, then
the optional `prepare`).
"""

import contextlib
import gc
import importlib
import json
import logging
import os
import random
import select
import signal
import subprocess
import sys
import traceback
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from itertools import count
from pathlib import Path
from typing import Any

import anyio
import psutil
from anyio.abc import Process, TaskStatus

from agenthub.errors import ServiceUnavailable
from supervisor.policy import Exit, ExitKind
from supervisor.process import GroupLeader, exit_from_returncode

logger = logging.getLogger(__name__)

_START_TIMEOUT = 10.0
# The imports of the server take a few seconds of CPU; ten times the worst seen means it is stuck in a loop.
_READY_CPU_SECONDS = 60.0
# Only a server that gets no CPU at all for this long (blocked, stopped) is given up on; a busy machine is not.
_READY_WALL_SECONDS = 600.0
_READY_CHECK_SECONDS = 1.0
_LINE_LIMIT = 1 << 20


class ForkedChild(GroupLeader):
    """A child of the fork server; its exit arrives from the server."""


class ForkServer:
    """The hub's side of one fork server. Run `run` as a supervised task: it starts the server process at once and
    relays its reports until it dies (then every child it had is killed and reported as exited, and `run` raises
    so the supervisor starts a new server). `start` forks a child; it raises `ServiceUnavailable` while no server is
    ready, so callers can wait for it (`wait_ready`) or start the program directly meanwhile."""

    def __init__(self, preload: Sequence[str], target: str, *, log: Path, prepare: str | None = None) -> None:
        self._argv = [sys.executable, "-m", "supervisor.forkserver", ",".join(preload), target,
                      *([prepare] if prepare else [])]
        self._log = log
        self._process: Process | None = None
        self._children: dict[int, ForkedChild] = {}
        self._pending: dict[int, tuple[anyio.Event, list[Any]]] = {}
        self._ids = count(1)
        self._lock = anyio.Lock()
        self._changed = anyio.Event()  # set (and replaced) whenever the server becomes ready or goes away
        self.pid: int | None = None

    @property
    def ready(self) -> bool:
        return self.pid is not None

    async def wait_ready(self, timeout: float) -> bool:  # noqa: ASYNC109 (a bound, and False is an answer)
        """Wait until the server is ready, at most `timeout` seconds; False if it is not by then."""
        with anyio.move_on_after(timeout):
            while not self.ready:
                await self._changed.wait()
        return self.ready

    def _set_ready(self, pid: int | None) -> None:
        self.pid = pid
        self._changed.set()
        self._changed = anyio.Event()

    async def run(self, task_status: TaskStatus[None]) -> None:
        task_status.started()  # the server warms up in the background; until then `start` refuses
        self._log.parent.mkdir(parents=True, exist_ok=True)
        with self._log.open("ab") as log:
            process = await anyio.open_process(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=log, start_new_session=True)
        self._process = process
        try:
            assert process.stdout is not None
            lines = _lines(process.stdout)
            first = await _ready_line(process.pid, lines)
            self._set_ready(int(first["ready"]))
            logger.info("fork server %d ready", self.pid)
            async for message in lines:
                self._on_message(message)
            raise RuntimeError(f"fork server {process.pid} exited")
        finally:
            was_ready = self.ready
            self._set_ready(None)
            self._process = None
            with anyio.CancelScope(shield=True):
                await _stop(process, was_ready)
                for child in self._children.values():  # orphans of a dead server: nothing may outlive it
                    child.kill()
                    child._set_exit(Exit(kind=ExitKind.ABNORMAL, detail="the fork server stopped"))
                self._children.clear()
                for event, reply in self._pending.values():
                    reply.append({"error": "the fork server stopped"})
                    event.set()

    async def start(self, *, env: Mapping[str, str], log: Path) -> ForkedChild:
        """Fork a child with this environment, its output appended to `log`."""
        process = self._process
        if process is None or process.stdin is None or self.pid is None:
            raise ServiceUnavailable("the fork server is not running")
        request_id = next(self._ids)
        event, reply = anyio.Event(), list[dict[str, Any]]()
        self._pending[request_id] = (event, reply)
        try:
            # The send is inside the deadline too: a server that stopped reading fills the pipe.
            with anyio.move_on_after(_START_TIMEOUT):
                async with self._lock:
                    await process.stdin.send(json.dumps({"id": request_id, "env": dict(env), "log": str(log)})
                                             .encode() + b"\n")
                await event.wait()
        finally:
            self._pending.pop(request_id, None)
        if not reply:
            raise ServiceUnavailable(f"the fork server did not answer within {_START_TIMEOUT:g} s")
        answer = reply[0]
        if "pid" not in answer:
            raise ServiceUnavailable(f"the fork server could not start the child: {answer['error']}")
        child: ForkedChild = answer["child"]
        return child

    def _on_message(self, message: dict[str, Any]) -> None:
        if "exit" in message:
            child = self._children.pop(message["exit"], None)
            if child is not None:
                child.kill()  # what the child spawned must not outlive it
                child._set_exit(exit_from_returncode(message["returncode"]))
            return
        pending = self._pending.get(message.get("started") or message.get("failed") or 0)
        if "started" in message:
            child = ForkedChild(message["pid"])
            self._children[message["pid"]] = child  # until its exit arrives, which also reaps it
            if pending is None:  # its requester gave up: nobody would supervise it
                logger.warning("fork server: killing child %d, started after its request was abandoned", child.pid)
                child.kill()
            # The requester gets this object even when the child's exit is read before the requester resumes.
            message = {**message, "child": child}
        if pending is not None:
            pending[1].append(message)
            pending[0].set()


async def _ready_line(pid: int, lines: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The server's first line, `{"ready": pid}`, within `_READY_CPU_SECONDS` of its CPU time (see the module's
    docstring) and `_READY_WALL_SECONDS` of wall time."""
    first: dict[str, Any] | None = None
    with anyio.move_on_after(_READY_WALL_SECONDS):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_past_cpu, pid, _READY_CPU_SECONDS, tg.cancel_scope)
            first = await anext(lines, None)
            tg.cancel_scope.cancel()
    if first is None:
        raise RuntimeError(f"fork server {pid} was not ready within {_READY_CPU_SECONDS:g} s of CPU time "
                           f"({_READY_WALL_SECONDS:g} s at most), or exited before (see its log)")
    return first


async def _cancel_past_cpu(pid: int, limit: float, scope: anyio.CancelScope) -> None:
    """Cancel `scope` once process `pid` has used more than `limit` seconds of CPU time."""
    while True:
        await anyio.sleep(_READY_CHECK_SECONDS)
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:  # it is gone: the read of its output ends on its own
            return
        if times.user + times.system > limit:
            scope.cancel()
            return


async def _lines(stream: Any) -> AsyncIterator[dict[str, Any]]:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        if len(buffer) > _LINE_LIMIT:
            raise RuntimeError("the fork server sent an oversize line")
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield json.loads(line)


async def _stop(process: Process, ready: bool) -> None:
    """Close the server's stdin (it then kills its children and exits), and make sure it is gone. A server that is
    not ready yet reads no stdin until its imports are done, and has no children: it is killed at once."""
    if not ready:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    with anyio.move_on_after(5):
        if process.stdin is not None:
            await process.stdin.aclose()
        await process.wait()
    if process.returncode is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        with anyio.move_on_after(5):
            await process.wait()


# -- the server process -----------------------------------------------------------------------------------------------


def _send(message: dict[str, Any]) -> None:
    os.write(1, json.dumps(message).encode() + b"\n")


def _fork(request: dict[str, Any], entry: Callable[[], object], wakeup: tuple[int, int]) -> int:
    ready_r, ready_w = os.pipe()
    gc.freeze()  # what the server made since the last fork too: no collection in the child walks it
    pid = os.fork()
    if pid:
        # Report the child only once it leads its own process group, so that signalling the group reaches it.
        os.close(ready_w)
        os.read(ready_r, 1)
        os.close(ready_r)
        return pid
    code = 1
    try:  # the child: never return into the server's loop
        os.setsid()
        os.close(ready_r)
        os.close(ready_w)  # the parent's read returns
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in wakeup:
            os.close(fd)
        # Opened before the program runs: one that drops its privileges keeps writing to a log it could not open.
        out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(null)
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()  # the server's generator state must not be shared by every child
        try:
            entry()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _kill_children(children: set[int]) -> None:
    for pid in children:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _function(name: str) -> Callable[[], object]:
    module, _, function = name.partition(":")
    found: Callable[[], object] = getattr(importlib.import_module(module), function)
    return found


def serve(preload: Sequence[str], target: str, prepare: str | None = None) -> None:
    for name in preload:
        importlib.import_module(name)
    entry = _function(target)
    if prepare is not None:
        _function(prepare)()
    gc.collect()  # the imports' garbage, before the rest is frozen and shared with every child
    gc.freeze()
    parent = os.getppid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_w)
    children: set[int] = set()
    buffer = b""
    _send({"ready": os.getpid()})
    try:
        while os.getppid() == parent:
            readable, _, _ = select.select([0, wake_r], [], [], 1.0)
            if wake_r in readable:
                os.read(wake_r, 4096)
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                children.discard(pid)
                _send({"exit": pid, "returncode": os.waitstatus_to_exitcode(status)})
            if 0 in readable:
                chunk = os.read(0, 65536)
                if not chunk:
                    return  # the hub closed our stdin: stop
                buffer += chunk
                *requests, buffer = buffer.split(b"\n")
                for line in requests:
                    request = json.loads(line)
                    try:
                        pid = _fork(request, entry, (wake_r, wake_w))
                    except OSError as exc:
                        _send({"failed": request["id"], "error": str(exc)})
                        continue
                    children.add(pid)
                    _send({"started": request["id"], "pid": pid})
    finally:
        _kill_children(children)


if __name__ == "__main__":
    serve([m for m in sys.argv[1].split(",") if m], sys.argv[2], *sys.argv[3:4])
