"""The fork server: warm copies of a program, forked on request, supervised like processes, never orphaned."""

import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import psutil
from anyio.abc import TaskStatus

from supervisor.forkserver import ForkServer
from supervisor.policy import ExitKind
from tests.agents_helpers import eventually, gone

TARGET = "tests.agents_helpers:fork_target"
PREPARE = "tests.agents_helpers:fork_prepare"


@asynccontextmanager
async def running(tmp_path: Path, prepare: str | None = None) -> AsyncIterator[ForkServer]:
    """A fork server until the block ends; its death inside the block is expected by the caller, not an error."""
    fork = ForkServer(["json"], TARGET, log=tmp_path / "fork-server.log", prepare=prepare)

    async def run(task_status: TaskStatus[None]) -> None:
        with contextlib.suppress(RuntimeError):  # "fork server exited": what a supervisor would restart
            await fork.run(task_status)

    async with anyio.create_task_group() as tg:
        await tg.start(run)
        assert await fork.wait_ready(30), "fork server not ready within 30 s"
        yield fork
        tg.cancel_scope.cancel()


async def test_forked_children_run_the_program_in_their_own_session_with_the_given_environment(
        tmp_path: Path) -> None:
    async with running(tmp_path) as server:
        await forked_child_runs(server, tmp_path)


async def forked_child_runs(server: ForkServer, tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    child = await server.start(env={"FORK_SAY": "hello from a fork", "FORK_SLEEP": "30"}, log=log)
    process = psutil.Process(child.pid)
    assert process.ppid() == server.pid
    assert os.getpgid(child.pid) == child.pid and os.getsid(child.pid) == child.pid

    async def said() -> bool:
        return log.exists() and "hello from a fork" in log.read_text()

    await eventually(said, 10, "the child's output")
    exit = await child.stop(5)
    assert exit.kind is ExitKind.SHUTDOWN and exit.code == -signal.SIGTERM
    assert gone(child.pid)


async def test_the_program_is_prepared_once_in_the_server_and_children_share_its_frozen_objects(
        tmp_path: Path) -> None:
    async with running(tmp_path, PREPARE) as server:
        logs = [tmp_path / f"child-{i}.log" for i in range(2)]
        children = [await server.start(env={}, log=log) for log in logs]
        with anyio.fail_after(10):
            for child in children:
                assert (await child.wait()).kind is ExitKind.NORMAL
        for log in logs:
            said = re.fullmatch(r"\nprepared in \[(\d+)\], (\d+) frozen\n", log.read_text())
            assert said is not None, log.read_text()
            prepared, frozen = said.groups()
            assert int(prepared) == server.pid  # once, in the server, before the fork: not in the child
            assert int(frozen) > 0  # the child's garbage collections skip what the server holds


async def test_exit_codes_and_kills_arrive_as_exits(tmp_path: Path) -> None:
    async with running(tmp_path) as server:
        await exits_arrive(server, tmp_path)


async def exits_arrive(server: ForkServer, tmp_path: Path) -> None:
    done = await server.start(env={"FORK_EXIT": "3"}, log=tmp_path / "a.log")
    with anyio.fail_after(10):
        exit = await done.wait()
    assert (exit.kind, exit.code, exit.detail) == (ExitKind.ABNORMAL, 3, "exit code 3")
    clean = await server.start(env={}, log=tmp_path / "b.log")
    with anyio.fail_after(10):
        assert (await clean.wait()).kind is ExitKind.NORMAL
    victim = await server.start(env={"FORK_SLEEP": "30"}, log=tmp_path / "c.log")
    os.kill(victim.pid, signal.SIGKILL)
    with anyio.fail_after(10):
        exit = await victim.wait()
    assert exit.detail == "killed by SIGKILL"
    assert gone(victim.pid)


async def test_when_the_fork_server_dies_its_children_are_killed_and_reported(tmp_path: Path) -> None:
    async with running(tmp_path) as server:
        await server_dies(server, tmp_path)


async def server_dies(server: ForkServer, tmp_path: Path) -> None:
    children = [await server.start(env={"FORK_SLEEP": "30"}, log=tmp_path / f"{i}.log") for i in range(3)]
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    with anyio.fail_after(10):
        exits = [await child.wait() for child in children]
    assert {e.detail for e in exits} == {"the fork server stopped"}

    async def all_gone() -> bool:
        return all(gone(child.pid) for child in children)

    await eventually(all_gone, 10, "children gone")
