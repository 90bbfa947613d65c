"""Agents as operators and agents meet them: real worker processes spawned through REST, MCP and NATS, killed,
restarted, watched by heartbeat, stopped, and brought back by a restarted hub."""

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import psutil
import pytest

from agenthub.auth import Role
from tests.agents_helpers import FAST_POLICY, eventually, gone, scripted, wait_for, wait_gone, worker_pids
from tests.conftest import HubFactory, RunningHub

HEARTBEAT = 0.5


@pytest.fixture
async def agent_hub(hub_factory: HubFactory) -> AsyncIterator[RunningHub]:
    """A hub with fast heartbeats, so lost ones are noticed within a couple of seconds."""
    settings = hub_factory.settings(agents={"heartbeat_seconds": HEARTBEAT, "breaker_fail_max": 3,
                                            "breaker_reset_seconds": 2})
    async with hub_factory.run(settings) as running:
        yield running


async def test_a_spawned_scripted_agent_announces_itself_and_runs_with_its_history_recorded(
        agent_hub: RunningHub) -> None:
    async with agent_hub.http() as http:
        r = await http.post("/api/v1/agents", json=scripted("resp-1"))
        assert r.status_code == 201, r.text
        assert r.json()["state"] in ("starting", "running", "idle")
        agent = await wait_for(http, "resp-1", "idle")
        assert agent["pid"] is not None and not gone(agent["pid"])
        assert agent["last_heartbeat"] is not None
        transitions = [(e["from_state"], e["to_state"]) for e in agent["recent_events"] if e["kind"] == "transition"]
        assert transitions[:3] == [(None, "created"), ("created", "starting"), ("starting", "running")]
        listed = (await http.get("/api/v1/agents", params={"state": "running,idle,busy"})).json()["agents"]
        assert [a["agent_id"] for a in listed] == ["resp-1"]
        assert (await http.get("/api/v1/agents", params={"state": "stopped"})).json()["agents"] == []
        system = (await http.get("/metrics/system")).json()["agents"]
        assert system["total"] == 1 and system["idle"] + system["busy"] == 1


async def test_an_agent_killed_with_sigkill_twenty_times_comes_back_running_each_time(agent_hub: RunningHub) -> None:
    async with agent_hub.http() as http:
        await http.post("/api/v1/agents", json=scripted("phoenix"))
        agent = await wait_for(http, "phoenix", "idle")
        pids = {agent["pid"]}
        for _ in range(20):
            os.kill(agent["pid"], signal.SIGKILL)
            agent = await wait_for(http, "phoenix", "idle", "running", pid_not=agent["pid"])
            pids.add(agent["pid"])
        assert len(pids) == 21
        assert agent["restarts"] == 20
        assert all(gone(pid) for pid in pids - {agent["pid"]})
        errors = [e for e in (await http.get("/api/v1/agents/phoenix")).json()["recent_events"]
                  if e["to_state"] == "error"]
        assert errors and "killed by SIGKILL" in errors[-1]["detail"]


async def test_an_agent_crashing_more_often_than_its_policy_allows_is_failed_and_alerted(
        agent_hub: RunningHub) -> None:
    async with agent_hub.http() as http:
        await http.post("/api/v1/agents", json=scripted("fragile", policy={"max_restarts": 2, "period_seconds": 60}))
        agent = await wait_for(http, "fragile", "idle")
        for _ in range(2):
            os.kill(agent["pid"], signal.SIGKILL)
            agent = await wait_for(http, "fragile", "idle", "running", pid_not=agent["pid"])
        os.kill(agent["pid"], signal.SIGKILL)  # the third crash within the period breaches the intensity
        failed = await wait_for(http, "fragile", "failed")
        assert "restart intensity" in failed["last_error"]
        assert any(e["kind"] == "alert" for e in failed["recent_events"])
        metrics = (await http.get("/metrics")).text
        assert 'agenthub_agent_alerts_total{reason="restart_intensity"} 1.0' in metrics
        await anyio.sleep(HEARTBEAT * 2)
        assert (await http.get("/api/v1/agents/fragile")).json()["state"] == "failed"  # no restart loop


async def test_a_crash_looping_agent_trips_its_breaker_and_is_not_advertised(agent_hub: RunningHub) -> None:
    prefix = agent_hub.state.settings.nats_subject_prefix
    nc = await agent_hub.nats()
    try:
        async def query(capability: str) -> list[str]:
            reply = await nc.request(f"{prefix}agents.discovery.query",
                                     json.dumps({"capability": capability}).encode(), timeout=5)
            return [a["agent_id"] for a in json.loads(reply.data)["agents"]]

        async with agent_hub.http() as http:
            await http.post("/api/v1/agents", json=scripted("steady", capabilities=["search"]))
            await http.post("/api/v1/agents", json=scripted("looper", capabilities=["search"]))
            await wait_for(http, "steady", "idle")
            agent = await wait_for(http, "looper", "idle")
            assert sorted(await query("search")) == ["looper", "steady"]
            assert await query("nothing-has-this") == []
            for _ in range(3):  # breaker_fail_max
                os.kill(agent["pid"], signal.SIGKILL)
                agent = await wait_for(http, "looper", "idle", "running", pid_not=agent["pid"])
            assert agent["breaker_state"] == "open"
            assert await query("search") == ["steady"]
            # After the reset timeout the breaker is ready for a trial, and the agent is offered work again.
            async def half_open() -> bool:
                return bool((await http.get("/api/v1/agents/looper")).json()["breaker_state"] == "half-open")

            await eventually(half_open, 10, "half-open breaker")
            assert sorted(await query("search")) == ["looper", "steady"]
    finally:
        await nc.close()


async def test_an_agent_that_stops_heartbeating_is_killed_and_restarted(agent_hub: RunningHub) -> None:
    async with agent_hub.http() as http:
        await http.post("/api/v1/agents", json=scripted("sleepy"))
        agent = await wait_for(http, "sleepy", "idle")
        os.kill(agent["pid"], signal.SIGSTOP)  # alive but silent
        back = await wait_for(http, "sleepy", "idle", "running", pid_not=agent["pid"], seconds=20)
        await wait_gone(agent["pid"])
        lost = [e for e in back["recent_events"] if e["kind"] == "heartbeat_lost"]
        assert lost and "no heartbeat" in lost[-1]["detail"]
        assert 'agenthub_agent_failures_total{reason="heartbeat"} 1.0' in (await http.get("/metrics")).text


async def test_stopping_an_agent_ends_its_process_and_a_second_stop_is_refused(agent_hub: RunningHub) -> None:
    async with agent_hub.http() as http:
        await http.post("/api/v1/agents", json=scripted("short-lived"))
        agent = await wait_for(http, "short-lived", "idle")
        r = await http.delete("/api/v1/agents/short-lived")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "stopped" and r.json()["pid"] is None
        await wait_gone(agent["pid"])
        r = await http.delete("/api/v1/agents/short-lived")
        assert r.status_code == 409
        assert "is stopped" in r.json()["detail"]
        assert (await http.get("/api/v1/agents/short-lived")).json()["state"] == "stopped"
        r = await http.post("/api/v1/agents/short-lived/restart")
        assert r.status_code == 200, r.text
        again = await wait_for(http, "short-lived", "idle")
        assert again["pid"] != agent["pid"] and again["restarts"] == 1


async def test_restarting_a_running_agent_replaces_its_process(agent_hub: RunningHub) -> None:
    async with agent_hub.http() as http:
        await http.post("/api/v1/agents", json=scripted("renewed"))
        agent = await wait_for(http, "renewed", "idle")
        r = await http.post("/api/v1/agents/renewed/restart")
        assert r.status_code == 200, r.text
        await wait_gone(agent["pid"])
        again = await wait_for(http, "renewed", "idle", pid_not=agent["pid"])
        states = [e["to_state"] for e in again["recent_events"] if e["kind"] == "transition"]
        restart = states.index("stopping")
        assert states[restart:restart + 4] == ["stopping", "stopped", "starting", "running"]


async def test_operators_spawn_list_and_stop_agents_with_mcp_tools(agent_hub: RunningHub) -> None:
    async with agent_hub.mcp() as client, agent_hub.http() as http:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"spawn_agent", "stop_agent", "list_agents"} <= names
        result = await client.call_tool("spawn_agent", scripted("via-mcp"))
        assert not result.is_error, result.content
        assert result.structured_content is not None and result.structured_content["agent_id"] == "via-mcp"
        await wait_for(http, "via-mcp", "idle")
        listed = await client.call_tool("list_agents", {"state": ["idle"]})
        assert [a["agent_id"] for a in (listed.structured_content or {})["agents"]] == ["via-mcp"]
        stopped = await client.call_tool("stop_agent", {"agent_id": "via-mcp"})
        assert (stopped.structured_content or {})["state"] == "stopped"
        again = await client.call_tool("stop_agent", {"agent_id": "via-mcp"})
        assert again.is_error and "is stopped" in again.content[0].text  # type: ignore[union-attr]


async def test_agents_and_viewers_do_not_see_or_use_the_operator_agent_tools(agent_hub: RunningHub) -> None:
    agent_token = await agent_hub.token(Role.AGENT, "someone")
    async with agent_hub.mcp(agent_token) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert not names & {"spawn_agent", "stop_agent", "list_agents"}
    viewer = await agent_hub.token(Role.VIEWER)
    async with agent_hub.http(viewer) as http:
        r = await http.post("/api/v1/agents", json=scripted("sneaky"))
        assert r.status_code == 403
        assert (await http.get("/api/v1/agents")).status_code == 200
        assert (await http.get("/api/v1/agents/sneaky")).status_code == 404


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"role": "x", "executor": "quantum"}, 422, "executor"),
    ({"role": "x", "executor": "scripted", "executor_config": {"behaviour": "dancer"}}, 422, "behaviour"),
    ({"role": "x", "executor": "scripted", "executor_config": {"behaviour": "analyzer"}}, 422, "text"),
    ({"role": "x", "executor": "scripted", "executor_config": {"behaviour": "responder"},
      "restart_policy": {"max_restarts": 1000}}, 422, "max_restarts"),
    ({"role": "x", "executor": "scripted", "executor_config": {"behaviour": "responder"},
      "restart_policy": {"restart": "sometimes"}}, 422, "restart"),
    ({"role": "x", "executor": "command", "executor_config": {"argv": ["no-such-command-anywhere"]}}, 400,
     "command not found"),
    ({"role": "x", "executor": "claude", "executor_config": {}}, 400, "ANTHROPIC_API_KEY"),
    ({"role": "x", "executor": "scripted", "executor_config": {"behaviour": "responder"}, "agent_id": "bad id"},
     422, "agent_id"),
    ({"role": "x", "executor": "scripted", "executor_config": {"behaviour": "responder"}, "surprise": 1}, 422,
     "surprise"),
])
async def test_bad_spawn_requests_are_refused_and_create_nothing(agent_hub: RunningHub, body: dict[str, Any],
                                                                  status: int, needle: str) -> None:
    async with agent_hub.http() as http:
        r = await http.post("/api/v1/agents", json=body)
        assert r.status_code == status, r.text
        assert needle in r.text
        assert (await http.get("/api/v1/agents")).json()["agents"] == []
    assert worker_pids() == set()


async def test_unknown_agents_and_duplicate_ids_get_clear_errors(agent_hub: RunningHub) -> None:
    async with agent_hub.http() as http:
        for method, path in (("GET", "/api/v1/agents/ghost"), ("DELETE", "/api/v1/agents/ghost"),
                             ("POST", "/api/v1/agents/ghost/restart")):
            r = await http.request(method, path)
            assert r.status_code == 404 and "no agent with id 'ghost'" in r.json()["detail"]
        await http.post("/api/v1/agents", json=scripted("twin"))
        r = await http.post("/api/v1/agents", json=scripted("twin"))
        assert r.status_code == 409 and "already exists" in r.json()["detail"]
        await wait_for(http, "twin", "idle")
        assert len(worker_pids()) == 1


async def test_an_agent_token_cannot_act_as_another_agent(agent_hub: RunningHub) -> None:
    async with agent_hub.http() as http:
        await http.post("/api/v1/agents", json=scripted("honest"))
        await wait_for(http, "honest", "idle")
    token = await agent_hub.token(Role.AGENT, "mallory")
    async with agent_hub.http(token) as http:
        r = await http.post("/api/v1/discoveries", json={
            "agent_id": "honest", "agent_role": "responder", "discovery_type": "insight", "content": "forged",
            "confidence": 0.5})
        assert r.status_code == 403
        assert (await http.get("/api/v1/discoveries", params={"agent_id": "honest"})).json()["items"] == []


async def test_a_question_is_routed_to_the_capable_agent_and_the_answer_links_back(agent_hub: RunningHub) -> None:
    async with agent_hub.http() as http:
        await http.post("/api/v1/agents", json=scripted("db-expert", capabilities=["postgres"]))
        await http.post("/api/v1/agents", json=scripted("web-expert", capabilities=["css"]))
        await wait_for(http, "db-expert", "idle")
        await wait_for(http, "web-expert", "idle")
        asked = await http.post("/api/v1/discoveries", json={
            "agent_id": "asker", "agent_role": "developer", "discovery_type": "question",
            "content": "Why is the index not used?", "confidence": 0.9, "tags": ["postgres"]})
        question_id = asked.json()["discovery_id"]
        with anyio.fail_after(15):
            while True:
                items = (await http.get("/api/v1/discoveries", params={"type": "solution"})).json()["items"]
                if items:
                    break
                await anyio.sleep(0.1)
        assert [(d["agent_id"], d["related_to"]) for d in items] == [("db-expert", question_id)]
        await anyio.sleep(1)  # the other agent had its chance
        items = (await http.get("/api/v1/discoveries", params={"type": "solution"})).json()["items"]
        assert len(items) == 1
        agent = await wait_for(http, "db-expert", "idle")
        assert agent["metrics"]["work_done"] >= 1


async def test_a_command_agent_failing_logically_is_stopped_as_failed_without_restarts(
        agent_hub: RunningHub) -> None:
    flood = "import sys; sys.stdout.write('x' * 100000)"
    async with agent_hub.http() as http:
        r = await http.post("/api/v1/agents", json={
            "agent_id": "flooder", "role": "tool", "executor": "command", "restart_policy": FAST_POLICY,
            "executor_config": {"argv": [sys.executable, "-c", flood], "prompt": "go", "max_output_bytes": 1000}})
        assert r.status_code == 201, r.text
        failed = await wait_for(http, "flooder", "failed", seconds=30)
        assert failed["last_error"].startswith("logical error")
        assert failed["restarts"] == 0
        async def no_workers() -> bool:
            return not worker_pids()

        await eventually(no_workers, 10, "worker gone")
        assert 'agenthub_agent_alerts_total{reason="logical_error"} 1.0' in (await http.get("/metrics")).text


async def test_stopping_the_hub_stops_every_agent_and_starting_it_brings_them_back(hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(agents={"heartbeat_seconds": HEARTBEAT})
    async with hub_factory.run(settings) as first, first.http() as http:
        for name in ("keeper", "transient-one"):
            await http.post("/api/v1/agents", json=scripted(name))
        await http.post("/api/v1/agents", json=scripted("temp", policy={"restart": "temporary"}))
        before = {name: (await wait_for(http, name, "idle"))["pid"] for name in ("keeper", "transient-one", "temp")}
    for pid in before.values():
        assert gone(pid)
    assert worker_pids() == set()
    async with hub_factory.run(hub_factory.settings(agents={"heartbeat_seconds": HEARTBEAT})) as second, \
            second.http() as http:
        for name in ("keeper", "transient-one"):
            agent = await wait_for(http, name, "idle")
            assert agent["pid"] != before[name]
        temp = (await http.get("/api/v1/agents/temp")).json()
        assert temp["state"] == "stopped" and temp["pid"] is None  # temporary: never started again
    assert worker_pids() == set()


async def test_an_agent_speaks_on_its_nats_subjects_and_every_transition_is_published(agent_hub: RunningHub) -> None:
    prefix = agent_hub.state.settings.nats_subject_prefix
    seen: dict[str, list[dict[str, Any]]] = {}
    nc = await agent_hub.nats()
    try:
        async def collect(msg: Any) -> None:
            seen.setdefault(msg.subject[len(prefix):], []).append(json.loads(msg.data))

        await nc.subscribe(f"{prefix}agents.>", cb=collect)
        async with agent_hub.http() as http:
            await http.post("/api/v1/agents", json=scripted("talker"))
            agent = await wait_for(http, "talker", "idle")

            async def beats_and_metrics() -> bool:
                return len(seen.get("agents.talker.heartbeat", [])) >= 2 and \
                    "agents.talker.metrics.performance" in seen

            await eventually(beats_and_metrics, 10, "heartbeats and metrics")
        announce = seen["agents.discovery.announce"][0]
        assert (announce["agent_id"], announce["pid"], announce["role"]) == ("talker", agent["pid"], "responder")
        assert {b["state"] for b in seen["agents.talker.heartbeat"]} <= {"idle", "busy"}
        assert seen["agents.talker.metrics.performance"][-1]["rss_bytes"] > 0
        states = [(e["from_state"], e["to_state"]) for e in seen["agents.talker.events.state"]]
        assert states[:3] == [(None, "created"), ("created", "starting"), ("starting", "running")]
    finally:
        await nc.close()


async def test_a_forged_or_stale_announce_does_not_change_an_agents_state(agent_hub: RunningHub) -> None:
    prefix = agent_hub.state.settings.nats_subject_prefix
    async with agent_hub.http() as http:
        await http.post("/api/v1/agents", json=scripted("genuine"))
        agent = await wait_for(http, "genuine", "idle")
        await http.delete("/api/v1/agents/genuine")
        nc = await agent_hub.nats()
        try:
            for instance in ("forged", "old"):
                forged = {"agent_id": "genuine", "instance": instance, "pid": agent["pid"], "role": "responder",
                          "capabilities": [], "executor": "scripted"}
                for subject in ("agents.genuine.announce", "agents.discovery.announce"):
                    await nc.publish(f"{prefix}{subject}", json.dumps(forged).encode())
            await nc.flush()
        finally:
            await nc.close()
        await anyio.sleep(0.5)
        after = (await http.get("/api/v1/agents/genuine")).json()
        assert after["state"] == "stopped"
        assert [e for e in after["recent_events"] if e["to_state"] == "running"][-1]["at"] < after["updated_at"]


async def test_agents_and_their_restarts_are_forked_from_the_fork_server_started_with_the_hub(
        agent_hub: RunningHub) -> None:
    fork = agent_hub.state.agents.fork_server
    assert fork is not None
    async with agent_hub.http() as http:
        await http.post("/api/v1/agents", json=scripted("forked"))
        agent = await wait_for(http, "forked", "idle")
        assert psutil.Process(agent["pid"]).ppid() == fork.pid  # the first start waited for the server to warm up
        os.kill(agent["pid"], signal.SIGKILL)
        again = await wait_for(http, "forked", "idle", "running", pid_not=agent["pid"])
        assert psutil.Process(again["pid"]).ppid() == fork.pid
        assert os.getsid(again["pid"]) == again["pid"]
        os.kill(again["pid"], signal.SIGKILL)  # a forked agent's crash is seen and restarted the same way
        third = await wait_for(http, "forked", "idle", "running", pid_not=again["pid"])
        assert third["restarts"] == 2
    assert fork.pid is not None and psutil.Process(fork.pid).is_running()


async def test_an_agent_is_run_by_its_owner_replica_and_others_refuse_to_stop_it(hub_factory: HubFactory) -> None:
    first_settings = hub_factory.settings(replica_id="replica-a", data_dir=hub_factory.tmp_path / "a")
    second_settings = hub_factory.settings(replica_id="replica-b", data_dir=hub_factory.tmp_path / "b")
    async with hub_factory.run(first_settings) as first, hub_factory.run(second_settings) as second, \
            first.http() as http_a, second.http(first.operator_token) as http_b:
        await http_a.post("/api/v1/agents", json=scripted("owned"))
        await wait_for(http_a, "owned", "idle")
        seen = (await http_b.get("/api/v1/agents/owned")).json()
        assert seen["owner"] == "replica-a" and seen["state"] in ("idle", "busy", "running")
        r = await http_b.delete("/api/v1/agents/owned")
        assert r.status_code == 409 and "replica-a" in r.json()["detail"]
        assert (await http_a.get("/api/v1/agents/owned")).json()["state"] in ("idle", "busy", "running")
