"""Issue 13: how long the hub takes to be ready again after each of its embedded services fails, under a stream of
writes, and that no acknowledged write is lost; against a cold restart of the hub measured in the same run.

`agenthub serve` runs as an operator runs it: a subprocess on 127.0.0.1 with its own embedded NATS and PostgreSQL
in a fresh data directory, with short PostgreSQL timeouts (`AGENTHUB_DATABASE__CONNECT_TIMEOUT_SECONDS=1`,
`__STATEMENT_TIMEOUT_SECONDS=2`, so that a frozen server is answered 503 soon) and the benchmarks' rate limits.
`--writers` clients share discoveries (`POST /api/v1/discoveries`) as fast as they are answered, as a well-behaved
client does: after a 503 (or 429) they wait `Retry-After` and send the same write again, after a refused or broken
connection they wait 0.2 s and send it again. One follower reads `/discoveries/stream` from the beginning and
resumes with `Last-Event-ID` whenever its stream ends.

First the baseline: the hub is stopped (SIGTERM) and started again on its data directory, `--cold-restarts`
times, timed from the start to `/ready` 200 (what an operator does when nothing supervises the services). Then,
after `--flow` seconds of writes each, the faults, in one run:

1. SIGKILL the nats-server; 2. SIGKILL the postmaster (each is ready again once `/ready` answers 200 with a new
pid in the service's pid file); 3. SIGSTOP the postmaster and all its children for `--freeze` seconds, then
SIGCONT (timed from the SIGCONT); 4. SIGKILL the hub itself and start it again on the same data directory and port
(the operator's alternative; its orphaned services are stopped by the new hub).

For each fault: the time to `/ready` 200 and its ratio to the cold restart; the answers to writes from the fault
until the next one (201, 503, broken connections, anything else); the slowest write in flight between the fault
and ready; the longest time without an acknowledged write; how soon the first 503 came. At the end every
acknowledged discovery id must be in the export (`GET /api/v1/discoveries/export`) once and must have reached the
follower; no write may be stored that a 503 said was not (a timeout's 503 says the outcome is unknown: a thawed
server may still run the statement, so such a write retried is stored twice, as one whose answer a broken
connection lost); the hub must exit 0 after SIGTERM with no traceback on its stderr and leave no service running.
Every wait has a deadline and the whole run is capped by `--budget`. Run: `python bench/faults.py` (about 45 s).
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import BENCH_RATE_LIMITS, Row, cpu_count_note, fmt, print_table  # noqa: E402

from agenthub.embedded import free_port  # noqa: E402
from agenthub.nats_auth import pid_alive  # noqa: E402
from tests.served import AGENTHUB, child_pids, clean_env  # noqa: E402

CONNECT_TIMEOUT = 1  # AGENTHUB_DATABASE__CONNECT_TIMEOUT_SECONDS
STATEMENT_TIMEOUT = 2  # AGENTHUB_DATABASE__STATEMENT_TIMEOUT_SECONDS
FIRST_START_SECONDS = 120.0  # a fresh data directory: initdb, migrations
READY_SECONDS = 60.0  # bound on each return to ready
STOP_SECONDS = 30.0
REQUEST_SECONDS = 30.0  # a write's timeout: longer than the freeze, so a hang shows as such
RETRY_SECONDS = 0.2  # after a refused or broken connection
DRAIN_SECONDS = 30.0  # for the follower to catch up at the end
POLL_SECONDS = 0.05


def _reaped(pid: int) -> bool:
    """Gone for good: not running, and not a zombie waiting for its parent."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE and not pid_alive(pid)
    except psutil.NoSuchProcess:
        return True


# -- the hub process ------------------------------------------------------------------------------------------------


class Hub:
    """`agenthub serve` on one data directory and port, started again as often as needed."""

    def __init__(self, root: Path) -> None:
        self.data_dir = root / "data"
        self.logs = root / "logs"
        self.logs.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rate_limits = {f"AGENTHUB_RATE_LIMITS__{k.upper()}": str(v) for k, v in BENCH_RATE_LIMITS.items()}
        self.env = clean_env(AGENTHUB_DATABASE__CONNECT_TIMEOUT_SECONDS=str(CONNECT_TIMEOUT),
                             AGENTHUB_DATABASE__STATEMENT_TIMEOUT_SECONDS=str(STATEMENT_TIMEOUT),
                             AGENTHUB_LOG_LEVEL="info", **rate_limits)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr: list[Path] = []  # one per start
        self.exit_codes: list[int] = []  # after each SIGTERM
        self.frozen: list[int] = []  # processes this run stopped with SIGSTOP and has not continued yet
        self.service_pids: set[int] = set()  # every nats-server and postmaster seen, stopped at the end if alive

    def start(self) -> float:
        """Start the hub (the previous one must be gone); returns when it started."""
        n = len(self.stderr) + 1
        err = self.logs / f"serve-{n}.err"
        with (self.logs / f"serve-{n}.out").open("wb") as stdout, err.open("wb") as stderr:
            started = time.monotonic()
            self.proc = subprocess.Popen([AGENTHUB, "serve", "--data-dir", str(self.data_dir), "--port",
                                          str(self.port)], stdout=stdout, stderr=stderr, env=self.env, cwd=self.logs)
        self.stderr.append(err)
        return started

    def check_running(self) -> None:
        """Raises if the hub exited, with the end of its stderr."""
        code = None if self.proc is None else self.proc.poll()
        if code is not None:
            tail = self.stderr[-1].read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"agenthub serve exited with {code}: {' | '.join(tail)}")

    def services(self) -> list[int]:
        """The running nats-server and postmaster pids, remembered for the final clean-up."""
        pids = child_pids(self.data_dir)
        self.service_pids.update(pids)
        return pids

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(STOP_SECONDS)

    def stop(self, *, record: bool = True) -> int:
        """SIGTERM and the exit code (a hub that ignores it is killed: -9), kept for the report if `record`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
            code = -signal.SIGKILL
        if record:
            self.exit_codes.append(code)
        return code

    def signal_postgres(self, signum: signal.Signals) -> None:
        """The postmaster and every process it started (each is a session leader of its own)."""
        if signum == signal.SIGSTOP:
            postmaster = self.services()[1]
            self.frozen = [postmaster, *(p.pid for p in psutil.Process(postmaster).children())]
        for pid in self.frozen:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        if signum == signal.SIGCONT:
            self.frozen = []

    def clean_up(self) -> int:
        """Whatever is still running, however the run ended: continue the frozen, stop the hub, then its services
        if the hub did not (only pids this run saw in the pid files); returns how many services it had to kill."""
        self.signal_postgres(signal.SIGCONT)
        if self.proc is not None and self.proc.poll() is None:
            self.stop(record=False)  # a run that failed: perhaps mid-start, before the hub handles SIGTERM
        killed = 0
        for pid in self.service_pids:  # a pid seen earlier may have been reused: only ours, by its command line
            try:
                ours = pid_alive(pid) and str(self.data_dir) in " ".join(psutil.Process(pid).cmdline())
            except psutil.Error:
                continue
            if ours:
                print(f"  clean-up: pid {pid} outlived the hub; killing it", flush=True)
                os.kill(pid, signal.SIGKILL)
                killed += 1
        return killed

    def tracebacks(self) -> list[str]:
        """`file:line: exception` for each Traceback in any start's stderr."""
        found = []
        for path in self.stderr:
            lines = path.read_text(errors="replace").splitlines()
            for i, line in enumerate(lines):
                if "Traceback" in line:
                    end = next((j for j in range(i + 1, len(lines)) if not lines[j].startswith(" ")), i)
                    found.append(f"{path.name}:{i + 1}: {lines[end][:240]}")
        return found


# -- the traffic ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    writer: int
    write: int
    started: float
    ended: float
    outcome: int | str  # the HTTP status, or the transport error's class name
    detail: str = ""  # a refusal's problem detail


@dataclass(slots=True)
class Traffic:
    """Writers that share discoveries as fast as they are answered, and one SSE follower."""

    url: str
    token: str
    attempts: list[Attempt] = field(default_factory=list)
    acked: dict[str, str] = field(default_factory=dict)  # discovery id -> its content
    unexpected: list[str] = field(default_factory=list)  # answers other than 201, 429, 503, with their body
    followed: Counter[str] = field(default_factory=Counter)  # discovery id -> deliveries to the follower
    last_event_id: str | None = None  # where the follower resumes
    follower_answers: Counter[int | str] = field(default_factory=Counter)
    stopped: anyio.Event = field(default_factory=anyio.Event)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def write(self, writer: int) -> None:
        async with httpx2.AsyncClient(base_url=self.url, headers=self.headers, timeout=REQUEST_SECONDS) as http:
            n = 0
            while not self.stopped.is_set():
                content = _content(writer, n)
                body = {"agent_id": f"writer{writer}", "agent_role": "Writer", "discovery_type": "insight",
                        "content": content, "confidence": 0.5}
                started = time.monotonic()
                try:
                    r = await http.post("/api/v1/discoveries", json=body)
                except httpx2.TransportError as exc:  # the hub is down or restarting: the same write again
                    self.attempts.append(Attempt(writer, n, started, time.monotonic(), type(exc).__name__))
                    await anyio.sleep(RETRY_SECONDS)
                    continue
                detail = "" if r.status_code == 201 else _problem_detail(r)
                self.attempts.append(Attempt(writer, n, started, time.monotonic(), r.status_code, detail))
                if r.status_code == 201:
                    self.acked[r.json()["discovery_id"]] = content
                    n += 1
                elif r.status_code in (429, 503):
                    await anyio.sleep(float(r.headers.get("retry-after", "1")))
                else:
                    self.unexpected.append(f"{r.status_code} {r.text[:300]}")
                    await anyio.sleep(RETRY_SECONDS)

    async def follow(self) -> None:
        """Read the stream from the beginning; whenever it ends or is refused, resume after the last event."""
        timeout = httpx2.Timeout(REQUEST_SECONDS, read=60)
        async with httpx2.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout) as http:
            while True:
                last = self.last_event_id
                params = {"start": "beginning"} if last is None else {}
                headers = {} if last is None else {"Last-Event-ID": last}
                wait = RETRY_SECONDS
                try:
                    async with http.stream("GET", "/discoveries/stream", params=params, headers=headers) as r:
                        self.follower_answers[r.status_code] += 1
                        if r.status_code != 200:
                            await r.aread()
                            wait = float(r.headers.get("retry-after", "1"))
                        else:
                            await self._read_events(r)
                except httpx2.TransportError as exc:
                    self.follower_answers[type(exc).__name__] += 1
                await anyio.sleep(wait)

    async def _read_events(self, response: httpx2.Response) -> None:
        event, ident, data = "", "", list[str]()
        async for line in response.aiter_lines():
            if line == "":
                if event == "discovery":
                    self.followed[json.loads("\n".join(data))["discovery"]["discovery_id"]] += 1
                    self.last_event_id = ident
                event, ident, data = "", "", []
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event = value
                elif name == "id":
                    ident = value
                elif name == "data":
                    data.append(value)


def _problem_detail(response: httpx2.Response) -> str:
    try:
        return str(response.json()["detail"])[:300]
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


# -- the faults -----------------------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Fault:
    name: str
    at: float  # the SIGKILL or SIGSTOP
    counted_from: float  # where time to ready counts from: the fault, or the SIGCONT
    ready: float = float("nan")
    not_ready_seen: bool = False  # /ready answered something else (or nothing) between the fault and ready
    old_gone: bool | None = None  # the killed service reaped (no zombie), or the killed hub's services stopped

    @property
    def time_to_ready(self) -> float:
        return self.ready - self.counted_from


async def until_ready(hub: Hub, ready_http: httpx2.AsyncClient, condition: Callable[[], bool] = lambda: True, *,
                      seconds: float = READY_SECONDS) -> tuple[float, bool]:
    """When `/ready` first answered 200 while `condition()` held, and whether it answered otherwise before; fails
    after `seconds`, or at once if the hub exits."""
    other = False
    with anyio.fail_after(seconds):
        while True:
            hub.check_running()
            try:
                r = await ready_http.get("/ready")
                if r.status_code == 200 and condition():
                    return time.monotonic(), other
                other = other or r.status_code != 200
            except httpx2.TransportError:
                other = True
            await anyio.sleep(POLL_SECONDS)


def _replaced(hub: Hub, which: int, old: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            pid = hub.services()[which]
        except (OSError, ValueError, IndexError):  # the pid file is being rewritten
            return False
        return pid != old and pid_alive(pid)

    return check


async def kill_service(hub: Hub, ready_http: httpx2.AsyncClient, which: int, name: str) -> Fault:
    old = hub.services()[which]
    at = time.monotonic()
    os.kill(old, signal.SIGKILL)
    fault = Fault(name=name, at=at, counted_from=at)
    fault.ready, fault.not_ready_seen = await until_ready(hub, ready_http, _replaced(hub, which, old))
    fault.old_gone = _reaped(old)
    return fault


async def freeze_postgres(hub: Hub, ready_http: httpx2.AsyncClient, seconds: float) -> Fault:
    at = time.monotonic()
    hub.signal_postgres(signal.SIGSTOP)
    not_ready = False
    try:
        while time.monotonic() < at + seconds:
            try:
                with anyio.move_on_after(at + seconds - time.monotonic()):
                    not_ready = not_ready or (await ready_http.get("/ready")).status_code != 200
            except httpx2.TransportError:
                not_ready = True
            await anyio.sleep(0.5)
    finally:
        hub.signal_postgres(signal.SIGCONT)
    fault = Fault(name=f"PostgreSQL SIGSTOP {seconds:g} s", at=at, counted_from=time.monotonic(),
                  not_ready_seen=not_ready)
    fault.ready, _ = await until_ready(hub, ready_http)
    return fault


async def kill_hub(hub: Hub, ready_http: httpx2.AsyncClient) -> Fault:
    orphans = hub.services()
    at = time.monotonic()
    hub.kill()
    hub.start()
    fault = Fault(name="hub SIGKILL, started again", at=at, counted_from=at)
    fault.ready, fault.not_ready_seen = await until_ready(hub, ready_http)
    fault.old_gone = all(not pid_alive(pid) for pid in orphans)
    return fault


async def cold_restart(hub: Hub, ready_http: httpx2.AsyncClient) -> float:
    """The operator's restart without supervision: SIGTERM, then `agenthub serve` again until ready."""
    await anyio.to_thread.run_sync(hub.stop)
    started = hub.start()
    ready, _ = await until_ready(hub, ready_http)
    return ready - started


# -- the run --------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Results:
    first_start: float = float("nan")
    cold: list[float] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    restarts_counted: dict[str, float] = field(default_factory=dict)  # agenthub_service_restarts_total
    traffic: Traffic | None = None
    stored: list[dict[str, Any]] = field(default_factory=list)
    follower_caught_up: bool = False
    seconds: float = 0.0
    left_running: int = 0  # services still running after the hub's final stop
    error: str | None = None


async def measure(hub: Hub, args: argparse.Namespace, results: Results) -> None:
    ready_http = httpx2.AsyncClient(base_url=hub.url, timeout=3)
    async with ready_http:
        started = hub.start()
        results.first_start = (await until_ready(hub, ready_http, seconds=FIRST_START_SECONDS))[0] - started
        for _ in range(args.cold_restarts):
            results.cold.append(await cold_restart(hub, ready_http))
        traffic = results.traffic = Traffic(hub.url, (hub.data_dir / "operator-token").read_text().strip())
        scenarios: list[Callable[[], Awaitable[Fault]]] = [
            lambda: kill_service(hub, ready_http, 0, "nats-server SIGKILL"),
            lambda: kill_service(hub, ready_http, 1, "postmaster SIGKILL"),
            lambda: freeze_postgres(hub, ready_http, args.freeze),
            lambda: kill_hub(hub, ready_http),
        ]
        async with anyio.create_task_group() as following:
            following.start_soon(traffic.follow)
            async with anyio.create_task_group() as writing:
                for w in range(args.writers):
                    writing.start_soon(traffic.write, w)
                for n, scenario in enumerate(scenarios):
                    await anyio.sleep(args.flow)
                    if n == len(scenarios) - 1:  # the hub's own count, before the hub is killed
                        results.restarts_counted = await service_restarts(ready_http)
                    results.faults.append(await scenario())
                    print(f"  {results.faults[-1].name}: ready in {results.faults[-1].time_to_ready:.2f} s",
                          flush=True)
                await anyio.sleep(args.flow)
                traffic.stopped.set()
            with anyio.move_on_after(DRAIN_SECONDS):
                while True:
                    if set(traffic.acked) <= set(traffic.followed):
                        results.follower_caught_up = True
                        break
                    await anyio.sleep(0.2)
            following.cancel_scope.cancel()
        results.stored = await export(hub.url, traffic.token)


async def service_restarts(http: httpx2.AsyncClient) -> dict[str, float]:
    counted = {}
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith("agenthub_service_restarts_total{"):
            counted[line.split('"')[1]] = float(line.split()[-1])
    return counted


async def export(url: str, token: str) -> list[dict[str, Any]]:
    async with httpx2.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        r = await http.get("/api/v1/discoveries/export")
    r.raise_for_status()
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


# -- the report -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultFigures:
    """What the writers met from one fault until the next one (or the end)."""

    answers: Counter[int | str]
    max_latency: float  # the slowest write in flight between the fault and ready
    write_gap: float  # the longest time without an acknowledged write, from the last one before the fault
    first_503: float | None  # from the fault to the first 503 answered


def fault_figures(fault: Fault, until: float, attempts: Sequence[Attempt]) -> FaultFigures:
    window = [a for a in attempts if fault.at <= a.ended < until]
    during = [a.ended - a.started for a in attempts if a.ended >= fault.at and a.started <= fault.ready]
    acks = sorted(a.ended for a in attempts if a.outcome == 201 and a.ended < until)
    before = [t for t in acks if t < fault.at]
    marks = [before[-1] if before else fault.at, *(t for t in acks if t >= fault.at), until]
    refused = sorted(a.ended for a in window if a.outcome == 503)
    return FaultFigures(answers=Counter(a.outcome for a in window), max_latency=max(during, default=0.0),
                        write_gap=max(b - a for a, b in zip(marks, marks[1:], strict=False)),
                        first_503=refused[0] - fault.at if refused else None)


def _answers(counted: Counter[int | str]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(counted.items(), key=lambda kv: str(kv[0])))


def print_grid(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate([header, *rows]):
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths,
                                                                                             strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def report(hub: Hub, traffic: Traffic | None, results: Results, args: argparse.Namespace) -> bool:
    cold = statistics.median(results.cold) if results.cold else float("nan")
    attempts = traffic.attempts if traffic else []
    end = max((a.ended for a in attempts), default=time.monotonic())
    untils = [f.at for f in results.faults[1:]] + [end + 1e-9]  # each fault's figures run until the next one
    figures = [fault_figures(f, until, attempts) for f, until in zip(results.faults, untils, strict=False)]
    print_grid("faults under writes (times in s)",
               ["fault", "ready", "x cold", "not ready seen", "old gone", "max write", "write gap", "first 503",
                "answers to writes"],
               [[f.name, fmt(f.time_to_ready, 2), fmt(f.time_to_ready / cold, 2), str(f.not_ready_seen),
                 "-" if f.old_gone is None else str(f.old_gone), fmt(g.max_latency, 2), fmt(g.write_gap, 2),
                 "-" if g.first_503 is None else fmt(g.first_503, 2), _answers(g.answers)]
                for f, g in zip(results.faults, figures, strict=True)])

    rows = [Row(figure="first start, fresh data directory (s)", value=fmt(results.first_start, 2)),
            Row(figure="cold restart: SIGTERM, serve again, /ready 200 (s)",
                value=" / ".join(fmt(c, 2) for c in results.cold), baseline="median " + fmt(cold, 2))]
    for f, g in zip(results.faults, figures, strict=True):
        since = "SIGCONT" if "SIGSTOP" in f.name else "fault"
        rows.append(Row(figure=f"{f.name}: {since} -> /ready 200 (s)", value=fmt(f.time_to_ready, 2),
                        baseline=fmt(cold, 2) + " (cold)", ratio=fmt(f.time_to_ready / cold, 2)))
        if "SIGSTOP" in f.name:
            rows.append(Row(figure=f"{f.name}: slowest write (s)", value=fmt(g.max_latency, 2),
                            baseline=f"{args.freeze:g} (freeze)", bar=f"< {args.freeze:g}",
                            passed=g.max_latency < args.freeze))
            rows.append(Row(figure=f"{f.name}: SIGSTOP -> first 503 (s)",
                            value="-" if g.first_503 is None else fmt(g.first_503, 2),
                            baseline=f"{CONNECT_TIMEOUT + STATEMENT_TIMEOUT} (timeouts)"))
    rows.append(Row(figure=f"faults ready again within {READY_SECONDS:g} s", value=f"{len(results.faults)} / 4",
                    bar="4 / 4", passed=len(results.faults) == 4))
    rows += integrity_rows(hub, traffic, results)
    ok = print_table(f"faults: {args.writers} writers, 1 SSE follower ({results.seconds:.0f} s)", rows)
    if traffic is not None:
        print_evidence(traffic, results, extra_copies(traffic, results.stored)["refused"])
    if traffic is not None and traffic.unexpected:
        print("  unexpected answers (first 5):", *traffic.unexpected[:5], sep="\n    ")
    for line in hub.tracebacks()[:10]:
        print(f"  traceback: {line}")
    if results.error:
        print(f"  failure: {results.error}")
    print(json.dumps(summary(hub, traffic, results, figures, cold), separators=(",", ":")))
    return ok and results.error is None


def integrity_rows(hub: Hub, traffic: Traffic | None, results: Results) -> list[Row]:
    if traffic is None:
        return []
    acked, stored_ids = set(traffic.acked), [d["discovery_id"] for d in results.stored]
    outcomes: Counter[int | str] = Counter(a.outcome for a in traffic.attempts)
    transport = sum(v for k, v in outcomes.items() if isinstance(k, str))
    other = sum(v for k, v in outcomes.items() if k not in (201, 503) and not isinstance(k, str))
    hub_down = [(f.at, f.ready) for f in results.faults if f.name.startswith("hub")]
    broken_while_up = sum(1 for a in traffic.attempts if isinstance(a.outcome, str)
                          and not any(at <= a.ended <= ready for at, ready in hub_down))
    missed = acked - set(traffic.followed)
    lost = acked - set(stored_ids)
    extra = {why: len(writes) for why, writes in extra_copies(traffic, results.stored).items()}
    return [
        Row(figure="writes acknowledged (201)", value=f"{len(acked):,}"),
        Row(figure="answers: 503 / broken connection / other", value=f"{outcomes[503]:,} / {transport:,} / {other:,}",
            bar="other = 0", passed=other == 0),
        Row(figure="broken connections while the hub was up", value=f"{broken_while_up:,}", bar="0",
            passed=broken_while_up == 0),
        Row(figure="writes lost (acknowledged, not in the export)", value=f"{len(lost):,}", bar="0",
            passed=not lost),
        Row(figure="discovery ids stored twice", value=f"{len(stored_ids) - len(set(stored_ids)):,}", bar="0",
            passed=len(stored_ids) == len(set(stored_ids))),
        Row(figure="writes stored although a 503 said they were not", value=f"{extra['refused']:,}", bar="0",
            passed=extra["refused"] == 0),
        Row(figure="writes stored twice: retried after a 503 'may or may not take effect'",
            value=f"{extra['unknown']:,}"),
        Row(figure="writes stored twice: retried after a lost answer", value=f"{extra['lost']:,}"),
        Row(figure="writes stored twice: no attempt in flight when stored", value=f"{extra['unexplained']:,}"),
        Row(figure="follower: acknowledged not delivered / delivered twice",
            value=f"{len(missed):,} / {sum(1 for c in traffic.followed.values() if c > 1):,}", bar="0 / 0",
            passed=results.follower_caught_up and not missed and max(traffic.followed.values(), default=1) == 1),
        Row(figure="follower: stream answers", value=_answers(traffic.follower_answers)),
        Row(figure="restarts counted by the hub (agenthub_service_restarts_total)",
            value=", ".join(f"{k}: {v:g}" for k, v in sorted(results.restarts_counted.items())) or "-"),
        Row(figure="hub exit codes after SIGTERM", value=" ".join(map(str, hub.exit_codes)), bar="all 0",
            passed=bool(hub.exit_codes) and not any(hub.exit_codes)),
        Row(figure="services left running after the hub's last stop", value=str(results.left_running), bar="0",
            passed=results.left_running == 0),
        Row(figure="tracebacks on the hub's stderr", value=str(len(hub.tracebacks())), bar="0",
            passed=not hub.tracebacks()),
    ]


_OUTCOME_UNKNOWN = "may or may not take effect"  # a timeout's 503: a thawed server may still run the statement
_CLOCK_SLACK = 0.05  # seconds between this process's clock and PostgreSQL's now(), both this machine's


def extra_copies(traffic: Traffic, stored: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    """(writer, write) for each stored copy of a write beyond its acknowledged one, by the attempt that was in
    flight when the copy's transaction began (the database's timestamp, on this machine's clock): `lost`, one whose
    answer a broken connection lost; `unknown`, a 503 saying the outcome is unknown; `refused`, a 503 saying nothing
    was changed or the write was not stored; `unexplained`, none."""
    attempts: dict[tuple[int, int], list[Attempt]] = {}
    for a in traffic.attempts:
        attempts.setdefault((a.writer, a.write), []).append(a)
    stamps: dict[str, list[float]] = {}
    for d in stored:
        stamps.setdefault(d["content"], []).append(datetime.fromisoformat(d["timestamp"]).timestamp() - _WALL)
    found: dict[str, list[tuple[int, int]]] = {"lost": [], "unknown": [], "refused": [], "unexplained": []}
    for key, tried in attempts.items():
        copies = stamps.get(_content(*key), [])
        if len(copies) <= sum(1 for a in tried if a.outcome == 201):
            continue
        for stamp in copies:
            owner = next((a for a in tried if a.started - _CLOCK_SLACK <= stamp <= a.ended + _CLOCK_SLACK), None)
            if owner is None:
                found["unexplained"].append(key)
            elif isinstance(owner.outcome, str):
                found["lost"].append(key)
            elif owner.outcome != 201:
                found["unknown" if _OUTCOME_UNKNOWN in owner.detail else "refused"].append(key)
    return found


def _content(writer: int, write: int) -> str:
    return f"faults writer {writer} write {write}"


_WALL = time.time() - time.monotonic()


def _wall(monotonic: float) -> str:
    return datetime.fromtimestamp(monotonic + _WALL, UTC).strftime("%H:%M:%S.%f")[:-3]


def print_evidence(traffic: Traffic, results: Results, writes: Sequence[tuple[int, int]]) -> None:
    """Each write stored although a 503 said it was not: its stored copies (with the database's timestamp) and its
    attempts, in UTC, with the fault before each."""
    if writes:
        for f in results.faults:
            print(f"  fault: {f.name} at {_wall(f.at)}, counted from {_wall(f.counted_from)}, ready {_wall(f.ready)}")
    for writer, write in writes[:5]:
        content = _content(writer, write)
        print(f"  stored although a 503 said it was not: {content!r}")
        for d in results.stored:
            if d["content"] == content:
                print(f"    stored: {d['discovery_id']} sequence {d['sequence']} timestamp {d['timestamp']}")
        for a in traffic.attempts:
            if (a.writer, a.write) == (writer, write):
                before = [f for f in results.faults if f.at <= a.ended]
                when = f"{a.started - before[-1].at:+.2f} s after {before[-1].name}" if before else "before faults"
                print(f"    attempt: {a.outcome} sent {_wall(a.started)} answered {_wall(a.ended)} ({when}) "
                      f"{a.detail}")


def summary(hub: Hub, traffic: Traffic | None, results: Results, figures: Sequence[FaultFigures],
            cold: float) -> dict[str, Any]:
    acked = set(traffic.acked) if traffic else set()
    stored = {d["discovery_id"] for d in results.stored}
    return {
        "bench": "faults", "cold_restart_s": [round(c, 3) for c in results.cold],
        "faults": [{"fault": f.name, "time_to_ready_s": round(f.time_to_ready, 3),
                    "ratio_to_cold": round(f.time_to_ready / cold, 3), "max_write_s": round(g.max_latency, 3),
                    "write_gap_s": round(g.write_gap, 3), "answers": {str(k): v for k, v in g.answers.items()}}
                   for f, g in zip(results.faults, figures, strict=True)],
        "acknowledged": len(acked), "lost": len(acked - stored),
        "duplicate_ids": len(results.stored) - len(stored),
        "extra_copies": {why: len(writes) for why, writes in extra_copies(traffic, results.stored).items()}
        if traffic else None,
        "follower_missed": len(acked - set(traffic.followed)) if traffic else None,
        "exit_codes": hub.exit_codes, "tracebacks": len(hub.tracebacks()), "error": results.error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=4, help="concurrent writing clients")
    parser.add_argument("--flow", type=float, default=3.0, help="seconds of writes before each fault")
    parser.add_argument("--freeze", type=float, default=10.0, help="seconds PostgreSQL stays stopped")
    parser.add_argument("--cold-restarts", type=int, default=2, help="cold restarts timed for the baseline")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds the whole run may take")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and the hub's logs")
    args = parser.parse_args()
    if not (1 <= args.writers <= 32 and 1 <= args.cold_restarts <= 5 and 0 < args.freeze <= 60):
        sys.exit("--writers 1-32, --cold-restarts 1-5, --freeze up to 60 s")
    print(f"faults benchmark: {cpu_count_note()}", flush=True)
    # As root, PostgreSQL runs as an unprivileged user that must be able to reach the data directory.
    root = Path(tempfile.mkdtemp(prefix="agenthub-faults-"))
    root.chmod(0o755)
    hub, results = Hub(root), Results()
    began = time.monotonic()
    try:
        async def run() -> None:
            with anyio.fail_after(args.budget):
                await measure(hub, args, results)

        anyio.run(run, backend_options={"use_uvloop": True})
        hub.stop()  # the final stop, whose exit code is reported
    except Exception as exc:  # report what was measured, then clean up
        results.error = f"{type(exc).__name__}: {exc or 'a deadline passed (--budget, or a wait)'}"
    finally:
        results.left_running = hub.clean_up()
        results.seconds = time.monotonic() - began
    ok = report(hub, results.traffic, results, args)
    if ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"  data directory and hub logs kept in {root}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
