"""WASM agents through the hub: uploads (accepted, refused, versioned, rolled back), operators' trial runs, and a
wasm agent process that wins a task auction, runs its binary in the sandbox and gets its result accepted."""

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from agenthub.auth import Role
from tests.agents_helpers import FAST_POLICY, scripted, wait_for
from tests.conftest import HubFactory, RunningHub
from tests.test_market import deposit, task_state
from tests.test_sandbox import wasm


@pytest.fixture
async def wasm_hub(hub_factory: HubFactory) -> AsyncIterator[RunningHub]:
    settings = hub_factory.settings(agents={"heartbeat_seconds": 0.5},
                                    market={"close_interval_seconds": 0.1, "accept_after_seconds": 3600},
                                    sandbox={"max_module_bytes": 64 * 1024, "limits": {"deadline_seconds": 2}})
    async with hub_factory.run(settings) as running:
        yield running


def wasm_agent(agent_id: str, **config: Any) -> dict[str, Any]:
    return {"agent_id": agent_id, "role": "counter", "capabilities": ["count"], "executor": "wasm",
            "executor_config": {"price_percent": 50, **config}, "restart_policy": FAST_POLICY}


async def upload(http: httpx2.AsyncClient, agent_id: str, module: bytes) -> httpx2.Response:
    return await http.post(f"/api/v1/agents/{agent_id}/binary", content=module,
                           headers={"Content-Type": "application/wasm"})


def stored_modules(hub: RunningHub) -> list[Path]:
    return sorted((hub.data_dir / "wasm" / "modules").rglob("*.wasm"))


async def test_an_upload_is_versioned_readable_runnable_and_rolled_back(wasm_hub: RunningHub) -> None:
    async with wasm_hub.http() as http:
        assert (await http.post("/api/v1/agents", json=wasm_agent("wc"))).status_code == 201
        first = await upload(http, "wc", wasm("word_count"))
        assert first.status_code == 201, first.text
        assert first.json()["version"] == 1 and first.json()["current"] is True
        second = await upload(http, "wc", wasm("sum_numbers"))
        assert second.json()["version"] == 2

        listed = (await http.get("/api/v1/agents/wc/binary/versions")).json()
        assert listed["current"] == 2 and [v["version"] for v in listed["versions"]] == [2, 1]
        module = await http.get("/api/v1/agents/wc/binary/module", params={"version": 1})
        assert module.content == wasm("word_count") and module.headers["x-binary-version"] == "1"
        assert len(stored_modules(wasm_hub)) == 2

        run = await http.post("/api/v1/sandbox/run", json={"agent_id": "wc", "input": {"numbers": [2, 3]}})
        assert run.status_code == 200, run.text
        assert run.json()["outcome"] == "ok" and run.json()["output"]["sum"] == 5 and run.json()["version"] == 2

        back = await http.post("/api/v1/agents/wc/binary/rollback", json={"version": 1})
        assert back.status_code == 200 and back.json()["current"] is True
        run = await http.post("/api/v1/sandbox/run", json={"agent_id": "wc", "input": {"text": "one two three"}})
        assert run.json()["output"] == {"words": 3} and run.json()["version"] == 1

        assert (await http.get("/api/v1/agents/wc")).json()["binary_version"] == 1
        missing = await http.post("/api/v1/agents/wc/binary/rollback", json={"version": 9})
        assert missing.status_code == 404 and "no binary version 9" in missing.json()["detail"]
        events = (await http.get("/api/v1/agents/wc")).json()["recent_events"]
        assert [e["detail"].split(" (")[0] for e in events if e["kind"] == "binary"][-3:] == [
            "binary version 1 uploaded", "binary version 2 uploaded", "binary rolled back to version 1"]


@pytest.mark.parametrize(("module", "status", "reason"), [
    ("no_start", 400, "does not export a function `_start`"),
    ("bad_import", 400, "imports env.host_secret"),
    ("garbage", 400, "not a WebAssembly binary module"),
    ("corrupt", 400, "not a valid WebAssembly module"),
    ("oversized", 413, "limited to 65536 bytes"),
])
async def test_a_refused_upload_says_why_and_stores_nothing(wasm_hub: RunningHub, module: str, status: int,
                                                           reason: str) -> None:
    body = {"garbage": b"hello, not wasm", "corrupt": wasm("echo")[:40],
            "oversized": wasm("echo") + b"\0" * 70_000}.get(module) or wasm(module)
    async with wasm_hub.http() as http:
        await http.post("/api/v1/agents", json=wasm_agent("wc"))
        refused = await upload(http, "wc", body)
        assert refused.status_code == status, refused.text
        assert reason in refused.json()["detail"]
        assert (await http.get("/api/v1/agents/wc/binary/versions")).json() == {
            "agent_id": "wc", "current": None, "versions": []}
        assert (await http.get("/api/v1/agents/wc/binary")).status_code == 404
    assert stored_modules(wasm_hub) == []


async def test_who_may_upload_and_run(wasm_hub: RunningHub) -> None:
    module = wasm("word_count")
    async with wasm_hub.http() as http:
        await http.post("/api/v1/agents", json=wasm_agent("wc"))
        await http.post("/api/v1/agents", json=scripted("talker"))
        assert (await upload(http, "nobody", module)).status_code == 404
        not_wasm = await upload(http, "talker", module)
        assert not_wasm.status_code == 409 and "only wasm agents take binaries" in not_wasm.json()["detail"]
        async with wasm_hub.http(await wasm_hub.token(Role.VIEWER)) as viewer:
            assert (await upload(viewer, "wc", module)).status_code == 403
            assert (await viewer.get("/api/v1/agents/wc/binary/module")).status_code == 403
        async with wasm_hub.http(await wasm_hub.token(Role.AGENT, "talker")) as other:
            assert (await upload(other, "wc", module)).status_code == 403
        async with wasm_hub.http(await wasm_hub.token(Role.AGENT, "wc")) as owner:
            assert (await upload(owner, "wc", module)).status_code == 201
            refused = await owner.post("/api/v1/sandbox/run", json={"agent_id": "wc", "input": {}})
            assert refused.status_code == 403
        bad = await http.post("/api/v1/sandbox/run", json={"agent_id": "wc", "input": {}, "limits": {"fuel": -1}})
        assert bad.status_code == 400 and "fuel" in bad.json()["detail"]
        assert (await http.post("/api/v1/sandbox/run", json={"agent_id": "wc"})).status_code == 422


async def test_a_hostile_trial_run_is_stopped_and_the_hub_stays_responsive(wasm_hub: RunningHub) -> None:
    async with wasm_hub.http() as http:
        await http.post("/api/v1/agents", json=wasm_agent("spinner"))
        assert (await upload(http, "spinner", wasm("loop"))).status_code == 201
        health: list[int] = []
        outcomes: list[dict[str, Any]] = []

        async def trial() -> None:
            r = await http.post("/api/v1/sandbox/run", json={"agent_id": "spinner", "input": {},
                                                             "limits": {"deadline_seconds": 1}})
            outcomes.append(r.json())

        async with anyio.create_task_group() as tg:
            tg.start_soon(trial)
            tg.start_soon(trial)
            while not outcomes:  # the hub answers while both modules spin (the trials end at their deadline)
                status = (await http.get("/health")).status_code
                if not outcomes:
                    health.append(status)
                await anyio.sleep(0.05)
        assert [o["outcome"] for o in outcomes] == ["deadline_exceeded"] * 2
        assert len(health) >= 3 and set(health) == {200}, health


async def test_a_wasm_agent_wins_a_task_runs_its_binary_and_is_paid(wasm_hub: RunningHub) -> None:
    async with wasm_hub.http() as http:
        assert (await http.post("/api/v1/agents", json=wasm_agent(
            "wc", limits={"deadline_seconds": 0.5}))).status_code == 201
        await wait_for(http, "wc", "running", "idle")
        await deposit(http, "requester:carol", 1000)

        async def submit(text: str) -> str:
            r = await http.post("/api/v1/tasks", json={
                "requester_id": "carol", "description": "count the words of the text", "budget": 200,
                "required_capabilities": ["count"], "parameters": {"text": text}, "bidding_seconds": 1,
                "idempotency_key": str(uuid.uuid4())})
            assert r.status_code == 201, r.text
            return str(r.json()["task_id"])

        # Without a binary the agent stays out of auctions.
        idle = await task_state(http, await submit("no binary yet"), "expired")
        assert idle["bid_count"] == 0

        assert (await upload(http, "wc", wasm("word_count"))).status_code == 201
        done = await task_state(http, await submit("the quick brown fox jumps"), "completed")
        assert done["winner"] == "wc" and done["result"] == {"words": 5}
        assert any("binary version 1: ok" in e["detail"] for e in done["events"])
        accepted = await http.post(f"/api/v1/tasks/{done['task_id']}/accept",
                                   json={"idempotency_key": str(uuid.uuid4())})
        assert accepted.status_code == 200, accepted.text
        assert (await http.get("/api/v1/accounts/agent:wc")).json()["balance"] > 0

        # A hostile version fails its task within the agent's deadline; the agent process lives on.
        pid = (await http.get("/api/v1/agents/wc")).json()["pid"]
        assert (await upload(http, "wc", wasm("loop"))).status_code == 201
        failed = await task_state(http, await submit("spin"), "failed")
        assert any("binary version 2: deadline_exceeded" in e["detail"] for e in failed["events"]), failed["events"]
        assert (await http.get("/api/v1/agents/wc")).json()["pid"] == pid

        # Back to the word counter: the next task runs version 1 again.
        await http.post("/api/v1/agents/wc/binary/rollback", json={"version": 1})
        again = await task_state(http, await submit("one two"), "completed")
        assert again["result"] == {"words": 2}


async def test_a_module_missing_from_the_store_fails_the_task_with_the_reason(wasm_hub: RunningHub) -> None:
    """What a replica without the shared module store sees: the task fails and says why."""
    async with wasm_hub.http() as http:
        await http.post("/api/v1/agents", json=wasm_agent("wc"))
        await wait_for(http, "wc", "running", "idle")
        assert (await upload(http, "wc", wasm("word_count"))).status_code == 201
        for path in stored_modules(wasm_hub):
            path.unlink()
        await deposit(http, "requester:carol", 100)
        r = await http.post("/api/v1/tasks", json={
            "requester_id": "carol", "description": "count", "budget": 50, "required_capabilities": ["count"],
            "bidding_seconds": 0.5, "idempotency_key": str(uuid.uuid4())})
        failed = await task_state(http, r.json()["task_id"], "failed")
        assert any("the hub's binary store has no module" in e["detail"] for e in failed["events"]), failed
