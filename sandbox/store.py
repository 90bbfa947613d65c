"""Where module bytes live: content-addressed by SHA-256, behind one small interface.

`LocalBinaryStore` keeps them under the data directory (`wasm/modules/ab/abcdef....wasm`), written to a
temporary file and renamed, so a reader sees a whole module or none. An S3-compatible store would be a second
implementation of `BinaryStore`; none is built yet.
"""

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol

import anyio

from agenthub.errors import NotFound


class BinaryStore(Protocol):
    async def put(self, data: bytes) -> str:
        """Store `data`; returns its SHA-256 (hex). Storing the same bytes twice is a no-op."""
        ...

    async def get(self, sha256: str) -> bytes:
        """The bytes stored under `sha256`; `NotFound` if there are none."""
        ...


class LocalBinaryStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.wasm"

    async def put(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        await anyio.to_thread.run_sync(self._write, self._path(sha256), data)
        return sha256

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    async def get(self, sha256: str) -> bytes:
        path = self._path(sha256)
        try:
            data = await anyio.Path(path).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no module with SHA-256 {sha256} in the binary store") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise NotFound(f"the stored module {sha256} is corrupt (its SHA-256 does not match)")
        return data
