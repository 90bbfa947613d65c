"""Benchmark: `share_discovery` calls/s and latency through the whole hub, against a trivial echo tool served by
the same stack in the same run.

The hub runs under uvicorn (uvloop) in a child process, with its own embedded NATS and PostgreSQL. 50 workers,
each with its own httpx2 client, send raw 2026-07-28 single-exchange `tools/call` POSTs to /mcp with the
operator token. The echo tool exists only in this benchmark's server: the child wraps the low-level server's
`tools/call` and `tools/list` handlers that `create_app` builds, so echo passes through the same guard, MCP
transport and SDK dispatch as the product's tools, and costs nothing beyond them.

Phases alternate echo, share, share, echo (and so on) so that host drift hits both alike; each phase has a
warm-up and then a measured window capped in time and count. Run: `python bench/share_discovery.py`.
"""

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import mcp.types as types
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
from mcp.server import Server, ServerRequestContext
from starlette.applications import Starlette

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
HUB_NAME = "hub"


# -- the child: the product's app, plus an echo tool ---------------------------------------------------------------


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
        text = str((params.arguments or {}).get("text", ""))
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                    structured_content={"text": text})

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


# -- the load generator --------------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Phase:
    """One measured window of one tool."""

    label: str
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    failures: list[str] = field(default_factory=list)
    calls_total: int = 0
    calls_after_mark: int = 0  # calls that completed while hub CPU was being counted
    hub_cpu: float = 0.0
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


WORKLOADS = {
    "share": Workload(label="share_discovery", tool="share_discovery", arguments=share_arguments,
                      check=lambda out: isinstance(out.get("sequence"), int)),
    "echo": Workload(label="echo", tool=ECHO, arguments=lambda w, n: {"text": f"hello {w} {n}"},
                     check=lambda out: str(out.get("text", "")).startswith("hello")),
}


async def run_phase(clients: list[httpx2.AsyncClient], server: ChildServer, work: Workload, *, warmup: float,
                    window: float, cap: int) -> Phase:
    """All workers call `work.tool` back to back; calls that start and end inside the window are measured."""
    phase = Phase(label=work.label)
    start = time.perf_counter()
    window_start = start + warmup
    window_end = window_start + window
    cpu_marks: dict[str, float] = {}

    async def mark_window() -> None:
        await anyio.sleep(warmup)
        cpu_marks["hub"], cpu_marks["client"] = server.cpu_seconds(), time.process_time()

    async def worker(index: int, client: httpx2.AsyncClient) -> None:
        nonlocal window_end
        n = 0
        headers = {"mcp-name": work.tool}
        while True:
            n += 1
            body = tool_call_body(n, work.tool, work.arguments(index, n))
            t0 = time.perf_counter()
            if t0 >= window_end:
                return
            response = await client.post("/mcp", content=body, headers=headers)
            t1 = time.perf_counter()
            phase.calls_total += 1
            if t1 >= window_start:
                phase.calls_after_mark += 1
            out, why = tool_call_outcome(response.status_code, response.headers.get("content-type", ""),
                                         response.content)
            if out is None or not work.check(out):
                phase.failures.append(why or f"unexpected result {out}")
            if t0 >= window_start and t1 <= window_end:
                phase.latencies.append(t1 - t0)
                if len(phase.latencies) >= cap:
                    window_end = min(window_end, t1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(mark_window)
        for i, client in enumerate(clients):
            tg.start_soon(worker, i, client)
    phase.elapsed = window_end - window_start
    if cpu_marks:
        phase.hub_cpu = server.cpu_seconds() - cpu_marks["hub"]
        phase.client_cpu = time.process_time() - cpu_marks["client"]
    return phase


def merge(phases: list[Phase]) -> Phase:
    merged = Phase(label=phases[0].label)
    for p in phases:
        merged.latencies += p.latencies
        merged.elapsed += p.elapsed
        merged.failures += p.failures
        merged.calls_total += p.calls_total
        merged.calls_after_mark += p.calls_after_mark
        merged.hub_cpu += p.hub_cpu
        merged.client_cpu += p.client_cpu
    return merged


def rate(p: Phase) -> float:
    return len(p.latencies) / p.elapsed if p.elapsed > 0 else 0.0


def ms(seconds: float) -> str:
    return fmt(seconds * 1000, 2)


async def measure(server: ChildServer, token: str, args: argparse.Namespace) -> dict[str, Phase]:
    limits = httpx2.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = httpx2.Timeout(30.0)
    clients = [httpx2.AsyncClient(base_url=server.url, headers=tool_call_headers(token), limits=limits,
                                  timeout=timeout) for _ in range(args.clients)]
    try:
        per_round = args.window / args.rounds
        runs: dict[str, list[Phase]] = {"echo": [], "share": []}
        for r in range(args.rounds):
            order = ("echo", "share") if r % 2 == 0 else ("share", "echo")
            for key in order:
                phase = await run_phase(clients, server, WORKLOADS[key], warmup=args.warmup, window=per_round,
                                        cap=args.cap // args.rounds)
                print(f"  round {r + 1} {phase.label:<16} {rate(phase):8,.0f} calls/s  "
                      f"p50 {ms(percentile(phase.latencies, 50))} ms  p99 {ms(percentile(phase.latencies, 99))} ms",
                      flush=True)
                runs[key].append(phase)
        results = {key: merge(phases) for key, phases in runs.items()}
        return results
    finally:
        for client in clients:
            await client.aclose()


def report(results: dict[str, Phase], clients: int) -> bool:
    share, echo = results["share"], results["echo"]
    ratio = rate(share) / rate(echo) if rate(echo) else 0.0
    rows = [
        Row(figure="share_discovery calls/s", value=fmt(rate(share), 0), baseline=fmt(rate(echo), 0) + " (echo)",
            ratio=f"{ratio:.2f}", bar=f">= {BAR_RATIO}", passed=ratio >= BAR_RATIO),
        Row(figure="share_discovery p50 latency (ms)", value=ms(percentile(share.latencies, 50)),
            baseline=ms(percentile(echo.latencies, 50)) + " (echo)",
            ratio=f"{percentile(share.latencies, 50) / percentile(echo.latencies, 50):.2f}"),
        Row(figure="share_discovery p99 latency (ms)", value=ms(percentile(share.latencies, 99)),
            baseline=ms(percentile(echo.latencies, 99)) + " (echo)",
            ratio=f"{percentile(share.latencies, 99) / percentile(echo.latencies, 99):.2f}"),
    ]
    for p in (share, echo):
        calls = max(1, p.calls_after_mark)
        rows.append(Row(figure=f"{p.label}: hub CPU per call (us)", value=fmt(p.hub_cpu / calls * 1e6, 0)))
        rows.append(Row(figure=f"{p.label}: load-generator cores busy", value=fmt(p.client_cpu / p.elapsed, 2)))
    failures = [f for p in results.values() for f in p.failures]
    calls = sum(p.calls_total for p in results.values())
    rows.append(Row(figure="failed calls (all phases)", value=f"{len(failures)} of {calls:,}", bar="0",
                    passed=not failures))
    ok = print_table(f"share_discovery vs echo, {clients} clients, raw 2026-07-28 tools/call "
                     f"({len(share.latencies):,} + {len(echo.latencies):,} measured calls)", rows)
    for why in failures[:5]:
        print(f"  failure: {why}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50, help="concurrent workers, one httpx2 client each")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each measured window")
    parser.add_argument("--window", type=float, default=8.0, help="measured seconds per tool (split over rounds)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating echo/share rounds")
    parser.add_argument("--cap", type=int, default=40_000, help="most measured calls per tool")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    add_hub_child_arguments(parser)
    args = parser.parse_args()
    if args.serve:
        serve_child(args)
        return
    raise_fd_limit()
    print(f"share_discovery benchmark: {cpu_count_note()}", flush=True)
    with embedded_services() as services, \
            ChildServer(__file__, ["--serve", *hub_child_args(services, HUB_NAME)]) as server:
        token = operator_token(services, HUB_NAME)
        results = anyio.run(measure, server, token, args, backend_options={"use_uvloop": True})
    sys.exit(0 if report(results, args.clients) else 1)


if __name__ == "__main__":
    main()
