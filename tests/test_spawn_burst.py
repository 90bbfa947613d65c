"""Spawn bursts: many agents started at once, on a hub whose fork server has only just started with it, or with no
fork server at all, all end up running without a worker killed for being slow to start."""

import os
from datetime import datetime
from typing import Any

import anyio
import httpx2
import psutil

from tests.agents_helpers import scripted, wait_for
from tests.conftest import HubFactory

BURST = 24


async def spawn_all(http: httpx2.AsyncClient, names: list[str]) -> None:
    """POST every spawn request at once."""
    async def spawn(name: str) -> None:
        response = await http.post("/api/v1/agents", json=scripted(name))
        assert response.status_code == 201, response.text

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(spawn, name)


def assert_started_once(agent: dict[str, Any]) -> None:
    """The agent's first process ran: never killed for silence, never restarted."""
    kinds = [e["kind"] for e in agent["recent_events"]]
    assert "heartbeat_lost" not in kinds, agent["recent_events"]
    assert agent["restarts"] == 0, agent["recent_events"]


async def test_a_burst_of_spawns_on_a_fresh_hub_is_forked_and_all_agents_run_with_none_killed(
        hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(agents={"heartbeat_seconds": 2})
    async with hub_factory.run(settings) as hub, hub.http() as http:
        fork = hub.state.agents.fork_server
        assert fork is not None
        names = [f"burst-{n:02d}" for n in range(BURST)]
        await spawn_all(http, names)  # at once, while the fork server (started with the hub) is still warming up
        agents = [await wait_for(http, name, "idle", "running", seconds=120) for name in names]
        for agent in agents:
            assert_started_once(agent)
            # Not one of them paid for the imports itself: they waited for the fork server instead.
            assert psutil.Process(agent["pid"]).ppid() == fork.pid
        metrics = (await http.get("/metrics")).text
        assert 'agenthub_agent_failures_total{reason="heartbeat"}' not in metrics
        root = {child.id: child for child in hub.state.supervisor.which_children()}
        assert root["fork-server"].restarts == 0


async def test_without_a_fork_server_processes_start_from_scratch_one_slot_at_a_time(
        hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(agents={"heartbeat_seconds": 2, "fork_server": False, "max_cold_starts": 1})
    async with hub_factory.run(settings) as hub, hub.http() as http:
        names = [f"cold-{n}" for n in range(3)]
        await spawn_all(http, names)
        agents = [await wait_for(http, name, "idle", "running", seconds=120) for name in names]
        for agent in agents:
            assert_started_once(agent)
            assert psutil.Process(agent["pid"]).ppid() == os.getpid()  # started from scratch by the hub
        # With one slot, each process starts only once the one before it has announced itself. (The announce is
        # recorded a moment after the slot is given back, hence the allowance; unbounded, all three would start
        # together, seconds before the first announce.)
        runs = sorted((psutil.Process(a["pid"]).create_time(), announced_at(a)) for a in agents)
        for (_, announced), (next_started, _) in zip(runs, runs[1:], strict=False):
            assert next_started >= announced - 1.0, runs


def announced_at(agent: dict[str, Any]) -> float:
    """When the agent's process announced itself: its transition to running, as a Unix time."""
    at = next(e["at"] for e in agent["recent_events"] if e["to_state"] == "running")
    return datetime.fromisoformat(at).timestamp()
