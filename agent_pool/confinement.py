"""Least privilege for agent processes: their environment, their user, their resource limits, their files.

Contract:

* Environment: an agent process gets `PATH`, the locale (`LANG`, `LANGUAGE`, `LC_*`), `TZ`, `PYTHONPATH` (it is
  the hub's own code), `HOME` set to its own directory, and what the pool adds (its configuration, token and NATS
  login). The Anthropic key only for `claude` agents, or for a `command` agent whose configuration says
  `pass_anthropic_key`. Nothing else of the hub's environment.
* User: when the hub runs as root, each agent runs as a user of its own: uid (and gid) `uid_base + n`, `n` a hash
  of its agent id probed past uids other live agents of this replica hold and past any uid an account in the
  user database has. No supplementary groups. Agents therefore cannot signal, trace or read each other, nor the
  hub, PostgreSQL (its own system user) or the fork server. A process that drops from root to another uid is
  made non-dumpable by the kernel, so its `/proc/{pid}/environ` (its token) is root's alone. Without root, agents
  run as the hub's user: only the environment and the limits apply.
* Limits (`resource.setrlimit`, soft = hard, so the agent cannot raise them): address space, CPU seconds (the
  process is killed past them and restarted by its supervisor), open files and processes (threads count; the
  kernel counts them per uid, so this one applies only with a uid per agent). Its commands inherit them.
* Files (hub as root): the data directory is traversable but not listable by others (0711) and its entries are
  closed to others (o-rwx) except `agent-homes` (0711) and `postgres` (which its own user must traverse; its
  files are that user's, 0700); each agent's home `agent-homes/{id}` is its own, 0700. Agent logs in `agents/`
  (0700) are root's, 0600: the hub or the fork server opens the log before the process drops its privileges,
  and the process writes to the inherited descriptor. So an agent can read neither the operator token, nor the
  database's files, nor another agent's log or home.
* Order in the process (`confine`, called by the worker once its code is imported, before it connects or runs
  anything of the agent's): rlimits (as root, so hard limits can be set), chdir to its home, setgroups([]),
  setgid, setuid; then a check that root cannot be regained. Python and the hub's code may live where the agent's
  user cannot reach them (a pyenv under /root, 0700): before the switch, each import directory is opened and
  imports go through `/proc/self/fd/{fd}` from then on (a descriptor keeps its directory reachable whatever the
  path to it; a process may always use its own descriptors), so lazy imports keep working. The fork server does
  this once (`agent_pool.worker.prepare`); its children inherit the descriptors. The agent's commands
  run programs by path: they must be reachable by the agent's user.
"""

import hashlib
import importlib
import logging
import os
import pwd
import resource
import stat
import subprocess
import sys
from collections.abc import Collection, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

logger = logging.getLogger(__name__)

HOMES_DIR = "agent-homes"
LOGS_DIR = "agents"
_OPEN_TO_OTHERS = (HOMES_DIR, "postgres")  # data directory entries others must traverse
_KEPT_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "PYTHONPATH")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_imports_aliased = False  # `import_through_descriptors` ran in this process (or in the fork server before it)


class Confinement(BaseModel):
    """What an agent process applies to itself before it runs (passed in its `WorkerConfig`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uid: int | None = None  # None: keep the hub's user
    gid: int | None = None
    home: str
    memory_bytes: int
    cpu_seconds: int
    open_files: int
    processes: int


def agent_environment(source: Mapping[str, str], *, home: Path, anthropic_api_key: str | None) -> dict[str, str]:
    """The environment of an agent process (without the pool's own variables): see the module's contract."""
    env = {name: value for name, value in source.items() if name in _KEPT_ENV or name.startswith("LC_")}
    env.setdefault("PATH", _DEFAULT_PATH)
    env["HOME"] = str(home)
    if anthropic_api_key:
        env["ANTHROPIC_API_KEY"] = anthropic_api_key
    return env


def agent_uid(agent_id: str, taken: Collection[int], *, base: int, count: int) -> int:
    """The agent's uid: stable for its id, unless another live agent or an account holds it.

    Raises:
        RuntimeError: every uid of the range is held.
    """
    start = int.from_bytes(hashlib.sha256(agent_id.encode()).digest()[:8], "big") % count
    for step in range(count):
        uid = base + (start + step) % count
        if uid not in taken and not _has_account(uid):
            return uid
    raise RuntimeError(f"no free uid in {base}..{base + count - 1} for agent processes")


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def prepare_files(data_dir: Path, agent_id: str, uid: int | None) -> Path:
    """Lay out the data directory for agents (see the module's contract) and return the agent's home."""
    homes = data_dir / HOMES_DIR
    home = homes / agent_id
    logs = data_dir / LOGS_DIR
    homes.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    home.mkdir(mode=0o700, exist_ok=True)
    logs.chmod(0o700)
    if uid is None:
        return home
    data_dir.chmod(0o711)
    homes.chmod(0o711)
    for entry in data_dir.iterdir():
        mode = entry.lstat().st_mode
        if entry.name not in _OPEN_TO_OTHERS and not stat.S_ISLNK(mode) and mode & 0o007:
            entry.chmod(stat.S_IMODE(mode) & ~0o007)
    if home.stat().st_uid != uid:  # new, or last held by another uid: all of it becomes this agent's
        for folder, dirs, files in os.walk(home):
            os.chown(folder, uid, uid, follow_symlinks=False)
            for name in (*dirs, *files):
                os.chown(os.path.join(folder, name), uid, uid, follow_symlinks=False)
    home.chmod(0o700)
    return home


def check_reachable(home: Path, uid: int) -> None:
    """Refuse a home the agent's user could not reach (a parent directory closed to others).

    Raises:
        RuntimeError: it cannot.
    """
    probe = subprocess.run(["test", "-x", str(home)], user=uid, group=uid, extra_groups=[], capture_output=True,
                           check=False)
    if probe.returncode != 0:
        raise RuntimeError(f"agents run as unprivileged users, which cannot reach {home} (a parent directory is "
                           "not searchable by others): use a data directory outside it")


def open_log(path: Path) -> int:
    """The agent's log, opened for appending by the hub's side: 0600, whoever the agent runs as."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)  # a log made before logs were private
    return fd


def confine(confinement: Confinement) -> None:
    """Apply the confinement to this process (see the module's contract for the order).

    Raises:
        PermissionError: the uid switch did not hold (root could be regained).
    """
    limits = [(resource.RLIMIT_AS, confinement.memory_bytes), (resource.RLIMIT_CPU, confinement.cpu_seconds),
              (resource.RLIMIT_NOFILE, confinement.open_files)]
    if confinement.uid is not None:  # counted per uid: only an agent's own uid makes it the agent's count
        limits.append((resource.RLIMIT_NPROC, confinement.processes))
    for limit, value in limits:
        hard = resource.getrlimit(limit)[1]
        if os.geteuid() != 0 and hard != resource.RLIM_INFINITY:
            value = min(value, hard)  # without root a hard limit can only be lowered
        resource.setrlimit(limit, (value, value))
    os.chdir(confinement.home)
    if confinement.uid is None or confinement.gid is None:
        return
    import_through_descriptors()
    os.setgroups([])
    os.setgid(confinement.gid)
    os.setuid(confinement.uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PermissionError("the agent process could regain root after dropping it")


def import_through_descriptors() -> None:
    """Point `sys.path` and every loaded package's `__path__` at descriptors of their directories (see the
    module's contract). Once per process: the fork server does it before it forks workers (it touches every
    module, 20-40 ms a worker), and its children inherit the descriptors and the paths."""
    global _imports_aliased
    if _imports_aliased:
        return
    _imports_aliased = True
    aliases: dict[str, str] = {}
    for entry in sys.path:
        path = os.path.abspath(entry or ".")
        if path not in aliases and os.path.isdir(path):
            aliases[path] = f"/proc/self/fd/{os.open(path, os.O_RDONLY | os.O_DIRECTORY)}"  # not inherited
    roots = sorted(aliases, key=len, reverse=True)  # the deepest directory holding a path names it

    def alias(path: str) -> str:
        for root in roots:
            if path == root or path.startswith(root + os.sep):
                return aliases[root] + path[len(root):]
        return path

    sys.path[:] = [alias(os.path.abspath(entry or ".")) for entry in sys.path]
    for module in list(sys.modules.values()):
        package_path = getattr(module, "__path__", None)
        if isinstance(package_path, list):
            package_path[:] = [alias(path) for path in package_path]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
