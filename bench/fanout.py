"""Benchmark: discovery fan-out to 1,000 Server-Sent Events clients of `GET /discoveries/stream`, against a bare
sse-starlette broadcaster served the same way in the same run.

Both servers run under uvicorn (uvloop, the hub's own `make_server` settings), each in its own child process,
both up for the whole run. One client process (this one) holds the streaming connections (1,000 per server) as
raw asyncio protocols that only split lines and find a marker, so the readers stay cheap. In order:

1. memory, per server: its RSS before any client, with 100 idle clients and with all of them, per connection;
2. paced, per server: events published at a fixed rate (default 20/s for 5 s), each carrying its publish time in
   its text, so every client measures publish-to-receipt latency; goodput is deliveries per second of publishing;
3. burst rounds: each round publishes a burst to the hub and one to the bare app, in an order that alternates
   from round to round, so host drift hits both alike; a burst's deliveries/s is the number delivered divided by
   the time from its first publish to its last receipt (the fan-out capacity). The ratio is taken per round, and
   the median over the rounds is what the bar judges.

The hub's events are real `share_discovery` tool calls (stored in PostgreSQL, published on NATS, then fanned
out by the live feed with each frame encoded once). The bare app takes a POST, builds a payload of the same
shape, and puts it in one bounded anyio memory stream per client, whose generator yields a `ServerSentEvent`
(encoded per client, as sse-starlette apps usually do). Run: `python bench/fanout.py`.
"""

import argparse
import asyncio
import itertools
import json
import re
import secrets
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import anyio
import httpx2
from anyio.streams.memory import MemoryObjectSendStream
from harness import (
    ChildServer,
    Row,
    add_hub_child_arguments,
    cpu_count_note,
    embedded_services,
    fmt,
    hub_child_args,
    hub_settings,
    operator_token,
    percentile,
    print_table,
    raise_fd_limit,
    run_child,
    serve_hub,
    tool_call_body,
    tool_call_headers,
    tool_call_outcome,
)
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agenthub.settings import SSESettings
from mcp_server.app import serve

HUB_NAME = "hub"
QUEUE_SIZE = 256  # the bare app's per-client queue; the hub keeps its latest events in one shared ring instead
MAX_CLIENTS = 2000  # the hub's default settings.sse.max_clients
HEARTBEAT_SECONDS = 15.0
BAR_KB_PER_CONNECTION = 20.0  # issue 15's goal
BAR_DELIVERY_RATIO = 2.0  # issue 15's goal: hub / bare burst deliveries/s, the median over the rounds
FEW_CLIENTS = 100  # the first memory step
MARK = re.compile(rb"bench-event p=(\w+) t=(\d+\.\d+)")


def marker(phase: str) -> str:
    """The text of an event: its phase and its publish time, which every reader finds."""
    return f"bench-event p={phase} t={time.monotonic():.6f}"


# -- the bare baseline server ----------------------------------------------------------------------------------------


def bare_app() -> Starlette:
    """POST /publish {"content": ...} broadcasts to every GET /stream client through its own memory stream."""
    clients: set[MemoryObjectSendStream[ServerSentEvent | str]] = set()
    sequence = itertools.count(1)

    async def stream(request: Request) -> Response:
        send, receive = anyio.create_memory_object_stream[ServerSentEvent | str](QUEUE_SIZE)
        clients.add(send)

        async def events() -> AsyncIterator[ServerSentEvent]:
            try:
                yield ServerSentEvent(json.dumps({"cursor": 0, "newest": 0}), event="connected", retry=2000)
                async with receive:
                    async for item in receive:
                        if isinstance(item, ServerSentEvent):
                            yield item
            finally:
                clients.discard(send)

        return EventSourceResponse(events(), ping=HEARTBEAT_SECONDS, send_timeout=5.0)

    async def publish(request: Request) -> Response:
        body = json.loads(await request.body())
        seq = next(sequence)
        discovery_id = f"disc_{secrets.token_hex(8)}"
        uri = f"discovery://agents/bench/discoveries/{discovery_id}"
        payload = {
            "discovery": {"discovery_id": discovery_id, "sequence": seq, "agent_id": "bench", "agent_role": "Analyzer",
                          "discovery_type": "pattern", "content": body["content"], "confidence": 0.8,
                          "related_to": None, "tags": ["bench"], "timestamp": datetime.now(UTC).isoformat()},
            "uri": uri,
            "notification": {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}},
        }
        data = json.dumps(payload, separators=(",", ":"))
        for client in list(clients):
            try:
                client.send_nowait(ServerSentEvent(data, event="discovery", id=str(seq)))
            except anyio.WouldBlock:  # a client that stopped reading is dropped, as the hub does
                clients.discard(client)
                client.close()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                clients.discard(client)
        return JSONResponse({"sequence": seq, "clients": len(clients)})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/stream", stream), Route("/publish", publish, methods=["POST"]),
                             Route("/health", health)])


async def serve_bare(sock: socket.socket) -> None:
    await serve(bare_app(), sock, log_level="warning")


# -- the SSE clients -----------------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Audience:
    """What all readers of one server received, per phase ("paced", "b1", "b2", ...)."""

    connected: int = 0
    refused: list[bytes] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    last_receipt: dict[str, float] = field(default_factory=dict)

    def delivered(self, phase: str) -> int:
        return len(self.latencies.get(phase, ()))


class Reader(asyncio.Protocol):
    """One SSE connection: sends the GET, then only splits complete lines and looks for event markers."""

    def __init__(self, audience: Audience, request: bytes) -> None:
        self.audience = audience
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.status_checked = False
        self.is_connected = False
        self.counts: dict[str, int] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buffer = self.buffer + data if self.buffer else data
        cut = buffer.rfind(b"\n")
        if cut < 0:
            self.buffer = buffer
            return
        self.buffer = buffer[cut + 1:]
        if not self.status_checked:
            self.status_checked = True
            if not buffer.startswith(b"HTTP/1.1 200"):
                self.audience.refused.append(buffer[:200])
                self.close()
                return
        if not self.is_connected:
            if b"event: connected" in buffer:
                self.is_connected = True
                self.audience.connected += 1
        for match in MARK.finditer(buffer, 0, cut):
            phase = match[1].decode()
            self.counts[phase] = self.counts.get(phase, 0) + 1
            self.audience.latencies.setdefault(phase, []).append(now - float(match[2]))
            self.audience.last_receipt[phase] = now

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect_readers(port: int, request: bytes, audience: Audience, n: int, batch: int = 100) -> list[Reader]:
    loop = asyncio.get_running_loop()
    readers: list[Reader] = []
    for first in range(0, n, batch):
        made = await asyncio.gather(*(loop.create_connection(lambda: Reader(audience, request), "127.0.0.1", port)
                                      for _ in range(min(batch, n - first))))
        readers += [protocol for _, protocol in made]
    return readers


async def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready within {seconds:.0f} s")
        await anyio.sleep(0.02)


async def drain(progress: Callable[[], int], expected: int, seconds: float, quiet: float = 3.0) -> None:
    """Wait until `progress()` reaches `expected`, for at most `seconds`, or until it stalls for `quiet` seconds."""
    deadline = time.monotonic() + seconds
    last, last_change = progress(), time.monotonic()
    while (now := progress()) < expected and time.monotonic() < deadline:
        if now != last:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > quiet:
            return
        await anyio.sleep(0.02)


# -- the servers under load ------------------------------------------------------------------------------------------


Publish = Callable[[httpx2.AsyncClient, int, str], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    name: str
    stream_request: bytes
    make_client: Callable[[], httpx2.AsyncClient]
    publish: Publish


def hub_target(server: ChildServer, token: str) -> Target:
    request = (f"GET /discoveries/stream HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {token}"
               "\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n").encode()

    async def publish(client: httpx2.AsyncClient, seq: int, phase: str) -> None:
        arguments = {"agent_id": "bench", "agent_role": "Analyzer", "discovery_type": "pattern",
                     "content": marker(phase), "confidence": 0.8, "tags": ["bench"]}
        response = await client.post("/mcp", content=tool_call_body(seq, "share_discovery", arguments),
                                     headers={"mcp-name": "share_discovery"})
        out, why = tool_call_outcome(response.status_code, response.headers.get("content-type", ""),
                                     response.content)
        if out is None:
            raise RuntimeError(why)

    return Target(name="hub", stream_request=request, publish=publish,
                  make_client=lambda: httpx2.AsyncClient(base_url=server.url, headers=tool_call_headers(token),
                                                         timeout=30))


def bare_target(server: ChildServer) -> Target:
    request = (f"GET /stream HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAccept: text/event-stream\r\n"
               "Cache-Control: no-cache\r\n\r\n").encode()

    async def publish(client: httpx2.AsyncClient, seq: int, phase: str) -> None:
        response = await client.post("/publish", json={"content": marker(phase)})
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}")

    return Target(name="bare", stream_request=request, publish=publish,
                  make_client=lambda: httpx2.AsyncClient(base_url=server.url, timeout=30))


@dataclass(slots=True, kw_only=True)
class Phase:
    """One phase on one server: what was expected and delivered, over how long, at what server CPU."""

    expected: int
    delivered: int = 0
    seconds: float = 0.0  # paced: the publishing schedule; burst: first publish to last receipt
    publish_seconds: float = 0.0  # first publish sent to last publish answered
    server_cpu: float = 0.0  # server CPU seconds from the first publish to the end of the drain
    client_cores: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0

    def cpu_us(self) -> float:
        return self.server_cpu / max(1, self.delivered) * 1e6


@dataclass(slots=True, kw_only=True)
class Side:
    """One server with its clients connected, and what was measured on it."""

    target: Target
    server: ChildServer
    publishers: list[httpx2.AsyncClient]
    audience: Audience = field(default_factory=Audience)
    readers: list[Reader] = field(default_factory=list)
    rss: dict[int, int] = field(default_factory=dict)  # connected clients -> server RSS
    phases: dict[str, Phase] = field(default_factory=dict)
    publish_failures: list[str] = field(default_factory=list)
    publish_latencies: list[float] = field(default_factory=list)  # paced phase: POST sent to response read
    published: int = 0  # publishes started: each one's request id

    async def publish(self, client: httpx2.AsyncClient, phase: str) -> None:
        started = time.monotonic()
        try:
            self.published += 1
            await self.target.publish(client, self.published, phase)
        except Exception as exc:  # counted and reported; one failed publish must not end the run
            self.publish_failures.append(f"{type(exc).__name__}: {exc}")
        if phase == "paced":
            self.publish_latencies.append(time.monotonic() - started)

    def kb_per_connection(self, clients: int) -> float:
        return (self.rss[clients] - self.rss[0]) / clients / 1024

    def short_clients(self) -> int:
        """Connected clients that missed an event of some phase."""
        wanted = {name: phase.expected // max(1, self.audience.connected) for name, phase in self.phases.items()}
        return sum(1 for r in self.readers if r.is_connected and
                   any(r.counts.get(name, 0) != count for name, count in wanted.items()))


async def connect(side: Side, args: argparse.Namespace) -> None:
    """Warm the publish path and the stream endpoint up, then connect the clients, taking the server's RSS before
    any, with `FEW_CLIENTS` and with all of them."""
    for _ in range(3):
        await side.publish(side.publishers[0], "warmup")
    warm = Audience()
    warm_readers = await connect_readers(side.server.port, side.target.stream_request, warm, 10)
    await wait_for(lambda: warm.connected == 10, 10, f"{side.target.name} warm-up clients")
    for reader in warm_readers:
        reader.close()
    await anyio.sleep(0.5)
    side.rss[0] = side.server.rss()
    for total in sorted({min(FEW_CLIENTS, args.clients), args.clients}):
        side.readers += await connect_readers(side.server.port, side.target.stream_request, side.audience,
                                              total - len(side.readers))
        await wait_for(lambda total=total: side.audience.connected + len(side.audience.refused) >= total, 60,
                       f"{side.target.name} clients")
        await anyio.sleep(1.0)
        side.rss[total] = side.server.rss()


async def paced(side: Side, args: argparse.Namespace) -> None:
    """A fixed schedule; each publish is its own task so a slow one does not delay the next."""
    count = max(1, round(args.rate * args.seconds))
    phase = side.phases["paced"] = Phase(expected=count * side.audience.connected, seconds=count / args.rate)
    cpu_mark = side.server.cpu_seconds()
    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        for i in range(count):
            await anyio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
            tg.start_soon(side.publish, side.publishers[i % len(side.publishers)], "paced")
    phase.publish_seconds = time.monotonic() - start
    await drain(lambda: side.audience.delivered("paced"), phase.expected, 20)
    phase.server_cpu = side.server.cpu_seconds() - cpu_mark
    phase.latencies = side.audience.latencies.get("paced", [])
    phase.delivered = len(phase.latencies)


async def burst(side: Side, name: str, args: argparse.Namespace) -> Phase:
    """`publishers` clients publish `args.burst` events back to back; capacity = deliveries / (last receipt -
    first publish)."""
    phase = side.phases[name] = Phase(expected=args.burst * side.audience.connected)
    left = iter(range(args.burst))
    cpu_before = time.process_time()
    cpu_mark = side.server.cpu_seconds()
    first_publish = time.monotonic()

    async def publisher(client: httpx2.AsyncClient) -> None:
        for _ in left:
            await side.publish(client, name)

    async with anyio.create_task_group() as tg:
        for client in side.publishers:
            tg.start_soon(publisher, client)
    phase.publish_seconds = time.monotonic() - first_publish
    await drain(lambda: side.audience.delivered(name), phase.expected, 30)
    phase.server_cpu = side.server.cpu_seconds() - cpu_mark
    phase.delivered = side.audience.delivered(name)
    phase.seconds = side.audience.last_receipt.get(name, first_publish) - first_publish
    phase.client_cores = (time.process_time() - cpu_before) / max(1e-9, time.monotonic() - first_publish)
    return phase


async def measure(hub: Side, bare: Side, args: argparse.Namespace) -> None:
    try:
        for side in (hub, bare):
            print(f"  {side.target.name}: {args.clients} clients ...", flush=True)
            await connect(side, args)
        for side in (hub, bare):
            await paced(side, args)
            print(f"  {side.target.name}: paced p50 {percentile(side.phases['paced'].latencies, 50) * 1000:.1f} ms",
                  flush=True)
        for n in range(1, args.rounds + 1):
            order = (hub, bare) if n % 2 else (bare, hub)
            rates = {side.target.name: (await burst(side, f"b{n}", args)).rate() for side in order}
            print(f"  round {n} ({order[0].target.name} first): hub {rates['hub']:,.0f}/s, "
                  f"bare {rates['bare']:,.0f}/s, ratio {rates['hub'] / max(1e-9, rates['bare']):.2f}", flush=True)
    finally:
        for side in (hub, bare):
            for reader in side.readers:
                reader.close()
            for client in side.publishers:
                await client.aclose()
        await anyio.sleep(0.2)


async def run(hub_server: ChildServer, hub_token: str, bare_server: ChildServer, args: argparse.Namespace
              ) -> tuple[Side, Side]:
    sides = []
    for target, server in ((hub_target(hub_server, hub_token), hub_server), (bare_target(bare_server), bare_server)):
        sides.append(Side(target=target, server=server,
                          publishers=[target.make_client() for _ in range(args.publishers)]))
    hub, bare = sides
    await measure(hub, bare, args)
    return hub, bare


# -- the report ------------------------------------------------------------------------------------------------------


def p50_p99(seconds: list[float]) -> str:
    return f"{percentile(seconds, 50) * 1000:.1f} / {percentile(seconds, 99) * 1000:.1f}"


def span(values: list[float], digits: int = 2) -> str:
    return f"{min(values):,.{digits}f}-{max(values):,.{digits}f}"


def report(hub: Side, bare: Side, args: argparse.Namespace) -> bool:
    n = args.clients
    few = min(FEW_CLIENTS, n)
    rounds = [f"b{i}" for i in range(1, args.rounds + 1)]
    ratios = [hub.phases[r].rate() / bare.phases[r].rate() if bare.phases[r].rate() else 0.0 for r in rounds]
    median_ratio = statistics.median(ratios)
    hub_kb, bare_kb = hub.kb_per_connection(n), bare.kb_per_connection(n)
    hub_paced, bare_paced = hub.phases["paced"], bare.phases["paced"]

    def lat(side: Side, q: float) -> float:
        return percentile(side.phases["paced"].latencies, q) * 1000

    def burst_median(side: Side, figure: Callable[[Phase], float]) -> float:
        return statistics.median(figure(side.phases[r]) for r in rounds)

    hub_cpu, bare_cpu = burst_median(hub, Phase.cpu_us), burst_median(bare, Phase.cpu_us)
    good_ratio = hub_paced.rate() / bare_paced.rate() if bare_paced.rate() else 0.0
    rows = [
        Row(figure=f"memory per idle connection, {n} clients (KB)", value=fmt(hub_kb), baseline=fmt(bare_kb),
            ratio=f"{hub_kb / bare_kb:.2f}" if bare_kb > 0 else "-", bar=f"<= {BAR_KB_PER_CONNECTION:.0f}",
            passed=hub_kb <= BAR_KB_PER_CONNECTION),
        Row(figure=f"memory per idle connection, {few} clients (KB)", value=fmt(hub.kb_per_connection(few)),
            baseline=fmt(bare.kb_per_connection(few))),
        Row(figure=f"burst deliveries/s, median of {len(rounds)} rounds", value=fmt(burst_median(hub, Phase.rate), 0),
            baseline=fmt(burst_median(bare, Phase.rate), 0), ratio=f"{median_ratio:.2f}",
            bar=f">= {BAR_DELIVERY_RATIO}", passed=median_ratio >= BAR_DELIVERY_RATIO),
        Row(figure="burst ratio per round (hub / bare)", value=" ".join(f"{r:.2f}" for r in ratios),
            ratio=span(ratios)),
        Row(figure="server CPU per delivery, burst median (us)", value=fmt(hub_cpu), baseline=fmt(bare_cpu),
            ratio=f"{hub_cpu / bare_cpu:.2f}"),
        Row(figure=f"paced deliveries/s ({args.rate:g}/s x {n})", value=fmt(hub_paced.rate(), 0),
            baseline=fmt(bare_paced.rate(), 0), ratio=f"{good_ratio:.3f}", bar=">= 1.0", passed=good_ratio >= 1.0),
        Row(figure="paced latency p50 (ms)", value=fmt(lat(hub, 50)), baseline=fmt(lat(bare, 50)),
            ratio=f"{lat(hub, 50) / lat(bare, 50):.2f}"),
        Row(figure="paced latency p99 (ms)", value=fmt(lat(hub, 99)), baseline=fmt(lat(bare, 99)),
            ratio=f"{lat(hub, 99) / lat(bare, 99):.2f}"),
        Row(figure="paced latency max (ms)", value=fmt(lat(hub, 100)), baseline=fmt(lat(bare, 100))),
        Row(figure="server CPU per delivery, paced (us)", value=fmt(hub_paced.cpu_us()),
            baseline=fmt(bare_paced.cpu_us()), ratio=f"{hub_paced.cpu_us() / bare_paced.cpu_us():.2f}"),
        Row(figure="paced publish call p50 / p99 (ms)", value=p50_p99(hub.publish_latencies),
            baseline=p50_p99(bare.publish_latencies)),
    ]
    for side in (hub, bare):
        name = side.target.name
        delivered = sum(p.delivered for p in side.phases.values())
        expected = sum(p.expected for p in side.phases.values())
        refused, short = len(side.audience.refused), side.short_clients()
        rows.append(Row(figure=f"{name}: delivered / expected", value=f"{delivered:,} / {expected:,}",
                        bar="all", passed=delivered == expected and not refused and not short))
        bursts = [side.phases[r] for r in rounds]
        rows.append(Row(figure=f"{name}: burst publish / delivery s, client cores",
                        value=f"{span([p.publish_seconds for p in bursts])} / {span([p.seconds for p in bursts])}, "
                              f"{span([p.client_cores for p in bursts])}"))
        if side.publish_failures or refused or short:
            rows.append(Row(figure=f"{name}: refused / short clients / publish failures",
                            value=f"{refused} / {short} / {len(side.publish_failures)}", passed=False))
    ok = print_table(f"SSE fan-out to {n} clients: hub GET /discoveries/stream vs bare sse-starlette", rows)
    for why in (hub.publish_failures + bare.publish_failures)[:5]:
        print(f"  publish failure: {why}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000, help="SSE connections per server")
    parser.add_argument("--rate", type=float, default=20.0, help="paced events per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="paced publishing time")
    parser.add_argument("--burst", type=int, default=100, help="events in each burst")
    parser.add_argument("--rounds", type=int, default=6, help="burst rounds, each one burst per server")
    parser.add_argument("--publishers", type=int, default=20, help="publishing clients, all at once in a burst")
    parser.add_argument("--serve-hub", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    add_hub_child_arguments(parser)
    args = parser.parse_args()
    if args.serve_hub:
        # Explicit, so that AGENTHUB_SSE__* variables in the environment cannot change what is measured.
        settings = hub_settings(args, sse=SSESettings(max_clients=MAX_CLIENTS))
        run_child(lambda sock: serve_hub(settings, sock), args.port)
        return
    if args.serve_bare:
        run_child(serve_bare, args.port)
        return
    if args.clients > MAX_CLIENTS or args.burst > QUEUE_SIZE or args.rounds < 1:
        sys.exit(f"at most {MAX_CLIENTS} clients (settings.sse.max_clients), a burst of at most {QUEUE_SIZE} "
                 "events (the bare app's queue bound: a fuller queue drops its client), and one round or more")
    limit = raise_fd_limit()
    if limit < 2 * args.clients + 100:
        sys.exit(f"open-files limit {limit} is too low for {args.clients} clients on each of two servers")
    print(f"fan-out benchmark: {cpu_count_note()}", flush=True)
    with embedded_services() as services, \
            ChildServer(__file__, ["--serve-hub", *hub_child_args(services, HUB_NAME)]) as hub_server, \
            ChildServer(__file__, ["--serve-bare"]) as bare_server:
        hub, bare = anyio.run(run, hub_server, operator_token(services, HUB_NAME), bare_server, args,
                              backend_options={"use_uvloop": True})
    sys.exit(0 if report(hub, bare, args) else 1)


if __name__ == "__main__":
    main()
