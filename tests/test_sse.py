"""`GET /discoveries/stream` through real HTTP: the event format, filters and subscriptions, heartbeats, resuming
by sequence, dropping a consumer that stops reading, the connection limit, errors and the client gauge."""

import itertools
import json
import socket
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from anyio.abc import SocketStream
from prometheus_client.parser import text_string_to_metric_families

from agenthub.auth import Role
from collaboration.models import Discovery
from tests.conftest import HubFactory, RunningHub

SHARE = {"agent_id": "agent-1", "agent_role": "Analyzer", "discovery_type": "pattern",
         "content": "Unusual pattern in authentication logs", "confidence": 0.85}
STREAM = "/discoveries/stream"
Params = dict[str, str | list[str]]


# -- an SSE client that also sees comments (heartbeats), which EventSource parsers hide ----------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    event: str | None
    id: str | None
    data: str
    retry: int | None
    comments: list[str]

    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def sequence(self) -> int:
        assert self.id is not None
        return int(self.id)

    @property
    def content(self) -> str:
        content: str = self.json()["discovery"]["content"]
        return content


async def _frames(lines: AsyncIterator[str]) -> AsyncGenerator[Frame, None]:
    fields: dict[str, list[str]] = defaultdict(list)
    async for line in lines:
        if line:
            name, _, value = line.partition(":")
            fields[name].append(value.removeprefix(" "))
            continue
        if fields:
            retry = fields.get("retry")
            yield Frame(event=fields["event"][-1] if "event" in fields else None,
                        id=fields["id"][-1] if "id" in fields else None, data="\n".join(fields.get("data", [])),
                        retry=int(retry[-1]) if retry else None, comments=fields.get("", []))
            fields = defaultdict(list)


class EventStream:
    def __init__(self, response: httpx2.Response) -> None:
        self._frames = _frames(response.aiter_lines())

    async def frame(self, seconds: float = 5) -> Frame:
        with anyio.fail_after(seconds):
            return await anext(self._frames)

    async def event(self, seconds: float = 5) -> Frame:
        """The next event, skipping heartbeat comments."""
        with anyio.fail_after(seconds):
            while (frame := await anext(self._frames)).event is None:
                pass
            return frame

    async def discoveries_until(self, content: str, seconds: float = 10) -> list[Frame]:
        """Every discovery event up to and including the one with `content`."""
        return await self._discoveries(lambda frame: frame.content == content, seconds)

    async def discoveries_through(self, sequence: int, seconds: float = 10) -> list[Frame]:
        """Every discovery event up to and including `sequence`."""
        return await self._discoveries(lambda frame: frame.sequence >= sequence, seconds)

    async def _discoveries(self, last: Callable[[Frame], bool], seconds: float) -> list[Frame]:
        got: list[Frame] = []
        with anyio.fail_after(seconds):
            while not got or not last(got[-1]):
                frame = await self.event()
                assert frame.event == "discovery", frame
                got.append(frame)
        return got

    async def aclose(self) -> None:
        await self._frames.aclose()


@asynccontextmanager
async def open_stream(client: httpx2.AsyncClient, params: Params | None = None, headers: dict[str, str] | None = None,
                      path: str = STREAM) -> AsyncIterator[tuple[EventStream, dict[str, Any]]]:
    """A connected stream and the data of its `connected` event, which must come first."""
    async with client.stream("GET", path, params=params, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            raise AssertionError(f"{response.status_code}: {response.text}")
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = EventStream(response)
        try:
            hello = await stream.frame()
            assert hello.event == "connected", hello
            assert hello.retry is not None and hello.retry > 0
            yield stream, hello.json()
        finally:
            await stream.aclose()


@asynccontextmanager
async def stalled_stream(hub: RunningHub) -> AsyncIterator[tuple[SocketStream, bytes]]:
    """A stream whose client reads the response head, then never reads again (with a small receive buffer, so
    the server notices soon); with what arrived of the body along with the head."""
    address = urlsplit(hub.url)
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await anyio.to_thread.run_sync(sock.connect, (address.hostname, address.port))
    except BaseException:
        sock.close()
        raise
    async with await SocketStream.from_socket(sock) as stream:
        await stream.send(f"GET {STREAM} HTTP/1.1\r\nHost: {address.netloc}\r\nAccept: text/event-stream\r\n"
                          f"Authorization: Bearer {hub.operator_token}\r\n\r\n".encode())
        head = b""
        with anyio.fail_after(5):
            while b"\r\n\r\n" not in head:
                head += await stream.receive()
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"transfer-encoding: chunked" in head.lower()
        yield stream, head.partition(b"\r\n\r\n")[2]


def dechunk(raw: bytes) -> bytes:
    """The content of a chunked HTTP/1.1 body, up to its last complete chunk."""
    rest = raw
    body = b""
    while (size_end := rest.find(b"\r\n")) > 0:
        size = int(rest[:size_end], 16)
        chunk = rest[size_end + 2:size_end + 2 + size]
        if size == 0 or len(chunk) < size:
            break
        body += chunk
        rest = rest[size_end + 2 + size + 2:]
    return body


def sse_sequences(body: bytes) -> list[int]:
    """The ids of the discovery events in a raw event stream (sse-starlette sends one event per chunk)."""
    sequences = []
    for block in body.decode().split("\r\n\r\n"):
        lines = block.split("\r\n")
        if "event: discovery" in lines:
            sequences += [int(line.removeprefix("id: ")) for line in lines if line.startswith("id: ")]
    return sequences


# -- helpers -------------------------------------------------------------------------------------------------------


async def refused(client: httpx2.AsyncClient, params: Params | None = None,
                  headers: dict[str, Any] | None = None) -> httpx2.Response:
    """The answer to a stream request that must be refused (failing at once, not hanging, if it is accepted)."""
    with anyio.fail_after(5):
        async with client.stream("GET", STREAM, params=params, headers=headers) as response:
            assert response.status_code != 200, "the stream was accepted"
            await response.aread()
    return response


async def share(client: httpx2.AsyncClient, content: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/discoveries", json={**SHARE, "content": content, **fields})
    assert response.status_code == 201, response.text
    shared: dict[str, Any] = response.json()
    return shared


async def metric(client: httpx2.AsyncClient, name: str) -> float:
    response = await client.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no metric {name}")


async def until(condition: Callable[[], Awaitable[bool]], seconds: float = 5) -> None:
    """Wait until `condition` holds, failing after `seconds`."""
    with anyio.fail_after(seconds):
        while not await condition():  # noqa: ASYNC110 - server-side state with no event to wait on
            await anyio.sleep(0.02)


def listeners(hub: RunningHub, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return hub.state.collab.feed.stream_count == count
    return check


def clients_gauge(client: httpx2.AsyncClient, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await metric(client, "agenthub_sse_clients") == count
    return check


class Sharer:
    """Shares numbered discoveries back to back; before number `hold_at` it waits for `released`. Others can wait
    until some number has been shared."""

    def __init__(self, client: httpx2.AsyncClient, *, hold_at: int) -> None:
        self._client = client
        self._hold_at = hold_at
        self.released = anyio.Event()
        self.count = 0
        self._changed = anyio.Event()

    async def run(self, n: int) -> None:
        for i in range(n):
            if i == self._hold_at:
                await self.released.wait()
            await share(self._client, f"d{i}")
            self.count += 1
            self._changed.set()
            self._changed = anyio.Event()

    async def reached(self, n: int) -> None:
        while self.count < n:
            await self._changed.wait()


# -- the event format ----------------------------------------------------------------------------------------------


async def test_a_client_gets_connected_first_then_each_discovery_with_its_sequence_uri_and_notification(
        hub: RunningHub) -> None:
    async with hub.http() as client, open_stream(client) as (stream, hello), hub.mcp() as mcp:
        assert hello == {"cursor": 0, "newest": 0}
        via_mcp = (await mcp.call_tool("share_discovery", {**SHARE, "content": "over MCP"})).structured_content
        assert via_mcp is not None
        via_rest = await share(client, "over REST", agent_id="agent-2", discovery_type="Anomaly", tags=["auth"])
        for shared in (via_mcp, via_rest):
            frame = await stream.event()
            assert frame.event == "discovery"
            assert frame.id == str(shared["sequence"])
            stored = (await client.get(f"/api/v1/discoveries/{shared['discovery_id']}")).json()
            assert frame.json() == {
                "discovery": stored,
                "uri": shared["uri"],
                "notification": {"jsonrpc": "2.0", "method": "notifications/resources/updated",
                                 "params": {"uri": shared["uri"]}},
            }
        assert [via_mcp["sequence"], via_rest["sequence"]] == [1, 2]
        assert stored["discovery_type"] == "anomaly" and stored["tags"] == ["auth"]


# -- filters and subscriptions -------------------------------------------------------------------------------------

# (agent_id, agent_role, discovery_type, confidence), shared as d0..d5, then END which every filter below matches.
DATASET = [
    ("agent-1", "Analyzer", "pattern", 0.9),
    ("agent-2", "Researcher", "anomaly", 0.8),
    ("agent-3", "analyzer", "insight", 0.4),
    ("agent-2", "Analyzer", "anomaly", 0.6),
    ("agent-1", "Researcher", "insight", 0.75),
    ("agent-3", "Researcher", "question", 0.95),
]
END = ("agent-3", "Analyzer", "anomaly", 1.0)
QUERY_FILTERS: list[tuple[Params, list[str]]] = [
    ({}, ["d0", "d1", "d2", "d3", "d4", "d5"]),
    ({"type": ["Anomaly", "insight"]}, ["d1", "d2", "d3", "d4"]),
    ({"role": "ANALYZER"}, ["d0", "d2", "d3"]),
    ({"agent_id": ["agent-1", "agent-3"]}, ["d0", "d2", "d4", "d5"]),
    ({"min_confidence": "0.75"}, ["d0", "d1", "d4", "d5"]),
    ({"type": "anomaly", "role": "analyzer", "min_confidence": "0.5"}, ["d3"]),
]


async def share_dataset(client: httpx2.AsyncClient) -> None:
    for i, (agent_id, role, kind, confidence) in enumerate([*DATASET, END]):
        await share(client, f"d{i}" if i < len(DATASET) else "end", agent_id=agent_id, agent_role=role,
                    discovery_type=kind, confidence=confidence)


@pytest.mark.parametrize("path", ["live", "replay"])
async def test_filters_and_subscriptions_deliver_exactly_the_matching_discoveries(hub: RunningHub, path: str
                                                                                  ) -> None:
    async with hub.http() as client, hub.mcp() as mcp, AsyncExitStack() as stack:
        by_mcp = (await mcp.call_tool("subscribe_discoveries", {
            "subscriber_agent_id": "watcher", "discovery_types": ["anomaly"], "min_confidence": 0.7,
        })).structured_content
        assert by_mcp is not None
        by_rest = await client.post("/api/v1/subscriptions", json={
            "subscriber_agent_id": "watcher", "agent_roles": ["analyzer"], "agent_ids": ["agent-2", "agent-3"]})
        assert by_rest.status_code == 201, by_rest.text
        cases: list[tuple[Params, list[str]]] = [
            *QUERY_FILTERS,
            ({"subscription_id": by_mcp["subscription_id"]}, ["d1"]),
            ({"subscription_id": by_rest.json()["subscription_id"]}, ["d2", "d3"]),
        ]
        if path == "replay":
            await share_dataset(client)
        streams = []
        for params, _ in cases:
            # Filters replay from the beginning; a subscription from its stored cursor (0: it was made first).
            start: Params = {"start": "beginning"} if path == "replay" and "subscription_id" not in params else {}
            stream, _ = await stack.enter_async_context(open_stream(client, {**params, **start}))
            streams.append(stream)
        if path == "live":
            await share_dataset(client)
        for stream, (params, expected) in zip(streams, cases, strict=True):
            got = await stream.discoveries_until("end")
            assert [f.content for f in got] == [*expected, "end"], params
            assert all(f.sequence == int(f.content[1:]) + 1 for f in got[:-1]), params


# -- heartbeats ----------------------------------------------------------------------------------------------------


async def test_an_idle_stream_gets_heartbeat_comments(hub_factory: HubFactory) -> None:
    async with hub_factory.run(hub_factory.settings(sse={"heartbeat_seconds": 0.2})) as hub, hub.http() as client, \
            open_stream(client) as (stream, _):
        for _ in range(2):
            frame = await stream.frame(seconds=3)
            assert frame.event is None and frame.id is None and frame.data == ""
            assert frame.comments and frame.comments[0].startswith("ping")
        await share(client, "still alive")
        assert (await stream.event()).content == "still alive"


# -- resuming ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["header", "query"])
async def test_a_client_that_reconnects_after_its_last_event_id_gets_every_later_discovery_once_in_order(
        hub: RunningHub, how: str) -> None:
    total = 40
    async with hub.http() as client, hub.http() as sharing:
        sharer = Sharer(sharing, hold_at=15)
        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                async with open_stream(client) as (stream, _):
                    tg.start_soon(sharer.run, total)
                    first = await stream.discoveries_through(10)
                await until(listeners(hub, 0))
                sharer.released.set()
                await sharer.reached(20)  # d15..d19 are shared while nobody listens; the rest race the reconnect
                last = first[-1].id
                assert last is not None
                params: Params | None = {"last_event_id": last} if how == "query" else None
                headers = {"Last-Event-ID": last} if how == "header" else None
                async with open_stream(client, params, headers) as (stream, hello):
                    assert hello["cursor"] == 10
                    rest = await stream.discoveries_through(total)
                    await share(sharing, "one more")
                    after = await stream.event()
        got = first + rest
        assert [f.sequence for f in got] == list(range(1, total + 1))
        assert [f.content for f in got] == [f"d{i}" for i in range(total)]
        assert (after.sequence, after.content) == (total + 1, "one more")


async def test_start_beginning_replays_everything_and_start_n_starts_after_n(hub: RunningHub) -> None:
    async with hub.http() as client:
        for i in range(5):
            await share(client, f"d{i}")
        async with open_stream(client, {"start": "beginning"}) as (everything, hello), \
                open_stream(client, {"start": "3"}) as (after_three, _), \
                open_stream(client, {"start": "now"}) as (from_now, _), \
                open_stream(client, {"start": "beginning"}, {"Last-Event-ID": "4"}) as (resumed, _):
            assert hello == {"cursor": 0, "newest": 5}
            await share(client, "d5")
            assert [f.content for f in await everything.discoveries_until("d5")] == [f"d{i}" for i in range(6)]
            assert [f.content for f in await after_three.discoveries_until("d5")] == ["d3", "d4", "d5"]
            assert [f.content for f in await from_now.discoveries_until("d5")] == ["d5"]
            assert [f.content for f in await resumed.discoveries_until("d5")] == ["d4", "d5"]


async def test_a_discovery_both_replayed_and_delivered_live_reaches_a_replaying_client_once(hub: RunningHub) -> None:
    gate = anyio.Event()

    async def hold_the_feed_after_the_gate(d: Discovery) -> None:
        if d.content == "gate":
            await gate.wait()

    # Hooks run inside delivery, so while this one waits the feed stays behind the log, as a replica's feed does
    # when its NATS message is late or lost.
    hub.state.collab.feed.add_hook(hold_the_feed_after_the_gate)
    async with hub.http() as client, open_stream(client) as (live, _):
        await share(client, "gate")
        assert (await live.event()).content == "gate"
        await share(client, "d0")
        async with open_stream(client, {"start": "beginning"}) as (replaying, hello):
            assert hello == {"cursor": 0, "newest": 2}  # the log's newest, though the feed has not delivered d0
            # The replay reads the log up to its newest discovery, past the feed's frontier.
            assert [f.content for f in await replaying.discoveries_until("d0")] == ["gate", "d0"]
            gate.set()  # the feed now delivers d0, which the replaying client already has
            await share(client, "d1")
            assert [(f.sequence, f.content) for f in await replaying.discoveries_until("d1")] == [(3, "d1")]
            assert [f.content for f in await live.discoveries_until("d1")] == ["d0", "d1"]


# -- slow consumers ------------------------------------------------------------------------------------------------


async def test_a_consumer_that_stops_reading_is_dropped_within_seconds_without_slowing_another(
        hub_factory: HubFactory) -> None:
    send_timeout = 5.0  # a reader held behind the stalled client would wait this long for an event
    settings = hub_factory.settings(sse={"send_timeout_seconds": send_timeout})
    # Escaped as \u00e9 in the event's JSON: about 90 kB per event, so the stalled socket fills fast.
    big = "é" * 15_000
    async with hub_factory.run(settings) as hub, hub.http() as client, hub.http() as sharing, \
            stalled_stream(hub) as (stalled, received), open_stream(client) as (fast, _):
        await until(listeners(hub, 2))
        numbers = itertools.count()
        shared_at: dict[int, float] = {}
        received_at: dict[int, float] = {}

        async def read_everything() -> None:
            while True:
                # Nothing is shared while the stalled client waits to be dropped: the next event may be that far off.
                frame = await fast.event(seconds=3 * send_timeout)
                received_at[frame.sequence] = time.monotonic()
                if frame.content == "end":
                    return

        async def share_one(content: str) -> None:
            shared = await share(sharing, content)
            shared_at[shared["sequence"]] = time.monotonic()

        async def share_many(count: int) -> None:
            for _ in range(count):
                await share_one(f"{next(numbers)} {big}")

        with anyio.fail_after(6 * send_timeout):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_everything)
                # 120 events of 90 kB: more than the server's socket buffer (at most 4 MB) and the stalled client's
                # 4 kB can hold, so its stream blocks on a send and is dropped send_timeout later, sharing or not.
                async with anyio.create_task_group() as sharers:
                    for _ in range(4):
                        sharers.start_soon(share_many, 30)
                await until(listeners(hub, 1), 3 * send_timeout)
                for _ in range(10):
                    await share_one(f"{next(numbers)} {big}")
                await share_one("end")
            # Its response gives up once one send has waited send_timeout_seconds.
            await until(clients_gauge(client, 1))
        assert sorted(received_at) == sorted(shared_at) == list(range(1, len(shared_at) + 1))
        lag = max(received_at[s] - shared_at[s] for s in shared_at)
        assert lag < send_timeout, f"the reading client waited {lag:.2f}s for an event: held behind the stalled one"
        assert await metric(client, "agenthub_sse_dropped_clients_total") == 1
        # What the server had sent arrives, then the connection ends: the stalled stream was cut short.
        with anyio.fail_after(10):
            try:
                while True:
                    received += await stalled.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
        assert not received.endswith(b"0\r\n\r\n")  # no final chunk: the response was abandoned, not completed
        got = sse_sequences(dechunk(received))
        assert got == list(range(1, len(got) + 1))
        assert 0 < len(got) < len(shared_at)
        # It resumes after the last event it got, and gets the rest.
        async with open_stream(client, headers={"Last-Event-ID": str(got[-1])}) as (resumed, _):
            rest = await resumed.discoveries_until("end")
        assert [f.sequence for f in rest] == list(range(len(got) + 1, len(shared_at) + 1))


# -- refusals ------------------------------------------------------------------------------------------------------


async def test_beyond_the_connection_limit_the_hub_answers_429_with_problem_json(hub_factory: HubFactory) -> None:
    async with hub_factory.run(hub_factory.settings(sse={"max_clients": 2})) as hub, hub.http() as client:
        async with open_stream(client), open_stream(client) as (second, _):
            answer = await refused(client)
            assert answer.status_code == 429
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json() == {"type": "about:blank", "title": "Too many connections", "status": 429,
                                      "detail": "connection limit of 2 reached; retry later"}
            assert hub.state.collab.feed.stream_count == 2
            assert await metric(client, "agenthub_sse_clients") == 2
            await share(client, "for the two")
            assert (await second.event()).content == "for the two"
        await until(listeners(hub, 0))
        async with open_stream(client), open_stream(client):
            pass


async def test_concurrent_connections_beyond_the_limit_are_refused(hub_factory: HubFactory) -> None:
    async with hub_factory.run(hub_factory.settings(sse={"max_clients": 3})) as hub, hub.http() as client:
        statuses: list[int] = []
        all_answered = anyio.Event()

        async def connect() -> None:
            async with client.stream("GET", STREAM) as response:
                statuses.append(response.status_code)
                if len(statuses) == 8:
                    all_answered.set()
                await all_answered.wait()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(connect)
        assert sorted(statuses) == [200] * 3 + [429] * 5
        await until(listeners(hub, 0))


@pytest.mark.parametrize(("params", "headers", "status", "detail"), [
    ({"start": "2"}, {}, 400, "cursor 2 is beyond the newest discovery sequence 1"),
    ({"last_event_id": "2"}, {}, 400, "cursor 2 is beyond the newest discovery sequence 1"),
    ({}, {"Last-Event-ID": "2"}, 400, "cursor 2 is beyond the newest discovery sequence 1"),
    ({"start": "yesterday"}, {}, 400, "invalid stream position"),
    ({"start": "-1"}, {}, 400, "invalid stream position"),
    ({"start": "9" * 5000}, {}, 400, "invalid stream position"),  # too long for int()
    ({}, {"Last-Event-ID": b"\xb2"}, 400, "invalid stream position"),  # '²': a digit to str.isdigit, not to int
    ({"subscription_id": "sub_nope"}, {}, 404, "no subscription with id 'sub_nope'"),
    ({"subscription_id": "sub_nope", "type": "pattern"}, {}, 400, "either subscription_id or filter"),
    ({"type": "rumour"}, {}, 422, "type"),
    ({"min_confidence": "1.5"}, {}, 422, "min_confidence"),
    ({"min_confidence": "high"}, {}, 422, "min_confidence"),
    ({"agent_id": "bad.id"}, {}, 422, "agent_id"),
    ({"colour": "red"}, {}, 422, "colour"),
])
async def test_a_bad_stream_request_gets_problem_json_and_listens_to_nothing(
        hub: RunningHub, params: Params, headers: dict[str, Any], status: int, detail: str) -> None:
    async with hub.http() as client:
        await share(client, "the only one")
        response = await refused(client, params, headers)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status
        assert detail in response.json()["detail"]
        assert hub.state.collab.feed.stream_count == 0
        assert await metric(client, "agenthub_sse_clients") == 0


async def test_the_stream_needs_a_token_in_the_header_or_the_access_token_parameter(hub: RunningHub) -> None:
    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as anonymous, hub.http() as client:
        missing = await refused(anonymous)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.headers["content-type"] == "application/problem+json"
        assert (await refused(anonymous, {"access_token": "wrong"})).status_code == 401
        assert (await refused(anonymous, headers={"Authorization": "Bearer wrong"})).status_code == 401
        # The query parameter is for browsers' EventSource on this endpoint only.
        elsewhere = await anonymous.get("/api/v1/status", params={"access_token": hub.operator_token})
        assert elsewhere.status_code == 401
        async with open_stream(anonymous, {"access_token": hub.operator_token, "type": "pattern"}) as (stream, _):
            await share(client, "seen with a query token")
            assert (await stream.event()).content == "seen with a query token"
        assert hub.state.collab.feed.stream_count <= 1


async def test_an_agent_streams_its_own_subscription_but_not_another_agents(hub: RunningHub) -> None:
    mine, theirs = await hub.token(Role.AGENT, "agent-1"), await hub.token(Role.AGENT, "agent-2")
    async with hub.http(mine) as client, hub.http(theirs) as other:
        created = await client.post("/api/v1/subscriptions", json={"subscriber_agent_id": "agent-1"})
        sub_id = created.json()["subscription_id"]
        answer = await refused(other, {"subscription_id": sub_id})
        assert answer.status_code == 403
        assert answer.headers["content-type"] == "application/problem+json"
        async with open_stream(client, {"subscription_id": sub_id}) as (stream, _):
            await share(client, "for agent-1")
            assert (await stream.event()).content == "for agent-1"


async def test_when_the_hub_begins_shutting_down_every_stream_ends_at_once_with_a_complete_response(
        hub_factory: HubFactory) -> None:
    async with hub_factory.run() as hub, hub.http() as client:
        ended: list[str] = []

        async def follow(path: str) -> None:
            async with open_stream(client, path=path) as (stream, _):
                with anyio.fail_after(10):
                    # httpx raises on a response cut short; a complete one just ends.
                    with pytest.raises(StopAsyncIteration):
                        while True:
                            await stream.frame(seconds=10)
            ended.append(path)

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow, STREAM)
            tg.start_soon(follow, "/events/stream")
            await until(listeners(hub, 2))
            hub.state.begin_shutdown()  # what the server runs first when it starts shutting down
        assert sorted(ended) == ["/discoveries/stream", "/events/stream"]
        await until(listeners(hub, 0))


async def test_a_head_request_answers_headers_and_leaves_no_listener_behind(hub: RunningHub) -> None:
    async with hub.http() as client:
        for _ in range(3):
            with anyio.fail_after(5):
                response = await client.head(STREAM, params={"agent_id": "nobody"})
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.content == b""
        assert hub.state.collab.feed.stream_count == 0
        assert await metric(client, "agenthub_sse_clients") == 0


# -- metrics -------------------------------------------------------------------------------------------------------


async def test_the_sse_clients_gauge_counts_the_connected_clients(hub: RunningHub) -> None:
    async with hub.http() as client, AsyncExitStack() as stack:
        assert await metric(client, "agenthub_sse_clients") == 0
        for connected in range(1, 4):
            await stack.enter_async_context(open_stream(client))
            assert await metric(client, "agenthub_sse_clients") == connected
        status = (await client.get("/api/v1/status")).json()
        assert status["sse_clients"] == 3
        async with open_stream(client, {"type": "question"}):
            assert await metric(client, "agenthub_sse_clients") == 4
        await until(clients_gauge(client, 3))
        await stack.aclose()
        await until(clients_gauge(client, 0))
        assert hub.state.collab.feed.stream_count == 0
