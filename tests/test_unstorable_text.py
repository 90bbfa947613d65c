"""Text PostgreSQL cannot store (NUL, lone surrogates) is refused at the door, naming the field, in every field,
path id, query parameter and header value that would reach it, through MCP (the SDK's client over HTTP) and REST;
nothing is stored, and a bad item never fails the legitimate ones written beside it."""

import json
import logging
import socket
import uuid
from typing import Any
from urllib.parse import quote

import anyio
import pytest

from agenthub.errors import InvalidInput
from collaboration.models import ShareDiscoveryInput
from tests.conftest import RunningHub

NUL = "bad\x00text"
SURROGATE = "bad\ud800text"
_TABLES = ("discoveries", "subscriptions", "contexts", "tokens", "agents", "agent_events", "accounts",
           "idempotency_keys", "escrows", "transfers", "tasks", "bids", "task_events", "activity")

SHARE = {"agent_id": "agent-1", "agent_role": "Analyzer", "discovery_type": "pattern", "content": "a finding",
         "confidence": 0.5}
SUBSCRIBE = {"subscriber_agent_id": "agent-1"}
CONTEXT = {"from_agent": "agent-1", "to_agent": "agent-2", "context_type": "warnings", "content": "disk full",
           "relevance": 0.5}
TASK = {"requester_id": "alice", "description": "count to three", "budget": 10, "bidding_seconds": 60}
SPAWN = {"agent_id": "w1", "role": "worker", "capabilities": ["x"], "executor": "scripted",
         "executor_config": {"behaviour": "analyzer", "text": "Some text."}}


def key() -> str:
    return str(uuid.uuid4())


async def counts(hub: RunningHub) -> dict[str, int]:
    pool = hub.state.pool
    return {t: await pool.fetchval(f"SELECT count(*) FROM {t}") for t in _TABLES}  # noqa: S608 - fixed names


def poisoned(base: dict[str, Any], path: str, bad: str) -> dict[str, Any]:
    """`base` with the value at `path` ("tags.0", "parameters.key", "parameters.<key>" for a bad key) made bad."""
    value: dict[str, Any] = json.loads(json.dumps(base))
    *parents, last = path.split(".")
    target: Any = value
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if last == "<key>":
        target[bad] = "ok"
    elif isinstance(target, list):
        target[int(last)] = bad
    else:
        target[last] = bad
    return value


async def fixtures(hub: RunningHub) -> dict[str, str]:
    """A subscription, a task and an agent that the calls below may name."""
    async with hub.http() as http:
        sub = (await http.post("/api/v1/subscriptions", json=SUBSCRIBE)).json()["subscription_id"]
        r = await http.post("/api/v1/accounts/requester:alice/deposit", json={"amount": 100, "idempotency_key": key()})
        assert r.status_code == 201, r.text
        task = (await http.post("/api/v1/tasks", json={**TASK, "idempotency_key": key()})).json()["task_id"]
    return {"sub": sub, "task": task}


# What each tool takes, and the fields (dotted paths into its arguments) to poison one at a time.
MCP_CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("share_discovery", {**SHARE, "related_to": "disc_x", "tags": ["a"]},
     ["agent_id", "agent_role", "discovery_type", "content", "related_to", "tags.0"]),
    ("subscribe_discoveries", {**SUBSCRIBE, "agent_roles": ["r"], "agent_ids": ["a"], "discovery_types": ["pattern"]},
     ["subscriber_agent_id", "agent_roles.0", "agent_ids.0", "discovery_types.0"]),
    ("poll_discoveries", {"subscription_id": "{sub}"}, ["subscription_id"]),
    ("unsubscribe_discoveries", {"subscription_id": "{sub}"}, ["subscription_id"]),
    ("share_context", CONTEXT, ["from_agent", "to_agent", "context_type", "content"]),
    ("share_context", {**CONTEXT, "content": {"note": "x", "list": ["y"]}},
     ["content.note", "content.<key>", "content.list.0"]),
    ("get_context", {"agent_id": "agent-2", "context_types": ["warnings"]}, ["agent_id", "context_types.0"]),
    ("submit_task", {**TASK, "required_capabilities": ["c"], "parameters": {"p": "v", "deep": {"q": ["w"]}},
                     "idempotency_key": "k1"},
     ["requester_id", "description", "required_capabilities.0", "parameters.p", "parameters.<key>",
      "parameters.deep.q.0", "idempotency_key"]),
    ("place_bid", {"task_id": "{task}", "agent_id": "bidder", "price": 5, "estimated_seconds": 1},
     ["task_id", "agent_id"]),
    ("get_task", {"task_id": "{task}"}, ["task_id"]),
    ("report_task", {"task_id": "{task}", "agent_id": "bidder", "status": "failed", "message": "m",
                     "result": {"r": "v"}}, ["task_id", "agent_id", "message", "result.r", "result.<key>"]),
    ("spawn_agent", SPAWN, ["agent_id", "role", "capabilities.0", "executor_config.text", "executor_config.<key>"]),
    ("spawn_agent", {**SPAWN, "executor": "command", "executor_config": {"argv": ["echo"], "prompt": "p"}},
     ["executor_config.argv.0", "executor_config.prompt"]),
    ("stop_agent", {"agent_id": "w1"}, ["agent_id"]),
    ("list_agents", {"role": "r", "capability": "c"}, ["role", "capability"]),
]


def _filled(args: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    return {k: v.format(**ids) if isinstance(v, str) and v.startswith("{") else v for k, v in args.items()}


async def test_every_mcp_tool_refuses_nul_in_every_text_field_naming_it_and_stores_nothing(hub: RunningHub) -> None:
    ids = await fixtures(hub)
    before = await counts(hub)
    failures = []
    async with hub.mcp() as client:
        for tool, base, fields in MCP_CASES:
            for field in fields:
                result = await client.call_tool(tool, poisoned(_filled(base, ids), field, NUL))
                text = result.content[0].text if result.content else ""  # type: ignore[union-attr]
                top = field.split(".")[0]
                if not result.is_error or top not in text or "NUL" not in text:
                    failures.append((tool, field, result.is_error, text))
    assert failures == []
    assert await counts(hub) == before


async def test_a_lone_surrogate_over_mcp_or_rest_is_refused_and_stores_nothing(hub: RunningHub) -> None:
    """The SDK client cannot even encode one; a hand-made request can (JSON's \\ud800 escape)."""
    before = await counts(hub)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "share_discovery", "arguments": {**SHARE, "content": SURROGATE},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}})
    assert "\\ud800" in body
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "share_discovery"}
    async with hub.http() as http:
        r = await http.post("/mcp", content=body, headers=headers)
        rest = await http.post("/api/v1/discoveries", content=json.dumps({**SHARE, "content": SURROGATE}),
                               headers={"content-type": "application/json"})
    assert rest.status_code == 400, rest.text  # the JSON parser itself refuses the escape
    answer = r.json()
    # Either the JSON-RPC layer refuses the text outright, or the tool does, naming the field.
    refused = "error" in answer or (answer["result"].get("isError") and "content" in answer["result"]["content"][0]
                                    ["text"] and "surrogate" in answer["result"]["content"][0]["text"])
    assert refused, answer
    assert await counts(hub) == before


# REST: (method, path, JSON body or None, the field or parameter named in the refusal)
def rest_cases(ids: dict[str, str]) -> list[tuple[str, str, dict[str, Any] | None, str]]:
    q = quote(NUL)
    task = f"/api/v1/tasks/{ids['task']}"
    bodies: list[tuple[str, dict[str, Any], list[str]]] = [
        ("/api/v1/discoveries", {**SHARE, "tags": ["a"]},
         ["agent_id", "agent_role", "discovery_type", "content", "related_to", "tags.0"]),
        ("/api/v1/subscriptions", {**SUBSCRIBE, "agent_roles": ["r"], "agent_ids": ["a"]},
         ["subscriber_agent_id", "agent_roles.0", "agent_ids.0"]),
        ("/api/v1/context", CONTEXT, ["from_agent", "to_agent", "context_type", "content"]),
        ("/api/v1/context", {**CONTEXT, "content": {"k": "v"}}, ["content.<key>", "content.k"]),
        ("/api/v1/tasks", {**TASK, "required_capabilities": ["c"], "parameters": {"p": "v"}, "idempotency_key": key()},
         ["requester_id", "description", "required_capabilities.0", "parameters.p", "parameters.<key>",
          "idempotency_key"]),
        ("/api/v1/agents", SPAWN, ["agent_id", "role", "capabilities.0", "executor_config.text"]),
    ]
    cases: list[tuple[str, str, dict[str, Any] | None, str]] = [
        ("POST", path, poisoned(base, field, NUL), field) for path, base, fields in bodies for field in fields]
    cases += [
        ("POST", f"/api/v1/subscriptions/{q}/poll", {}, "subscription_id"),
        ("DELETE", f"/api/v1/subscriptions/{q}", None, "subscription_id"),
        ("GET", f"/api/v1/discoveries/{q}", None, "discovery_id"),
        ("GET", f"/api/v1/discoveries?role={q}", None, "role"),
        ("GET", f"/api/v1/context/{q}", None, "agent_id"),
        ("GET", f"/api/v1/context/agent-2?context_type={q}", None, "context_type"),
        ("GET", f"/api/v1/tasks?requester_id={q}", None, "requester_id"),
        ("GET", f"/api/v1/tasks?capability={q}", None, "capability"),
        ("GET", f"/api/v1/tasks/{q}", None, "task_id"),
        ("POST", f"/api/v1/tasks/{q}/bids", {"agent_id": "b", "price": 1, "estimated_seconds": 1}, "task_id"),
        ("POST", f"{task}/bids", {"agent_id": NUL, "price": 1, "estimated_seconds": 1}, "agent_id"),
        ("POST", f"{task}/report", {"agent_id": "b", "status": "failed", "message": NUL}, "message"),
        ("POST", f"{task}/report", {"agent_id": "b", "status": "completed", "result": {"r": NUL}}, "result"),
        ("POST", f"{task}/cancel", {"idempotency_key": NUL}, "idempotency_key"),
        ("POST", f"{task}/accept", {"idempotency_key": NUL}, "idempotency_key"),
        ("POST", f"{task}/dispute", {"by": "alice", "evidence": NUL, "idempotency_key": key()}, "evidence"),
        ("POST", f"{task}/resolve", {"outcome": "refund", "idempotency_key": NUL}, "idempotency_key"),
        ("POST", f"/api/v1/accounts/{q}/deposit", {"amount": 1, "idempotency_key": key()}, "account_id"),
        ("POST", "/api/v1/accounts/requester:alice/deposit", {"amount": 1, "idempotency_key": NUL},
         "idempotency_key"),
        ("GET", f"/api/v1/accounts/{q}", None, "account_id"),
        ("GET", f"/api/v1/accounts/{q}/ledger", None, "account_id"),
        ("GET", f"/api/v1/agents?role={q}", None, "role"),
        ("GET", f"/api/v1/agents/{q}", None, "agent_id"),
        ("DELETE", f"/api/v1/agents/{q}", None, "agent_id"),
        ("POST", f"/api/v1/agents/{q}/restart", None, "agent_id"),
        ("GET", f"/api/v1/agents/{q}/binary", None, "agent_id"),
        ("POST", f"/api/v1/agents/{q}/binary/rollback", {"version": 1}, "agent_id"),
        ("POST", "/api/v1/tokens", {"role": "agent", "agent_id": NUL}, "agent_id"),
        ("GET", f"/discoveries/stream?subscription_id={q}", None, "subscription_id"),
        ("GET", f"/discoveries/stream?role={q}", None, "role"),
        ("GET", f"/discoveries/stream?last_event_id={q}", None, "last_event_id"),
        ("GET", f"/events/stream?last_event_id={q}", None, "Last-Event-ID"),
    ]
    return cases


async def test_every_rest_field_path_id_and_query_refuses_nul_with_400_naming_it(hub: RunningHub) -> None:
    ids = await fixtures(hub)
    before = await counts(hub)
    failures = []
    async with hub.http() as http:
        for method, path, body, field in rest_cases(ids):
            r = await http.request(method, path, json=body) if body is not None else \
                await http.request(method, path)
            detail = r.json().get("detail", "") if r.headers.get("content-type", "").endswith("json") else r.text
            if r.status_code != 400 or field.split(".")[0] not in detail:
                failures.append((method, path, field, r.status_code, detail))
    assert failures == []
    assert await counts(hub) == before


@pytest.mark.parametrize("header", ["last-event-id", "origin"])
async def test_a_nul_in_a_header_is_refused_before_anything_is_read_or_stored(hub: RunningHub, header: str) -> None:
    before = await counts(hub)
    port = int(hub.url.rsplit(":", 1)[1])
    request = (f"GET /discoveries/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Authorization: Bearer {hub.operator_token}\r\n{header}: 1\x00\r\nConnection: close\r\n\r\n")

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request.encode("latin-1"))
            return sock.recv(200)

    status_line = (await anyio.to_thread.run_sync(exchange)).split(b"\r\n", 1)[0]
    assert status_line.split(b" ")[1] in (b"400", b"403"), status_line
    assert await counts(hub) == before
    assert hub.state.collab.feed.stream_count == 0


# -- batches ---------------------------------------------------------------------------------------------------------


async def test_forty_concurrent_shares_beside_a_nul_share_are_all_stored(hub: RunningHub) -> None:
    rounds = 5
    statuses: list[tuple[bool, int]] = []
    async with hub.http() as http, hub.mcp() as client:

        async def rest(content: str) -> None:
            r = await http.post("/api/v1/discoveries", json={**SHARE, "content": content})
            statuses.append((content == NUL, r.status_code))
            if content == NUL:
                assert "content" in r.json()["detail"]

        async def mcp(content: str) -> None:
            result = await client.call_tool("share_discovery", {**SHARE, "content": content})
            statuses.append((content == NUL, 400 if result.is_error else 201))

        for n in range(rounds):
            share = rest if n % 2 else mcp
            async with anyio.create_task_group() as tg:
                for i in range(41):
                    tg.start_soon(share, NUL if i == 20 else f"finding {n}.{i}")
    assert sorted(set(statuses)) == [(False, 201), (True, 400)]
    assert [bad for bad, _ in statuses].count(False) == 40 * rounds
    pool = hub.state.pool
    assert await pool.fetchval("SELECT count(*) FROM discoveries") == 40 * rounds
    assert await pool.fetchval("SELECT last FROM discovery_counter") == 40 * rounds  # gap-free


async def test_the_log_writes_a_batch_item_by_item_when_postgres_refuses_one(
        hub: RunningHub, caplog: pytest.LogCaptureFixture) -> None:
    """Validation stops NUL at the door; should a value PostgreSQL refuses still reach a batch (built here without
    validation), the legitimate shares batched with it are stored and only it fails."""
    log = hub.state.collab.log
    rounds = 5
    stored: list[int] = []
    refused: list[InvalidInput] = []
    bad = ShareDiscoveryInput.model_validate({**SHARE, "content": "placeholder"}).model_copy(update={"content": NUL})

    async def share(item: ShareDiscoveryInput) -> None:
        try:
            stored.append((await log.share(item)).sequence)
        except InvalidInput as exc:
            refused.append(exc)

    with caplog.at_level(logging.WARNING, logger="collaboration.discoveries"):
        for n in range(rounds):
            async with anyio.create_task_group() as tg:
                for i in range(41):
                    tg.start_soon(share, bad if i == 20 else ShareDiscoveryInput.model_validate(
                        {**SHARE, "content": f"ok {n}.{i}"}))
    assert len(refused) == rounds
    assert sorted(stored) == list(range(1, 40 * rounds + 1))  # every legitimate one, gap-free
    assert await hub.state.pool.fetchval("SELECT count(*) FROM discoveries WHERE content LIKE 'ok %'") == 40 * rounds
    # The bad one did share a batch with legitimate ones at least once (else this test proved nothing).
    assert any("writing them one by one" in r.getMessage() for r in caplog.records)
