"""Compiled modules by SHA-256 for one runner: in memory (least recently used out), then a serialized artifact
on disk, then a fresh compile (in the limited compiler process) from the module's bytes."""

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path

import anyio
from wasmtime import Module

from sandbox.compiler import compile_module
from sandbox.models import CompileLimits
from sandbox.runner import Runner

# Serialized modules load only into the wasmtime that wrote them: the version is part of the artifact's name.
_ARTIFACT_SUFFIX = f"-wasmtime-{version('wasmtime')}.cwasm"


class ModuleCache:
    def __init__(self, runner: Runner, limits: CompileLimits, source: Callable[[str], Awaitable[bytes]], *,
                 artifacts: Path | None = None, size: int = 32) -> None:
        self._runner = runner
        self._limits = limits
        self._source = source
        self._artifacts = artifacts
        self._size = size
        self._modules: OrderedDict[str, Module] = OrderedDict()
        self._loading = anyio.Lock()

    async def get(self, sha256: str) -> Module:
        module = self._modules.get(sha256)
        if module is not None:
            self._modules.move_to_end(sha256)
            return module
        async with self._loading:  # one load at a time: a module asked for twice is compiled once
            if sha256 not in self._modules:
                self._remember(sha256, await self._load(sha256))
            return self._modules[sha256]

    async def add(self, sha256: str, artifact: bytes) -> None:
        """A module just compiled elsewhere (an upload): keep it, in memory and as an artifact."""
        self._remember(sha256, self._runner.load(artifact))
        await self._save(sha256, artifact)

    def _remember(self, sha256: str, module: Module) -> None:
        self._modules[sha256] = module
        self._modules.move_to_end(sha256)
        while len(self._modules) > self._size:
            self._modules.popitem(last=False)

    async def _load(self, sha256: str) -> Module:
        artifact = anyio.Path(self._artifacts / (sha256 + _ARTIFACT_SUFFIX)) if self._artifacts else None
        if artifact is not None and await artifact.exists():  # else not compiled here (or by this wasmtime) yet
            return self._runner.load(await artifact.read_bytes())
        compiled = await compile_module(await self._source(sha256), self._limits)
        await self._save(sha256, compiled.artifact)
        return self._runner.load(compiled.artifact)

    async def _save(self, sha256: str, artifact: bytes) -> None:
        if self._artifacts is None:
            return
        path = anyio.Path(self._artifacts / (sha256 + _ARTIFACT_SUFFIX))
        await path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part")
        await part.write_bytes(artifact)
        await part.rename(path)
