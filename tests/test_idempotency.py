"""Idempotency keys through the hub: they belong to the principal that acts, so an agent restarted by its
supervisor with a new token retries once; other principals have their own; callers are told so in the OpenAPI and
the tool descriptions; keys stored under an agent's token before that move to the agent."""

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydantic import ValidationError

from agenthub.auth import Role, create_token
from agenthub.database import migration_files, open_pool
from agenthub.settings import MarketSettings
from tests.agents_helpers import eventually, scripted, wait_for
from tests.conftest import HubFactory, RunningHub
from tests.test_market import balance, deposit, key

TASK = {"description": "Paint the shed", "required_capabilities": ["nobody-has-this"], "budget": 60,
        "bidding_seconds": 3600}


@pytest.fixture
async def restart_hub(hub_factory: HubFactory) -> AsyncIterator[RunningHub]:
    """Agents started from scratch rather than forked: each process's token is then in its /proc environ."""
    settings = hub_factory.settings(agents={"heartbeat_seconds": 0.5, "fork_server": False})
    async with hub_factory.run(settings) as running:
        yield running


def process_token(pid: int) -> str:
    """The agent token the hub handed this agent process, as the process was started with it."""
    for variable in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        name, _, value = variable.partition(b"=")
        if name == b"AGENTHUB_AGENT_TOKEN":
            return value.decode()
    raise AssertionError(f"agent process {pid} has no token in its environment")


async def holds(http: httpx2.AsyncClient, account: str) -> int:
    r = await http.get(f"/api/v1/accounts/{account}/ledger")
    assert r.status_code == 200, r.text
    return sum(1 for e in r.json()["entries"] if e["kind"] == "hold")


async def test_an_agent_killed_and_restarted_mid_request_retries_with_its_key_and_the_task_is_submitted_once(
        restart_hub: RunningHub) -> None:
    async with restart_hub.http() as http:
        await deposit(http, "requester:carol", 200)  # enough for two holds
        await http.post("/api/v1/agents", json=scripted("carol"))
        agent = await wait_for(http, "carol", "idle")
        before_restart = process_token(agent["pid"])
        submission = {"requester_id": "carol", **TASK, "idempotency_key": key()}

        # The agent's request takes effect; the agent is killed before it reads the answer.
        async with restart_hub.mcp(before_restart) as client:
            first = await client.call_tool("submit_task", submission)
        assert not first.is_error, first.content
        os.kill(agent["pid"], signal.SIGKILL)
        restarted = await wait_for(http, "carol", "idle", pid_not=agent["pid"])
        after_restart = process_token(restarted["pid"])
        assert after_restart != before_restart and restarted["restarts"] == 1

        async def old_token_refused() -> bool:
            async with restart_hub.http(before_restart) as old:
                return (await old.get("/api/v1/accounts/requester:carol")).status_code == 401

        await eventually(old_token_refused, what="the token of the killed process refused")

        # Restarted with a new token, it retries with the same key and gets the first answer: one task, one hold.
        async with restart_hub.mcp(after_restart) as client:
            retry = await client.call_tool("submit_task", submission)
            changed = await client.call_tool("submit_task", {**submission, "budget": 70})
        assert not retry.is_error, retry.content
        task_id = (first.structured_content or {})["task_id"]
        assert (retry.structured_content or {})["task_id"] == task_id
        assert changed.is_error and "already used for a different request" in str(changed.content)
        assert await balance(http, "requester:carol") == 140
        assert await holds(http, "requester:carol") == 1
        tasks = (await http.get("/api/v1/tasks", params={"requester_id": "carol"})).json()["tasks"]
        assert [t["task_id"] for t in tasks] == [task_id]


async def test_each_principal_has_its_own_keys(hub: RunningHub) -> None:
    same = key()
    async with hub.http() as http:
        await deposit(http, "requester:carol", 100)
        await deposit(http, "requester:dave", 100)
        minted = await http.post("/api/v1/tokens", json={"role": "operator"})
        assert minted.status_code == 201, minted.text
        ids = []
        for agent_id in ("carol", "dave"):
            async with hub.http(await hub.token(Role.AGENT, agent_id)) as agent:
                r = await agent.post("/api/v1/tasks", json={"requester_id": agent_id, **TASK,
                                                            "idempotency_key": same})
            assert r.status_code == 201, r.text
            ids.append(r.json()["task_id"])
        # A second token of the same agent shares its keys: the same request is the same task...
        async with hub.http(await hub.token(Role.AGENT, "carol")) as again:
            replay = await again.post("/api/v1/tasks", json={"requester_id": "carol", **TASK, "idempotency_key": same})
            reused = await again.post("/api/v1/tasks", json={"requester_id": "carol", **TASK, "budget": 10,
                                                               "idempotency_key": same})
        assert replay.status_code == 201 and replay.json()["task_id"] == ids[0]
        assert reused.status_code == 409 and "already used for a different request" in reused.json()["detail"]
        # ...while an operator's keys are its token's: two operator tokens are two principals.
        for token in (None, minted.json()["token"]):
            async with hub.http(token) as operator:
                r = await operator.post("/api/v1/accounts/agent:carol/deposit",
                                        json={"amount": 5, "idempotency_key": same})
            assert r.status_code == 201, r.text
    assert len(set(ids)) == 2
    async with hub.http() as http:
        assert [await balance(http, a) for a in ("requester:carol", "requester:dave", "agent:carol")] == [40, 40, 10]


def idempotent_operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The operations whose request body has an `idempotency_key` field."""
    schemas = doc["components"]["schemas"]
    found = {}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            name = body.get("$ref", "").removeprefix("#/components/schemas/")
            if "idempotency_key" in schemas.get(name, {}).get("properties", {}):
                found[path, method] = op
    return found


async def test_the_openapi_and_the_tools_describe_keys_their_scope_and_retention(hub: RunningHub) -> None:
    async with httpx2.AsyncClient(base_url=hub.url) as anonymous:
        doc = (await anonymous.get("/openapi.json")).json()
    operations = idempotent_operations(doc)
    task = "/api/v1/tasks/{task_id}"
    assert set(operations) == {("/api/v1/accounts/{account_id}/deposit", "post"), ("/api/v1/tasks", "post"),
                               *((f"{task}/{action}", "post") for action in ("cancel", "accept", "dispute", "resolve"))}
    for op in operations.values():
        assert op["x-idempotency"]["retained_at_least_seconds"] == 24 * 3600
        assert "agent's id" in op["x-idempotency"]["scope"]
        assert "409" in op["responses"]
        assert "agent id" in op["description"] and "at least 24 hours" in op["description"]
    field = doc["components"]["schemas"]["SubmitTaskInput"]["properties"]["idempotency_key"]
    assert "restarted with a new token" in field["description"]

    async with hub.mcp(await hub.token(Role.AGENT, "carol")) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    submit = tools["submit_task"]
    assert "new token" in (submit.description or "")
    assert "at least 24 hours" in submit.input_schema["properties"]["idempotency_key"]["description"]


def test_keys_are_kept_at_least_a_day_whatever_the_setting() -> None:
    assert MarketSettings().idempotency_retention_seconds == 24 * 3600
    assert MarketSettings(idempotency_retention_seconds=7 * 24 * 3600).idempotency_retention_seconds == 7 * 24 * 3600
    with pytest.raises(ValidationError):
        MarketSettings(idempotency_retention_seconds=3600)


async def test_keys_stored_under_an_agents_token_move_to_the_agent(database_url: str) -> None:
    (migration,) = [sql for version, sql in migration_files() if version == "0010_idempotency_agent_scope"]
    async with open_pool(database_url, size=2) as pool:
        old, _ = await create_token(pool, Role.AGENT, "erin")
        newer, _ = await create_token(pool, Role.AGENT, "erin")
        operator, _ = await create_token(pool, Role.OPERATOR)
        rows = [(old, "k1", "one", "now() - interval '2 hours'"), (old, "k2", "two", "now() - interval '2 hours'"),
                (newer, "k2", "three", "now()"), (operator, "k1", "four", "now()")]
        for scope, k, digest, at in rows:
            await pool.execute(f"INSERT INTO idempotency_keys (scope, key, request_hash, response, created_at)"
                               f" VALUES ($1, $2, $3, '\"r\"', {at})", scope, k, digest)
        await pool.execute(migration)
        await pool.execute(migration)  # again: nothing left to move
        moved = await pool.fetch("SELECT scope, key, request_hash FROM idempotency_keys ORDER BY scope, key, "
                                 "request_hash")
    assert [tuple(r) for r in moved] == sorted([
        ("agent:erin", "k1", "one"), ("agent:erin", "k2", "three"),  # the newest of one agent's rows for a key
        (old, "k2", "two"), (operator, "k1", "four")])
