"""Benchmark: `share_discovery` calls/s and latency through the whole hub, against a trivial echo tool served by
the same stack and by two bare MCP SDK servers, all in the same run.

The hub runs under uvicorn (uvloop) in a child process, with its own embedded NATS and PostgreSQL. 50 workers,
each with one keep-alive connection of a minimal HTTP/1.1 client (so the servers are the limit, not the load
generator), send raw 2026-07-28 single-exchange `tools/call` POSTs to /mcp with the
operator token. The hub answers such calls of its own tools itself (`mcp_server.direct`). The echo tool exists
only in this benchmark's server: the child wraps the low-level server's `tools/call` and `tools/list` handlers that
`create_app` builds, so echo, which the direct path does not know, passes through the same guard and the SDK's
transport and dispatch, as every call did before the direct path. `AGENTHUB_MCP__DIRECT_TOOL_CALLS=false` in the
environment sends share through the SDK too.

The baselines are what the hub stands on, with nothing of the hub: the SDK's low-level `Server` and its high-level
`MCPServer`, each with one echo tool, each in a child process under the same uvicorn settings, configured the
fast way (stateless, JSON responses). The same workers send them the same requests (their own clients, so every
server keeps its connections warm).

Rounds rotate through hub share, hub echo, bare `Server` echo and bare `MCPServer` echo, so that host drift hits
all four alike; each phase has a warm-up and then a measured window capped in time and count. The ratios are
throughput ratios: share calls/s ÷ a baseline's calls/s, same load; 1.0 means share is as fast as that server; the
median of the per-round ratios compares neighbours in time. CPU per call adds NATS's and PostgreSQL's CPU to the
hub's for share, the durable part of its work. Run: `python bench/share_discovery.py`.
"""
import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import mcp.types as types
from harness import (
    ChildServer,
    Row,
    Services,
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
from mcp.server import MCPServer, Server, ServerRequestContext
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import mcp_server.app
from web_ui.state import HubState

ECHO = "echo"
ECHO_TOOL = types.Tool(
    name=ECHO, description="Benchmark baseline: returns its text.",
    input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"],
                  "additionalProperties": False},
    output_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
)
BAR_RATIO = 0.5
GOAL_RATIO = 1.0  # issue 15: share_discovery at least as fast as the bare low-level SDK server
HUB_NAME = "hub"
CLIENT_BOUND_CORES = 0.85  # the load generator is one process: near one core busy, it is the limit
CALL_DEADLINE = 30.0  # seconds a phase may overrun its window waiting for calls in flight


def echo_result(params: types.CallToolRequestParams) -> types.CallToolResult:
    text = str((params.arguments or {}).get("text", ""))
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                structured_content={"text": text})


# -- the hub child: the product's app, plus an echo tool -----------------------------------------------------------


def add_echo(server: Server[Any]) -> None:
    """Make the product's MCP server also answer (and list) the echo tool; handlers are looked up per request."""
    product_call = server.get_request_handler("tools/call")
    product_list = server.get_request_handler("tools/list")
    product_schema = server.get_tool_input_schema
    assert product_call is not None and product_list is not None and product_schema is not None

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
                        ) -> types.CallToolResult:
        if params.name != ECHO:
            result = await product_call.handler(ctx, params)
            assert isinstance(result, types.CallToolResult)
            return result
        return echo_result(params)

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams
                         ) -> types.ListToolsResult:
        listed = await product_list.handler(ctx, params)
        assert isinstance(listed, types.ListToolsResult)
        return types.ListToolsResult(tools=[*listed.tools, ECHO_TOOL])

    # The SDK checks each call's arguments against this schema; echo pays for that as the product's tools do.
    server.get_tool_input_schema = lambda name: ECHO_TOOL.input_schema if name == ECHO else product_schema(name)
    server.add_request_handler("tools/call", types.CallToolRequestParams, call_tool)
    server.add_request_handler("tools/list", types.PaginatedRequestParams, list_tools)


def create_app_with_echo(hub: HubState) -> Starlette:
    app = mcp_server.app.create_app(hub)
    add_echo(app.state.mcp_server)
    return app


def serve_child(args: argparse.Namespace) -> None:
    settings = hub_settings(args)
    run_child(lambda sock: serve_hub(settings, sock, create_app_with_echo), args.port)


# -- the bare SDK children: one echo tool each, stateless with JSON responses --------------------------------------


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


def lowlevel_app() -> Starlette:
    """The SDK's low-level `Server` as its docs build one: handlers as constructor arguments, no input-schema
    check (the low-level server makes none unless given `get_tool_input_schema`), its own Starlette app."""

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
                        ) -> types.CallToolResult:
        return echo_result(params)

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
                         ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[ECHO_TOOL])

    server: Server[Any] = Server("bench-lowlevel", on_call_tool=call_tool, on_list_tools=list_tools)
    # /health comes after /mcp in the app's routes, so it costs the MCP path nothing.
    return server.streamable_http_app(json_response=True, stateless_http=True,
                                      custom_starlette_routes=[Route("/health", health)])


class Echoed(BaseModel):
    text: str


def mcpserver_app() -> Starlette:
    """The SDK's high-level `MCPServer` with an async echo tool (a sync one would run on a worker thread); its
    arguments are validated by the model MCPServer derives from the signature, its result becomes structured
    content from the return type."""
    server = MCPServer("bench-mcpserver", log_level="WARNING")

    @server.tool(name=ECHO, description="Benchmark baseline: returns its text.")
    async def echo(text: str) -> Echoed:
        return Echoed(text=text)

    server.custom_route("/health", methods=["GET"])(health)
    return server.streamable_http_app(json_response=True, stateless_http=True)


def serve_bare_child(build: Callable[[], Starlette], port: int) -> None:
    run_child(lambda sock: mcp_server.app.serve(build(), sock, log_level="warning"), port)


# -- the load generator --------------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Phase:
    """One measured window of one workload."""

    label: str
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    failures: list[str] = field(default_factory=list)
    calls_total: int = 0
    calls_after_mark: int = 0  # calls that completed while server CPU was being counted
    sse_framed: int = 0  # answers sent as an SSE stream rather than one JSON body
    server_cpu: float = 0.0
    services_cpu: float = 0.0  # nats-server and PostgreSQL, over the same span as server_cpu
    client_cpu: float = 0.0


@dataclass(slots=True, kw_only=True)
class Workload:
    label: str
    tool: str
    arguments: Callable[[int, int], dict[str, object]]
    check: Callable[[dict[str, object]], bool]


def share_arguments(worker: int, n: int) -> dict[str, object]:
    return {"agent_id": f"bench-{worker}", "agent_role": "Analyzer", "discovery_type": "pattern",
            "content": f"benchmark discovery {n} from worker {worker}: unusual pattern in authentication logs",
            "confidence": 0.8, "tags": ["bench", "auth"]}


def echo_workload(label: str) -> Workload:
    return Workload(label=label, tool=ECHO, arguments=lambda w, n: {"text": f"hello {w} {n}"},
                    check=lambda out: str(out.get("text", "")).startswith("hello"))


# Keys in the order of the first round; later rounds rotate it.
WORKLOADS = {
    "share": Workload(label="share_discovery", tool="share_discovery", arguments=share_arguments,
                      check=lambda out: isinstance(out.get("sequence"), int)),
    "echo": echo_workload("hub echo"),
    "lowlevel": echo_workload("bare Server echo"),
    "mcpserver": echo_workload("bare MCPServer echo"),
}
SERVER_OF = {"share": "hub", "echo": "hub", "lowlevel": "lowlevel", "mcpserver": "mcpserver"}


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends prepared requests and reads answers framed by Content-Length:
    about the least a Python client can spend per call, so that the servers, not the load generator, are the limit
    (httpx2 spent 500 µs of CPU per call, as much as a server)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._answer: asyncio.Future[tuple[int, str, bytes]] | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        status_line, *lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        if "content-length" not in fields:
            self._fail(ValueError(f"an answer without Content-Length: {status_line} {fields}"))
            return
        size = end + 4 + int(fields["content-length"])
        if len(self._buffer) < size:
            return
        body = bytes(self._buffer[end + 4:size])
        del self._buffer[:size]
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_result((int(status_line.split(" ", 2)[1]), fields.get("content-type", ""), body))

    def _fail(self, exc: Exception) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(exc)

    async def post(self, request: bytes) -> tuple[int, str, bytes]:
        """(status, content type, body) of one request, sent whole."""
        assert self._transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._answer

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def post_request(port: int, headers: dict[str, str], tool: str, body: bytes) -> bytes:
    head = "".join(f"{name}: {value}\r\n" for name, value in {
        "host": f"127.0.0.1:{port}", **headers, "mcp-name": tool, "content-length": str(len(body))}.items())
    return f"POST /mcp HTTP/1.1\r\n{head}\r\n".encode() + body


@dataclass(slots=True, kw_only=True)
class Target:
    """A server under load and the headers of every request to it."""

    server: ChildServer
    headers: dict[str, str]

    async def connect(self, count: int) -> list[Connection]:
        """Fresh connections for a phase (uvicorn closes one left idle for 5 s, as it is between phases)."""
        loop = asyncio.get_running_loop()
        return [(await loop.create_connection(Connection, "127.0.0.1", self.server.port))[1] for _ in range(count)]


async def run_phase(target: Target, work: Workload, services: Services, *, clients: int, warmup: float,
                    window: float, cap: int) -> Phase:
    """All workers call `work.tool` back to back; calls that start and end inside the window are measured."""
    phase = Phase(label=work.label)
    server = target.server
    connections = await target.connect(clients)
    start = time.perf_counter()
    window_start = start + warmup
    window_end = window_start + window
    cpu_marks: dict[str, float] = {}

    async def mark_window() -> None:
        await anyio.sleep(warmup)
        cpu_marks["server"], cpu_marks["client"] = server.cpu_seconds(), time.process_time()
        cpu_marks["services"] = services.cpu_seconds()

    async def worker(index: int, connection: Connection) -> None:
        nonlocal window_end
        n = 0
        while True:
            n += 1
            request = post_request(server.port, target.headers, work.tool,
                                   tool_call_body(n, work.tool, work.arguments(index, n)))
            t0 = time.perf_counter()
            if t0 >= window_end:
                return
            status, content_type, content = await connection.post(request)
            t1 = time.perf_counter()
            phase.calls_total += 1
            if t1 >= window_start:
                phase.calls_after_mark += 1
            if content_type.startswith("text/event-stream"):
                phase.sse_framed += 1
            out, why = tool_call_outcome(status, content_type, content)
            if out is None or not work.check(out):
                phase.failures.append(why or f"unexpected result {out}")
            if t0 >= window_start and t1 <= window_end:
                phase.latencies.append(t1 - t0)
                if len(phase.latencies) >= cap:
                    window_end = min(window_end, t1)

    try:
        with anyio.fail_after(warmup + window + CALL_DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(mark_window)
                for i, connection in enumerate(connections):
                    tg.start_soon(worker, i, connection)
    finally:
        for connection in connections:
            connection.close()
    phase.elapsed = window_end - window_start
    if cpu_marks:
        phase.server_cpu = server.cpu_seconds() - cpu_marks["server"]
        phase.client_cpu = time.process_time() - cpu_marks["client"]
        phase.services_cpu = services.cpu_seconds() - cpu_marks["services"]
    return phase


def merge(phases: list[Phase]) -> Phase:
    merged = Phase(label=phases[0].label)
    for p in phases:
        merged.latencies += p.latencies
        merged.elapsed += p.elapsed
        merged.failures += p.failures
        merged.calls_total += p.calls_total
        merged.calls_after_mark += p.calls_after_mark
        merged.sse_framed += p.sse_framed
        merged.server_cpu += p.server_cpu
        merged.services_cpu += p.services_cpu
        merged.client_cpu += p.client_cpu
    return merged


def rate(p: Phase) -> float:
    return len(p.latencies) / p.elapsed if p.elapsed > 0 else 0.0


def ms(seconds: float) -> str:
    return fmt(seconds * 1000, 2)


async def measure(servers: dict[str, ChildServer], services: Services, token: str, args: argparse.Namespace
                  ) -> dict[str, list[Phase]]:
    # The bare servers ignore the token; every server gets the same headers and bodies.
    targets = {name: Target(server=server, headers=tool_call_headers(token)) for name, server in servers.items()}
    per_round = args.window / args.rounds
    keys = list(WORKLOADS)
    runs: dict[str, list[Phase]] = {key: [] for key in keys}
    for r in range(args.rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            phase = await run_phase(targets[SERVER_OF[key]], WORKLOADS[key], services, clients=args.clients,
                                    warmup=args.warmup, window=per_round, cap=args.cap // args.rounds)
            print(f"  round {r + 1} {phase.label:<20} {rate(phase):8,.0f} calls/s  "
                  f"p50 {ms(percentile(phase.latencies, 50))} ms  p99 {ms(percentile(phase.latencies, 99))} ms",
                  flush=True)
            runs[key].append(phase)
    return runs


def throughput_row(p: Phase, base: Phase, *, bar: float | None = None) -> Row:
    """p's calls/s against base's: ratio ≥ 1 means p is at least as fast. Without `bar` the row is a goal, info."""
    ratio = rate(p) / rate(base) if rate(base) else 0.0
    if bar is None:
        return Row(figure=f"{p.label} calls/s", value=fmt(rate(p), 0), baseline=f"{fmt(rate(base), 0)} ({base.label})",
                   ratio=f"{ratio:.2f}", bar=f"goal >= {GOAL_RATIO}")
    return Row(figure=f"{p.label} calls/s", value=fmt(rate(p), 0), baseline=f"{fmt(rate(base), 0)} ({base.label})",
               ratio=f"{ratio:.2f}", bar=f">= {bar}", passed=ratio >= bar)


def latency_row(p: Phase, base: Phase, q: float) -> Row:
    mine, theirs = percentile(p.latencies, q), percentile(base.latencies, q)
    return Row(figure=f"{p.label} p{q:.0f} latency (ms)", value=ms(mine), baseline=f"{ms(theirs)} ({base.label})",
               ratio=f"{mine / theirs:.2f}")


def per_round_row(runs: dict[str, list[Phase]], key: str, base: str) -> Row:
    """The median over rounds of key's calls/s ÷ base's in the same round: neighbours in time, so the machine's
    drift between rounds cancels out."""
    ratios = sorted(rate(p) / rate(b) for p, b in zip(runs[key], runs[base], strict=True) if rate(b))
    low, high = (f"{ratios[0]:.2f}", f"{ratios[-1]:.2f}") if ratios else ("-", "-")
    return Row(figure=f"{runs[key][0].label} calls/s per round (median; range {low}-{high})",
               value="", baseline=runs[base][0].label, ratio=f"{statistics.median(ratios):.2f}" if ratios else "-",
               bar=f"goal >= {GOAL_RATIO}")


def cpu_per_call(p: Phase, *, services: bool) -> float:
    """Microseconds of CPU per call: the server process's, and with `services` also NATS's and PostgreSQL's."""
    return (p.server_cpu + (p.services_cpu if services else 0.0)) / max(1, p.calls_after_mark) * 1e6


def report(runs: dict[str, list[Phase]], clients: int) -> bool:
    results = {key: merge(phases) for key, phases in runs.items()}
    share, echo, lowlevel, high = (results[k] for k in ("share", "echo", "lowlevel", "mcpserver"))
    share_all_in = cpu_per_call(share, services=True)
    rows = [
        throughput_row(share, echo, bar=BAR_RATIO),
        latency_row(share, echo, 50),
        latency_row(share, echo, 99),
        throughput_row(share, lowlevel),
        per_round_row(runs, "share", "lowlevel"),
        throughput_row(share, high),
        per_round_row(runs, "share", "mcpserver"),
        throughput_row(echo, lowlevel),
        throughput_row(echo, high),
        latency_row(share, lowlevel, 50),
        latency_row(share, lowlevel, 99),
    ]
    for base in (lowlevel, high):
        theirs = cpu_per_call(base, services=False)
        rows.append(Row(figure="share CPU per call: hub + NATS + PostgreSQL (us)", value=fmt(share_all_in, 0),
                        baseline=f"{fmt(theirs, 0)} ({base.label})", ratio=f"{share_all_in / theirs:.2f}"))
    for p in (share, echo, lowlevel, high):
        where = "hub" if p in (share, echo) else "server"
        rows.append(Row(figure=f"{p.label}: us per call (1 s / calls/s)",
                        value=fmt(1e6 / rate(p), 0) if rate(p) else "-"))
        rows.append(Row(figure=f"{p.label}: {where} CPU per call (us)", value=fmt(cpu_per_call(p, services=False), 0)))
        if p is share:
            rows.append(Row(figure=f"{p.label}: NATS + PostgreSQL CPU per call (us)",
                            value=fmt(p.services_cpu / max(1, p.calls_after_mark) * 1e6, 0)))
        rows.append(Row(figure=f"{p.label}: load-generator cores busy", value=fmt(p.client_cpu / p.elapsed, 2)))
        rows.append(Row(figure=f"{p.label}: answers SSE-framed", value=f"{p.sse_framed:,} of {p.calls_total:,}"))
    failures = [f for p in results.values() for f in p.failures]
    calls = sum(p.calls_total for p in results.values())
    rows.append(Row(figure="failed calls (all phases)", value=f"{len(failures)} of {calls:,}", bar="0",
                    passed=not failures))
    measured = " + ".join(f"{len(p.latencies):,}" for p in (share, echo, lowlevel, high))
    ok = print_table(f"share_discovery vs echo (hub, bare low-level Server, bare MCPServer), {clients} clients, "
                     f"raw 2026-07-28 tools/call ({measured} measured calls)", rows)
    print(f"  ratios of calls/s are throughput ratios, same {clients} workers, same run: >= 1.0 means as fast as "
          "the baseline; bare servers are stateless with JSON responses")
    for p in (echo, lowlevel, high):
        busy = p.client_cpu / p.elapsed if p.elapsed else 0.0
        if busy >= CLIENT_BOUND_CORES:
            print(f"  {p.label}: the load generator was the limit ({busy:.2f} cores busy), so its calls/s is the "
                  "client's ceiling and share's ratio against it an upper bound; compare server CPU per call")
    for why in failures[:5]:
        print(f"  failure: {why}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50, help="concurrent workers, one connection each")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before each measured window")
    parser.add_argument("--window", type=float, default=8.0,
                        help="measured seconds per workload (split over rounds)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds, each running all four workloads in turn")
    parser.add_argument("--cap", type=int, default=40_000, help="most measured calls per workload")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-lowlevel", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-mcpserver", action="store_true", help=argparse.SUPPRESS)
    add_hub_child_arguments(parser)
    args = parser.parse_args()
    if args.serve:
        serve_child(args)
        return
    if args.serve_lowlevel or args.serve_mcpserver:
        serve_bare_child(lowlevel_app if args.serve_lowlevel else mcpserver_app, args.port)
        return
    raise_fd_limit()
    print(f"share_discovery benchmark: {cpu_count_note()}", flush=True)
    with embedded_services() as services, contextlib.ExitStack() as stack:
        servers = {"hub": stack.enter_context(ChildServer(__file__, ["--serve", *hub_child_args(services, HUB_NAME)])),
                   "lowlevel": stack.enter_context(ChildServer(__file__, ["--serve-lowlevel"])),
                   "mcpserver": stack.enter_context(ChildServer(__file__, ["--serve-mcpserver"]))}
        token = operator_token(services, HUB_NAME)
        runs = anyio.run(measure, servers, services, token, args, backend_options={"use_uvloop": True})
    sys.exit(0 if report(runs, args.clients) else 1)


if __name__ == "__main__":
    main()
