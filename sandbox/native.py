"""The wasmtime C API calls of a run, made directly: for a small module wasmtime-py's wrappers cost more than the
run itself (building an `Instance` wraps every export; calling a `Func` looks up its type; a host function gets
its arguments converted one `Val` at a time and a `Caller` object).

- `instantiate` from an `InstancePre` (the linker's imports resolved once per module, not per run), `export` one
  export by name, `call` a function of no arguments and no results, `memory_size` of a memory export;
- `host_function`: a host function with raw arguments, every one an unsigned i32, and the guest's memory
  (address and size, or None without a `memory` export); it returns the i32 result.

An exception a host function raises ends the guest's call with a trap, and `instantiate` or `call` raises it again
on the thread that ran the guest (wasmtime-py keeps it in one global, which another thread's call could read).
`instantiate` and `call` raise wasmtime-py's own errors otherwise: `ExitTrap`, `Trap`, `WasmtimeError`.

wasmtime-py binds these calls (`wasmtime._bindings`) but does not expose them; the wasmtime version is pinned.
"""

import ctypes
import threading
from collections.abc import Callable
from typing import Any

from wasmtime import FuncType, InstancePre, Linker, Store, Trap, ValType, WasmtimeError, _bindings

_FUNC, _MEMORY = 0, 3  # WASMTIME_EXTERN_FUNC, WASMTIME_EXTERN_MEMORY
_U32_MASK = 0xFFFF_FFFF
_MEMORY_NAME = b"memory"
_HOST_TRAP = b"agenthub: a host function raised"
_NO_FINALIZER = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))
_raised = threading.local()  # the exception a host function raised, until the guest's call returns

Context = Any  # wasmtime_context_t *, valid while its store is open
Memory = tuple[int, int] | None  # the guest memory's address and size, valid until the guest runs again
HostBody = Callable[..., int]  # (memory, *unsigned i32 arguments) -> i32 result


def context(store: Store) -> Context:
    return store._context()


def instantiate(pre: InstancePre, context: Context) -> Any:
    """An instance of `pre`'s module in the store of `context` (a `wasmtime_instance_t`)."""
    instance = _bindings.wasmtime_instance_t()
    trap = ctypes.POINTER(_bindings.wasm_trap_t)()
    error = _bindings._wasmtime_instance_pre_instantiate(pre.ptr(), context, ctypes.byref(instance),
                                                          ctypes.byref(trap))
    _raise_failure(error, trap)
    return instance


def export(context: Context, instance: Any, name: bytes) -> Any | None:
    """The export `name` of `instance` (a `wasmtime_extern_t`), or None."""
    item = _bindings.wasmtime_extern_t()
    if not _bindings._wasmtime_instance_export_get(context, ctypes.byref(instance), name, len(name),
                                                   ctypes.byref(item)):
        return None
    return item


def call(context: Context, item: Any) -> None:
    """Call the function export `item` with no arguments and no results."""
    if item is None or item.kind != _FUNC:
        raise WasmtimeError("the export is not a function")
    trap = ctypes.POINTER(_bindings.wasm_trap_t)()
    error = _bindings._wasmtime_func_call(context, ctypes.byref(item.of.func), None, 0, None, 0, ctypes.byref(trap))
    _raise_failure(error, trap)


def memory_size(context: Context, item: Any | None) -> int:
    """The size in bytes of the memory export `item`; 0 if it is not a memory."""
    if item is None or item.kind != _MEMORY:
        return 0
    size: int = _bindings._wasmtime_memory_data_size(context, ctypes.byref(item.of.memory))
    return size


def _raise_failure(error: Any, trap: Any) -> None:
    raised: BaseException | None = getattr(_raised, "exception", None)
    if not error and not trap:
        return
    failure = WasmtimeError._from_ptr(error) if error else Trap._from_ptr(trap)
    if raised is not None:
        _raised.exception = None
        del failure  # its native error goes now
        raise raised
    raise failure


def _caller_memory(caller: Any) -> Memory:
    item: Any = _bindings.wasmtime_extern_t()
    if not _bindings._wasmtime_caller_export_get(caller, _MEMORY_NAME, len(_MEMORY_NAME), ctypes.byref(item)) \
            or item.kind != _MEMORY:
        return None
    context = _bindings._wasmtime_caller_context(caller)
    memory = ctypes.byref(item.of.memory)
    base = ctypes.cast(_bindings._wasmtime_memory_data(context, memory), ctypes.c_void_p).value or 0
    return base, _bindings._wasmtime_memory_data_size(context, memory)


def host_function(body: HostBody, params: int) -> Any:
    """A C callback for `define`: `body(memory, *arguments)` with `params` unsigned i32 arguments. Keep it alive
    as long as a linker may use it (a module-level name)."""

    def callback(env: Any, caller: Any, raw: Any, count: int) -> int:
        try:
            arguments = [raw[n].i32 & _U32_MASK for n in range(params)]
            raw[0].i32 = body(_caller_memory(caller), *arguments)
            return 0
        except BaseException as exc:  # ends the guest's call; `instantiate` or `call` raises it on this thread
            _raised.exception = exc
            trap = _bindings.wasmtime_trap_new(_HOST_TRAP, len(_HOST_TRAP))
            return ctypes.cast(trap, ctypes.c_void_p).value or 0  # never 0: wasmtime owns the trap now

    return _bindings.wasmtime_func_unchecked_callback_t(callback)


def define(linker: Linker, module: str, name: str, params: int, callback: Any) -> None:
    """Define `module.name` on `linker` as `callback` (from `host_function`), of `params` i32s to one i32."""
    i32 = ValType.i32()
    kind = FuncType([i32] * params, [i32])
    module_name, func_name = module.encode(), name.encode()
    error = _bindings.wasmtime_linker_define_func_unchecked(linker.ptr(), module_name, len(module_name), func_name,
                                                            len(func_name), kind.ptr(), callback, None,
                                                            _NO_FINALIZER)
    if error:
        raise WasmtimeError._from_ptr(error)
