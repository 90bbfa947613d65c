"""Benchmark: how long a supervised agent process takes to run again after SIGKILL, against a bare supervisor
loop of the same interpreter in the same run (issue 3).

The hub runs under uvicorn (uvloop) in a child process, with its own embedded NATS and PostgreSQL. One scripted
responder agent is spawned through `POST /api/v1/agents` with a permanent restart policy that restarts at once
(`backoff_initial_seconds` and `backoff_max_seconds` 0) and allows every kill of the run (100 restarts per hour).
This process listens on `{prefix}agents.{id}.announce` (the worker's own announce) with nats-py and, for each
kill, waits until the agent runs (its announce received and its REST state running, busy or idle), SIGKILLs the
worker, and takes the time until the next announce from a new pid. That is the whole restart path: the hub notices
the exit, decides the restart (recording the exit alongside), issues a token and a NATS login, has its fork server
fork a worker (`agent_pool.worker`, imported already), which connects to NATS and over MCP to the hub, then
announces itself.

The baselines are bare supervisor loops in this process (`anyio.open_process` on uvloop, in a new session, as
`supervisor.process` starts workers), each restarting a `python -c` child of `sys.executable` that connects to a
local TCP listener and sends "hello <pid>": one child imports nothing beyond `socket`, the other first does
`import mcp.client.streamable_http, nats` (the import floor of the worker). A kill is timed until the new child's
hello arrives.

The three are interleaved kill by kill, in an order that rotates each round, so that host drift hits them alike;
no new round starts after a time budget. The hub's restarts are then split into steps by timestamps taken along
the way: the new worker's start (`/proc/<pid>/stat`, in 10 ms ticks), its NATS connection (nats-server's `/connz`)
and its first MCP answer (the worker log's first "HTTP Request" line), and, recorded alongside while the worker
starts, the agent's state changes (`agents.{id}.events.state`); each new worker is marked forked (its parent is
the fork server) or cold.

Bars: issue 15's p50 <= 100 ms and p99 <= 300 ms, and issue 3's p50 <= 600 ms. `--burners N` runs the whole
measurement beside N processes spinning on the CPU (issue 15: "also under load"). Run: `python bench/restart.py`.
"""

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import nats
import psutil
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream
from harness import (
    ChildServer,
    Row,
    Services,
    add_hub_child_arguments,
    cpu_count_note,
    embedded_services,
    fmt,
    hub_child_args,
    hub_settings,
    operator_token,
    percentile,
    print_table,
    run_child,
    serve_hub,
)
from nats.aio.msg import Msg
from wasm_deadline import burners  # the CPU burners of the WASM deadline benchmark: N processes spinning

from agenthub.nats_auth import NatsAuthority, hub_user
from agenthub.settings import AgentSettings

HUB_NAME = "hub"
AGENT_ID = "bench-restart"
SUBJECT_PREFIX = ""  # the hub's default; set explicitly so that AGENTHUB_NATS_SUBJECT_PREFIX cannot move it
BAR_P50_MS = 100.0  # issue 15
BAR_P99_MS = 300.0  # issue 15
ISSUE3_P50_MS = 600.0
MAX_KILLS = 100  # the most restarts a restart policy may allow (RestartPolicy.max_restarts)
POLICY = {"restart": "permanent", "max_restarts": MAX_KILLS, "period_seconds": 3600,
          "backoff_initial_seconds": 0, "backoff_max_seconds": 0}
IMPORT_FLOOR = "mcp.client.streamable_http, nats"
# The child of the bare supervisor: connect, say hello with its pid, then block until killed (or until this
# process closes the connection, so that no child outlives the benchmark).
HELLO_CHILD = ("{imports}import os, socket\n"
               "s = socket.create_connection(('127.0.0.1', {port}))\n"
               "s.sendall(b'hello %d\\n' % os.getpid())\n"
               "s.recv(1)\n")
WORKING = frozenset({"running", "busy", "idle"})

Sample = tuple[float, int]  # (monotonic receipt time, pid)


async def next_from(receive: MemoryObjectReceiveStream[Sample], *, not_pid: int | None,
                    seconds: float, what: str) -> Sample:
    """The next (time, pid) from `receive` whose pid is not `not_pid`, within `seconds`."""
    with anyio.move_on_after(seconds):
        while True:
            sample = await receive.receive()
            if sample[1] != not_pid:
                return sample
    raise TimeoutError(f"{what}: nothing within {seconds:g} s")


# -- the baseline: a bare supervisor loop --------------------------------------------------------------------------


class BareAgent:
    """A `python -c` child restarted by a bare loop as soon as it dies; a kill is timed until its successor's
    hello arrives."""

    def __init__(self, label: str, argv: list[str], receive: MemoryObjectReceiveStream[Sample],
                 deadline: float) -> None:
        self.label = label
        self.argv = argv
        self.pid = 0
        self.samples: list[float] = []
        self._receive = receive
        self._deadline = deadline

    async def supervise(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        while True:
            process = await anyio.open_process(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                               stderr=None, start_new_session=True)
            try:
                code = await process.wait()
            finally:
                # Shielded: a cancelled loop must not leave its child running.
                with anyio.CancelScope(shield=True):
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
                    await process.aclose()
            if code != -signal.SIGKILL:  # only our kills are expected; anything else is a broken child
                raise RuntimeError(f"{self.label}: child exited with code {code} (see its stderr above)")

    async def first_start(self) -> None:
        _, self.pid = await next_from(self._receive, not_pid=None, seconds=self._deadline,
                                      what=f"{self.label}: first hello")

    async def restart(self) -> float:
        old = self.pid
        t0 = time.monotonic()
        os.kill(old, signal.SIGKILL)
        t1, self.pid = await next_from(self._receive, not_pid=old, seconds=self._deadline,
                                       what=f"{self.label}: hello after a kill")
        self.samples.append(t1 - t0)
        return t1 - t0


@contextlib.asynccontextmanager
async def bare_agent(label: str, imports: str, deadline: float) -> AsyncIterator[BareAgent]:
    """A listener on 127.0.0.1 and a bare supervisor loop whose child (importing `imports` first) says hello."""
    send, receive = anyio.create_memory_object_stream[Sample](64)

    async def handle(stream: SocketStream) -> None:
        async with stream:
            data = b""
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while not data.endswith(b"\n"):
                    data += await stream.receive()
                t = time.monotonic()
                await send.send((t, int(data.split()[1])))
                while True:  # hold the connection: the child blocks on it until it is killed
                    await stream.receive()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    code = HELLO_CHILD.format(imports=f"import {imports}\n" if imports else "", port=port)
    agent = BareAgent(label, [sys.executable, "-c", code], receive, deadline)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        await tg.start(agent.supervise)
        await agent.first_start()
        yield agent
        tg.cancel_scope.cancel()


# -- the hub's agent ------------------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Restart:
    """One measured restart of the hub's agent, on this process's monotonic clock."""

    killed: float
    announced: float
    pid: int
    forked: float | None  # the new worker's start time (10 ms ticks), None if it was gone before we looked
    origin: str  # "fork server" (forked by it), "cold" (started from scratch) or "gone"


class HubAgent:
    """The scripted agent the hub supervises; a kill is timed until the announce of its next process."""

    def __init__(self, http: httpx2.AsyncClient, announces: MemoryObjectReceiveStream[Sample],
                 deadline: float) -> None:
        self.http = http
        self.announces = announces
        self.deadline = deadline
        self.pid = 0
        self.samples: list[float] = []
        self.restarts: list[Restart] = []
        self.states: list[tuple[float, str]] = []  # (receipt time, state entered), from agents.{id}.events.state
        self.failures: list[str] = []

    async def first_start(self) -> None:
        _, self.pid = await next_from(self.announces, not_pid=None, seconds=self.deadline, what="first announce")
        await self.wait_working(self.pid)

    async def restart(self) -> float:
        old = self.pid
        t0 = time.monotonic()
        os.kill(old, signal.SIGKILL)
        t1, self.pid = await next_from(self.announces, not_pid=old, seconds=self.deadline,
                                       what="announce after a kill")
        self.restarts.append(Restart(killed=t0, announced=t1, pid=self.pid, forked=fork_time(self.pid),
                                     origin=origin(self.pid)))
        self.samples.append(t1 - t0)
        await self.wait_working(self.pid)
        return t1 - t0

    async def wait_working(self, pid: int) -> None:
        """Poll the REST API until the agent runs `pid` and is running, busy or idle (the hub took the announce)."""
        info: dict[str, Any] = {}
        with anyio.move_on_after(self.deadline):
            while True:
                response = await self.http.get(f"/api/v1/agents/{AGENT_ID}")
                info = response.json()
                if response.status_code == 200 and info.get("state") in WORKING and info.get("pid") == pid:
                    return
                await anyio.sleep(0.01)
        raise TimeoutError(f"the agent did not run pid {pid} within {self.deadline:g} s: state "
                           f"{info.get('state')}, pid {info.get('pid')}")


def fork_time(pid: int) -> float | None:
    """When process `pid` started, on the monotonic clock (`/proc/<pid>/stat` starttime: boot-time clock ticks)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    ticks = int(stat[stat.rindex(")") + 2:].split()[19])
    boot_offset = time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
    return ticks / os.sysconf("SC_CLK_TCK") - boot_offset


def origin(pid: int) -> str:
    """Whether worker `pid` was forked by the hub's fork server or started from scratch (its parent's command)."""
    try:
        parent = psutil.Process(pid).parent()
        command = parent.cmdline() if parent is not None else []
    except psutil.Error:
        return "gone"
    return "fork server" if "supervisor.forkserver" in command else "cold"


@contextlib.asynccontextmanager
async def hub_agent(server: ChildServer, token: str, services: Services, deadline: float
                    ) -> AsyncIterator[HubAgent]:
    """Spawn the agent through REST, follow it on NATS (as a user of its own on the hub's prefix), and stop it
    through REST at the end."""
    send, receive = anyio.create_memory_object_stream[Sample](64)

    async def on_announce(msg: Msg) -> None:
        t = time.monotonic()
        data = json.loads(msg.data)
        if data.get("agent_id") == AGENT_ID:
            await send.send((t, int(data["pid"])))

    users = NatsAuthority(services.nats_dir).owner()
    observer = hub_user(SUBJECT_PREFIX)
    await users.update(add=(observer,))
    nc = await nats.connect(services.nats_url, name="bench-restart", **observer.login().connect_options())
    headers = {"authorization": f"Bearer {token}"}
    try:
        async with httpx2.AsyncClient(base_url=server.url, headers=headers, timeout=30) as http:
            agent = HubAgent(http, receive, deadline)

            async def on_state(msg: Msg) -> None:
                agent.states.append((time.monotonic(), str(json.loads(msg.data)["to_state"])))

            await nc.subscribe(f"{SUBJECT_PREFIX}agents.{AGENT_ID}.announce", cb=on_announce)
            await nc.subscribe(f"{SUBJECT_PREFIX}agents.{AGENT_ID}.events.state", cb=on_state)
            await nc.flush()
            body = {"agent_id": AGENT_ID, "role": "responder", "capabilities": ["bench"], "executor": "scripted",
                    "executor_config": {"behaviour": "responder"}, "restart_policy": POLICY}
            response = await http.post("/api/v1/agents", json=body)
            if response.status_code != 201:
                raise RuntimeError(f"spawn failed: HTTP {response.status_code} {response.text[:300]}")
            try:
                await agent.first_start()
                yield agent
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                    await stop_agent(agent)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await nc.close()
        await users.close()


async def stop_agent(agent: HubAgent) -> None:
    """DELETE the agent and check that it ends stopped with no process left."""
    last_pid = agent.pid
    response = await agent.http.delete(f"/api/v1/agents/{AGENT_ID}")
    info = response.json()
    if response.status_code != 200 or info.get("state") != "stopped":
        agent.failures.append(f"stop: HTTP {response.status_code}, state {info.get('state')}")
    # The stop returns once the supervisor has reaped the worker, so its pid must be gone by now.
    if last_pid and psutil.pid_exists(last_pid):
        agent.failures.append(f"worker {last_pid} still exists after the stop")
    if info.get("restarts") != len(agent.samples):
        agent.failures.append(f"the hub counted {info.get('restarts')} restarts for {len(agent.samples)} kills")


# -- the run --------------------------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Results:
    hub: HubAgent
    bare: BareAgent
    floor: BareAgent
    error: str | None = None
    cut_short: bool = False  # the time budget ended the kills early
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)  # the 1-minute load average when the kills began and when they ended
    nats_connects: list[float] = field(default_factory=list)  # when each worker connection to NATS opened
    mcp_answers: dict[int, float] = field(default_factory=dict)  # pid -> when its first MCP request was answered


async def measure(server: ChildServer, token: str, services: Services, args: argparse.Namespace) -> Results:
    started = time.monotonic()
    async with hub_agent(server, token, services, args.deadline) as hub, \
            bare_agent("bare", "", args.deadline) as bare, \
            bare_agent("import floor", IMPORT_FLOOR, args.deadline) as floor:
        results = Results(hub=hub, bare=bare, floor=floor, load=(os.getloadavg()[0], 0.0))
        targets: list[tuple[str, Callable[[], Awaitable[float]]]] = [
            ("hub", hub.restart), ("bare", bare.restart), ("floor", floor.restart)]
        try:
            with burners(args.burners):
                for n in range(args.kills):
                    if time.monotonic() - started > args.budget:  # a slow box measures fewer kills, not forever
                        results.cut_short = True
                        print(f"  time budget of {args.budget:g} s used up after {n} rounds", flush=True)
                        break
                    line = []
                    for name, restart in targets[n % 3:] + targets[:n % 3]:
                        await anyio.sleep(args.settle)
                        line.append(f"{name} {await restart() * 1000:6.1f}")
                    print(f"  kill {n + 1:3d}: " + "  ".join(sorted(line)) + f" ms ({hub.restarts[-1].origin})",
                          flush=True)
        except TimeoutError as exc:  # one restart missed its deadline: the agent is not coming back
            results.error = f"{exc} (after {len(hub.samples)} hub restarts)"
            print(f"  {results.error}", flush=True)
        results.seconds = time.monotonic() - started
        results.load = (results.load[0], os.getloadavg()[0])
        results.nats_connects = await nats_connects(nats_monitor_url(services), f"agent:{AGENT_ID}")
        return results


# -- where the time goes: timestamps from NATS, /proc and the worker log ---------------------------------------------


def wall_to_monotonic(wall: float) -> float:
    return wall - (time.time() - time.monotonic())


def nats_monitor_url(services: Services) -> str | None:
    """The embedded nats-server's monitoring URL, from the ports file it writes."""
    for path in (services.root / "nats" / "ports").glob("*.ports"):
        urls: list[str] = json.loads(path.read_text()).get("monitoring", [])
        return urls[0] if urls else None
    return None


async def nats_connects(monitor_url: str | None, name: str) -> list[float]:
    """When each connection named `name` (open or closed) was accepted by nats-server, on the monotonic clock."""
    if monitor_url is None:
        return []
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.get(f"{monitor_url}/connz", params={"state": "all", "limit": 100_000})
    connections: list[dict[str, Any]] = response.json().get("connections", [])
    return sorted(wall_to_monotonic(datetime.fromisoformat(c["start"]).timestamp())
                  for c in connections if c.get("name") == name)


WORKER_HTTP_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) agent\[(\d+)\] INFO HTTP Request: ")


def mcp_answers(log: Path) -> dict[int, float]:
    """pid -> when the worker logged its first HTTP response (the MCP session's first request), from its log."""
    answers: dict[int, float] = {}
    if not log.exists():
        return answers
    for line in log.read_text(errors="replace").splitlines():
        match = WORKER_HTTP_LINE.match(line)
        if match and int(match[2]) not in answers:
            wall = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as logged
            answers[int(match[2])] = wall_to_monotonic(wall)
    return answers


# Marks along one restart, in the order they happen; each step of the breakdown runs from one mark to the next.
STEPS = [
    ("forked", "kill -> worker forked (exit seen, restart decided, token, NATS login, files; 10 ms ticks)"),
    ("nats", "-> NATS accepted its connection (config, event loop, executor; imports if cold)"),
    ("mcp", "-> first MCP answer (NATS login, HTTP client, MCP initialize)"),
    ("announced", "-> announce received (the figure ends here)"),
    ("running", "-> hub marked it running"),
]
# Marks the hub records alongside, while the next worker starts: each is timed from the kill.
ALONGSIDE = [
    ("error", "kill -> hub recorded the exit (state error), alongside"),
    ("starting", "kill -> hub recorded the restart (state starting), alongside"),
]


def first_in(times: list[float], start: float, end: float) -> float | None:
    """The earliest of `times` in [start, end)."""
    return min((t for t in times if start <= t < end), default=None)


def breakdown(results: Results) -> dict[str, list[float]]:
    """Each step of the hub's restarts: its state changes, the worker's start, NATS connection and first answer."""
    hub = results.hub
    steps: dict[str, list[float]] = {label: [] for _, label in STEPS + ALONGSIDE}
    entered = {name: [t for t, s in hub.states if s == name] for name in ("error", "starting", "running")}
    ends = [r.killed for r in hub.restarts[1:]] + [float("inf")]
    for r, end in zip(hub.restarts, ends, strict=True):
        marks: dict[str, float | None] = {
            "error": first_in(entered["error"], r.killed, end),
            "starting": first_in(entered["starting"], r.killed, end),
            "forked": r.forked, "nats": first_in(results.nats_connects, r.killed, r.announced),
            "mcp": results.mcp_answers.get(r.pid), "announced": r.announced,
            "running": first_in(entered["running"], r.killed, end),
        }
        # /proc counts in 10 ms ticks, rounded down: keep the fork between its neighbours.
        if marks["forked"] is not None:
            marks["forked"] = max(marks["forked"], r.killed)
        if marks["forked"] is not None and marks["nats"] is not None:
            marks["forked"] = min(marks["forked"], marks["nats"])
        previous: float | None = r.killed
        for key, label in STEPS:
            mark = marks[key]
            if mark is not None and previous is not None:
                steps[label].append(mark - previous)
            previous = mark
        for key, label in ALONGSIDE:
            if (mark := marks[key]) is not None:
                steps[label].append(mark - r.killed)
    return steps


# -- the report -----------------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return fmt(seconds * 1000)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}" if b > 0 else "-"


def report(results: Results, args: argparse.Namespace) -> bool:
    hub, bare, floor = results.hub, results.bare, results.floor
    hub50, hub99 = percentile(hub.samples, 50), percentile(hub.samples, 99)
    bare50, bare99 = percentile(bare.samples, 50), percentile(bare.samples, 99)
    floor50, floor99 = percentile(floor.samples, 50), percentile(floor.samples, 99)
    n = len(hub.samples)
    rows = [
        Row(figure=f"restart p50: SIGKILL -> announce, {n} kills (ms)", value=ms(hub50),
            baseline=ms(bare50) + " (bare)", ratio=ratio(hub50, bare50), bar=f"<= {BAR_P50_MS:g} (issue 15)",
            passed=hub50 <= BAR_P50_MS / 1000),
        Row(figure=f"restart p99: SIGKILL -> announce, {n} kills (ms)", value=ms(hub99),
            baseline=ms(bare99) + " (bare)", ratio=ratio(hub99, bare99), bar=f"<= {BAR_P99_MS:g} (issue 15)",
            passed=hub99 <= BAR_P99_MS / 1000),
        Row(figure="restart p50, issue 3's bar (ms)", value=ms(hub50), bar=f"<= {ISSUE3_P50_MS:g} (issue 3)",
            passed=hub50 <= ISSUE3_P50_MS / 1000),
        Row(figure="restart p50 above the bare loop (ms)", value=ms(hub50 - bare50), baseline=ms(bare50)),
        Row(figure=f"cold import floor p50: kill -> hello after import {IMPORT_FLOOR} (ms)", value=ms(floor50),
            baseline=ms(bare50) + " (bare)", ratio=ratio(floor50, bare50)),
        Row(figure="cold import floor p99 (ms)", value=ms(floor99), baseline=ms(bare99) + " (bare)",
            ratio=ratio(floor99, bare99)),
    ]
    for step, values in breakdown(results).items():
        rows.append(Row(figure=f"  {step}: p50 / p99 (ms)",
                        value=f"{ms(percentile(values, 50))} / {ms(percentile(values, 99))}"))
    origins = [r.origin for r in hub.restarts]
    rows.append(Row(figure="new workers forked by the fork server / cold / gone",
                    value=" / ".join(str(origins.count(o)) for o in ("fork server", "cold", "gone"))))
    short = " (time budget)" if results.cut_short else ""
    rows.append(Row(figure="hub restarts measured / kills", value=f"{len(hub.samples)} / {args.kills}{short}",
                    bar="all", passed=results.error is None and not hub.failures and bool(hub.samples)))
    load = f"beside {args.burners} CPU burners" if args.burners else "no burners"
    ok = print_table(f"agent restart after SIGKILL, {n} kills each, interleaved ({results.seconds:.0f} s, {load}, "
                     f"load average {results.load[0]:.1f} -> {results.load[1]:.1f})", rows)
    for why in hub.failures + ([results.error] if results.error else []):
        print(f"  failure: {why}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=30, help=f"kills of each process (at most {MAX_KILLS})")
    parser.add_argument("--settle", type=float, default=0.2, help="seconds between running again and the next kill")
    parser.add_argument("--deadline", type=float, default=15.0, help="seconds one restart may take")
    parser.add_argument("--budget", type=float, default=75.0, help="seconds after which no new round of kills starts")
    parser.add_argument("--burners", type=int, default=0, help="processes spinning on the CPU during the kills")
    parser.add_argument("--keep-log", type=Path, help="copy the agent's worker log here before the data is removed")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    add_hub_child_arguments(parser)
    args = parser.parse_args()
    if args.serve:
        # Explicit, so that AGENTHUB_* variables in the environment cannot change what is measured.
        settings = hub_settings(args, nats_subject_prefix=SUBJECT_PREFIX, agents=AgentSettings())
        run_child(lambda sock: serve_hub(settings, sock), args.port)
        return
    if not 1 <= args.kills <= MAX_KILLS:
        sys.exit(f"--kills must be between 1 and {MAX_KILLS}: the restart policy allows no more restarts")
    print(f"restart benchmark: {cpu_count_note()}", flush=True)
    with embedded_services() as services, \
            ChildServer(__file__, ["--serve", *hub_child_args(services, HUB_NAME)]) as server:
        token = operator_token(services, HUB_NAME)
        results = anyio.run(measure, server, token, services, args, backend_options={"use_uvloop": True})
        log = services.root / HUB_NAME / "agents" / f"{AGENT_ID}.log"
        results.mcp_answers = mcp_answers(log)
        if args.keep_log and log.exists():
            args.keep_log.write_bytes(log.read_bytes())
    sys.exit(0 if report(results, args) else 1)


if __name__ == "__main__":
    main()
