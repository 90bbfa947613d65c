"""Compiling and checking an untrusted module, in a child process under CPU, memory and wall-clock limits.

Wasmtime treats a denial of service while compiling as the embedder's problem, so compilation never happens in
the hub's (or an agent's) own process: `compile_module` runs `python -m sandbox.compiler` with the module in a
temporary directory; the child sets its rlimits before reading it, compiles it with the runner's engine
configuration, checks the ABI (a WASI command module: exports `_start: () -> ()` and `memory`, imports only WASI
preview 1 functions, starts with no more memory than the cap) and writes the serialized module next to it.
"""

import contextlib
import hashlib
import json
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

import anyio
from pydantic import BaseModel
from wasmtime import Engine, FuncType, MemoryType, Module, WasmtimeError

from agenthub.errors import InvalidModule
from sandbox.models import CompileLimits, ModuleInfo
from sandbox.runner import engine_config
from sandbox.wasi import WASI, wasi_linker

WASM_MAGIC = b"\0asm\x01\0\0\0"  # a core module, binary format version 1 (components are version 0x0d)
_INPUT, _ARTIFACT = "module.wasm", "module.cwasm"
_BAD_MODULE = 3  # the child's exit code for a module it rejected (its reason on stdout)


class Compiled(BaseModel):
    info: ModuleInfo
    artifact: bytes


def check_header(wasm: bytes, max_bytes: int) -> None:
    """The checks that need no compiler: size first, then the magic number and version."""
    if len(wasm) > max_bytes:
        raise InvalidModule(f"the module is {len(wasm)} bytes; the limit is {max_bytes}")
    if not wasm.startswith(WASM_MAGIC):
        if wasm[:4] == WASM_MAGIC[:4]:
            raise InvalidModule("this is a WebAssembly component, not a core module: upload a WASI preview 1 "
                                "command module (see docs/wasm.md)")
        raise InvalidModule("not a WebAssembly binary module: it must start with \\0asm and version 1 "
                            "(compile WAT sources first, e.g. with `agenthub agent binary upload`, which does)")


async def compile_module(wasm: bytes, limits: CompileLimits) -> Compiled:
    """Compile and check `wasm` in a limited child process; `InvalidModule` with the reason if it is refused."""
    check_header(wasm, limits.max_module_bytes)
    wall = limits.cpu_seconds * 2 + 5
    with tempfile.TemporaryDirectory(prefix="agenthub-wasm-") as tmp:
        work = Path(tmp)
        (work / _INPUT).write_bytes(wasm)
        args = (work, limits.cpu_seconds, limits.memory_bytes, limits.memory_cap_bytes)
        with anyio.move_on_after(wall) as timer:
            if os.access(sys.executable, os.X_OK):
                done = await anyio.run_process([sys.executable, "-m", "sandbox.compiler", *map(str, args)],
                                               check=False, start_new_session=True)
                code, stdout, stderr = done.returncode, done.stdout, done.stderr
            else:  # a confined agent's user may not reach the interpreter (agent_pool.confinement): fork instead
                code, stdout, stderr = await _forked_child(*args)
        if timer.cancelled_caught:  # the child was killed on cancellation
            raise InvalidModule(f"compiling the module took longer than {wall} s")
        if code == 0:
            info = ModuleInfo.model_validate_json(stdout)
            return Compiled(info=info, artifact=(work / _ARTIFACT).read_bytes())
        if code == _BAD_MODULE:
            raise InvalidModule(stdout.decode(errors="replace").strip())
        raise InvalidModule(_crash_reason(code, stderr, limits))


async def _forked_child(work: Path, cpu_seconds: int, memory_bytes: int, memory_cap: int) -> tuple[int, bytes, bytes]:
    """`_child` in a fork of this process: its return code, stdout and stderr."""
    out, err = work / "stdout", work / "stderr"
    pid = os.fork()
    if pid == 0:  # the child: never return into the caller's event loop
        code = 1
        try:
            os.setsid()
            for fd, path in ((1, out), (2, err)):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
            code = _child(work, cpu_seconds, memory_bytes, memory_cap)
        finally:
            sys.stdout.flush()
            os._exit(code)
    try:
        status = await anyio.to_thread.run_sync(os.waitpid, pid, 0, abandon_on_cancel=True)
    except BaseException:
        with anyio.CancelScope(shield=True), contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.killpg(pid, signal.SIGKILL)
            await anyio.to_thread.run_sync(os.waitpid, pid, 0)  # unless the abandoned wait reaped it first
        raise
    return os.waitstatus_to_exitcode(status[1]), out.read_bytes(), err.read_bytes()


def _crash_reason(code: int, stderr: bytes, limits: CompileLimits) -> str:
    if code in (-signal.SIGXCPU, -signal.SIGKILL):
        return f"compiling the module needed more than {limits.cpu_seconds} s of CPU"
    if b"MemoryError" in stderr or b"memory allocation" in stderr or code == -signal.SIGABRT:
        return f"compiling the module needed more than {limits.memory_bytes} bytes of memory"
    last = stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {code}"]
    return f"the compiler failed: {last[0][:500]}"


# -- the child process -------------------------------------------------------------------------------------------


def _check(engine: Engine, module: Module, memory_cap: int) -> list[str]:
    """The ABI check; raises `ValueError` with the reason."""
    exports = {e.name: e.type for e in module.exports}
    start = exports.get("_start")
    if not isinstance(start, FuncType):
        raise ValueError("the module does not export a function `_start`: the ABI is a WASI command module "
                         "(see docs/wasm.md)")
    if start.params or start.results:
        raise ValueError("`_start` must take no parameters and return nothing")
    memory = exports.get("memory")
    if not isinstance(memory, MemoryType):
        raise ValueError("the module does not export its memory as `memory`")
    imports = [f"{i.module}.{i.name}" for i in module.imports]
    foreign = [name for i, name in zip(module.imports, imports, strict=True) if i.module != WASI]
    if foreign:
        raise ValueError(f"the module imports {', '.join(foreign[:5])}: only {WASI} functions are available")
    if memory.limits.min * 65536 > memory_cap:
        raise ValueError(f"the module starts with {memory.limits.min * 65536} bytes of memory; the cap is "
                         f"{memory_cap}")
    try:
        wasi_linker(engine).instantiate_pre(module)
    except WasmtimeError as exc:
        raise ValueError(f"the module's WASI imports do not match preview 1: {str(exc).splitlines()[0]}") from None
    return imports


def _child(work: Path, cpu_seconds: int, memory_bytes: int, memory_cap: int) -> int:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    engine = Engine(engine_config())
    wasm = (work / _INPUT).read_bytes()
    started = time.perf_counter()
    try:
        module = Module(engine, wasm)
    except WasmtimeError as exc:
        print(f"not a valid WebAssembly module: {str(exc).splitlines()[0]}")
        return _BAD_MODULE
    compile_ms = (time.perf_counter() - started) * 1000
    try:
        imports = _check(engine, module, memory_cap)
    except ValueError as exc:
        print(exc)
        return _BAD_MODULE
    memory_min = next(e.type.limits.min for e in module.exports if isinstance(e.type, MemoryType)) * 65536
    (work / _ARTIFACT).write_bytes(module.serialize())
    info = ModuleInfo(sha256=hashlib.sha256(wasm).hexdigest(), size_bytes=len(wasm), imports=imports,
                      memory_min_bytes=memory_min, compile_ms=round(compile_ms, 3))
    print(json.dumps(info.model_dump()))
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
