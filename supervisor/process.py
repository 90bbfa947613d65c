"""OS processes as supervised children.

Contract of `start_process` / `ProcessChild`:

* The process runs in a session (and process group) of its own, with stdin from /dev/null, so that signals reach
  everything it spawned and nothing it spawned outlives it: once the leader has exited, for whatever reason, what
  remains of its group is SIGKILLed.
* Exactly one task (started in the task group passed to `start_process`) waits on the process and so reaps it;
  `wait()` callers share that task's result. If that task is cancelled while the process still runs (its task group
  is torn down without `stop()`), the group is SIGKILLed and the process reaped before the task ends.
* Exit mapping: return code 0 is NORMAL, death by SIGTERM is SHUTDOWN (it was asked to stop), anything else is
  ABNORMAL ("exit code N", "killed by SIGKILL"); the raw return code is kept in `Exit.code`.
* `stop(timeout)` is OTP's shutdown: SIGTERM to the group, up to `timeout` seconds to exit, then SIGKILL;
  `None` SIGKILLs at once (brutal_kill).
* A missing executable raises the `OSError` from `start_process`.
"""

import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import IO, Any

import anyio
from anyio.abc import Process, TaskGroup, TaskStatus

from supervisor.policy import Exit, ExitKind

logger = logging.getLogger(__name__)

# After SIGKILL the kernel ends the process promptly; this bound only guards against waiting forever on a process
# stuck in uninterruptible sleep (D state).
_KILL_WAIT = 10.0


def exit_from_returncode(returncode: int) -> Exit:
    """Map a `subprocess` return code (negative = killed by that signal) to an `Exit`."""
    if returncode == 0:
        return Exit(kind=ExitKind.NORMAL, detail="exit code 0", code=0)
    if returncode == -signal.SIGTERM:
        return Exit(kind=ExitKind.SHUTDOWN, detail="terminated by SIGTERM", code=returncode)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return Exit(kind=ExitKind.ABNORMAL, detail=f"killed by {name}", code=returncode)
    return Exit(kind=ExitKind.ABNORMAL, detail=f"exit code {returncode}", code=returncode)


class GroupLeader:
    """A process leading its own process group, whose exit someone else reports (`_exited`); implements the
    supervisor's `Child` protocol: waiting, and OTP's shutdown by signals to the whole group."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._exited = anyio.Event()
        self._exit: Exit | None = None

    def _set_exit(self, exit: Exit) -> None:
        if self._exit is None:
            self._exit = exit
            self._exited.set()

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        """The process's return code, None while it runs (or before its single waiter has reaped it)."""
        return self._exit.code if self._exit is not None else None

    async def wait(self) -> Exit:
        """Return once the process has exited and been reaped; safe from several tasks and after the exit."""
        await self._exited.wait()
        assert self._exit is not None
        return self._exit

    async def stop(self, timeout: float | None) -> Exit:  # noqa: ASYNC109 (the Child protocol's kill grace)
        """SIGTERM the process group, wait up to `timeout` seconds, then SIGKILL it.

        Args:
            timeout: seconds of grace; None kills at once, `math.inf` waits as long as it takes.
        """
        if not self._exited.is_set():
            if timeout is None:
                self.kill()
            else:
                self._signal_group(signal.SIGTERM)
                with anyio.move_on_after(timeout):
                    await self._exited.wait()
                if not self._exited.is_set():
                    logger.warning("process %d ignored SIGTERM for %.1f s; killing its process group", self._pid,
                                   timeout)
                    self.kill()
            with anyio.move_on_after(_KILL_WAIT):
                await self._exited.wait()
            if not self._exited.is_set():
                logger.error("process %d did not die within %.0f s of SIGKILL", self._pid, _KILL_WAIT)
                return Exit(kind=ExitKind.ABNORMAL, detail="did not die after SIGKILL")
        return await self.wait()

    def kill(self) -> None:
        """SIGKILL the whole process group now (e.g. when the child's heartbeat is lost)."""
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: signal.Signals) -> None:
        # The leader's pid is its group id (new session). ProcessLookupError: the whole group is already gone.
        try:
            os.killpg(self._pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError:  # a member changed uid; signal the leader at least
            logger.warning("cannot signal process group %d; signalling the leader only", self._pid)
            try:
                os.kill(self._pid, signum)
            except ProcessLookupError:
                pass


class ProcessChild(GroupLeader):
    """One OS process this process started (and reaps); implements the supervisor's `Child` protocol."""

    def __init__(self, process: Process) -> None:
        super().__init__(process.pid)
        self._process = process

    async def _reap(self, *, task_status: TaskStatus[None]) -> None:
        """The single waiter: wait for the leader, kill the rest of its group, publish the exit."""
        task_status.started()
        returncode: int | None = None
        try:
            returncode = await self._process.wait()
        finally:
            # Shielded and bounded: even when our task group is torn down, no process or zombie is left behind.
            with anyio.CancelScope(shield=True):
                if returncode is None:  # cancelled while the process runs
                    self.kill()
                    with anyio.move_on_after(_KILL_WAIT):
                        returncode = await self._process.wait()
                # Grandchildren that stayed in the group would be orphans: kill them. The group id cannot have been
                # reused while any member is alive, so this cannot hit a stranger's group.
                self._signal_group(signal.SIGKILL)
                if returncode is None:
                    self._set_exit(Exit(kind=ExitKind.ABNORMAL, detail="could not be reaped"))
                else:
                    self._set_exit(exit_from_returncode(returncode))
                logger.debug("process %d exited: %s", self._pid, returncode)


async def start_process(argv: Sequence[str], *, tg: TaskGroup, env: Mapping[str, str] | None = None,
                        cwd: str | os.PathLike[str] | None = None, stdout: int | IO[Any] | None = None,
                        stderr: int | IO[Any] | None = None) -> ProcessChild:
    """Start `argv` in a new session and return it as a supervised child.

    Args:
        argv: the executable and its arguments (no shell).
        tg: the task group that hosts the one task waiting on the process.
        env: the whole environment of the process; None inherits ours.
        cwd: working directory; None inherits ours.
        stdout: where its stdout goes (a file, a descriptor, `subprocess.DEVNULL`); None inherits ours.
        stderr: likewise for stderr.

    Raises:
        OSError: the executable is missing or cannot be executed.
    """
    process = await anyio.open_process(list(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, cwd=cwd,
                                       env=env, start_new_session=True)
    child = ProcessChild(process)
    try:
        await tg.start(child._reap)
    except BaseException:
        with anyio.CancelScope(shield=True):
            child.kill()
            with anyio.move_on_after(_KILL_WAIT):
                await process.aclose()
        raise
    logger.debug("started process %d: %s", child.pid, argv[0] if argv else "")
    return child

