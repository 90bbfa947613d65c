"""A server the hub depends on (the embedded NATS and PostgreSQL) as a supervised child.

The server is started before the supervisor (synchronously, so an interrupted start stops what it started); the
child's first instance adopts it and later instances `restart()` it, in a worker thread. A watcher polls
`alive()` every `_POLL_SECONDS` (the server may not be our child: pg_ctl daemonizes the postmaster), and its
death is the child's ABNORMAL exit, which the supervisor restarts with its backoff. `stop` is the server's own
orderly stop (pg_ctl's fast shutdown, SIGTERM for nats-server), never a signal to a process group.
"""

import logging
from typing import Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

from supervisor.policy import Exit, ExitKind
from supervisor.tree import Child, StartFn

logger = logging.getLogger(__name__)

_POLL_SECONDS = 0.2


class Service(Protocol):
    name: str

    @property
    def pid(self) -> int | None: ...

    def alive(self) -> bool: ...

    def restart(self) -> None: ...

    def stop(self) -> None: ...


class _ServiceChild:
    def __init__(self, service: Service) -> None:
        self._service = service
        self._pid = service.pid
        self._exited = anyio.Event()
        self._exit: Exit | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._pid

    async def _watch(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        while not self._exited.is_set():
            await anyio.sleep(_POLL_SECONDS)
            if not self._stopping and not self._service.alive():
                logger.error("%s (pid %s) died", self._service.name, self._pid)
                self._set(Exit(kind=ExitKind.ABNORMAL, detail=f"{self._service.name} died"))

    def _set(self, exit: Exit) -> None:
        if self._exit is None:
            self._exit = exit
            self._exited.set()

    async def wait(self) -> Exit:
        await self._exited.wait()
        assert self._exit is not None
        return self._exit

    async def stop(self, timeout: float | None) -> Exit:  # noqa: ASYNC109 (the Child protocol's kill grace)
        self._stopping = True
        if not self._exited.is_set():
            # The service bounds its own stop (pg_ctl -t, nats-server's SIGKILL after a grace); cancelling the
            # thread would leave the server half-stopped, so it is not abandoned.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._service.stop)
            self._set(Exit(kind=ExitKind.SHUTDOWN, detail="stopped"))
        return await self.wait()


def service_child(service: Service) -> StartFn:
    """The supervisor's start function for `service`, which must already run when the supervisor starts."""

    async def start(tg: TaskGroup) -> Child:
        if not service.alive():
            await anyio.to_thread.run_sync(service.restart)
        child = _ServiceChild(service)
        await tg.start(child._watch)
        return child

    return start
