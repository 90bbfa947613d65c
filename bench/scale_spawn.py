"""Benchmark: a burst of agent spawns on a fresh hub, against the same burst once the fork server is warm, and a
hub restart that brings the agents back (issue 11, "spawn storm").

The hub runs under uvicorn (uvloop) in a child process with its own embedded NATS and PostgreSQL and the default
agent settings (heartbeat 10 s, announce deadline 30 s, fork server on). Its log (warnings and up) also goes to
`<data dir>/hub.log`, which is where this program reads what the hub did. Three phases, each bounded by
`--deadline`:

1. **Cold burst.** As soon as the fresh hub answers `/health` (its fork server was started with it and has forked
   nothing yet, and is usually still importing), `--agents` scripted responders (100) are spawned through
   `POST /api/v1/agents`, `--in-flight` requests at once (all of them by default). The figure is the time from the
   first request until `GET /api/v1/agents` lists every one of them running (or idle, or busy).
2. **Warm burst: the baseline.** The same burst of new agents, after the first ones were stopped, with the fork
   server warm: the best this hub can do, so the cold burst's cost is the ratio of the two. (Starting each process
   from scratch is not a baseline worth running: that is the storm this fixes.)
3. **Hub restart.** The hub is stopped with the second burst's agents running and started again on the same data
   directory; its `reconcile` brings them back while the new fork server warms up. The figure runs from the new
   hub's process start until every agent is running again.

For every phase, read from the hub rather than guessed: worker processes killed for a missed announcement (the
pool's "no announcement" warnings in the hub log), all processes killed for silence
(`agenthub_agent_failures_total{reason="heartbeat"}`) or crashed (`{reason="crash"}`) and agent restarts
(`agenthub_agent_restarts_total`) from `/metrics`, and restarts by the hub's root supervisor ("hub component ...
failed; restarting it" in the hub log). Run: `python bench/scale_spawn.py`.
"""

import argparse
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
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
    print_table,
    run_child,
    serve_hub,
)

from agenthub.settings import AgentSettings

SCRIPT = __file__
HUB_NAME = "hub"
HUB_LOG = "hub.log"
BAR_SECONDS = 20.0
MAX_AGENTS = 200
WORKING = "running,idle,busy"
ANNOUNCE_KILL = re.compile(r"agent \S+: no announcement for ")
ROOT_RESTART = re.compile(r"hub component (\S+) failed; restarting it")


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase:
    """What one phase measured; `seconds` is None when not every agent ran within the deadline."""

    name: str
    seconds: float | None
    running: int
    announce_kills: int
    silent_kills: int
    crashes: int
    restarts: int
    root_restarts: dict[str, int]


class Hub:
    """The hub child process, and the counters it exposes, read as differences since `mark`."""

    def __init__(self, server: ChildServer, log: Path) -> None:
        self.server = server
        self.log = log
        self._offset = 0
        self._metrics: dict[str, float] = {}

    async def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, labels included in the name."""
        async with httpx2.AsyncClient(timeout=10) as http:
            text = (await http.get(self.server.url + "/metrics")).text
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def log_since_mark(self) -> str:
        if not self.log.exists():
            return ""
        with self.log.open("rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")

    async def mark(self) -> None:
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        self._metrics = await self.metrics()

    async def counts(self) -> dict[str, int]:
        now = await self.metrics()

        def delta(name: str) -> int:
            return round(now.get(name, 0.0) - self._metrics.get(name, 0.0))

        return {"silent_kills": delta('agenthub_agent_failures_total{reason="heartbeat"}'),
                "crashes": delta('agenthub_agent_failures_total{reason="crash"}'),
                "restarts": delta("agenthub_agent_restarts_total")}


def root_restarts(log: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for match in ROOT_RESTART.finditer(log):
        found[match[1]] = found.get(match[1], 0) + 1
    return found


async def running(http: httpx2.AsyncClient, prefix: str) -> int:
    response = await http.get("/api/v1/agents", params={"state": WORKING})
    response.raise_for_status()
    return sum(a["agent_id"].startswith(prefix) for a in response.json()["agents"])


async def until_running(http: httpx2.AsyncClient, prefix: str, count: int, deadline: float) -> int:
    """Poll until `count` agents named `prefix...` run, at most `deadline` seconds; returns how many run."""
    seen = 0
    with anyio.move_on_after(deadline):
        while True:
            seen = await running(http, prefix)
            if seen >= count:
                break
            await anyio.sleep(0.1)
    return seen


def spawn_body(agent_id: str) -> dict[str, object]:
    return {"agent_id": agent_id, "role": "responder", "capabilities": ["bench"], "executor": "scripted",
            "executor_config": {"behaviour": "responder"}}


async def burst(http: httpx2.AsyncClient, prefix: str, count: int, in_flight: int) -> list[str]:
    """Spawn `count` agents, `in_flight` requests at a time; returns the failures."""
    failures: list[str] = []
    limit = anyio.CapacityLimiter(in_flight)

    async def spawn(n: int) -> None:
        async with limit:
            response = await http.post("/api/v1/agents", json=spawn_body(f"{prefix}{n:03d}"))
        if response.status_code != 201:
            failures.append(f"spawn {prefix}{n:03d}: HTTP {response.status_code} {response.text[:200]}")

    async with anyio.create_task_group() as tg:
        for n in range(count):
            tg.start_soon(spawn, n)
    return failures


async def stop_all(http: httpx2.AsyncClient, prefix: str, count: int, in_flight: int) -> None:
    limit = anyio.CapacityLimiter(in_flight)

    async def stop(n: int) -> None:
        async with limit:
            response = await http.delete(f"/api/v1/agents/{prefix}{n:03d}")
        if response.status_code != 200:
            raise RuntimeError(f"stop {prefix}{n:03d}: HTTP {response.status_code} {response.text[:200]}")

    async with anyio.create_task_group() as tg:
        for n in range(count):
            tg.start_soon(stop, n)


async def measure_phase(hub: Hub, http: httpx2.AsyncClient, name: str, prefix: str, count: int, *,
                        started: float, deadline: float, failures: list[str]) -> Phase:
    """Wait until the agents run, then read what the hub counted since its `mark`."""
    seen = await until_running(http, prefix, count, deadline - (time.monotonic() - started))
    seconds = time.monotonic() - started if seen == count else None
    print(f"  {name}: {seen}/{count} running" + (f" after {seconds:.1f} s" if seconds is not None else
                                                 f", deadline of {deadline:g} s reached"), flush=True)
    if seconds is None:
        failures.append(f"{name}: only {seen} of {count} agents running after {deadline:g} s")
    log = hub.log_since_mark()
    return Phase(name=name, seconds=seconds, running=seen, announce_kills=len(ANNOUNCE_KILL.findall(log)),
                 root_restarts=root_restarts(log), **await hub.counts())


def start_hub(services: Services, agents: int) -> ChildServer:
    server = ChildServer(SCRIPT, ["--serve", "--agents", str(agents), *hub_child_args(services, HUB_NAME)])
    return server.__enter__()


async def measure_spawn_burst(services: Services, *, agents: int = 100, in_flight: int = 100,
                              deadline: float = 120.0) -> list[Row]:
    """The three phases (see the module's docstring) on a fresh hub in `services`; the rows of the table.

    Args:
        services: embedded NATS and PostgreSQL, with no hub data yet.
        agents: agents per burst (at most `MAX_AGENTS`).
        in_flight: spawn requests at once.
        deadline: seconds each phase may take.
    """
    failures: list[str] = []
    log = services.root / HUB_NAME / HUB_LOG
    server = await anyio.to_thread.run_sync(start_hub, services, agents)
    headers = {"authorization": f"Bearer {operator_token(services, HUB_NAME)}"}
    try:
        hub = Hub(server, log)
        limits = httpx2.Limits(max_connections=in_flight)
        async with httpx2.AsyncClient(base_url=server.url, headers=headers, timeout=60, limits=limits) as http:
            await hub.mark()
            started = time.monotonic()
            failures += await burst(http, "cold-", agents, in_flight)
            cold = await measure_phase(hub, http, "cold burst", "cold-", agents, started=started, deadline=deadline,
                                       failures=failures)
            await stop_all(http, "cold-", agents, in_flight)
            await hub.mark()
            started = time.monotonic()
            failures += await burst(http, "warm-", agents, in_flight)
            warm = await measure_phase(hub, http, "warm burst", "warm-", agents, started=started, deadline=deadline,
                                       failures=failures)
    finally:
        await anyio.to_thread.run_sync(server.stop)
    log.unlink(missing_ok=True)  # the next hub's log starts empty: its counters start at zero too
    started = time.monotonic()
    server = await anyio.to_thread.run_sync(start_hub, services, agents)
    try:
        hub = Hub(server, log)
        async with httpx2.AsyncClient(base_url=server.url, headers=headers, timeout=60) as http:
            again = await measure_phase(hub, http, "hub restart", "warm-", agents, started=started,
                                        deadline=deadline, failures=failures)
    finally:
        await anyio.to_thread.run_sync(server.stop)
    return rows(agents, cold, warm, again, failures)


def seconds(phase: Phase) -> str:
    return fmt(phase.seconds) if phase.seconds is not None else "timeout"


def rows(agents: int, cold: Phase, warm: Phase, again: Phase, failures: list[str]) -> list[Row]:
    def within(phase: Phase) -> bool:
        return phase.seconds is not None and phase.seconds <= BAR_SECONDS

    ratio = f"{cold.seconds / warm.seconds:.1f}" if cold.seconds and warm.seconds else "-"
    table = [
        Row(figure=f"{agents} agents spawned at once on a fresh hub: all running (s)", value=seconds(cold),
            baseline=seconds(warm) + " (warm)", ratio=ratio, bar=f"<= {BAR_SECONDS:g}", passed=within(cold)),
        Row(figure="hub restarted with them: process start -> all running (s)", value=seconds(again),
            baseline=seconds(warm) + " (warm)", bar=f"<= {BAR_SECONDS:g}", passed=within(again)),
    ]
    for phase in (cold, warm, again):
        restarted = sum(phase.root_restarts.values())
        table += [
            Row(figure=f"{phase.name}: workers killed for a missed announce", value=str(phase.announce_kills),
                bar="0", passed=phase.announce_kills == 0),
            Row(figure=f"{phase.name}: root supervisor restarts",
                value=str(restarted) + "".join(f" {k}x{v}" for k, v in phase.root_restarts.items()),
                bar="0", passed=restarted == 0),
            Row(figure=f"{phase.name}: silent kills / crashes / agent restarts",
                value=f"{phase.silent_kills} / {phase.crashes} / {phase.restarts}"),
        ]
    table.append(Row(figure="spawn and stop requests failed", value=str(len(failures)), bar="0",
                     passed=not failures))
    for why in failures:
        print(f"  failure: {why}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100, help=f"agents per burst (at most {MAX_AGENTS})")
    parser.add_argument("--in-flight", type=int, default=0, help="spawn requests at once (default: all)")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds each phase may take")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    add_hub_child_arguments(parser)
    args = parser.parse_args()
    if not 1 <= args.agents <= MAX_AGENTS:
        sys.exit(f"--agents must be between 1 and {MAX_AGENTS}")
    if args.serve:
        log = args.data_dir / HUB_LOG
        log.parent.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            handlers=[logging.StreamHandler(), logging.FileHandler(log)])
        # Explicit, so that AGENTHUB_* variables in the environment cannot change what is measured.
        settings = hub_settings(args, agents=AgentSettings(max_agents=max(100, args.agents)))
        run_child(lambda sock: serve_hub(settings, sock), args.port)
        return
    print(f"spawn burst benchmark: {cpu_count_note()}", flush=True)
    with embedded_services() as services:
        table = anyio.run(lambda: measure_spawn_burst(services, agents=args.agents,
                                                      in_flight=args.in_flight or args.agents,
                                                      deadline=args.deadline),
                          backend_options={"use_uvloop": True})
    sys.exit(0 if print_table(f"spawn burst of {args.agents} agents", table) else 1)


if __name__ == "__main__":
    main()
