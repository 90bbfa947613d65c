"""The `agenthub` command.

    agenthub --version | --help
    agenthub serve [--data-dir D] [--host H] [--port P] [--no-auth]
    agenthub connect                                  (MCP over stdio, forwarded to the hub: mcp_server/connect.py)
    agenthub token create --role operator|agent|viewer [--agent-id X] [--expires-in 7d]
    agenthub token list [--all] | revoke ID
    agenthub agent spawn --role R [--id X] [--capability C]... (--behaviour B | --command CMD | --executor E)
                         [--config JSON] [--text T] [--prompt P] [--restart TYPE] [--max-restarts N] [--period S]
    agenthub agent list | show ID | stop ID | restart ID
    agenthub agent binary upload ID FILE(.wasm|.wat) | versions ID | rollback ID VERSION
    agenthub sandbox run ID --input JSON [--version N] [--limits JSON]
    agenthub discoveries export [--after N] [--context] [--output FILE] | import FILE [--chunk-lines N]
    agenthub account deposit ID AMOUNT | show ID | ledger ID
    agenthub task submit --requester R --description D --budget B [--capability C]... [--bidding-seconds S]
                         [--parameters JSON]
    agenthub task list | show ID | accept ID | cancel ID | dispute ID --by X --evidence E
    agenthub task resolve ID --outcome release|refund|split [--share N]
    agenthub approvals list [--state S]... [--limit N] | show ID [--wait SECONDS] | approve ID | deny ID [--note N]

Every command but `serve` is a client of a running hub: `[--url U] [--token T] [--data-dir D]`, found without
flags beside the hub's data directory (mcp_server/remote.py), and `--json` where it prints data.

`serve` starts the embedded NATS and PostgreSQL unless AGENTHUB_NATS_URL / AGENTHUB_DATABASE_URL are set, then
serves until Ctrl-C or SIGTERM and stops everything in order. Every problem the operator can fix is one line
on stderr and exit code 1, never a traceback. The server's modules are imported inside the commands that run
it, so `--help` and the client commands start in a fraction of a second.
"""

import argparse
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import shlex
import signal
import socket
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from agenthub.errors import HubError, InvalidInput, StartupError
from mcp_server.remote import OPERATOR_TOKEN_FILE, Remote, advertised, find_token, find_url, local_url

if TYPE_CHECKING:  # the server's modules are imported by the commands that run it: `--help` stays fast
    from pydantic import ValidationError

    from agenthub.settings import Settings
    from supervisor.service import Service

logger = logging.getLogger("agenthub")
_IMPORT_CHUNK_BYTES = 512 * 1024


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Create the data directory and hold an exclusive lock on it for the life of the hub."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
        lock = (data_dir / "agenthub.lock").open("a+")
    except OSError as exc:
        raise StartupError(f"data directory {data_dir} is not writable: {exc.strerror or exc}") from exc
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StartupError(f"data directory {data_dir} is in use by another agenthub") from exc
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # IPPROTO_TCP: asyncio then sets NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "is already in use" if exc.errno == 98 else f"cannot be bound: {exc.strerror}"
        raise StartupError(f"port {port} on {host} {reason}") from exc
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


class _Terminated(BaseException):
    """SIGTERM while the event loop is not handling it (starting up): unwinds like Ctrl-C."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def run_serve(settings: "Settings") -> None:
    import anyio

    from agenthub.embedded import EmbeddedNats, EmbeddedPostgres

    if not settings.auth and not _is_loopback(settings.host):
        raise StartupError(f"refusing to serve on non-loopback address {settings.host} without authentication")
    # The default action would kill us mid-start and orphan the embedded servers (they run in their own sessions);
    # unwinding instead stops whatever already started. While serving, `serve` handles SIGTERM itself.
    signal.signal(signal.SIGTERM, _raise_terminated)
    with ExitStack() as stack:
        stack.enter_context(_data_dir_lock(settings.data_dir))
        sock = stack.enter_context(_bind(settings.host, settings.port))
        if settings.port == 0:
            settings.port = sock.getsockname()[1]
        monitor_url = None
        services: list[Service] = []
        if not settings.nats_url:
            logger.info("starting the embedded nats-server in %s", settings.data_dir / "nats")
            nats = stack.enter_context(EmbeddedNats(settings.data_dir / "nats"))
            settings.nats_url, monitor_url = nats.url, nats.monitor_url
            settings.nats.authority_dir = nats.root  # the hub registers its users, and its agents', with it
            services.append(nats)
        if not settings.database_url:
            logger.info("starting the embedded PostgreSQL in %s (the first start creates the database: seconds)",
                        settings.data_dir / "postgres")
            postgres = stack.enter_context(EmbeddedPostgres(settings.data_dir / "postgres"))
            settings.database_url = postgres.url
            services.append(postgres)
        anyio.run(_serve_async, settings, sock, monitor_url, services, backend_options={"use_uvloop": True})


async def _serve_async(settings: "Settings", sock: socket.socket, monitor_url: str | None,
                       services: list["Service"]) -> None:
    from mcp_server.app import create_app, open_hub, serve

    async with open_hub(settings, nats_monitor_url=monitor_url, services=services) as hub:
        url = f"http://{settings.host}:{settings.port}"
        print(f"agenthub serving on {url} (MCP at {url}/mcp, dashboard at {url}/)", flush=True)
        if settings.auth:
            token_file = (settings.data_dir / OPERATOR_TOKEN_FILE).resolve()
            print(f"operator token: {token_file}", flush=True)
            if sys.stdout.isatty():  # a person at a terminal signs in with it; logs never get the secret
                print(f"sign in with: {token_file.read_text().strip()}", flush=True)
        with advertised(settings.data_dir, local_url(settings.host, settings.port)):  # clients find it there
            await serve(create_app(hub), sock, log_level=settings.log_level, before_shutdown=hub.begin_shutdown)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(value: str) -> int:
    """`90s`, `15m`, `12h`, `7d`, `2w` (or plain seconds) as seconds."""
    number, unit = (value[:-1], value[-1]) if value[-1:] in _DURATION_UNITS else (value, "s")
    if not number.isascii() or not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration: use e.g. 90s, 15m, 12h, 7d or 2w")
    return int(number) * _DURATION_UNITS[unit]


def _show(args: argparse.Namespace, data: Any, lines: Callable[[], Iterable[str]]) -> None:
    """The hub's answer as JSON with `--json` (for scripts), else as the lines a person reads."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
        return
    for line in lines():
        print(line)


def _progress(message: str) -> None:
    """What a command that may take seconds is doing, on stderr (stdout stays the command's answer)."""
    print(f"agenthub: {message}", file=sys.stderr, flush=True)


def run_token(remote: Remote, args: argparse.Namespace) -> None:
    if args.token_command == "create":
        body: dict[str, Any] = {"role": args.role}
        if args.agent_id is not None:
            body["agent_id"] = args.agent_id
        if args.expires_in is not None:
            body["expires_in_seconds"] = args.expires_in
        created = remote.request("POST", "/api/v1/tokens", body)
        _show(args, created, lambda: [created["token"]])
        print(f"{created['role']} token {created['token_id']}"
              + (f" for agent {args.agent_id}" if args.agent_id else "")
              + f", expires {created['expires_at'] or 'never'}", file=sys.stderr)
    elif args.token_command == "list":
        listed = remote.request("GET", "/api/v1/tokens" + ("?all=true" if args.all else ""))
        _show(args, listed, lambda: [
            f"{'ID':<22} {'ROLE':<8} {'AGENT':<20} {'STATE':<8} {'CREATED':<20} {'EXPIRES':<20} LAST USED",
            *(f"{t['token_id']:<22} {t['role']:<8} {t['agent_id'] or '-':<20} {t['state']:<8} "
              f"{_stamp(t['created_at']):<20} {_stamp(t['expires_at']):<20} {_stamp(t['last_used_at'])}"
              for t in listed["items"])])
    else:
        revoked = remote.request("DELETE", f"/api/v1/tokens/{urllib.parse.quote(args.token_id)}")
        _show(args, revoked, lambda: [f"revoked token {revoked['token_id']} ({revoked['role']}"
                                      + (f" for agent {revoked['agent_id']})" if revoked["agent_id"] else ")")])


def _stamp(iso: str | None) -> str:
    """An ISO timestamp from the API, to the second and without the zone (they are UTC)."""
    return iso[:19].replace("T", " ") if iso else "-"


def _json_arg(name: str, value: str | None, default: Any = None) -> Any:
    try:
        return json.loads(value) if value is not None else default
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{name} is not valid JSON: {exc}") from exc


def _spawn_body(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = _json_arg("--config", args.config, {})
    executor = args.executor
    if args.command_line:
        executor = executor or "command"
        config.setdefault("argv", shlex.split(args.command_line))
    if args.behaviour:
        executor = executor or "scripted"
        config.setdefault("behaviour", args.behaviour)
    if args.text:
        config.setdefault("text", args.text)
    if args.prompt:
        config.setdefault("prompt", args.prompt)
    if executor is None:
        raise StartupError("say what the agent runs: --executor, --command or --behaviour")
    body: dict[str, Any] = {"role": args.role, "capabilities": args.capability or [], "executor": executor,
                            "executor_config": config}
    if args.id:
        body["agent_id"] = args.id
    if args.heartbeat is not None:
        body["heartbeat_seconds"] = args.heartbeat
    policy = {name: value for name, value in (("restart", args.restart), ("max_restarts", args.max_restarts),
                                              ("period_seconds", args.period)) if value is not None}
    if policy:
        body["restart_policy"] = policy
    return body


def _agent_line(agent: dict[str, Any]) -> str:
    pid = agent["pid"] if agent["pid"] is not None else "-"
    beat = (agent["last_heartbeat"] or "-")[:19]
    return (f"{agent['agent_id']:<24} {agent['state']:<9} {pid!s:>7} {agent['restarts']:>8}  {beat:<19}  "
            f"{agent['breaker_state']:<9} {agent['executor']:<8} {agent['role']}")


def run_agent(remote: Remote, args: argparse.Namespace) -> None:
    command = args.agent_command
    if command == "spawn":
        agent = remote.request("POST", "/api/v1/agents", _spawn_body(args))
    elif command == "list":
        listed = remote.request("GET", "/api/v1/agents")
        _show(args, listed, lambda: [
            f"{'AGENT':<24} {'STATE':<9} {'PID':>7} {'RESTARTS':>8}  {'LAST HEARTBEAT':<19}  {'BREAKER':<9} "
            f"{'EXECUTOR':<8} ROLE", *map(_agent_line, listed["agents"])])
        return
    elif command == "show":
        print(json.dumps(remote.request("GET", f"/api/v1/agents/{args.agent_id}"), indent=2))
        return
    elif command == "binary":
        run_binary(remote, args)
        return
    elif command == "stop":
        agent = remote.request("DELETE", f"/api/v1/agents/{args.agent_id}")
    else:
        agent = remote.request("POST", f"/api/v1/agents/{args.agent_id}/restart")
    _show(args, agent, lambda: [_agent_line(agent)])


def _module_bytes(path: Path) -> bytes:
    """A module file's bytes; WAT sources (`.wat`) are compiled to the binary format here."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from exc
    if path.suffix != ".wat":
        return data
    from wasmtime import WasmtimeError, wat2wasm

    try:
        return bytes(wat2wasm(data.decode()))
    except (WasmtimeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path} is not valid WAT: {str(exc).splitlines()[0]}") from exc


def _binary_line(binary: dict[str, Any]) -> str:
    mark = "*" if binary["current"] else " "
    return (f"{mark} {binary['version']:>4}  {binary['sha256'][:16]}  {binary['size_bytes']:>10}  "
            f"{binary['uploaded_at'][:19]}")


def run_binary(remote: Remote, args: argparse.Namespace) -> None:
    path = f"/api/v1/agents/{args.agent_id}/binary"
    if args.binary_command == "upload":
        started = time.monotonic()
        if args.file.suffix == ".wat":
            _progress(f"compiling {args.file} to WebAssembly")
        module = _module_bytes(args.file)
        _progress(f"uploading {len(module):,} bytes to agent {args.agent_id}; the hub compiles and checks the module "
                  "(seconds for a large one)")
        binary = remote.request("POST", path, raw=module, timeout=300)
        _progress(f"version {binary['version']} is current ({time.monotonic() - started:.1f} s)")
    elif args.binary_command == "rollback":
        binary = remote.request("POST", f"{path}/rollback", {"version": args.version})
    else:
        listed = remote.request("GET", f"{path}/versions")
        _show(args, listed, lambda: [f"  {'VER':>4}  {'SHA-256':<16}  {'BYTES':>10}  UPLOADED",
                                     *map(_binary_line, listed["versions"])])
        return
    _show(args, binary, lambda: [_binary_line(binary)])


def run_sandbox(remote: Remote, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"agent_id": args.agent_id, "input": _json_arg("--input", args.input)}
    if args.version is not None:
        body["version"] = args.version
    if args.limits is not None:
        body["limits"] = _json_arg("--limits", args.limits)
    _progress(f"running agent {args.agent_id}'s module on the hub under its trial-run limits")
    result = remote.request("POST", "/api/v1/sandbox/run", body, timeout=300)
    print(json.dumps(result, indent=2))
    if result["outcome"] != "ok":
        raise SystemExit(2)


def run_discoveries(remote: Remote, args: argparse.Namespace) -> None:
    if args.discoveries_command == "export":
        query = urllib.parse.urlencode({"after": args.after, "context": "true" if args.context else "false"})
        out = args.output.open("wb") if args.output else sys.stdout.buffer
        lines = 0
        shown = time.monotonic()
        with remote.open("GET", f"/api/v1/discoveries/export?{query}", timeout=300) as resp, out:
            while chunk := resp.read(1 << 16):
                out.write(chunk)
                lines += chunk.count(b"\n")
                if time.monotonic() - shown >= 1:  # a large log takes a while: say how far it got, once a second
                    shown = time.monotonic()
                    print(f"\rexporting: {lines} lines", end="", file=sys.stderr, flush=True)
        print(f"\rexported {lines} lines  ", file=sys.stderr)
        return
    from collaboration.archive import MAX_IMPORT_LINES

    if args.chunk_lines > MAX_IMPORT_LINES:
        raise InvalidInput(f"--chunk-lines must be between 1 and {MAX_IMPORT_LINES}")
    imported = skipped = context = sent = 0
    started = time.monotonic()
    for chunk in _import_chunks(args.file, args.chunk_lines):
        summary = remote.request("POST", "/api/v1/discoveries/import", raw=chunk,
                                 content_type="application/x-ndjson")
        imported += summary["discoveries_imported"]
        skipped += summary["discoveries_skipped"]
        context += summary["context_imported"]
        sent += chunk.count(b"\n")
        rate = sent / max(time.monotonic() - started, 1e-9)
        print(f"\r{sent} lines: {imported} discoveries imported, {skipped} already there, {context} context "
              f"({rate:,.0f} lines/s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def _import_chunks(path: Path, max_lines: int) -> Iterator[bytes]:
    """The file's non-blank lines in chunks under the hub's body limit (512 KiB here; a line is at most 64 KB)."""
    try:
        file = path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from exc
    chunk: list[bytes] = []
    size = 0
    with file:
        for raw in file:
            line = raw.rstrip(b"\r\n") + b"\n"
            if not line.strip():
                continue
            if chunk and (len(chunk) >= max_lines or size + len(line) > _IMPORT_CHUNK_BYTES):
                yield b"".join(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
    if chunk:
        yield b"".join(chunk)


def _chunk_lines(value: str) -> int:
    """A positive line count (the hub's maximum is checked when the command runs: it lives with the server)."""
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of lines")
    return int(value)


def _task_line(task: dict[str, Any]) -> str:
    winner = task["winner"] or "-"
    price = task["price"] if task["price"] is not None else "-"
    return (f"{task['task_id']:<22} {task['state']:<10} {task['requester_id']:<16} {task['budget']:>8} "
            f"{task['bid_count']:>5}  {winner:<16} {price!s:>8}  {task['description'][:40]}")


def run_account(remote: Remote, args: argparse.Namespace) -> None:
    path = f"/api/v1/accounts/{args.account_id}"
    if args.account_command == "deposit":
        account = remote.request("POST", f"{path}/deposit",
                                 {"amount": args.amount, "idempotency_key": str(uuid.uuid4())})
        _show(args, account, lambda: [f"{account['account_id']}: {account['balance']} credits"])
    elif args.account_command == "show":
        print(json.dumps(remote.request("GET", path), indent=2))
    else:
        page = remote.request("GET", f"{path}/ledger")
        _show(args, page, lambda: [
            f"{'TRANSFER':>8}  {'AT':<19}  {'KIND':<8} {'AMOUNT':>10}  MEMO",
            *(f"{e['transfer_id']:>8}  {e['at'][:19]:<19}  {e['kind']:<8} {e['amount']:>10}  {e['memo']}"
              for e in page["entries"])])


def run_task(remote: Remote, args: argparse.Namespace) -> None:
    command = args.task_command
    if command == "list":
        listed = remote.request("GET", "/api/v1/tasks")
        _show(args, listed, lambda: [
            f"{'TASK':<22} {'STATE':<10} {'REQUESTER':<16} {'BUDGET':>8} {'BIDS':>5}  {'WINNER':<16} {'PRICE':>8}"
            "  DESCRIPTION", *map(_task_line, listed["tasks"])])
        return
    if command in ("show", "audit"):
        path = f"/api/v1/tasks/{args.task_id}" + ("/audit" if command == "audit" else "")
        print(json.dumps(remote.request("GET", path), indent=2))
        return
    key = {"idempotency_key": str(uuid.uuid4())}  # one per command: a retry inside it cannot act twice
    if command == "submit":
        body: dict[str, Any] = {"requester_id": args.requester, "description": args.description,
                                "required_capabilities": args.capability or [], "budget": args.budget,
                                "priority": args.priority, "bidding_seconds": args.bidding_seconds,
                                "parameters": _json_arg("--parameters", args.parameters, {}),
                                "bond_percent": args.bond_percent,
                                "acceptance": _json_arg("--acceptance", args.acceptance, None), **key}
        task = remote.request("POST", "/api/v1/tasks", body)
    elif command == "dispute":
        task = remote.request("POST", f"/api/v1/tasks/{args.task_id}/dispute",
                              {"by": args.by, "evidence": args.evidence, **key})
    elif command == "resolve":
        task = remote.request("POST", f"/api/v1/tasks/{args.task_id}/resolve",
                              {"outcome": args.outcome, "agent_share_percent": args.share, **key})
    else:  # accept, cancel
        task = remote.request("POST", f"/api/v1/tasks/{args.task_id}/{command}", key)
    _show(args, task, lambda: [_task_line(task)])


# -- budgets ----------------------------------------------------------------------------------------------------------


def _limit_pairs(values: list[str] | None, flag: str) -> dict[str, int]:
    pairs: dict[str, int] = {}
    for value in values or []:
        metric, sep, number = value.partition("=")
        if not sep or not number.isascii() or not number.isdigit():
            raise InvalidInput(f"{flag} {value!r}: use METRIC=N, e.g. {flag} llm_tokens=100000")
        pairs[metric] = int(number)
    return pairs


def _budget_lines(budget: dict[str, Any]) -> list[str]:
    lines = [f"{budget['subject']}  approval threshold: {budget['approval_threshold'] or '-'}"
             + (f"  EXHAUSTED: {', '.join(budget['exhausted'])}" if budget["exhausted"] else "")]
    for metric in dict.fromkeys([*budget["limits"], *budget["spent"]]):
        limit = budget["limits"].get(metric, {})
        soft, hard = limit.get("soft"), limit.get("hard")
        lines.append(f"  {metric:<20} spent {budget['spent'].get(metric, 0):>14} reserved "
                     f"{budget['reserved'].get(metric, 0):>12}  soft {soft if soft is not None else '-':>12}  "
                     f"hard {hard if hard is not None else '-':>12}")
    return lines


def run_budgets(remote: Remote, args: argparse.Namespace) -> None:
    command = args.budgets_command
    if command == "list":
        listed = remote.request("GET", "/api/v1/budgets")
        _show(args, listed, lambda: [line for b in listed["budgets"] for line in _budget_lines(b)])
        return
    path = f"/api/v1/budgets/{urllib.parse.quote(args.subject)}"
    if command == "show":
        budget = remote.request("GET", path)
    elif command == "set":
        soft, hard = _limit_pairs(args.soft, "--soft"), _limit_pairs(args.hard, "--hard")
        current = remote.request("GET", path)["limits"]
        limits = {m: {**current.get(m, {"soft": None, "hard": None}), **({"soft": soft[m]} if m in soft else {}),
                      **({"hard": hard[m]} if m in hard else {})} for m in dict.fromkeys([*soft, *hard])}
        body: dict[str, Any] = {"limits": limits}
        if args.approval_threshold is not None:
            body["approval_threshold"] = args.approval_threshold
        budget = remote.request("PUT", path, body)
    else:  # spend
        series = remote.request("GET", f"{path}/spend?metric={urllib.parse.quote(args.metric)}")
        _show(args, series, lambda: [f"{'MINUTE':<19} {'AMOUNT':>14} {'TOTAL':>16}", *(
            f"{p['at'][:19]:<19} {p['amount']:>14} {p['total']:>16}" for p in series["points"])])
        return
    _show(args, budget, lambda: _budget_lines(budget))


def _budgets_parser(sub: Any) -> Any:
    budgets_p = sub.add_parser("budgets", help="budgets and spend caps per agent and requester")
    budgets_sub = budgets_p.add_subparsers(dest="budgets_command", required=True)
    budgets_sub.add_parser("list", help="every subject with limits or spend")
    budgets_sub.add_parser("show", help="one subject's limits, spend and reservations").add_argument("subject")
    set_p = budgets_sub.add_parser("set", help="set limits (operator): agent:<id> or requester:<id>")
    set_p.add_argument("subject")
    set_p.add_argument("--hard", action="append", metavar="METRIC=N", help="hard limit: new work refused at it")
    set_p.add_argument("--soft", action="append", metavar="METRIC=N", help="soft limit: past it an operator is asked")
    set_p.add_argument("--approval-threshold", type=int, help="requesters: tasks with a larger budget wait for "
                       "approval")
    spend_p = budgets_sub.add_parser("spend", help="spend per minute over the last day, with the running total")
    spend_p.add_argument("subject")
    spend_p.add_argument("--metric", default="llm_tokens", help="llm_tokens (default), llm_cost_micro_usd, "
                         "tool_calls, work_seconds or credits")
    return budgets_sub
def _approval_line(approval: dict[str, Any]) -> str:
    decided = f"{approval['decision']} by {approval['decided_by']}" if approval["decision"] else \
        f"expires {_stamp(approval['expires_at'])}"
    return (f"{approval['approval_id']:<21} {approval['state']:<8} {approval['kind']:<6} {approval['subject']:<22} "
            f"{decided:<32} {approval['reason'][:60]}")


def run_approvals(remote: Remote, args: argparse.Namespace) -> None:
    command = args.approvals_command
    if command == "list":
        query = urllib.parse.urlencode([("limit", args.limit), *(("state", s) for s in args.state or ())])
        listed = remote.request("GET", f"/api/v1/approvals?{query}")
        _show(args, listed, lambda: [f"{'APPROVAL':<21} {'STATE':<8} {'KIND':<6} {'SUBJECT':<22} {'DECISION':<32} "
                                     "REASON", *map(_approval_line, listed["approvals"])])
        return
    path = f"/api/v1/approvals/{urllib.parse.quote(args.approval_id)}"
    if command == "show":
        print(json.dumps(remote.request("GET", f"{path}?wait_seconds={args.wait}"), indent=2))
        return
    body = {"decision": "approve" if command == "approve" else "deny", "note": args.note}
    approval = remote.request("POST", f"{path}/decision", body)
    _show(args, approval, lambda: [_approval_line(approval)])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agenthub", description="MCP server and agent-collaboration hub")
    parser.add_argument("--version", action="version", version=f"agenthub {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="start the hub (embedded NATS and PostgreSQL unless configured)")
    serve_p.add_argument("--data-dir", type=Path, help="state directory (default ./.agenthub, env AGENTHUB_DATA_DIR)")
    serve_p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve_p.add_argument("--port", type=int, help="port to bind (default 8765)")
    serve_p.add_argument("--no-auth", action="store_true", help="no tokens needed (loopback only)")
    token_p = sub.add_parser("token", help="manage bearer tokens")
    token_sub = token_p.add_subparsers(dest="token_command", required=True)
    create_p = token_sub.add_parser("create", help="mint a token on a running hub")
    create_p.add_argument("--role", required=True, choices=["operator", "agent", "viewer"])
    create_p.add_argument("--agent-id", help="the agent the token acts as (agent tokens only)")
    create_p.add_argument("--expires-in", type=_duration, metavar="DURATION",
                          help="refused after this long: 90s, 15m, 12h, 7d, 2w (default: until revoked)")
    token_sub.add_parser("list", help="tokens without their secrets: id, role, agent, created, expires, last "
                         "used").add_argument("--all", action="store_true", help="include revoked and expired ones")
    token_sub.add_parser("revoke", help="revoke a token by id: refused on every replica at once").add_argument(
        "token_id")
    agent_p = sub.add_parser("agent", help="spawn, list, show, stop and restart agents on a running hub")
    agent_sub = agent_p.add_subparsers(dest="agent_command", required=True)
    spawn_p = agent_sub.add_parser("spawn", help="start an agent process")
    spawn_p.add_argument("--role", required=True)
    spawn_p.add_argument("--id", help="agent id (default: generated)")
    spawn_p.add_argument("--capability", action="append", help="a capability (repeatable)")
    spawn_p.add_argument("--executor", choices=["scripted", "claude", "command", "wasm"])
    spawn_p.add_argument("--config", help="executor configuration as JSON")
    spawn_p.add_argument("--command", dest="command_line", help="command agent: the command line to run")
    spawn_p.add_argument("--behaviour", choices=["analyzer", "responder", "worker"],
                         help="scripted agent: its behaviour")
    spawn_p.add_argument("--text", help="scripted analyzer: the text to analyse")
    spawn_p.add_argument("--prompt", help="claude or command agent: work to do at start")
    spawn_p.add_argument("--restart", choices=["permanent", "transient", "temporary"])
    spawn_p.add_argument("--max-restarts", type=int, help="restart intensity: at most this many restarts ...")
    spawn_p.add_argument("--period", type=float, help="... within this many seconds")
    spawn_p.add_argument("--heartbeat", type=float, help="heartbeat interval in seconds")
    agent_sub.add_parser("list", help="all agents with state, pid, restarts, heartbeat and breaker")
    for name, text in (("show", "one agent with its events, as JSON"), ("stop", "stop an agent gracefully"),
                       ("restart", "restart an agent's process")):
        agent_sub.add_parser(name, help=text).add_argument("agent_id")
    binary_p = agent_sub.add_parser("binary", help="a wasm agent's module: upload, versions, rollback")
    binary_sub = binary_p.add_subparsers(dest="binary_command", required=True)
    upload_p = binary_sub.add_parser("upload", help="upload a module (.wasm, or .wat compiled here) as the next "
                                     "version")
    upload_p.add_argument("agent_id")
    upload_p.add_argument("file", type=Path)
    binary_sub.add_parser("versions", help="every version, the current one starred").add_argument("agent_id")
    rollback_p = binary_sub.add_parser("rollback", help="make an earlier version current")
    rollback_p.add_argument("agent_id")
    rollback_p.add_argument("version", type=int)
    account_p = sub.add_parser("account", help="fund accounts and read balances and ledgers")
    account_sub = account_p.add_subparsers(dest="account_command", required=True)
    deposit_p = account_sub.add_parser("deposit", help="deposit credits into an account (operator)")
    deposit_p.add_argument("account_id")
    deposit_p.add_argument("amount", type=int)
    account_sub.add_parser("show", help="balance and reputation, as JSON").add_argument("account_id")
    account_sub.add_parser("ledger", help="the account's postings, newest first").add_argument("account_id")
    task_p = sub.add_parser("task", help="submit tasks, watch their auctions, settle them")
    task_sub = task_p.add_subparsers(dest="task_command", required=True)
    submit_p = task_sub.add_parser("submit", help="hold the budget in escrow and open an auction")
    submit_p.add_argument("--requester", required=True, help="the account that pays")
    submit_p.add_argument("--description", required=True)
    submit_p.add_argument("--budget", type=int, required=True)
    submit_p.add_argument("--capability", action="append", help="a required capability (repeatable)")
    submit_p.add_argument("--priority", type=int, default=5)
    submit_p.add_argument("--bidding-seconds", type=float, default=30.0)
    submit_p.add_argument("--parameters", help="the task's input as a JSON object (a wasm agent reads it on stdin)")
    submit_p.add_argument("--bond-percent", type=int, default=0, help="each bidder's bond, in percent of its bid")
    submit_p.add_argument("--acceptance", help='the acceptance check as JSON: {"json_schema": {...}, "evaluator": '
                          '"<sha256>", "on_fail": "refund"|"dispute"}')
    task_sub.add_parser("list", help="tasks with state, bids, winner and price")
    for name, text in (("show", "one task with its auction and events, as JSON"),
                       ("audit", "a cleared auction's bids, reputations and replayed clearing, as JSON"),
                       ("accept", "accept the result: pay the agent"), ("cancel", "cancel and refund")):
        task_sub.add_parser(name, help=text).add_argument("task_id")
    dispute_p = task_sub.add_parser("dispute", help="dispute a task (requester or winner)")
    dispute_p.add_argument("task_id")
    dispute_p.add_argument("--by", required=True)
    dispute_p.add_argument("--evidence", required=True)
    resolve_p = task_sub.add_parser("resolve", help="resolve a dispute as arbiter (operator)")
    resolve_p.add_argument("task_id")
    resolve_p.add_argument("--outcome", required=True, choices=["release", "refund", "split"])
    resolve_p.add_argument("--share", type=int, default=50, help="split: the agent's percent")
    approvals_p = sub.add_parser("approvals", help="pending approvals: list, show, approve or deny (operator)")
    approvals_sub = approvals_p.add_subparsers(dest="approvals_command", required=True)
    approvals_list_p = approvals_sub.add_parser("list", help="approvals newest first: state, kind, subject, decision")
    approvals_list_p.add_argument("--state", action="append", choices=["pending", "approved", "denied", "expired"],
                                  help="only these states (repeatable; default: all)")
    approvals_list_p.add_argument("--limit", type=int, default=50)
    approvals_show_p = approvals_sub.add_parser("show", help="one approval, as JSON")
    approvals_show_p.add_argument("approval_id")
    approvals_show_p.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                                  help="wait up to this long for its decision")
    for name in ("approve", "deny"):
        decide_p = approvals_sub.add_parser(name, help=f"{name} a pending approval, once")
        decide_p.add_argument("approval_id")
        decide_p.add_argument("--note", help="why, for the record")
    disc_p = sub.add_parser("discoveries", help="export the discovery log as JSON Lines, or import such a file")
    disc_sub = disc_p.add_subparsers(dest="discoveries_command", required=True)
    export_p = disc_sub.add_parser("export", help="write the log after a cursor as JSON Lines (stdout or --output)")
    export_p.add_argument("--after", type=int, default=0, help="export the discoveries after this sequence")
    export_p.add_argument("--context", action="store_true", help="add every unexpired context item")
    export_p.add_argument("--output", type=Path, help="file to write (default: stdout)")
    import_p = disc_sub.add_parser("import", help="import an export file, showing progress; run it again to "
                                   "finish an interrupted import (ids already stored are skipped)")
    import_p.add_argument("file", type=Path)
    import_p.add_argument("--chunk-lines", type=_chunk_lines, default=2000, metavar="N",
                          help="lines per request (1..5000, default 2000)")
    sandbox_p = sub.add_parser("sandbox", help="try a wasm agent's module on an input (operator)")
    sandbox_sub = sandbox_p.add_subparsers(dest="sandbox_command", required=True)
    run_p = sandbox_sub.add_parser("run", help="run it under the hub's trial-run limits and print the outcome "
                                   "(exit code 2 unless ok)")
    run_p.add_argument("agent_id")
    run_p.add_argument("--input", required=True, help="JSON given to the module on stdin")
    run_p.add_argument("--version", type=int, help="default: the current version")
    run_p.add_argument("--limits", help='JSON overrides, e.g. {"deadline_seconds": 1, "fuel": 1000000}')
    connect_p = sub.add_parser("connect", help="MCP over stdio for clients that only start commands (Claude "
                               "Desktop, Cursor, VS Code): forwards to the hub's Streamable HTTP endpoint")
    _client_options(connect_p, json_output=False)
    budgets_sub = _budgets_parser(sub)
    for group in (token_sub, agent_sub, binary_sub, account_sub, task_sub, sandbox_sub, disc_sub, approvals_sub,
                  budgets_sub):
        for p in group.choices.values():
            if p not in (binary_p, connect_p):
                _client_options(p, json_output=group is not disc_sub and p is not run_p)
    return parser


def _client_options(parser: argparse.ArgumentParser, *, json_output: bool) -> None:
    parser.add_argument("--url", help="the hub (default: AGENTHUB_URL, else the hub serving from the data directory, "
                        "else http://127.0.0.1:8765)")
    parser.add_argument("--token", help="bearer token (default: AGENTHUB_TOKEN, else the data directory's operator "
                        "token)")
    parser.add_argument("--data-dir", type=Path, help="the hub's data directory (default ./.agenthub, env "
                        "AGENTHUB_DATA_DIR)")
    if json_output:
        parser.add_argument("--json", action="store_true", help="print the hub's answer as JSON")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agenthub")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _settings(overrides: dict[str, Any]) -> "Settings":
    """The settings from the environment and flags; a bad value is one line naming its variable."""
    from pydantic import ValidationError

    from agenthub.settings import Settings

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise InvalidInput(_settings_error(exc)) from exc


def _settings_error(exc: "ValidationError") -> str:
    problems = []
    for error in exc.errors():
        name = "AGENTHUB_" + "__".join(str(part).upper() for part in error["loc"])
        problems.append(f"{name}={error['input']!r}: {error['msg']}" if "input" in error else f"{name}: "
                        f"{error['msg']}")
    return "; ".join(problems)


def _run(args: argparse.Namespace) -> None:
    overrides: dict[str, Any] = {}
    for name in ("data_dir", "host", "port"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    if getattr(args, "no_auth", False):
        overrides["auth"] = False
    settings = _settings(overrides)
    level = settings.log_level.upper()
    if args.command == "connect" and "AGENTHUB_LOG_LEVEL" not in os.environ:
        level = "WARNING"  # stderr is the client's log of this server: problems only
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        run_serve(settings)
        return
    remote = Remote(url=find_url(args.url, settings.data_dir, local_url(settings.host, settings.port)),
                    token=find_token(args.token, settings.data_dir))
    commands: dict[str, Callable[[Remote, argparse.Namespace], None]] = {
        "agent": run_agent, "account": run_account, "task": run_task, "sandbox": run_sandbox,
        "discoveries": run_discoveries, "token": run_token, "connect": run_connect, "approvals": run_approvals,
        "budgets": run_budgets}
    try:
        commands[args.command](remote, args)
    except (KeyError, TypeError) as exc:  # an answer without the fields this CLI reads: not a hub of its version
        raise StartupError(f"{remote.url} answered without what agenthub {_version()} expects ({type(exc).__name__}: "
                           f"{exc}): is it an agenthub of this version?") from exc


def run_connect(remote: Remote, args: argparse.Namespace) -> None:
    import anyio

    from mcp_server.connect import bridge, check_hub, mcp_endpoint

    url = mcp_endpoint(remote.url)
    anyio.run(check_hub, url)
    anyio.run(bridge, url, remote.token)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except HubError as exc:
        print(f"agenthub: error: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except _Terminated:
        logger.info("stopped by SIGTERM before serving")
        raise SystemExit(0) from None
    except BrokenPipeError:  # stdout piped into a command that stopped reading (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except OSError as exc:  # a file the operator named: --output in a missing directory, a full disk
        print(f"agenthub: error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
              file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
