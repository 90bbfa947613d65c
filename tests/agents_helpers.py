"""Helpers for tests that run real agent processes through a hub."""

import os
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx2
import psutil

FAST_POLICY = {"max_restarts": 50, "period_seconds": 60, "backoff_initial_seconds": 0, "backoff_max_seconds": 0.2}


def scripted(agent_id: str, behaviour: str = "responder", **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"behaviour": behaviour}
    if behaviour == "analyzer":
        config["text"] = extra.pop("text", "Latency spikes every night. Why does the cache miss?")
    body: dict[str, Any] = {"agent_id": agent_id, "role": extra.pop("role", "responder"),
                            "capabilities": extra.pop("capabilities", ["testing"]), "executor": "scripted",
                            "executor_config": config, "restart_policy": {**FAST_POLICY, **extra.pop("policy", {})}}
    body.update(extra)
    return body


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10, what: str = "condition") -> None:
    """Wait until `check()` is true, polling every 50 ms, for at most `seconds`."""
    with anyio.move_on_after(seconds):
        while True:
            if await check():
                return
            await anyio.sleep(0.05)
    raise AssertionError(f"{what} not reached within {seconds} s")


async def wait_for(http: httpx2.AsyncClient, agent_id: str, *states: str, seconds: float = 30,
                   pid_not: int | None = None) -> dict[str, Any]:
    """Poll the agent until it is in one of `states` (and, if given, runs a pid other than `pid_not`)."""
    last: dict[str, Any] = {}
    try:
        with anyio.fail_after(seconds):
            while True:
                r = await http.get(f"/api/v1/agents/{agent_id}")
                last = r.json()
                if r.status_code == 200 and last["state"] in states and (pid_not is None or last["pid"] not in
                                                                          (None, pid_not)):
                    return last
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"agent {agent_id} never reached {states}: {last}") from None


def gone(pid: int) -> bool:
    """True when no process has this pid, not even a zombie waiting to be reaped."""
    return not psutil.pid_exists(pid)


async def wait_gone(pid: int, seconds: float = 10) -> None:
    async def check() -> bool:
        return gone(pid)

    await eventually(check, seconds, f"process {pid} gone")


def worker_pids() -> set[int]:
    """Agent processes descending from this test process: started directly (`-m agent_pool.worker`) or forked by
    a fork server (whose command line they share; the server itself is this process's child)."""
    pids = set()
    me = os.getpid()
    for p in psutil.Process(me).children(recursive=True):
        try:
            cmdline = " ".join(p.cmdline())
            if "agent_pool.worker" in cmdline and not ("supervisor.forkserver" in cmdline and p.ppid() == me):
                pids.add(p.pid)
        except psutil.Error:  # a zombie has no command line; it is still there
            pids.add(p.pid)
    return pids


_prepared: list[int] = []  # the pid of each process `fork_prepare` ran in


def fork_prepare() -> None:
    """The `prepare` of fork-server tests: notes which process it ran in."""
    _prepared.append(os.getpid())


def fork_target() -> None:
    """A program for fork-server tests: prints FORK_SAY, then what `fork_prepare` noted and how many objects are
    frozen (`gc.freeze`), then exits with FORK_EXIT after FORK_SLEEP seconds."""
    import gc
    import time

    print(os.environ.get("FORK_SAY", ""), flush=True)
    print(f"prepared in {_prepared}, {gc.get_freeze_count()} frozen", flush=True)
    time.sleep(float(os.environ.get("FORK_SLEEP", "0")))
    raise SystemExit(int(os.environ.get("FORK_EXIT", "0")))
