"""Benchmark: discovery fan-out to 1,000 Server-Sent Events clients of `GET /discoveries/stream`, against a bare
sse-starlette broadcaster served the same way in the same run.

Each server runs under uvicorn (uvloop, the hub's own `make_server` settings) in a child process. One client
process (this one) holds the 1,000 streaming connections as raw asyncio protocols that only split lines and
find a timestamp marker, so the readers stay cheap. Per server:

1. memory: the server's RSS before and after 1,000 idle clients connect, divided by 1,000;
2. paced: events published at a fixed rate (default 20/s for 5 s), each carrying its publish time in its text,
   so every client measures publish-to-receipt latency; goodput is deliveries per second of publishing;
3. burst: events published back to back by a few publishers; deliveries/s is the number delivered divided by the
   time from the first publish to the last receipt (the fan-out capacity).

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
BURST_BASE = 1_000_000  # burst events are numbered from here, paced ones from 0
BAR_KB_PER_CONNECTION = 50.0
BAR_DELIVERY_RATIO = 1.0
MARK = re.compile(rb"bench-event seq=(\d+) t=(\d+\.\d+)")


def marker(seq: int) -> str:
    return f"bench-event seq={seq} t={time.monotonic():.6f}"


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
    """What all readers received, per phase ("paced" or "burst")."""

    connected: int = 0
    refused: list[bytes] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"paced": [], "burst": []})
    last_receipt: dict[str, float] = field(default_factory=dict)

    def delivered(self, phase: str) -> int:
        return len(self.latencies[phase])


class Reader(asyncio.Protocol):
    """One SSE connection: sends the GET, then only splits complete lines and looks for event markers."""

    def __init__(self, audience: Audience, request: bytes) -> None:
        self.audience = audience
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.status_checked = False
        self.is_connected = False
        self.counts = {"paced": 0, "burst": 0}

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
            phase = "burst" if int(match[1]) >= BURST_BASE else "paced"
            self.counts[phase] += 1
            self.audience.latencies[phase].append(now - float(match[2]))
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


# -- one server under load -------------------------------------------------------------------------------------------


Publish = Callable[[httpx2.AsyncClient, int], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    name: str
    stream_request: bytes
    make_client: Callable[[], httpx2.AsyncClient]
    publish: Publish


@dataclass(slots=True, kw_only=True)
class Result:
    rss_before: int = 0
    rss_after: int = 0
    paced_latencies: list[float] = field(default_factory=list)
    paced_expected: int = 0
    paced_seconds: float = 0.0
    burst_delivered: int = 0
    burst_expected: int = 0
    burst_seconds: float = 0.0
    burst_client_cores: float = 0.0
    burst_publish_seconds: float = 0.0  # first publish sent to last publish answered
    paced_server_cpu: float = 0.0  # server CPU seconds from the first paced publish to the end of its drain
    burst_server_cpu: float = 0.0
    short_clients: int = 0
    refused: int = 0
    publish_failures: list[str] = field(default_factory=list)
    publish_latencies: list[float] = field(default_factory=list)  # paced phase: POST sent to response read

    def paced_goodput(self) -> float:
        return len(self.paced_latencies) / self.paced_seconds if self.paced_seconds else 0.0

    def burst_rate(self) -> float:
        return self.burst_delivered / self.burst_seconds if self.burst_seconds else 0.0


def hub_target(server: ChildServer, token: str) -> Target:
    request = (f"GET /discoveries/stream HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {token}"
               "\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n").encode()

    async def publish(client: httpx2.AsyncClient, seq: int) -> None:
        arguments = {"agent_id": "bench", "agent_role": "Analyzer", "discovery_type": "pattern",
                     "content": marker(seq), "confidence": 0.8, "tags": ["bench"]}
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

    async def publish(client: httpx2.AsyncClient, seq: int) -> None:
        response = await client.post("/publish", json={"content": marker(seq)})
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}")

    return Target(name="bare", stream_request=request, publish=publish,
                  make_client=lambda: httpx2.AsyncClient(base_url=server.url, timeout=30))


async def measure(target: Target, server: ChildServer, args: argparse.Namespace) -> Result:
    result = Result()
    audience = Audience()
    publishers = [target.make_client() for _ in range(args.publishers)]
    readers: list[Reader] = []

    async def publish(client: httpx2.AsyncClient, seq: int) -> None:
        started = time.monotonic()
        try:
            await target.publish(client, seq)
        except Exception as exc:  # counted and reported; one failed publish must not end the run
            result.publish_failures.append(f"{type(exc).__name__}: {exc}")
        if seq < BURST_BASE:
            result.publish_latencies.append(time.monotonic() - started)

    try:
        # Warm up the publish path and the stream endpoint, then take the idle baseline.
        for seq in range(3):
            await publish(publishers[0], BURST_BASE * 2 + seq)
        warm = Audience()
        warm_readers = await connect_readers(server.port, target.stream_request, warm, 10)
        await wait_for(lambda: warm.connected == 10, 10, "warm-up clients")
        for reader in warm_readers:
            reader.close()
        await anyio.sleep(0.5)
        result.rss_before = server.rss()

        readers = await connect_readers(server.port, target.stream_request, audience, args.clients)
        await wait_for(lambda: audience.connected + len(audience.refused) >= args.clients, 60, "clients")
        await anyio.sleep(1.0)
        result.rss_after = server.rss()
        result.refused = len(audience.refused)
        live = audience.connected

        # Paced: a fixed schedule; each publish is its own task so a slow one does not delay the next.
        count = max(1, round(args.rate * args.seconds))
        result.paced_expected = count * live
        cpu_mark = server.cpu_seconds()
        start = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(count):
                await anyio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
                tg.start_soon(publish, publishers[i % len(publishers)], i)
        result.paced_seconds = count / args.rate
        await drain(lambda: audience.delivered("paced"), result.paced_expected, 20)
        result.paced_server_cpu = server.cpu_seconds() - cpu_mark
        result.paced_latencies = audience.latencies["paced"]

        # Burst: `publishers` clients publish back to back; capacity = deliveries / (last receipt - first publish).
        result.burst_expected = args.burst * live
        numbers = iter(range(BURST_BASE, BURST_BASE + args.burst))
        cpu_before = time.process_time()
        cpu_mark = server.cpu_seconds()
        first_publish = time.monotonic()

        async def publisher(client: httpx2.AsyncClient) -> None:
            for seq in numbers:
                await publish(client, seq)

        async with anyio.create_task_group() as tg:
            for client in publishers:
                tg.start_soon(publisher, client)
        result.burst_publish_seconds = time.monotonic() - first_publish
        await drain(lambda: audience.delivered("burst"), result.burst_expected, 30)
        result.burst_server_cpu = server.cpu_seconds() - cpu_mark
        result.burst_delivered = audience.delivered("burst")
        last = audience.last_receipt.get("burst", first_publish)
        result.burst_seconds = last - first_publish
        result.burst_client_cores = (time.process_time() - cpu_before) / max(1e-9, time.monotonic() - first_publish)
        result.short_clients = sum(1 for r in readers if r.is_connected and
                                   (r.counts["paced"] != count or r.counts["burst"] != args.burst))
        return result
    finally:
        for reader in readers:
            reader.close()
        for client in publishers:
            await client.aclose()
        await anyio.sleep(0.2)


def run_target(build: Callable[[ChildServer], Target], child_args: list[str], args: argparse.Namespace) -> Result:
    with ChildServer(__file__, child_args) as server:
        target = build(server)
        print(f"  {target.name}: {args.clients} clients ...", flush=True)
        result = anyio.run(measure, target, server, args, backend_options={"use_uvloop": True})
        print(f"  {target.name}: paced p50 {percentile(result.paced_latencies, 50) * 1000:.1f} ms, "
              f"p99 {percentile(result.paced_latencies, 99) * 1000:.1f} ms; burst {result.burst_rate():,.0f}/s",
              flush=True)
        return result


# -- the report ------------------------------------------------------------------------------------------------------


def kb_per_connection(r: Result, clients: int) -> float:
    return (r.rss_after - r.rss_before) / clients / 1024


def p50_p99(seconds: list[float]) -> str:
    return f"{percentile(seconds, 50) * 1000:.1f} / {percentile(seconds, 99) * 1000:.1f}"


def report(hub: Result, bare: Result, args: argparse.Namespace) -> bool:
    n = args.clients
    hub_kb, bare_kb = kb_per_connection(hub, n), kb_per_connection(bare, n)
    hub_burst, bare_burst = hub.burst_rate(), bare.burst_rate()
    hub_good, bare_good = hub.paced_goodput(), bare.paced_goodput()
    burst_ratio = hub_burst / bare_burst if bare_burst else 0.0
    good_ratio = hub_good / bare_good if bare_good else 0.0

    def lat(r: Result, q: float) -> float:
        return percentile(r.paced_latencies, q) * 1000

    def cpu_us(r: Result, phase: str) -> float:
        seconds, delivered = ((r.paced_server_cpu, len(r.paced_latencies)) if phase == "paced"
                              else (r.burst_server_cpu, r.burst_delivered))
        return seconds / max(1, delivered) * 1e6

    rows = [
        Row(figure="memory per idle connection (KB)", value=fmt(hub_kb), baseline=fmt(bare_kb),
            ratio=f"{hub_kb / bare_kb:.2f}" if bare_kb > 0 else "-", bar=f"<= {BAR_KB_PER_CONNECTION:.0f}",
            passed=hub_kb <= BAR_KB_PER_CONNECTION),
        Row(figure="burst deliveries/s (capacity)", value=fmt(hub_burst, 0), baseline=fmt(bare_burst, 0),
            ratio=f"{burst_ratio:.2f}", bar=f">= {BAR_DELIVERY_RATIO}", passed=burst_ratio >= BAR_DELIVERY_RATIO),
        Row(figure=f"paced deliveries/s ({args.rate:g}/s x {n})", value=fmt(hub_good, 0), baseline=fmt(bare_good, 0),
            ratio=f"{good_ratio:.3f}", bar=f">= {BAR_DELIVERY_RATIO}", passed=good_ratio >= BAR_DELIVERY_RATIO),
        Row(figure="paced latency p50 (ms)", value=fmt(lat(hub, 50)), baseline=fmt(lat(bare, 50)),
            ratio=f"{lat(hub, 50) / lat(bare, 50):.2f}"),
        Row(figure="paced latency p99 (ms)", value=fmt(lat(hub, 99)), baseline=fmt(lat(bare, 99)),
            ratio=f"{lat(hub, 99) / lat(bare, 99):.2f}"),
        Row(figure="paced latency max (ms)", value=fmt(lat(hub, 100)), baseline=fmt(lat(bare, 100))),
        Row(figure="server CPU per delivery, burst (us)", value=fmt(cpu_us(hub, "burst")),
            baseline=fmt(cpu_us(bare, "burst")), ratio=f"{cpu_us(hub, 'burst') / cpu_us(bare, 'burst'):.2f}"),
        Row(figure="server CPU per delivery, paced (us)", value=fmt(cpu_us(hub, "paced")),
            baseline=fmt(cpu_us(bare, "paced")), ratio=f"{cpu_us(hub, 'paced') / cpu_us(bare, 'paced'):.2f}"),
        Row(figure="paced publish call p50 / p99 (ms)", value=p50_p99(hub.publish_latencies),
            baseline=p50_p99(bare.publish_latencies)),
    ]
    for r, name in ((hub, "hub"), (bare, "bare")):
        delivered = len(r.paced_latencies) + r.burst_delivered
        expected = r.paced_expected + r.burst_expected
        rows.append(Row(figure=f"{name}: delivered / expected", value=f"{delivered:,} / {expected:,}",
                        bar="all", passed=delivered == expected and not r.refused and not r.short_clients))
        rows.append(Row(figure=f"{name}: burst publish / delivery s, client cores",
                        value=f"{r.burst_publish_seconds:.2f} / {r.burst_seconds:.2f}, {r.burst_client_cores:.2f}"))
        if r.publish_failures or r.refused or r.short_clients:
            rows.append(Row(figure=f"{name}: refused / short clients / publish failures",
                            value=f"{r.refused} / {r.short_clients} / {len(r.publish_failures)}", passed=False))
    ok = print_table(f"SSE fan-out to {n} clients: hub GET /discoveries/stream vs bare sse-starlette", rows)
    for why in (hub.publish_failures + bare.publish_failures)[:5]:
        print(f"  publish failure: {why}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000, help="SSE connections per server")
    parser.add_argument("--rate", type=float, default=20.0, help="paced events per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="paced publishing time")
    parser.add_argument("--burst", type=int, default=100, help="events in the burst phase")
    parser.add_argument("--publishers", type=int, default=20, help="publishing clients, all at once in the burst")
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
    if args.clients > MAX_CLIENTS or args.burst > QUEUE_SIZE:
        sys.exit(f"at most {MAX_CLIENTS} clients (settings.sse.max_clients) and a burst of at most {QUEUE_SIZE} "
                 "events (the bare app's queue bound: a fuller queue drops its client)")
    limit = raise_fd_limit()
    if limit < args.clients + 100:
        sys.exit(f"open-files limit {limit} is too low for {args.clients} clients")
    print(f"fan-out benchmark: {cpu_count_note()}", flush=True)
    with embedded_services() as services:
        hub = run_target(lambda s: hub_target(s, operator_token(services, HUB_NAME)),
                         ["--serve-hub", *hub_child_args(services, HUB_NAME)], args)
    bare = run_target(bare_target, ["--serve-bare"], args)
    sys.exit(0 if report(hub, bare, args) else 1)


if __name__ == "__main__":
    main()
