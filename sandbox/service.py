"""The hub's side of the sandbox: versioned binaries per WASM agent, and operators' trial runs.

An upload is checked in order of cost (who may upload, the agent, the size, the header, then a compile in the
limited compiler process) and stored only when everything passed: bytes in the binary store first, then the
version row and the agent's current version in one transaction, with an `agent_events` row. A refused module
changes nothing. Rollback makes an earlier version current again. A trial run (`run`) executes a version in
the hub's own runner, off the event loop.
"""

import json
from datetime import datetime
from typing import Annotated, Any

import anyio
import asyncpg
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from agent_pool.registry import write_event
from agenthub.auth import Principal
from agenthub.database import Connection
from agenthub.errors import AgentNotFound, Conflict, InvalidInput, NotFound
from agenthub.ids import AGENT_ID_PATTERN
from agenthub.metrics import HubMetrics
from agenthub.settings import SandboxSettings
from sandbox.compiler import compile_module
from sandbox.models import RunLimits, RunResult
from sandbox.modules import ModuleCache
from sandbox.runner import Runner
from sandbox.store import BinaryStore

Version = Annotated[int, Field(ge=1, le=1_000_000)]


class BinaryVersion(BaseModel):
    agent_id: str
    version: int
    sha256: str
    size_bytes: int
    imports: list[str]
    memory_min_bytes: int
    uploaded_by: str = Field(description="The token id of the uploader ('local' without authentication).")
    uploaded_at: datetime
    current: bool


class BinaryVersions(BaseModel):
    agent_id: str
    current: int | None
    versions: list[BinaryVersion] = Field(description="Newest first.")


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    version: Version


class VersionQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version | None = Field(default=None, description="Default: the current version.")


class SandboxRunInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
    version: Version | None = Field(default=None, description="Default: the agent's current version.")
    input: Any = Field(description="Any JSON: given to the module on stdin.")
    limits: dict[str, Any] | None = Field(
        default=None, description="Overrides of the hub's trial-run limits (fuel, deadline_seconds, memory_bytes, "
                                  "output_bytes, log_bytes).")


class EvaluatorInfo(BaseModel):
    sha256: str = Field(description="Name it as a task's acceptance.evaluator.")
    size_bytes: int
    imports: list[str]
    uploaded_by: str
    uploaded_at: datetime


class SandboxRunResult(RunResult):
    agent_id: str
    version: int
    sha256: str


_COLUMNS = "b.agent_id, b.version, b.sha256, b.size_bytes, b.imports, b.memory_min_bytes, b.uploaded_by, " \
           "b.uploaded_at, (a.binary_version = b.version) AS current"


def _version(row: asyncpg.Record) -> BinaryVersion:
    return BinaryVersion(**{**dict(row), "imports": list(row["imports"]), "current": bool(row["current"])})


class SandboxService:
    def __init__(self, *, pool: asyncpg.Pool, store: BinaryStore, runner: Runner, cache: ModuleCache,
                 settings: SandboxSettings, metrics: HubMetrics) -> None:
        self._pool = pool
        self._store = store
        self._runner = runner
        self._cache = cache
        self._settings = settings
        self._metrics = metrics
        self._compiling = anyio.CapacityLimiter(settings.concurrency)  # compiler processes at once

    async def upload(self, who: Principal, agent_id: str, wasm: bytes) -> BinaryVersion:
        who.require_acting_as(agent_id)
        executor = await self._pool.fetchval("SELECT executor FROM agents WHERE id = $1", agent_id)
        if executor is None:
            raise AgentNotFound(agent_id)
        if executor != "wasm":
            raise Conflict(f"agent {agent_id!r} runs the {executor} executor; only wasm agents take binaries")
        try:
            async with self._compiling:
                compiled = await compile_module(wasm, self._settings.compile_limits())
        except InvalidInput:
            self._metrics.wasm_uploads.labels("rejected").inc()
            raise
        sha256 = await self._store.put(wasm)
        await self._cache.add(sha256, compiled.artifact)
        info = compiled.info
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT 1 FROM agents WHERE id = $1 FOR UPDATE", agent_id) is None:
                raise AgentNotFound(agent_id)  # deleted while compiling
            version = await conn.fetchval(
                "SELECT coalesce(max(version), 0) + 1 FROM agent_binaries WHERE agent_id = $1", agent_id)
            await conn.execute(
                "INSERT INTO agent_binaries (agent_id, version, sha256, size_bytes, imports, memory_min_bytes, "
                "uploaded_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                agent_id, version, sha256, info.size_bytes, info.imports, info.memory_min_bytes,
                who.token_id or "local")
            await self._make_current(conn, agent_id, version, f"binary version {version} uploaded ({sha256[:12]}, "
                                                              f"{info.size_bytes} bytes)")
        self._metrics.wasm_uploads.labels("accepted").inc()
        return await self.get(agent_id, version)

    async def rollback(self, who: Principal, agent_id: str, version: int) -> BinaryVersion:
        who.require_acting_as(agent_id)
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT 1 FROM agents WHERE id = $1 FOR UPDATE", agent_id) is None:
                raise AgentNotFound(agent_id)
            if await conn.fetchval("SELECT 1 FROM agent_binaries WHERE agent_id = $1 AND version = $2",
                                   agent_id, version) is None:
                raise NotFound(f"agent {agent_id!r} has no binary version {version}")
            await self._make_current(conn, agent_id, version, f"binary rolled back to version {version}")
        return await self.get(agent_id, version)

    @staticmethod
    async def _make_current(conn: Connection, agent_id: str, version: int, detail: str) -> None:
        await conn.execute("UPDATE agents SET binary_version = $2, updated_at = now() WHERE id = $1",
                           agent_id, version)
        await write_event(conn, agent_id, "binary", None, None, detail)

    async def get(self, agent_id: str, version: int | None = None) -> BinaryVersion:
        """A version's record (default: the current one)."""
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM agents a JOIN agent_binaries b ON b.agent_id = a.id "
            "WHERE a.id = $1 AND b.version = coalesce($2, a.binary_version)", agent_id, version)
        if row is None:
            await self._require_agent(agent_id)
            raise NotFound(f"agent {agent_id!r} has no binary" + (f" version {version}" if version else ""))
        return _version(row)

    async def versions(self, agent_id: str) -> BinaryVersions:
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM agents a JOIN agent_binaries b ON b.agent_id = a.id WHERE a.id = $1 "
            "ORDER BY b.version DESC", agent_id)
        if not rows:
            await self._require_agent(agent_id)
        versions = [_version(r) for r in rows]
        current = next((v.version for v in versions if v.current), None)
        return BinaryVersions(agent_id=agent_id, current=current, versions=versions)

    async def module(self, who: Principal, agent_id: str, version: int | None = None) -> tuple[BinaryVersion, bytes]:
        """The module's bytes: for operators and the agent itself (an agent's code is not for every viewer)."""
        who.require_acting_as(agent_id)
        record = await self.get(agent_id, version)
        return record, await self._store.get(record.sha256)

    async def run(self, who: Principal, req: SandboxRunInput) -> SandboxRunResult:
        """An operator's trial run of an agent's binary on an input, under the hub's trial-run limits."""
        who.require_operator()
        try:
            limits = RunLimits.model_validate({**self._settings.limits.model_dump(), **(req.limits or {})})
        except ValidationError as exc:
            raise InvalidInput(f"limits: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
        record = await self.get(req.agent_id, req.version)
        module = await self._cache.get(record.sha256)
        result = await self._runner.execute(module, json.dumps(req.input).encode(), limits)
        self._metrics.wasm_runs.labels(result.outcome.value).inc()
        return SandboxRunResult(**result.model_dump(), agent_id=req.agent_id, version=record.version,
                                sha256=record.sha256)

    async def upload_evaluator(self, who: Principal, wasm: bytes) -> EvaluatorInfo:
        """Store a module that checks task results (`market.service`: acceptance checks), checked like an agent's
        binary. Content-addressed: uploading the same bytes again returns the first record."""
        who.require_write()
        async with self._compiling:
            compiled = await compile_module(wasm, self._settings.compile_limits())
        sha256 = await self._store.put(wasm)
        await self._cache.add(sha256, compiled.artifact)
        info = compiled.info
        await self._pool.execute(
            "INSERT INTO evaluators (sha256, size_bytes, imports, uploaded_by) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (sha256) DO NOTHING", sha256, info.size_bytes, info.imports, who.token_id or "local")
        row = await self._pool.fetchrow("SELECT * FROM evaluators WHERE sha256 = $1", sha256)
        assert row is not None  # inserted above, or by an earlier upload of the same bytes; never deleted
        return EvaluatorInfo(**{**dict(row), "imports": list(row["imports"])})

    async def evaluator_exists(self, sha256: str) -> bool:
        return bool(await self._pool.fetchval("SELECT 1 FROM evaluators WHERE sha256 = $1", sha256))

    async def evaluate(self, sha256: str, stdin: bytes) -> RunResult:
        """Run an evaluator on `stdin` under the hub's trial-run limits."""
        result = await self._runner.execute(await self._cache.get(sha256), stdin, self._settings.limits)
        self._metrics.wasm_runs.labels(result.outcome.value).inc()
        return result

    def stop_runs(self) -> None:
        """Stop the trial runs in progress and refuse new ones (`ServiceUnavailable`): for the start of shutdown."""
        self._runner.stop()

    async def _require_agent(self, agent_id: str) -> None:
        if await self._pool.fetchval("SELECT 1 FROM agents WHERE id = $1", agent_id) is None:
            raise AgentNotFound(agent_id)
