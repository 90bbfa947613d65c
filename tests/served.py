"""`agenthub serve` as an operator runs it, for tests that need a hub of their own: a real subprocess with its own
embedded NATS and PostgreSQL in a fresh data directory, and what to look at from outside (its servers' pids)."""

import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import psutil

from agenthub.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
AGENTHUB = shutil.which("agenthub") or str(Path(sys.executable).parent / "agenthub")
START_SECONDS = 60
STOP_SECONDS = 30


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any AGENTHUB_ setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTHUB_")}
    return {**env, **extra}


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    stdout: Path
    stderr: Path
    data_dir: Path

    def output(self) -> str:
        return self.stdout.read_text()

    def errors(self) -> str:
        return self.stderr.read_text()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(STOP_SECONDS)


@contextmanager
def serving(data_dir: Path, logs: Path, *args: str, env: dict[str, str] | None = None,
            port: int | None = None) -> Iterator[Served]:
    """`agenthub serve` (on `port`, default a free one) until the block ends; fails the test if it is not ready
    within START_SECONDS."""
    port = port or free_port()
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / f"serve-{port}.out", logs / f"serve-{port}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([AGENTHUB, "serve", "--data-dir", str(data_dir), "--port", str(port), *args],
                                stdout=stdout, stderr=stderr, env=env or clean_env(), cwd=logs)
    served = Served(proc=proc, url=f"http://127.0.0.1:{port}", stdout=out, stderr=err, data_dir=data_dir)
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            assert proc.poll() is None, f"agenthub serve exited with {proc.returncode}: {served.errors()}"
            assert time.monotonic() < deadline, f"agenthub serve not ready: {served.errors()}"
            try:
                if httpx2.get(f"{served.url}/ready", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            time.sleep(0.1)
        yield served
    finally:
        if proc.poll() is None:  # the test left it running: stopped as an operator would, its services with it
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_SECONDS)


def processes_mentioning(data_dir: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE and proc.pid != os.getpid():
            found.append(cmdline)
    return found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until_gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def child_pids(data_dir: Path) -> list[int]:
    """The running nats-server and postmaster, from the pid files they keep in the data directory."""
    nats = int((data_dir / "nats" / "nats-server.pid").read_text().strip())
    postmaster = int((data_dir / "postgres" / "data" / "postmaster.pid").read_text().splitlines()[0])
    return [nats, postmaster]


@contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A plain HTTP server (something that is not a hub, or a hub's stand-in) on a free loopback port: its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
