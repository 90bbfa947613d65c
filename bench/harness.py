"""What the benchmark programs share: embedded NATS and PostgreSQL in a throwaway directory, a server (the hub
or a bare baseline app) in a child process on 127.0.0.1, percentiles, and the result table.

The server runs in its own process so that it and the load generator do not share one event loop; the child is
the benchmark script itself started with `--serve...` arguments, so a measured stack is exactly what the script
builds. Every wait here has a deadline.
"""

import argparse
import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psutil
from starlette.applications import Starlette

from agenthub.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from agenthub.settings import Settings
from mcp_server.app import OPERATOR_TOKEN_FILE, create_app, open_hub, serve

logger = logging.getLogger(__name__)

MODERN_PROTOCOL = "2026-07-28"
_READY_SECONDS = 60.0
_STOP_SECONDS = 15.0


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise the soft open-files limit towards `wanted` (bounded by the hard limit); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


# -- embedded services ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    root: Path
    nats_url: str
    nats_dir: Path  # the embedded server's directory, where hubs register their NATS users
    database_url: str
    pids: tuple[int, ...] = ()  # nats-server and the postmaster

    def cpu_seconds(self) -> float:
        """CPU time used so far by nats-server and PostgreSQL (the postmaster and every backend it runs)."""
        total = 0.0
        for pid in self.pids:
            try:
                root = psutil.Process(pid)
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for process in processes:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = process.cpu_times()
                    total += times.user + times.system
        return total


@contextlib.contextmanager
def embedded_services() -> Iterator[Services]:
    """Real NATS and PostgreSQL under a fresh temp dir, stopped and removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="agenthub-bench-"))
    # As root, PostgreSQL runs as an unprivileged user that must be able to reach the directory.
    root.chmod(0o755)
    try:
        with EmbeddedNats(root / "nats") as nats, EmbeddedPostgres(root / "postgres") as pg:
            yield Services(root=root, nats_url=nats.url, nats_dir=nats.root, database_url=pg.url,
                           pids=tuple(pid for pid in (nats.pid, pg.pid) if pid is not None))
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the server child process --------------------------------------------------------------------------------------


def hub_child_args(services: Services, name: str) -> list[str]:
    """Arguments telling a `--serve-hub` child where NATS and PostgreSQL are and where to keep its state."""
    return ["--nats-url", services.nats_url, "--nats-dir", str(services.nats_dir),
            "--database-url", services.database_url,
            "--data-dir", str(services.root / name)]


def add_hub_child_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--nats-url", help=argparse.SUPPRESS)
    parser.add_argument("--nats-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)


# Benchmarks measure capacity, not the limits: every rate and quota is far above what this machine can send. The
# limiter still runs on every request, so its cost is in every figure.
BENCH_RATE_LIMITS = {"requests_per_second": 1e6, "request_burst": 10**6, "discoveries_per_second": 1e6,
                     "discovery_burst": 10**6, "questions_per_minute": 1e6, "question_burst": 10**6,
                     "max_subscriptions": 10**6, "max_streams": 10**5}


def hub_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The child hub's settings: the services from `args`, benchmark rate limits, defaults otherwise (unless
    overridden here)."""
    values: dict[str, Any] = {"rate_limits": BENCH_RATE_LIMITS, "nats": {"authority_dir": args.nats_dir},
                              **overrides}
    return Settings(data_dir=args.data_dir, port=args.port, nats_url=args.nats_url, database_url=args.database_url,
                    log_level="warning", **values)


def bind_loopback(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio then sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    return sock


def run_child(serve_async: Callable[[socket.socket], Awaitable[None]], port: int) -> None:
    """Child entry point: bind 127.0.0.1:`port` and serve until SIGTERM, on uvloop like `agenthub serve`."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_fd_limit()
    sock = bind_loopback(port)
    anyio.run(serve_async, sock, backend_options={"use_uvloop": True})


async def serve_hub(settings: Settings, sock: socket.socket,
                    build: Callable[..., Starlette] = create_app) -> None:
    """Serve the hub's app (from `build(hub)`) on `sock` until a signal, as `agenthub serve` does."""
    async with open_hub(settings) as hub:
        await serve(build(hub), sock, log_level="warning", before_shutdown=hub.begin_shutdown)


class ChildServer:
    """A server started as `python <script> <args> --port P`; usable as a context manager that stops it."""

    def __init__(self, script: str, args: Sequence[str], *, health_path: str = "/health") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._health_url = self.url + health_path
        self._argv = [sys.executable, script, *args, "--port", str(self.port)]
        self._proc: subprocess.Popen[bytes] | None = None
        self.process: psutil.Process | None = None

    def __enter__(self) -> "ChildServer":
        self._proc = subprocess.Popen(self._argv)
        self.process = psutil.Process(self._proc.pid)
        deadline = time.monotonic() + _READY_SECONDS
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"server child exited with code {self._proc.returncode}: {self._argv[1:3]}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(self._health_url, timeout=2) as resp:
                    if resp.status == 200:
                        return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server child did not answer {self._health_url} within {_READY_SECONDS:.0f} s")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            logger.warning("server child %d ignored SIGTERM; killing it", proc.pid)
            proc.kill()
            proc.wait(5)

    def rss(self) -> int:
        assert self.process is not None
        return int(self.process.memory_info().rss)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def metric(self, name: str) -> float:
        """The value of one unlabelled Prometheus sample from the hub's /metrics (0 when absent)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


def operator_token(services: Services, name: str) -> str:
    return (services.root / name / OPERATOR_TOKEN_FILE).read_text().strip()


def tool_call_body(request_id: int, tool: str, arguments: dict[str, object]) -> bytes:
    """A 2026-07-28 single-exchange `tools/call` request (no session, no handshake)."""
    return json.dumps({
        "jsonrpc": "2.0", "id": request_id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": {
            "io.modelcontextprotocol/protocolVersion": MODERN_PROTOCOL,
            "io.modelcontextprotocol/clientCapabilities": {},
        }},
    }, separators=(",", ":")).encode()


def tool_call_headers(token: str) -> dict[str, str]:
    """The per-client headers of a modern `tools/call` POST; `mcp-name` is added per request."""
    return {"content-type": "application/json", "accept": "application/json, text/event-stream",
            "mcp-protocol-version": MODERN_PROTOCOL, "mcp-method": "tools/call",
            "authorization": f"Bearer {token}"}


def tool_call_outcome(status: int, content_type: str, body: bytes) -> tuple[dict[str, object] | None, str]:
    """(structuredContent, "") for a successful call, else (None, why it failed).

    The SDK answers with JSON, or with an SSE stream whose last event is the response when the handler is slow.
    """
    if status != 200:
        return None, f"HTTP {status}: {body[:200]!r}"
    if content_type.startswith("text/event-stream"):
        data = [line[5:].strip() for line in body.splitlines() if line.startswith(b"data:")]
        if not data:
            return None, "SSE response without data"
        body = data[-1]
    message = json.loads(body)
    result = message.get("result")
    if not isinstance(result, dict):
        return None, f"JSON-RPC error: {message.get('error')}"
    if result.get("isError"):
        return None, f"tool error: {result.get('content')}"
    structured = result.get("structuredContent")
    return (structured if isinstance(structured, dict) else {}), ""


# -- statistics and the table --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of `values` (need not be sorted); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One line of the result table. `passed` is None for figures that only inform."""

    figure: str
    value: str
    baseline: str = "-"
    ratio: str = "-"
    bar: str = "-"
    passed: bool | None = None


def print_table(title: str, rows: Sequence[Row]) -> bool:
    """Print the table; True when every row with a bar passed."""
    header = ("figure", "value", "baseline", "ratio", "bar", "result")
    cells = [header] + [(r.figure, r.value, r.baseline, r.ratio, r.bar,
                         "info" if r.passed is None else ("PASS" if r.passed else "FAIL")) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, c in enumerate(cells):
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    return all(r.passed is not False for r in rows)


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def cpu_count_note() -> str:
    return f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
