"""`agenthub connect`, the stdio bridge, driven by real stdio clients: the TypeScript SDK's (2025-11-25, as Claude
Desktop, Cursor and VS Code speak it), the Python SDK's (2026-07-28), and raw JSON-RPC lines."""

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from anyio.abc import ByteReceiveStream, ByteSendStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import Client, StdioServerParameters

from agenthub.auth import Role
from agenthub.embedded import free_port
from tests.conftest import JS, RunningHub
from tests.served import AGENTHUB, Served, clean_env, serving

SCOUT = "discovery://agents/scout/discoveries"
INITIALIZE = {"id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw-lines", "version": "1"}}}
_shared = count(1)


async def share(hub: RunningHub | Served, agent_id: str = "scout") -> str:
    content = f"finding {next(_shared)}"
    token = hub.operator_token if isinstance(hub, RunningHub) else await operator_token(hub)
    async with httpx2.AsyncClient(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}) as http:
        shared = await http.post("/api/v1/discoveries", json={
            "agent_id": agent_id, "agent_role": "Analyzer", "discovery_type": "insight", "content": content,
            "confidence": 0.8})
    assert shared.status_code == 201, shared.text
    return content


async def json_lines(stream: ByteReceiveStream) -> AsyncIterator[dict[str, Any]]:
    buffered = BufferedByteReceiveStream(stream)
    while True:
        yield json.loads(await buffered.receive_until(b"\n", 1 << 20))


@pytest.fixture
def stderr_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "connect.err"
    yield path
    assert "Traceback" not in path.read_text()


async def test_the_typescript_sdks_stdio_client_hears_of_a_shared_discovery_through_agenthub_connect(
        hub: RunningHub, node: str, stderr_file: Path) -> None:
    command = [node, str(JS / "stdio_client.mjs"), SCOUT, "--", AGENTHUB, "connect", "--url", hub.url]
    with stderr_file.open("wb") as stderr:
        async with await anyio.open_process(command, stdout=subprocess.PIPE, stderr=stderr,
                                            env=clean_env(AGENTHUB_TOKEN=hub.operator_token)) as proc:
            assert proc.stdout is not None
            events = json_lines(proc.stdout)
            with anyio.fail_after(60):
                tools = await anext(events)
                assert tools["event"] == "tools" and "share_discovery" in tools["names"]
                assert tools["server"]["name"]  # the hub's own initialize answer, passed through
                assert await anext(events) == {"event": "subscribed", "uri": SCOUT}
                # The SDK client opens the session's GET stream (where notifications arrive) on its own schedule:
                # share until one is heard rather than guess when it is open.
                contents = [await share(hub)]
                while True:
                    with anyio.move_on_after(1):
                        updated = await anext(events)
                        break
                    contents.append(await share(hub))
                assert updated == {"event": "updated", "uri": SCOUT}
                read = await anext(events)
                assert read["event"] == "read"
                assert contents[0] in json.dumps(read["contents"])
                assert await anext(events) == {"event": "closed"}
                assert await proc.wait() == 0


@dataclass
class Bridge:
    """`agenthub connect` as a subprocess the test writes JSON-RPC lines to and reads them from."""

    stdin: ByteSendStream
    replies: AsyncIterator[dict[str, Any]]
    proc: Process

    async def send(self, message: dict[str, Any]) -> None:
        await self.stdin.send(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")

    async def close_stdin_and_wait(self) -> int:
        await self.stdin.aclose()
        return await self.proc.wait()


async def operator_token(hub: Served) -> str:
    return (await anyio.Path(hub.data_dir / "operator-token").read_text()).strip()


@asynccontextmanager
async def bridge(url: str, token: str, stderr_file: Path, deadline: float = 30) -> AsyncIterator[Bridge]:
    with stderr_file.open("wb") as stderr:
        async with await anyio.open_process([AGENTHUB, "connect", "--url", url, "--token", token],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                            env=clean_env()) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            with anyio.fail_after(deadline):
                yield Bridge(stdin=proc.stdin, replies=json_lines(proc.stdout), proc=proc)


async def test_raw_json_rpc_lines_pass_both_ways_and_closing_stdin_ends_the_bridge(
        hub: RunningHub, stderr_file: Path) -> None:
    async with bridge(f"{hub.url}/mcp", hub.operator_token, stderr_file) as connect:
        await connect.send(INITIALIZE)
        initialized = await anext(connect.replies)
        assert initialized["id"] == 1 and initialized["result"]["protocolVersion"] == "2025-11-25"
        await connect.send({"method": "notifications/initialized"})
        await connect.send({"id": "two", "method": "resources/subscribe", "params": {"uri": SCOUT}})
        assert await anext(connect.replies) == {"jsonrpc": "2.0", "id": "two", "result": {}}
        await connect.send({"id": 3, "method": "tools/call", "params": {"name": "no_such_tool"}})
        answer = await anext(connect.replies)
        assert answer["id"] == 3 and (answer.get("error") or answer["result"]["isError"])
        while True:  # a notification the hub sends on its own, in order with the answers
            await share(hub)
            with anyio.move_on_after(1):
                heard = await anext(connect.replies)
                break
        assert heard == {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": SCOUT}}
        assert await connect.close_stdin_and_wait() == 0


async def test_answers_to_requests_sent_before_stdin_closes_still_reach_the_client(
        hub: RunningHub, stderr_file: Path) -> None:
    async with bridge(hub.url, hub.operator_token, stderr_file) as connect:
        await connect.send(INITIALIZE)
        assert (await anext(connect.replies))["id"] == 1
        await connect.send({"method": "notifications/initialized"})
        for n in range(2, 6):
            await connect.send({"id": n, "method": "tools/list"})
        await connect.stdin.aclose()  # as `printf ... | agenthub connect` does
        assert sorted([(await anext(connect.replies))["id"] for _ in range(4)]) == [2, 3, 4, 5]
        assert await connect.proc.wait() == 0


async def test_a_tool_selection_in_the_url_reaches_the_hub(hub: RunningHub, stderr_file: Path) -> None:
    async with bridge(f"{hub.url}/mcp?tools=discoveries", hub.operator_token, stderr_file) as connect:
        await connect.send(INITIALIZE)
        await anext(connect.replies)
        await connect.send({"method": "notifications/initialized"})
        await connect.send({"id": 2, "method": "tools/list"})
        listed = await anext(connect.replies)
        assert {tool["name"] for tool in listed["result"]["tools"]} == {
            "share_discovery", "subscribe_discoveries", "poll_discoveries", "unsubscribe_discoveries"}
        assert await connect.close_stdin_and_wait() == 0


async def test_while_the_hub_is_down_each_request_gets_an_error_and_the_bridge_lives_on(
        workdir: Path, stderr_file: Path) -> None:
    with serving(workdir / "data", workdir / "logs") as hub:  # a hub of its own, to stop under the bridge
        async with bridge(hub.url, await operator_token(hub), stderr_file) as connect:
            await connect.send(INITIALIZE)
            await anext(connect.replies)
            await connect.send({"method": "notifications/initialized"})
            await connect.send({"id": 2, "method": "tools/list"})
            assert "tools" in (await anext(connect.replies))["result"]
            assert await anyio.to_thread.run_sync(hub.stop) == 0
            for n in (3, 4):
                await connect.send({"id": n, "method": "tools/list"})
                answer = await anext(connect.replies)
                assert answer["id"] == n
                assert answer["error"]["message"].startswith(f"cannot reach the hub at {hub.url}/mcp")
            assert await connect.close_stdin_and_wait() == 0


async def test_a_restarted_hub_gets_a_new_session_with_the_clients_subscriptions_and_requests(
        workdir: Path, stderr_file: Path) -> None:
    data_dir, logs, port = workdir / "data", workdir / "logs", free_port()
    with serving(data_dir, logs, port=port) as hub:
        async with bridge(hub.url, await operator_token(hub), stderr_file, deadline=120) as connect:
            await connect.send(INITIALIZE)
            await anext(connect.replies)
            await connect.send({"method": "notifications/initialized"})
            await connect.send({"id": 2, "method": "resources/subscribe", "params": {"uri": SCOUT}})
            assert (await anext(connect.replies))["id"] == 2
            assert await anyio.to_thread.run_sync(hub.stop) == 0
            with serving(data_dir, logs, port=port) as again:  # it forgot every session
                await connect.send({"id": 3, "method": "tools/list"})
                answer = await anext(connect.replies)
                assert answer["id"] == 3 and "tools" in answer["result"], answer
                while True:  # subscribed again on the new session: notifications flow
                    await share(again)
                    with anyio.move_on_after(1):
                        heard = await anext(connect.replies)
                        break
                assert heard == {"jsonrpc": "2.0", "method": "notifications/resources/updated",
                                 "params": {"uri": SCOUT}}
                assert await connect.close_stdin_and_wait() == 0
    assert "opened a new one; 1 subscriptions and 1 requests sent again" in await anyio.Path(stderr_file).read_text()


async def test_a_refused_token_reaches_the_client_as_an_error_and_stderr_says_why(
        hub: RunningHub, stderr_file: Path) -> None:
    async with bridge(hub.url, "not-a-token", stderr_file) as connect:
        await connect.send(INITIALIZE)
        refused = await anext(connect.replies)
        assert refused["id"] == 1 and "error" in refused
        assert await connect.close_stdin_and_wait() == 0
    assert "agenthub: error: the hub refused the token (401)" in await anyio.Path(stderr_file).read_text()


async def test_a_2026_07_28_stdio_client_calls_tools_and_listens_through_the_bridge(hub: RunningHub) -> None:
    agent_token = await hub.token(Role.AGENT, "scout")
    params = StdioServerParameters(command=AGENTHUB, args=["connect", "--url", hub.url, "--token", agent_token],
                                   env=clean_env())
    async with Client(params) as client:
        assert client.protocol_version == "2026-07-28"
        tools = await client.list_tools()
        assert "share_discovery" in {t.name for t in tools.tools}
        async with client.listen(resource_subscriptions=[SCOUT]) as listener:
            with anyio.fail_after(30):
                while True:
                    content = await share(hub)
                    with anyio.move_on_after(1):
                        async for event in listener:
                            assert event.uri == SCOUT  # type: ignore[union-attr]
                            break
                        break
        read = await client.read_resource(SCOUT)
        assert content in read.contents[0].text  # type: ignore[union-attr]
