"""The supervision tree with real OS processes: restarts, strategies, intensity and escalation, shutdown, dynamic
children, task children and backoff. Children are tiny `python -c` programs; tests wait on supervisor events."""

import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from anyio.abc import TaskGroup, TaskStatus

from supervisor import (
    INTENSITY_REACHED,
    Backoff,
    Child,
    ChildSpec,
    ChildStatus,
    ExitKind,
    RestartType,
    StartFn,
    Strategy,
    Supervisor,
    SupervisorEvent,
    start_process,
    task_child,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(1000)"]
# Writes one line to stdout once SIGTERM is ignored, so a test knows the signal will not kill it.
STUBBORN = [sys.executable, "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(1000)"]
# On SIGTERM: marks itself in directory argv[1] and exits once argv[2] children have marked themselves there.
WAITS_FOR_SIBLINGS = [sys.executable, "-c",
                      "import os, signal, sys, time\n"
                      "def term(*_):\n"
                      "    open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close()\n"
                      "    while len(os.listdir(sys.argv[1])) < int(sys.argv[2]): time.sleep(0.01)\n"
                      "    sys.exit(0)\n"
                      "signal.signal(signal.SIGTERM, term); print('ready', flush=True); time.sleep(1000)"]
# Leaves a grandchild in its process group, like an agent that spawned a tool.
SPAWNER = [sys.executable, "-c",
           "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)']); "
           "print('ready', flush=True); time.sleep(1000)"]
MISSING = ["/nonexistent/agenthub-agent"]
FAST = Backoff(initial=0.01, maximum=0.05, jitter=0.0)


def exits_with(code: int) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.exit({code})"]


def process(argv: Sequence[str] | Callable[[], Sequence[str]], **kwargs: Any) -> StartFn:
    """A start function for `argv` (or for whatever argv the callable returns at each start)."""

    async def start(tg: TaskGroup) -> Child:
        return await start_process(argv() if callable(argv) else argv, tg=tg, **kwargs)

    return start


def spec(child_id: str, argv: Sequence[str] | Callable[[], Sequence[str]] = SLEEPER, *, stdout: int | None = None,
         **kwargs: Any) -> ChildSpec:
    kwargs.setdefault("backoff", FAST)
    return ChildSpec(id=child_id, start=process(argv, stdout=stdout), **kwargs)


class Recorder:
    """A supervisor listener keeping every event (with its arrival time), to wait on conditions with a deadline."""

    def __init__(self) -> None:
        self.events: list[SupervisorEvent] = []
        self.times: list[float] = []
        self._changed = anyio.Event()

    async def __call__(self, event: SupervisorEvent) -> None:
        self.events.append(event)
        self.times.append(time.monotonic())
        self._changed.set()
        self._changed = anyio.Event()

    def of(self, kind: str, child_id: str | None = None, supervisor: str | None = None) -> list[SupervisorEvent]:
        return [e for e in self.events if e.kind == kind and (child_id is None or e.child_id == child_id)
                and (supervisor is None or e.supervisor == supervisor)]

    async def until(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        with anyio.fail_after(within):
            while not predicate():
                await self._changed.wait()

    async def until_count(self, kind: str, count: int, child_id: str | None = None, supervisor: str | None = None,
                          within: float = 5.0) -> list[SupervisorEvent]:
        await self.until(lambda: len(self.of(kind, child_id, supervisor)) >= count, within)
        return self.of(kind, child_id, supervisor)


def pids(sup: Supervisor) -> dict[str, int | None]:
    return {info.id: info.pid for info in sup.which_children()}


def running_pid(sup: Supervisor, child_id: str) -> int:
    pid = pids(sup)[child_id]
    assert pid is not None
    return pid


def live_members(pgid: int) -> list[int]:
    """Processes of a process group that are alive (zombies do not count: nobody can run in them)."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


async def assert_gone(pid: int) -> None:
    """The process is dead and reaped (no zombie), and nothing of its process group lives on."""
    assert not psutil.pid_exists(pid), f"process {pid} still exists ({psutil.Process(pid).status()})"
    # A SIGKILLed grandchild is not ours to reap, so there is no event for its death: give the kernel up to 2 s.
    for _ in range(200):
        if not live_members(pid):
            break
        await anyio.sleep(0.01)
    assert live_members(pid) == []


@contextmanager
def ready_pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    try:
        yield read_fd, write_fd
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def wait_ready(read_fd: int, count: int = 1) -> None:
    """Wait until `count` children wrote their "ready" line to the pipe."""
    seen = b""
    with anyio.fail_after(5):
        while seen.count(b"ready") < count:  # print() may write the line and its newline separately
            await anyio.wait_readable(read_fd)
            seen += os.read(read_fd, 1000)


@asynccontextmanager
async def supervised(*children: ChildSpec, **kwargs: Any) -> AsyncIterator[tuple[Supervisor, Recorder]]:
    recorder = Recorder()
    kwargs.setdefault("max_restarts", 100)
    kwargs.setdefault("period", 60.0)
    async with Supervisor("sup", children, listener=recorder, **kwargs) as sup:
        await recorder.until_count("started", len(children))  # events arrive asynchronously; start from a clean slate
        yield sup, recorder


# ------------------------------------------------------------------------------------------------ restarts


async def test_every_kill_9_of_a_permanent_child_restarts_it_with_a_new_pid() -> None:
    async with supervised(spec("agent")) as (sup, events):
        seen = [running_pid(sup, "agent")]
        for n in range(1, 11):  # (how fast: bench/restart.py)
            os.kill(seen[-1], signal.SIGKILL)
            started = await events.until_count("started", n + 1, "agent")
            seen.append(running_pid(sup, "agent"))
            assert started[-1].pid == seen[-1]
        assert len(set(seen)) == len(seen)
        assert sup.which_children()[0].restarts == 10
    for pid in seen:
        await assert_gone(pid)
    assert (await sup.wait()).kind is ExitKind.SHUTDOWN


@pytest.mark.parametrize(("strategy", "changed"), [
    (Strategy.ONE_FOR_ONE, ["c2"]),
    (Strategy.ONE_FOR_ALL, ["c1", "c2", "c3", "c4", "c5"]),
    (Strategy.REST_FOR_ONE, ["c2", "c3", "c4", "c5"]),
])
async def test_killing_child_2_of_5_restarts_exactly_the_children_its_strategy_names(
        strategy: Strategy, changed: list[str]) -> None:
    ids = ["c1", "c2", "c3", "c4", "c5"]
    async with supervised(*(spec(i) for i in ids), strategy=strategy) as (sup, events):
        before = pids(sup)
        baseline = len(events.events)
        os.kill(running_pid(sup, "c2"), signal.SIGKILL)
        await events.until(lambda: len([e for e in events.events[baseline:] if e.kind == "started"]) == len(changed))
        after = pids(sup)
        assert sorted(i for i in ids if after[i] != before[i]) == changed
        assert all(after[i] is not None for i in ids)
        new = events.events[baseline:]
        # Siblings are stopped in reverse start order, then everything restarts in start order.
        stopped = [e.child_id for e in new if e.kind == "exited"]
        assert stopped == ["c2"] + [i for i in reversed(changed) if i != "c2"]
        assert [e.child_id for e in new if e.kind == "started"] == changed
    assert all(sup_info.status is ChildStatus.STOPPED for sup_info in sup.which_children())


EXITS: dict[str, tuple[list[str], int | None]] = {
    "exit 0": (exits_with(0), None),
    "SIGTERM": (SLEEPER, signal.SIGTERM),
    "SIGKILL": (SLEEPER, signal.SIGKILL),
    "exit 1": (exits_with(1), None),
}
RESTARTED = {
    RestartType.PERMANENT: {"exit 0", "SIGTERM", "SIGKILL", "exit 1"},
    RestartType.TRANSIENT: {"SIGKILL", "exit 1"},
    RestartType.TEMPORARY: set(),
}


@pytest.mark.parametrize("how", list(EXITS))
@pytest.mark.parametrize("restart", list(RestartType))
async def test_a_child_exiting_on_its_own_is_restarted_exactly_per_its_restart_type(
        restart: RestartType, how: str) -> None:
    argv, signum = EXITS[how]
    async with supervised(spec("anchor"), spec("child", argv, restart=restart)) as (sup, events):
        if signum is not None:
            os.kill(running_pid(sup, "child"), signum)
        exited = await events.until_count("exited", 1, "child")
        assert exited[0].exit is not None and exited[0].exit.detail == {
            "exit 0": "exit code 0", "SIGTERM": "terminated by SIGTERM", "SIGKILL": "killed by SIGKILL",
            "exit 1": "exit code 1"}[how]
        if how in RESTARTED[restart]:
            await events.until_count("started", 2, "child")
        else:
            await events.until(lambda: [i.id for i in sup.which_children()] == ["anchor"]
                               or sup.which_children()[-1].status is ChildStatus.STOPPED)
            assert events.of("restarting", "child") == []
            infos = {i.id: i for i in sup.which_children()}
            if restart is RestartType.TEMPORARY:
                assert "child" not in infos  # a temporary child's spec is not retained
            else:
                assert infos["child"].status is ChildStatus.STOPPED
                assert infos["child"].last_exit == exited[0].exit
        assert sup.which_children()[0].pid is not None  # the sibling was left alone


async def test_a_temporary_sibling_stopped_by_one_for_all_is_dropped_not_restarted() -> None:
    async with supervised(spec("c1"), spec("c2"), spec("temp", restart=RestartType.TEMPORARY),
                          strategy=Strategy.ONE_FOR_ALL) as (sup, events):
        os.kill(running_pid(sup, "c2"), signal.SIGKILL)
        await events.until(lambda: len(events.of("started")) == 5)
        assert [i.id for i in sup.which_children()] == ["c1", "c2"]
        assert len(events.of("started", "temp")) == 1


# ----------------------------------------------------------------------------------- intensity, escalation


async def test_the_fourth_restart_within_the_period_stops_all_children_in_reverse_order_and_the_supervisor() -> None:
    async with supervised(spec("c1"), spec("c2"), spec("c3"), spec("c4"), max_restarts=3, period=10.0) as (sup,
                                                                                                          events):
        for n in range(1, 4):
            os.kill(running_pid(sup, "c2"), signal.SIGKILL)
            await events.until_count("started", n + 1, "c2")
        survivors = pids(sup)
        os.kill(running_pid(sup, "c2"), signal.SIGKILL)
        with anyio.fail_after(5):
            exit = await sup.wait()
        assert exit.kind is ExitKind.SHUTDOWN and exit.detail == INTENSITY_REACHED
        final = events.events[[i for i, e in enumerate(events.events) if e.kind == "exited"][-4]:]
        assert [(e.kind, e.child_id) for e in final] == [
            ("exited", "c2"), ("exited", "c4"), ("exited", "c3"), ("exited", "c1"), ("shutdown", None)]
        assert final[-1].exit == exit
        assert len(events.of("started")) == 4 + 3
    for pid in survivors.values():
        assert pid is not None
        await assert_gone(pid)


def leaf_factory(name: str, recorder: Recorder, argv: Sequence[str], max_restarts: int) -> Callable[[], Supervisor]:
    def build() -> Supervisor:
        return Supervisor(name, [spec("worker", argv)], max_restarts=max_restarts, period=60.0, listener=recorder)

    return build


@pytest.mark.parametrize(("restart", "restarted"), [(RestartType.PERMANENT, True), (RestartType.TRANSIENT, False)])
async def test_a_child_supervisors_intensity_breach_is_its_parents_child_exit(
        restart: RestartType, restarted: bool) -> None:
    events = Recorder()
    inner = Supervisor.child_spec("inner", leaf_factory("inner", events, SLEEPER, 0), restart=restart)
    async with Supervisor("outer", [spec("sibling"), inner], listener=events, max_restarts=5, period=60) as outer:
        first = outer.child("inner")
        assert isinstance(first, Supervisor)
        os.kill(running_pid(first, "worker"), signal.SIGKILL)
        exited = await events.until_count("exited", 1, "inner", "outer")
        assert exited[0].exit is not None
        assert (exited[0].exit.kind, exited[0].exit.detail) == (ExitKind.SHUTDOWN, INTENSITY_REACHED)
        if restarted:
            await events.until_count("started", 2, "inner", "outer")
            second = outer.child("inner")
            assert isinstance(second, Supervisor) and second is not first
            assert second.which_children()[0].status is ChildStatus.RUNNING
        else:
            await events.until(lambda: outer.which_children()[1].status is ChildStatus.STOPPED)
            assert outer.child("inner") is None
        assert outer.which_children()[0].status is ChildStatus.RUNNING  # escalation stopped at the parent


async def test_a_crashing_leaf_under_three_levels_of_intensity_one_restarts_a_bounded_number_of_times() -> None:
    events = Recorder()
    leaf = Supervisor.child_spec("leaf", leaf_factory("leaf", events, exits_with(1), 1))

    def build_middle() -> Supervisor:
        return Supervisor("middle", [leaf], max_restarts=1, period=60.0, listener=events)

    top = Supervisor("top", [Supervisor.child_spec("middle", build_middle)], max_restarts=1, period=60.0,
                     listener=events)
    async with top:
        with anyio.fail_after(20):
            exit = await top.wait()
    assert exit.detail == INTENSITY_REACHED
    # Each level allows one restart: 2 leaf starts per leaf supervisor x 2 leaf supervisors per middle x 2 middles.
    assert len(events.of("started", "worker", "leaf")) == 2 * 2 * 2
    assert len(events.of("started", "leaf", "middle")) == 2 * 2
    assert len(events.of("started", "middle", "top")) == 2


# ------------------------------------------------------------------------------------------------ shutdown


async def test_a_child_ignoring_sigterm_is_killed_when_its_shutdown_time_is_up() -> None:
    with ready_pipe() as (read_fd, write_fd):
        stubborn = ChildSpec(id="stubborn", start=process(STUBBORN, stdout=write_fd), shutdown=1.0)
        async with supervised(stubborn) as (sup, events):
            await wait_ready(read_fd)
            pid = running_pid(sup, "stubborn")
            began = time.monotonic()
            await sup.terminate_child("stubborn")
            elapsed = time.monotonic() - began
        assert elapsed >= 1.0, elapsed  # its shutdown time first (SIGTERM, ignored), then SIGKILL
        exited = events.of("exited", "stubborn")[0].exit
        assert exited is not None and exited.detail == "killed by SIGKILL"
        await assert_gone(pid)


async def test_a_brutal_kill_child_dies_at_once_even_if_it_ignores_sigterm() -> None:
    with ready_pipe() as (read_fd, write_fd):
        stubborn = ChildSpec(id="stubborn", start=process(STUBBORN, stdout=write_fd), shutdown=None)
        async with supervised(stubborn) as (sup, events):
            await wait_ready(read_fd)
            pid = running_pid(sup, "stubborn")
            # No grace at all: far less than the 5 s a supervisor gives by default (the bound tells them apart).
            with anyio.fail_after(4):
                await sup.terminate_child("stubborn")
        exited = events.of("exited", "stubborn")[0].exit
        assert exited is not None and exited.detail == "killed by SIGKILL"
        await assert_gone(pid)


async def test_stop_stops_the_tree_in_reverse_order_and_leaves_no_process_behind() -> None:
    events = Recorder()
    read_fd, write_fd = os.pipe()
    nested = Supervisor.child_spec(
        "nested", lambda: Supervisor("nested", [spec("n1"), spec("n2", SPAWNER, stdout=write_fd)], listener=events))
    top = Supervisor("top", [spec("c1"), spec("c2", SPAWNER, stdout=write_fd), nested, spec("c4")], listener=events)
    try:
        async with top:
            inner = top.child("nested")
            assert isinstance(inner, Supervisor)
            all_pids = [pid for pid in [*pids(top).values(), *pids(inner).values()] if pid is not None]
            assert len(all_pids) == 5
            await wait_ready(read_fd, 2)
            assert len(live_members(running_pid(top, "c2"))) == 2  # the spawner and its grandchild
            assert len(live_members(running_pid(inner, "n2"))) == 2
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert [(e.supervisor, e.child_id) for e in events.of("exited")] == [
        ("top", "c4"), ("nested", "n2"), ("nested", "n1"), ("top", "nested"), ("top", "c2"), ("top", "c1")]
    assert (await top.wait()).kind is ExitKind.SHUTDOWN
    for pid in all_pids:
        await assert_gone(pid)


async def test_cancelling_the_owners_task_group_still_stops_the_children_in_order() -> None:
    events = Recorder()
    sup = Supervisor("sup", [spec("c1"), spec("c2"), spec("c3")], listener=events)
    async with anyio.create_task_group() as tg:
        await sup.start(tg)
        started = [pid for pid in pids(sup).values() if pid is not None]
        tg.cancel_scope.cancel()
    assert [e.child_id for e in events.of("exited")] == ["c3", "c2", "c1"]
    assert all(e.exit is not None and e.exit.kind is ExitKind.SHUTDOWN for e in events.of("exited"))
    for pid in started:
        await assert_gone(pid)


async def test_a_child_failing_its_initial_start_stops_the_started_ones_and_start_raises() -> None:
    events = Recorder()
    sup = Supervisor("sup", [spec("c1"), spec("c2"), spec("broken", MISSING), spec("c4")], listener=events)
    with pytest.raises(FileNotFoundError):
        async with sup:
            pytest.fail("a supervisor whose child cannot start must not run")
    assert [e.child_id for e in events.of("exited")] == ["c2", "c1"]
    assert [e.child_id for e in events.of("start_failed")] == ["broken"]
    for event in events.of("started"):
        assert event.pid is not None
        await assert_gone(event.pid)


# ------------------------------------------------------------------------------------- failing restarts


async def test_a_missing_executable_on_restart_is_retried_without_blocking_and_then_escalates() -> None:
    argv = [SLEEPER]
    backoff = Backoff(initial=0.2, maximum=0.2, jitter=0.0)
    broken = ChildSpec(id="agent", start=process(lambda: argv[0]), backoff=backoff)
    async with supervised(spec("other"), broken, max_restarts=3, period=30.0) as (sup, events):
        argv[0] = MISSING
        os.kill(running_pid(sup, "agent"), signal.SIGKILL)
        await events.until_count("start_failed", 1, "agent")
        # The retry waits out its backoff while the supervisor keeps answering.
        info = sup.which_children()[1]
        assert (info.status, info.pid) == (ChildStatus.RESTARTING, None)
        with anyio.fail_after(5):
            exit = await sup.wait()
    assert exit.detail == INTENSITY_REACHED
    # The crash, then failed starts, fill the window: 1 exit + 3 failed starts = 4 > 3.
    assert len(events.of("start_failed", "agent")) == 3
    delays = [e.delay for e in events.of("restarting", "agent")]
    assert delays == [0.0, 0.2, 0.2]
    assert events.of("exited", "other")[-1].exit is not None


async def test_terminate_child_and_stop_answer_at_once_while_a_child_waits_to_restart() -> None:
    argv = [SLEEPER]
    slow = Backoff(initial=30.0, maximum=30.0, jitter=0.0)
    async with supervised(spec("c1"), ChildSpec(id="agent", start=process(lambda: argv[0]), backoff=slow)) as (
            sup, events):
        argv[0] = MISSING
        os.kill(running_pid(sup, "agent"), signal.SIGKILL)
        await events.until_count("start_failed", 1, "agent")
        restarting = await events.until_count("restarting", 2, "agent")
        assert [e.delay for e in restarting] == [0.0, 30.0]
        assert sup.which_children()[1].status is ChildStatus.RESTARTING
        with anyio.fail_after(1):
            await sup.terminate_child("agent")
        assert sup.which_children()[1].status is ChildStatus.STOPPED
        with anyio.fail_after(4):  # neither the 30 s restart delay nor the 5 s shutdown time is waited out
            await sup.stop(5.0)


# ------------------------------------------------------------------------------------------ auto_shutdown


async def test_any_significant_child_exiting_shuts_the_supervisor_down() -> None:
    async with supervised(spec("worker"), spec("job", exits_with(0), restart=RestartType.TRANSIENT, significant=True),
                          auto_shutdown="any_significant") as (sup, events):
        with anyio.fail_after(5):
            exit = await sup.wait()
    assert exit.kind is ExitKind.SHUTDOWN and exit.detail.startswith("auto_shutdown")
    assert [e.child_id for e in events.of("exited")] == ["job", "worker"]


async def test_all_significant_waits_for_the_last_significant_child() -> None:
    job1 = spec("job1", exits_with(0), restart=RestartType.TRANSIENT, significant=True)
    job2 = spec("job2", SLEEPER, restart=RestartType.TRANSIENT, significant=True)
    async with supervised(spec("worker"), job1, job2, auto_shutdown="all_significant") as (sup, events):
        await events.until_count("exited", 1, "job1")
        await events.until(lambda: sup.which_children()[1].status is ChildStatus.STOPPED)
        assert [i.status for i in sup.which_children()] == [ChildStatus.RUNNING, ChildStatus.STOPPED,
                                                             ChildStatus.RUNNING]
        os.kill(running_pid(sup, "job2"), signal.SIGTERM)
        with anyio.fail_after(5):
            exit = await sup.wait()
    assert exit.detail.startswith("auto_shutdown")


def test_a_permanent_child_cannot_be_significant() -> None:
    with pytest.raises(ValueError):
        Supervisor("sup", [spec("job", significant=True)], auto_shutdown="any_significant")


# --------------------------------------------------------------------------------------- dynamic children


async def test_dynamic_children_can_be_started_terminated_restarted_and_deleted() -> None:
    async with supervised(spec("static")) as (sup, events):
        info = await sup.start_child(spec("dyn"))
        assert (info.id, info.status) == ("dyn", ChildStatus.RUNNING) and info.pid is not None
        assert [i.id for i in sup.which_children()] == ["static", "dyn"]
        with pytest.raises(ValueError):
            await sup.start_child(spec("dyn"))
        with pytest.raises(FileNotFoundError):
            await sup.start_child(spec("ghost", MISSING))
        assert [i.id for i in sup.which_children()] == ["static", "dyn"]

        with pytest.raises(ValueError):
            await sup.delete_child("dyn")  # running
        await sup.terminate_child("dyn")
        assert sup.which_children()[1].status is ChildStatus.STOPPED and sup.child("dyn") is None
        await assert_gone(info.pid)
        assert events.of("restarting", "dyn") == []  # terminated, not restarted

        again = await sup.restart_child("dyn")
        assert again.status is ChildStatus.RUNNING and again.pid not in (None, info.pid)
        with pytest.raises(ValueError):
            await sup.restart_child("dyn")  # already running
        await sup.terminate_child("dyn")
        await sup.delete_child("dyn")
        assert [i.id for i in sup.which_children()] == ["static"]

        temp = await sup.start_child(spec("temp", restart=RestartType.TEMPORARY))
        await sup.terminate_child("temp")
        assert [i.id for i in sup.which_children()] == ["static"]  # temporary: dropped on termination
        assert temp.pid is not None

        for call in (sup.terminate_child, sup.delete_child, sup.restart_child):
            with pytest.raises(KeyError):
                await call("nope")


async def test_simple_one_for_one_stops_its_children_concurrently(tmp_path: Path) -> None:
    # Each child, on SIGTERM, marks itself and exits only once all four are marked: stopped one after the other,
    # the first would wait for its siblings until its grace ran out and be killed; stopped together, all exit 0.
    with ready_pipe() as (read_fd, write_fd):
        async with supervised(strategy=Strategy.SIMPLE_ONE_FOR_ONE) as (sup, events):
            for n in range(5):
                waits = [*WAITS_FOR_SIBLINGS, str(tmp_path), "4"]
                await sup.start_child(ChildSpec(id=f"w{n}", start=process(waits, stdout=write_fd), shutdown=60.0,
                                                restart=RestartType.TEMPORARY))
            await wait_ready(read_fd, 5)
            started = [pid for pid in pids(sup).values() if pid is not None]
            os.kill(started[3], signal.SIGKILL)  # temporary: just gone
            await events.until(lambda: len(sup.which_children()) == 4)
    details = [e.exit.detail for e in events.of("exited") if e.exit is not None]
    assert sorted(details) == ["exit code 0"] * 4 + ["killed by SIGKILL"], details
    for pid in started:
        await assert_gone(pid)


# ------------------------------------------------------------------------------------------- task children


async def test_task_children_report_normal_abnormal_and_shutdown_exits() -> None:
    runs = {"done": 0, "boom": 0}

    async def done(task_status: TaskStatus[None]) -> None:
        runs["done"] += 1
        task_status.started()

    async def boom(task_status: TaskStatus[None]) -> None:
        runs["boom"] += 1
        task_status.started()
        raise RuntimeError("boom")

    async def forever(task_status: TaskStatus[None]) -> None:
        task_status.started()
        await anyio.sleep(math.inf)

    async with supervised(ChildSpec(id="done", start=task_child(done), restart=RestartType.TRANSIENT),
                          ChildSpec(id="boom", start=task_child(boom), backoff=FAST),
                          ChildSpec(id="forever", start=task_child(forever))) as (sup, events):
        await events.until_count("started", 3, "boom")
        await sup.terminate_child("forever")
        await events.until_count("exited", 1, "forever")
        exits = {e.child_id: e.exit for e in events.events if e.kind == "exited"}
        assert exits["done"] is not None and exits["done"].kind is ExitKind.NORMAL
        assert exits["boom"] is not None and (exits["boom"].kind, exits["boom"].detail) == (ExitKind.ABNORMAL, "boom")
        assert exits["forever"] is not None and exits["forever"].kind is ExitKind.SHUTDOWN
        assert runs["done"] == 1  # transient + normal exit: not restarted
        await sup.terminate_child("boom")


async def test_a_task_child_failing_before_it_is_ready_fails_its_start() -> None:
    async def broken(task_status: TaskStatus[None]) -> None:
        raise OSError("no port")

    async with supervised() as (sup, events):
        with pytest.raises(OSError, match="no port"):
            await sup.start_child(ChildSpec(id="broken", start=task_child(broken)))
        assert sup.which_children() == []
    assert [e.kind for e in events.events] == ["start_failed", "shutdown"]


# --------------------------------------------------------------------------------------------------- backoff


async def test_restarts_of_a_crash_looping_child_are_spaced_by_its_backoff() -> None:
    backoff = Backoff(initial=0.3, maximum=0.3, jitter=0.0)
    async with supervised(ChildSpec(id="crasher", start=process(exits_with(1)), backoff=backoff)) as (sup, events):
        await events.until_count("started", 4, "crasher")
        await sup.terminate_child("crasher")
    assert [e.delay for e in events.of("restarting", "crasher")][:3] == [0.0, 0.3, 0.3]
    times = {id(e): t for e, t in zip(events.events, events.times, strict=True)}
    starts = [times[id(e)] for e in events.of("started", "crasher")]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps[1] >= 0.3 and gaps[2] >= 0.3, gaps


async def test_backoff_resets_after_sustained_uptime() -> None:
    backoff = Backoff(initial=30.0, maximum=30.0, jitter=0.0, reset_after=0.3)
    async with supervised(spec("agent", backoff=backoff)) as (sup, events):
        os.kill(running_pid(sup, "agent"), signal.SIGKILL)  # attempt 0: at once
        await events.until_count("started", 2, "agent")
        # Let the new instance run past reset_after: the next crash counts as a first one again.
        await anyio.sleep(0.4)
        os.kill(running_pid(sup, "agent"), signal.SIGKILL)
        await events.until_count("started", 3, "agent")
    assert [e.delay for e in events.of("restarting", "agent")] == [0.0, 0.0]
