"""2025-11-25 MCP sessions belong to the token that opened them: another token can neither use the session, nor
open its stream, nor delete it, and is answered exactly as for a session that does not exist; once the owner's
token is revoked or expires, its open stream ends and the session is refused to everyone. Without authentication
sessions are not bound to anything.

The hostile requests are raw HTTP, as an attacker who learned a session id would send them."""

import json
import secrets
from typing import Any

import anyio
import httpx2
import pytest

from mcp_server.app import OPERATOR_TOKEN_FILE
from tests.conftest import HubFactory, RunningHub

LEGACY = "2025-11-25"
ACCEPT_BOTH = "application/json, text/event-stream"
INITIALIZE = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
              "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def headers(token: str | None, session_id: str | None = None, *, accept: str = ACCEPT_BOTH) -> dict[str, str]:
    sent = {"accept": accept, "content-type": "application/json", "mcp-protocol-version": LEGACY}
    if token is not None:
        sent["authorization"] = f"Bearer {token}"
    if session_id is not None:
        sent["mcp-session-id"] = session_id
    return sent


def answer(r: httpx2.Response) -> dict[str, Any] | None:
    """The JSON-RPC message of an answer, sent as JSON or as the last event of an SSE stream (None: no body)."""
    if not r.content:
        return None
    if r.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
        message: dict[str, Any] = json.loads([d for d in data if d][-1])
        return message
    parsed: dict[str, Any] = r.json()
    return parsed


async def open_session(http: httpx2.AsyncClient, token: str | None) -> str:
    """Initialize a 2025-11-25 session as `token` (no `MCP-Protocol-Version` yet: the handshake negotiates it)."""
    opening = {k: v for k, v in headers(token).items() if k != "mcp-protocol-version"}
    r = await http.post("/mcp", json=INITIALIZE, headers=opening)
    assert r.status_code == 200, r.text
    opened = answer(r)
    assert opened is not None and opened["result"]["protocolVersion"] == LEGACY
    session_id = r.headers["mcp-session-id"]
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await http.post("/mcp", json=initialized, headers=headers(token, session_id))).status_code == 202
    return session_id


async def tool_names(http: httpx2.AsyncClient, token: str | None, session_id: str) -> list[str]:
    r = await http.post("/mcp", json=TOOLS_LIST, headers=headers(token, session_id))
    assert r.status_code == 200, r.text
    listed = answer(r)
    assert listed is not None, r.headers
    return [tool["name"] for tool in listed["result"]["tools"]]


async def stream_status(http: httpx2.AsyncClient, token: str | None, session_id: str) -> tuple[int, Any]:
    """Try to open the session's GET stream; an opened one is left at once, so only a refusal has a body."""
    async with http.stream("GET", "/mcp", headers=headers(token, session_id, accept="text/event-stream")) as r:
        if r.status_code == 200:
            return 200, None
        return r.status_code, json.loads(await r.aread())


async def refusals(http: httpx2.AsyncClient, token: str | None, session_id: str) -> list[tuple[int, Any]]:
    """What `token` is answered for the session: a POST, the GET stream and a DELETE."""
    posted = await http.post("/mcp", json=TOOLS_LIST, headers=headers(token, session_id))
    streamed = await stream_status(http, token, session_id)
    deleted = await http.delete("/mcp", headers=headers(token, session_id))
    return [(posted.status_code, answer(posted)), streamed, (deleted.status_code, answer(deleted))]


async def mint(hub: RunningHub, role: str, **body: Any) -> dict[str, Any]:
    async with hub.http() as http:
        r = await http.post("/api/v1/tokens", json={"role": role, **body})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def test_another_token_cannot_use_stream_or_delete_a_session_and_the_owner_still_can(hub: RunningHub) -> None:
    owner = (await mint(hub, "viewer"))["token"]
    other = hub.operator_token  # even an operator: a session belongs to its token, not to a role
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        session_id = await open_session(http, owner)
        async with http.stream("GET", "/mcp", headers=headers(owner, session_id, accept="text/event-stream")) as own:
            assert own.status_code == 200
            assert own.headers["content-type"].startswith("text/event-stream")

            refused = await refusals(http, other, session_id)
            # Exactly the answer for a session that does not exist: nothing tells the other token it does.
            assert refused == await refusals(http, other, secrets.token_hex(16))
            assert [status for status, _ in refused] == [404, 404, 404]
            assert all(body["error"]["message"] == "Session not found" for _, body in refused)

            # The session, and the owner's open stream, survived all of it; it still acts as the owner (a viewer).
            names = await tool_names(http, owner, session_id)
            assert "list_agents" in names and "share_discovery" not in names
            deleted = await http.delete("/mcp", headers=headers(owner, session_id))
            assert deleted.status_code == 200, deleted.text
            with anyio.fail_after(10):  # the owner's DELETE ends the session, and with it its stream
                async for _ in own.aiter_bytes():
                    pass
        assert [status for status, _ in await refusals(http, owner, session_id)] == [404, 404, 404]


@pytest.mark.parametrize("ending", ["revoked", "expired"])
async def test_a_revoked_or_expired_owner_loses_its_stream_and_the_session_is_nobody_elses(
        hub: RunningHub, ending: str) -> None:
    created = await mint(hub, "viewer", **({"expires_in_seconds": 4} if ending == "expired" else {}))
    owner = created["token"]
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http, hub.http() as operator:
        session_id = await open_session(http, owner)
        async with http.stream("GET", "/mcp", headers=headers(owner, session_id, accept="text/event-stream")) as own:
            assert own.status_code == 200
            if ending == "revoked":
                assert (await operator.delete(f"/api/v1/tokens/{created['token_id']}")).status_code == 200
            with anyio.fail_after(15):  # the stream ends, with a complete response (a cut one raises here)
                async for _ in own.aiter_bytes():
                    pass

        r = await http.post("/mcp", json=TOOLS_LIST, headers=headers(owner, session_id))
        assert r.status_code == 401
        assert ending in r.json()["detail"]
        assert (await stream_status(http, owner, session_id))[0] == 401
        assert [status for status, _ in await refusals(http, hub.operator_token, session_id)] == [404, 404, 404]


async def test_without_authentication_sessions_are_not_bound_to_a_token(hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(auth=False)
    # The fixture reads the operator token file, which a hub without authentication never writes.
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / OPERATOR_TOKEN_FILE).write_text("unused\n")
    async with hub_factory.run(settings) as hub, httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        session_id = await open_session(http, None)
        # Any request is the single local user, whatever it sends as a token.
        assert "share_discovery" in await tool_names(http, "ah_anything", session_id)
        deleted = await http.delete("/mcp", headers=headers(None, session_id))
        assert deleted.status_code == 200, deleted.text
        assert (await http.post("/mcp", json=TOOLS_LIST, headers=headers(None, session_id))).status_code == 404
