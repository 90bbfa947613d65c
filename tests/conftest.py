"""Test fixtures: one real embedded NATS and PostgreSQL for the whole session; per test a fresh database, a
unique NATS subject prefix, and a hub served by uvicorn on a free loopback port."""

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import asyncpg
import httpx2
import nats
import psutil
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from nats.aio.client import Client as NatsClient
from selenium import webdriver

from agenthub.auth import Role, create_token
from agenthub.embedded import EmbeddedNats, EmbeddedPostgres
from agenthub.settings import Settings
from mcp_server.app import OPERATOR_TOKEN_FILE, create_app, make_server, open_hub
from tests.browser import Browser, ensure_chromium, start_chrome
from web_ui.state import HubState


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# A run stopped with SIGTERM (a CI timeout, `timeout`) unwinds like Ctrl-C, so the session's servers are stopped.
signal.signal(signal.SIGTERM, _interrupt)


@dataclass(frozen=True)
class Services:
    nats_url: str
    nats_monitor_url: str
    nats_dir: Path  # where hubs register their NATS users (and their agents') with the session's server
    admin_database_url: str


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    # Not under pytest's 0700 tmp root: as root, PostgreSQL runs as an unprivileged user that must reach it.
    root = Path(tempfile.mkdtemp(prefix="agenthub-tests-"))
    root.chmod(0o755)
    try:
        with EmbeddedNats(root / "nats") as nats, EmbeddedPostgres(root / "postgres") as pg:
            yield Services(nats_url=nats.url, nats_monitor_url=nats.monitor_url, nats_dir=nats.root,
                           admin_database_url=pg.url)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def database_url(services: Services) -> AsyncIterator[str]:
    """A fresh, empty database for one test."""
    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(services.admin_database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield services.admin_database_url.rsplit("/", 1)[0] + f"/{name}"
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


def bind_free() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # so asyncio sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    return sock


@dataclass
class RunningHub:
    url: str
    state: HubState
    operator_token: str
    data_dir: Path

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    async def token(self, role: Role, agent_id: str | None = None) -> str:
        _, token = await create_token(self.state.pool, role, agent_id)
        return token

    def http(self, token: str | None = None, **kwargs: Any) -> httpx2.AsyncClient:
        headers = {"Authorization": f"Bearer {token or self.operator_token}"}
        return httpx2.AsyncClient(base_url=self.url, headers=headers, timeout=30, **kwargs)

    async def nats(self, **kwargs: Any) -> NatsClient:
        """A NATS connection signed in as this hub (its whole prefix: what a leaked hub credential allows)."""
        options = {"connect_timeout": 5, "allow_reconnect": False, **kwargs}
        return await nats.connect(self.state.settings.nats_url, **self.state.bus.login.connect_options(), **options)

    def mcp(self, token: str | None = None, *, mode: str = "auto", **kwargs: Any) -> Client:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token or self.operator_token}"},
                                  timeout=httpx2.Timeout(60, read=300))
        return Client(streamable_http_client(self.mcp_url, http_client=http), mode=mode, **kwargs)


@dataclass
class HubFactory:
    """Starts hubs sharing one database and NATS prefix (replicas, or restarts of one hub)."""

    services: Services
    database_url: str
    prefix: str
    tmp_path: Path

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": self.tmp_path / "data", "nats_url": self.services.nats_url,
            "database_url": self.database_url, "nats_subject_prefix": self.prefix, "log_level": "warning",
            "nats": {"authority_dir": self.services.nats_dir},
        }
        values.update(overrides)
        return Settings(**values)

    @asynccontextmanager
    async def run(self, settings: Settings | None = None) -> AsyncIterator[RunningHub]:
        """A hub serving on a free loopback port until the block ends."""
        settings = settings or self.settings()
        sock = bind_free()
        settings.port = sock.getsockname()[1]
        async with open_hub(settings, nats_monitor_url=self.services.nats_monitor_url) as state:
            server = make_server(create_app(state), log_level="warning",
                                 before_shutdown=state.begin_shutdown)
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve, [sock])
                with anyio.fail_after(10):
                    while not server.started:  # noqa: ASYNC110 - uvicorn exposes readiness only as this flag
                        await anyio.sleep(0.01)
                token = (settings.data_dir / OPERATOR_TOKEN_FILE).read_text().strip()
                yield RunningHub(url=f"http://127.0.0.1:{settings.port}", state=state, operator_token=token,
                                 data_dir=settings.data_dir)
                server.should_exit = True


@pytest.fixture
def hub_factory(services: Services, database_url: str) -> Iterator[HubFactory]:
    # Not under pytest's 0700 tmp root: as root, agent processes run as users of their own, which must reach their
    # homes in the hub's data directory.
    root = Path(tempfile.mkdtemp(prefix="agenthub-hub-"))
    root.chmod(0o755)
    try:
        yield HubFactory(services=services, database_url=database_url, prefix=f"t{secrets.token_hex(4)}.",
                         tmp_path=root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def hub(hub_factory: HubFactory) -> AsyncIterator[RunningHub]:
    async with hub_factory.run() as running:
        yield running


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not under pytest's 0700 tmp root: as root, PostgreSQL runs as an unprivileged user that must reach it.
    root = Path(tempfile.mkdtemp(prefix="agenthub-cli-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        _kill_processes_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _kill_processes_under(root: Path) -> None:
    """Kill what still runs from under `root` (an argument is a path in it): the NATS and PostgreSQL of a hub the
    test killed, or that was frozen when the test ended, must not outlive the test."""
    inside = f"{root}/"
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and any(arg.startswith(inside) for arg in proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


JS = Path(__file__).resolve().parent / "js"  # the TypeScript SDK clients (stdio bridge, OAuth), pinned by its lock file


@pytest.fixture(scope="session")
def node() -> str:
    """`node`, with the pinned TypeScript SDK installed in tests/js (`npm ci` on a fresh machine)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed: the stdio bridge and OAuth are tested with the TypeScript SDK's client")
    if not (JS / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        installed = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, capture_output=True, text=True,
                                   timeout=300)
        assert installed.returncode == 0, installed.stderr
    return node


@pytest.fixture(scope="session")
def chrome() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the session (the dashboard and the OAuth consent page)."""
    driver = start_chrome(*ensure_chromium())
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
async def browser(chrome: webdriver.Chrome) -> AsyncIterator[Browser]:
    """A fresh tab state per test; the test fails if the page logged errors."""
    tab = Browser(chrome)
    await tab.reset()
    tab.console_errors()  # forget the previous test's
    yield tab
    errors = tab.console_errors()
    await tab.reset()
    assert not errors, f"the page logged errors: {errors}"
