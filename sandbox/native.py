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
import struct
import threading
from collections.abc import Callable
from typing import Any

from wasmtime import FuncType, InstancePre, Linker, Store, Trap, ValType, WasmtimeError, _bindings
from wasmtime._ffi import dll

_FUNC, _MEMORY = 0, 3  # WASMTIME_EXTERN_FUNC, WASMTIME_EXTERN_MEMORY
_EXTERN_SIZE, _EXTERN_OF = 32, 8  # a wasmtime_extern_t: its kind, and where its union starts
_RAW_SIZE = 16  # a wasmtime_val_raw_t
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


# The calls a host function makes, with addresses as plain integers: wasmtime-py's bindings build a ctypes object
# for each pointer they take or return.
_void_p, _size_t = ctypes.c_void_p, ctypes.c_size_t
_caller_export_get = ctypes.CFUNCTYPE(ctypes.c_bool, _void_p, ctypes.c_char_p, _size_t, _void_p)(
    ("wasmtime_caller_export_get", dll))
_caller_context = ctypes.CFUNCTYPE(_void_p, _void_p)(("wasmtime_caller_context", dll))
_memory_data = ctypes.CFUNCTYPE(_void_p, _void_p, _void_p)(("wasmtime_memory_data", dll))
_memory_data_size = ctypes.CFUNCTYPE(_size_t, _void_p, _void_p)(("wasmtime_memory_data_size", dll))
_trap_new = ctypes.CFUNCTYPE(_void_p, ctypes.c_char_p, _size_t)(("wasmtime_trap_new", dll))
_Callback = ctypes.CFUNCTYPE(_void_p, _void_p, _void_p, _void_p, _size_t)


def _caller_memory(caller: int) -> Memory:
    item = (ctypes.c_uint8 * _EXTERN_SIZE)()
    if not _caller_export_get(caller, _MEMORY_NAME, len(_MEMORY_NAME), item) or item[0] != _MEMORY:
        return None
    context = _caller_context(caller)
    memory = ctypes.addressof(item) + _EXTERN_OF
    return _memory_data(context, memory) or 0, _memory_data_size(context, memory)


def host_function(body: HostBody, params: int) -> Any:
    """A C callback for `define`: `body(memory, *arguments)` with `params` unsigned i32 arguments. Keep it alive
    as long as a linker may use it (a module-level name)."""
    arguments = struct.Struct("<" + f"I{_RAW_SIZE - 4}x" * params)

    def callback(env: int | None, caller: int, raw: int, count: int) -> int:
        try:
            result = body(_caller_memory(caller), *arguments.unpack(ctypes.string_at(raw, arguments.size)))
            ctypes.c_int32.from_address(raw).value = result
            return 0
        except BaseException as exc:  # ends the guest's call; `instantiate` or `call` raises it on this thread
            _raised.exception = exc
            trap: int = _trap_new(_HOST_TRAP, len(_HOST_TRAP))  # wasmtime owns it once returned
            return trap

    return ctypes.cast(_Callback(callback), _bindings.wasmtime_func_unchecked_callback_t)


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
