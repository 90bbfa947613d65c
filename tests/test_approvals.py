"""Human approvals end to end: an agent asks over MCP and waits, an operator answers over REST or the CLI, exactly
once even when two answer at once; nobody answering applies the default; the hub's own requests (the Python API
the market uses) run their handlers in the deciding transaction; agents see and decide nothing of others'; the
dashboard shows requests live and answers them (headless Chromium)."""

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from agenthub.auth import Role
from agenthub.database import Connection
from agenthub.errors import Conflict
from governance.approvals import ApprovalInfo
from tests.agents_helpers import eventually
from tests.browser import Browser
from tests.conftest import HubFactory, RunningHub
from tests.served import AGENTHUB, clean_env
from tests.test_sse import open_stream

STREAM = "/events/stream"


@pytest.fixture
async def approvals_hub(hub_factory: HubFactory) -> AsyncIterator[RunningHub]:
    settings = hub_factory.settings(approvals={"sweep_seconds": 0.1},
                                    sse={"activity_poll_seconds": 0.05, "metrics_seconds": 60})
    async with hub_factory.run(settings) as running:
        yield running


async def pending_about(http: httpx2.AsyncClient, subject: str, seconds: float = 10) -> dict[str, Any]:
    """The first pending approval about `subject`, once one exists."""
    found: list[dict[str, Any]] = []

    async def listed() -> bool:
        r = await http.get("/api/v1/approvals", params={"state": "pending"})
        assert r.status_code == 200, r.text
        found[:] = [a for a in r.json()["approvals"] if a["subject"] == subject]
        return bool(found)

    await eventually(listed, seconds, f"a pending approval about {subject}")
    return found[0]


async def gauge(http: httpx2.AsyncClient, pending: int) -> bool:
    return f"agenthub_approvals_pending {pending:.1f}" in (await http.get("/metrics")).text


async def approval_events(hub: RunningHub, approval_id: str) -> list[str]:
    """The `change` of every approval event in the activity log for one approval, in order."""
    rows = await hub.state.pool.fetch("SELECT data->>'change' AS change FROM activity WHERE kind = 'approval' AND "
                                      "data->>'approval_id' = $1 ORDER BY id", approval_id)
    return [r["change"] for r in rows]


async def hub_request(hub: RunningHub, **fields: Any) -> ApprovalInfo:
    """What the market does: raise an approval inside a transaction of its own."""
    values: dict[str, Any] = {"kind": "task", "subject": "requester:carol", "reason": "a task over the threshold",
                              "detail": {"task_id": "task_1", "budget": 5000}, "requested_by": "hub", **fields}
    async with hub.state.pool.acquire() as conn, conn.transaction():
        return await hub.state.approvals.request(conn, **values)


async def test_an_agent_waits_over_mcp_and_gets_the_operators_decision_and_the_stream_shows_both(
        approvals_hub: RunningHub) -> None:
    hub = approvals_hub
    token = await hub.token(Role.AGENT, "alice")
    got: dict[str, Any] = {}
    async with hub.http() as http, open_stream(http, path=STREAM) as (stream, _):

        async def ask() -> None:
            async with hub.mcp(token) as client:
                result = await client.call_tool("request_approval", {
                    "agent_id": "alice", "reason": "delete the staging database", "detail": {"db": "staging"},
                    "wait_seconds": 30})
                assert not result.is_error, result.content
                got.update(result.structured_content or {})

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            pending = await pending_about(http, "agent:alice")
            assert pending["kind"] == "agent" and pending["requested_by"] == "alice"
            assert pending["detail"] == {"db": "staging"} and pending["default_decision"] == "deny"
            assert not got  # the agent is still waiting
            await eventually(lambda: gauge(http, 1), 10, "one pending approval in /metrics")
            async with open_stream(http, path=STREAM) as (watching, _):
                first = await watching.event()
                assert first.event == "metrics_update" and first.json()["approvals"] == {"pending": 1}
            r = await http.post(f"/api/v1/approvals/{pending['approval_id']}/decision",
                                json={"decision": "approve", "note": "staging only"})
            assert r.status_code == 200, r.text
            decided = r.json()
        assert got == decided
        assert got["state"] == "approved" and got["decision"] == "approve" and got["note"] == "staging only"
        assert got["decided_by"] not in (None, "expiry")

        seen: list[tuple[str, str]] = []
        with anyio.fail_after(10):
            while len(seen) < 2:
                frame = await stream.event()
                if frame.event == "approval":
                    seen.append((frame.json()["change"], frame.json()["state"]))
                    assert frame.json()["approval_id"] == pending["approval_id"]
        assert seen == [("requested", "pending"), ("decided", "approved")]

        await eventually(lambda: gauge(http, 0), 10, "no pending approval in /metrics")
        metrics = (await http.get("/metrics")).text
        assert 'agenthub_approval_decisions_total{outcome="approved"} 1.0' in metrics
        assert 'agenthub_approvals_requested_total{kind="agent"} 1.0' in metrics


async def test_two_operators_deciding_at_once_decide_once_and_the_handler_runs_in_that_transaction(
        approvals_hub: RunningHub) -> None:
    hub = approvals_hub
    await hub.state.pool.execute("CREATE TABLE approval_effects (approval_id text PRIMARY KEY, decision text)")
    calls: list[str] = []

    async def opened(conn: Connection, info: ApprovalInfo) -> None:
        calls.append(info.approval_id)
        await conn.execute("INSERT INTO approval_effects VALUES ($1, $2)", info.approval_id, info.decision)

    hub.state.approvals.on_decided("task", opened)
    first = await hub_request(hub, dedupe_key="task:task_1")
    again = await hub_request(hub, dedupe_key="task:task_1", reason="asked again")
    assert again.approval_id == first.approval_id and again.reason == first.reason  # one request while pending

    other = await hub.token(Role.OPERATOR)
    answers: list[httpx2.Response] = []
    async with hub.http() as one, hub.http(other) as two:

        async def decide(http: httpx2.AsyncClient, decision: str) -> None:
            answers.append(await http.post(f"/api/v1/approvals/{first.approval_id}/decision",
                                           json={"decision": decision, "note": "race"}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(decide, one, "approve")
            tg.start_soon(decide, two, "deny")
    assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
    won = next(r.json() for r in answers if r.status_code == 200)
    lost = next(r.json() for r in answers if r.status_code == 409)
    assert f"already {won['state']} (by {won['decided_by']}" in lost["detail"]
    assert calls == [first.approval_id]
    effects = await hub.state.pool.fetch("SELECT approval_id, decision FROM approval_effects")
    assert [(e["approval_id"], e["decision"]) for e in effects] == [(first.approval_id, won["decision"])]
    assert await approval_events(hub, first.approval_id) == ["requested", "decided"]

    # Decided, the key is free again: the next crossing raises a new request.
    fresh = await hub_request(hub, dedupe_key="task:task_1")
    assert fresh.approval_id != first.approval_id and fresh.state == "pending"


async def test_a_failing_handler_leaves_the_approval_pending_and_nothing_recorded(approvals_hub: RunningHub) -> None:
    hub = approvals_hub

    async def refuses(conn: Connection, info: ApprovalInfo) -> None:
        await conn.execute("UPDATE approvals SET note = 'half done' WHERE id = $1", info.approval_id)
        raise Conflict("the task was cancelled meanwhile")

    hub.state.approvals.on_decided("budget", refuses)
    asked = await hub_request(hub, kind="budget", subject="agent:bob", detail={"metric": "tool_calls"})
    async with hub.http() as http:
        r = await http.post(f"/api/v1/approvals/{asked.approval_id}/decision", json={"decision": "approve"})
        assert r.status_code == 409 and "cancelled meanwhile" in r.json()["detail"]
        after = (await http.get(f"/api/v1/approvals/{asked.approval_id}")).json()
    assert after["state"] == "pending" and after["note"] is None and after["decided_at"] is None
    assert await approval_events(hub, asked.approval_id) == ["requested"]


async def test_an_unanswered_approval_expires_with_its_default_and_runs_the_handler(approvals_hub: RunningHub) -> None:
    hub = approvals_hub
    calls: list[ApprovalInfo] = []

    async def record(conn: Connection, info: ApprovalInfo) -> None:
        calls.append(info)

    hub.state.approvals.on_decided("budget", record)
    asked = await hub_request(hub, kind="budget", subject="agent:bob", detail={"metric": "llm_tokens"},
                              expires_seconds=0.5, default="approve")
    token = await hub.token(Role.AGENT, "bob")
    async with hub.http(token) as bob:  # the approval is about bob: bob may wait for it
        r = await bob.get(f"/api/v1/approvals/{asked.approval_id}", params={"wait_seconds": 20})
        assert r.status_code == 200, r.text
        expired = r.json()
    assert expired["state"] == "expired" and expired["decision"] == "approve" and expired["decided_by"] == "expiry"
    assert [(c.approval_id, c.state, c.decision) for c in calls] == [(asked.approval_id, "expired", "approve")]
    assert await approval_events(hub, asked.approval_id) == ["requested", "expired"]
    async with hub.http() as http:
        late = await http.post(f"/api/v1/approvals/{asked.approval_id}/decision", json={"decision": "deny"})
        assert late.status_code == 409 and "by expiry" in late.json()["detail"]
        assert 'agenthub_approval_decisions_total{outcome="expired"} 1.0' in (await http.get("/metrics")).text
    assert len(calls) == 1


async def test_an_agent_neither_decides_nor_reads_nor_asks_for_others(approvals_hub: RunningHub) -> None:
    hub = approvals_hub
    alice, bob, viewer = (await hub.token(Role.AGENT, "alice"), await hub.token(Role.AGENT, "bob"),
                          await hub.token(Role.VIEWER))
    async with hub.http(alice) as as_alice, hub.http(bob) as as_bob, hub.http(viewer) as as_viewer:
        r = await as_alice.post("/api/v1/approvals", json={"agent_id": "alice", "reason": "spend 100 credits"})
        assert r.status_code == 201, r.text
        mine = r.json()
        about_bob = await hub_request(hub, kind="budget", subject="agent:bob")

        for who in (as_alice, as_bob, as_viewer):
            refused = await who.post(f"/api/v1/approvals/{mine['approval_id']}/decision", json={"decision": "approve"})
            assert refused.status_code == 403, refused.text
        assert (await as_bob.get(f"/api/v1/approvals/{mine['approval_id']}")).status_code == 403
        assert (await as_alice.get(f"/api/v1/approvals/{about_bob.approval_id}")).status_code == 403
        assert (await as_bob.get(f"/api/v1/approvals/{about_bob.approval_id}")).status_code == 200
        assert [a["approval_id"] for a in (await as_alice.get("/api/v1/approvals")).json()["approvals"]] == [
            mine["approval_id"]]
        assert [a["approval_id"] for a in (await as_bob.get("/api/v1/approvals")).json()["approvals"]] == [
            about_bob.approval_id]
        assert {a["approval_id"] for a in (await as_viewer.get("/api/v1/approvals")).json()["approvals"]} == {
            mine["approval_id"], about_bob.approval_id}
        impostor = await as_bob.post("/api/v1/approvals", json={"agent_id": "alice", "reason": "as alice"})
        assert impostor.status_code == 403

    async with hub.mcp(bob) as client:
        r = await client.call_tool("request_approval", {"agent_id": "alice", "reason": "as alice"})
        assert r.is_error and "cannot act as 'alice'" in r.content[0].text  # type: ignore[union-attr]
        r = await client.call_tool("get_approval", {"approval_id": mine["approval_id"]})
        assert r.is_error
        with pytest.raises(MCPError):
            await client.call_tool("decide_approval", {"approval_id": mine["approval_id"], "decision": "approve"})
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"request_approval", "get_approval"} <= tools and not {"list_approvals", "decide_approval"} & tools
    async with hub.http() as http:
        still = (await http.get(f"/api/v1/approvals/{mine['approval_id']}")).json()
    assert still["state"] == "pending"
    assert await approval_events(hub, mine["approval_id"]) == ["requested"]


async def test_bad_input_is_refused_and_changes_nothing(approvals_hub: RunningHub) -> None:
    hub = approvals_hub
    alice = await hub.token(Role.AGENT, "alice")
    asked = await hub_request(hub)
    decision = f"/api/v1/approvals/{asked.approval_id}/decision"
    async with hub.http(alice) as as_alice, hub.http() as http:
        for body in ({"agent_id": "alice", "reason": "x" * 1001}, {"agent_id": "alice", "reason": "   "},
                     {"agent_id": "alice", "reason": "ok", "detail": "not an object"},
                     {"agent_id": "alice", "reason": "ok", "detail": {f"k{i}": i for i in range(51)}},
                     {"agent_id": "alice", "reason": "ok", "wait_seconds": "5"},
                     {"agent_id": "alice", "reason": "ok", "expires_seconds": 0},
                     {"agent_id": "alice", "reason": "ok", "surprise": 1}, {"agent_id": "al ice", "reason": "ok"}):
            r = await as_alice.post("/api/v1/approvals", json=body)
            assert r.status_code == 422, (body, r.text)
        assert (await http.post("/api/v1/approvals/apr_0000000000000000/decision",
                                json={"decision": "approve"})).status_code == 404
        assert (await http.get("/api/v1/approvals/apr_0000000000000000")).status_code == 404
        for body in ({"decision": "maybe"}, {"decision": "approve", "note": 5}, {"decision": "approve", "x": 1},
                     {"decision": "approve", "note": "n" * 1001}, {}):
            r = await http.post(decision, json=body)
            assert r.status_code == 422, (body, r.text)
        assert (await http.post(decision, content=b"{not json")).status_code == 400
        assert (await http.get("/api/v1/approvals", params={"state": "maybe"})).status_code == 422
        assert (await http.get("/api/v1/approvals", params={"limit": "0"})).status_code == 422
        assert (await http.get(f"/api/v1/approvals/{asked.approval_id}",
                               params={"wait_seconds": "-1"})).status_code == 422
    async with hub.mcp(alice) as client:
        for arguments in ({"agent_id": "alice", "reason": "ok", "wait_seconds": "5"},
                          {"agent_id": "alice", "reason": "x" * 1001}, {"agent_id": "alice"}):
            r = await client.call_tool("request_approval", arguments)
            assert r.is_error and "invalid arguments" in r.content[0].text, arguments  # type: ignore[union-attr]
    rows = await hub.state.pool.fetch("SELECT id, state FROM approvals")
    assert [(r["id"], r["state"]) for r in rows] == [(asked.approval_id, "pending")]
    assert await hub.state.pool.fetchval("SELECT count(*) FROM activity WHERE kind = 'approval'") == 1


async def test_the_cli_lists_shows_and_approves(approvals_hub: RunningHub) -> None:
    hub = approvals_hub
    asked = await hub_request(hub, reason="a task of 5000 credits for carol")

    async def cli(*args: str) -> str:
        done = await anyio.run_process([AGENTHUB, "approvals", *args, "--url", hub.url, "--data-dir",
                                        str(hub.data_dir)], check=False, env=clean_env())
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    listed = await cli("list", "--state", "pending")
    assert asked.approval_id in listed and "a task of 5000 credits for carol" in listed
    assert json.loads(await cli("show", asked.approval_id))["state"] == "pending"
    approved = json.loads(await cli("approve", asked.approval_id, "--note", "fine by me", "--json"))
    assert approved["state"] == "approved" and approved["note"] == "fine by me"
    assert asked.approval_id not in await cli("list", "--state", "pending")
    assert asked.approval_id in await cli("list", "--state", "approved")
    refused = await anyio.run_process([AGENTHUB, "approvals", "deny", asked.approval_id, "--url", hub.url,
                                       "--data-dir", str(hub.data_dir)], check=False, env=clean_env())
    assert refused.returncode == 1 and "already approved" in refused.stderr.decode()
    assert await approval_events(hub, asked.approval_id) == ["requested", "decided"]


async def test_a_decision_after_the_expiry_time_is_refused_even_before_the_sweep_ran(
        hub_factory: HubFactory) -> None:
    calls: list[str] = []

    async def record(conn: Connection, info: ApprovalInfo) -> None:
        calls.append(info.state)

    async with hub_factory.run(hub_factory.settings(approvals={"sweep_seconds": 3600})) as hub:
        hub.state.approvals.on_decided("task", record)
        asked = await hub_request(hub, expires_seconds=0.2)

        async def past_due() -> bool:
            return bool(await hub.state.pool.fetchval("SELECT expires_at <= now() FROM approvals WHERE id = $1",
                                                      asked.approval_id))

        await eventually(past_due, 10, "the approval's expiry time")
        async with hub.http() as http:
            r = await http.post(f"/api/v1/approvals/{asked.approval_id}/decision", json={"decision": "approve"})
            assert r.status_code == 409 and "already expired (by expiry" in r.json()["detail"], r.text
            after = (await http.get(f"/api/v1/approvals/{asked.approval_id}")).json()
    assert after["state"] == "expired" and after["decision"] == "deny"  # the hub's default
    assert calls == ["expired"]


async def test_an_operator_sees_a_request_arrive_live_on_the_dashboard_and_approves_it_with_a_note(
        hub_factory: HubFactory, browser: Browser) -> None:
    settings = hub_factory.settings(sse={"metrics_seconds": 0.5, "activity_poll_seconds": 0.1})
    async with hub_factory.run(settings) as hub:
        alice = await hub.token(Role.AGENT, "alice")
        await browser.sign_in(hub.url, hub.operator_token)
        await browser.go("#/approvals", "Approvals")
        await browser.find("#approvals-table td.muted")  # nothing pending yet
        hostile = '<img src=x onerror="window.__pwned=1"> deploy to production'
        async with hub.http(alice) as as_alice:
            asked = (await as_alice.post("/api/v1/approvals", json={
                "agent_id": "alice", "reason": hostile, "detail": {"service": "billing"}})).json()
            other = (await as_alice.post("/api/v1/approvals", json={
                "agent_id": "alice", "reason": "restart the cache"})).json()
        row = f"tr[data-approval-id={asked['approval_id']}]"
        await browser.find(row)  # arrived over the stream, without a reload
        assert hostile in await browser.text(f"{row} td.reason")
        assert await browser.js("return window.__pwned === undefined")
        await browser.wait_for("return document.querySelector('#nav-pending').textContent === '2'",
                               what="two pending beside the nav link")
        await browser.screenshot("approvals")

        await browser.fill(f"{row} input[name=note]", "billing only, after 18:00")
        await browser.click(f"{row} button[aria-label^=Approve]")
        await browser.wait_for("return !document.querySelector(arguments[0])", row, what="the approved row gone")
        await browser.click(f"tr[data-approval-id={other['approval_id']}] button[aria-label^=Deny]")
        await browser.wait_for("return document.querySelector('#nav-pending').hidden", what="no pending count")
        async with hub.http() as http:
            approved = (await http.get(f"/api/v1/approvals/{asked['approval_id']}")).json()
            denied = (await http.get(f"/api/v1/approvals/{other['approval_id']}")).json()
        assert (approved["state"], approved["note"]) == ("approved", "billing only, after 18:00")
        assert (denied["state"], denied["note"]) == ("denied", None)

        await browser.choose("select[name=state]", "")
        await browser.find(f"tr[data-approval-id={asked['approval_id']}][data-state=approved]")
        assert "approve by " in await browser.text(f"tr[data-approval-id={asked['approval_id']}]")
        await browser.go("#/", "Overview")
        assert await browser.text("[data-tile=approvals] .tile-value") == "0"

        await browser.click("#sign-out")
        await browser.sign_in(hub.url, await hub.token(Role.VIEWER))
        await browser.go("#/approvals", "Approvals")
        await browser.choose("select[name=state]", "")
        await browser.find(f"tr[data-approval-id={other['approval_id']}][data-state=denied]")
        assert await browser.count("#view [data-write]") == 0


async def test_an_expiry_whose_handler_fails_stays_pending_and_does_not_hold_up_the_others(
        approvals_hub: RunningHub) -> None:
    hub = approvals_hub

    async def picky(conn: Connection, info: ApprovalInfo) -> None:
        if info.subject == "agent:stuck":
            await conn.execute("SELECT 1 / 0")  # a database error of the handler's own, not an outage

    hub.state.approvals.on_decided("budget", picky)
    stuck = await hub_request(hub, kind="budget", subject="agent:stuck", expires_seconds=0.2)
    fine = await hub_request(hub, kind="budget", subject="agent:fine", expires_seconds=0.3)
    async with hub.http() as http:
        expired = (await http.get(f"/api/v1/approvals/{fine.approval_id}", params={"wait_seconds": 20})).json()
        assert expired["state"] == "expired"
        assert (await http.get(f"/api/v1/approvals/{stuck.approval_id}")).json()["state"] == "pending"
    assert await approval_events(hub, stuck.approval_id) == ["requested"]
