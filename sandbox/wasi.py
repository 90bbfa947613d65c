"""WASI preview 1 as a guest sees it: wasmtime's own, with a context that grants nothing, except for the calls that
could outlast the run's limits, which are host functions of ours.

- `fd_read` / `fd_write`: stdin is the input, in memory; stdout is bounded (the guest is stopped the moment it
  writes past `output_bytes`); stderr keeps its first `log_bytes`.
- `poll_oneoff`: clocks sleep at most until the run's deadline and wake at once when the run is stopped; stdin,
  stdout and stderr are always ready (they are memory). wasmtime's own sleeps in native code that no epoch
  interrupts: a guest asleep there ran 15 s past a 1 s deadline, and its runner thread with it.
- `random_get`: filled a MiB at a time, the run checked between (wasmtime's fills 64 MiB in about 0.2 s, at once).

Every one of them first checks the run (`Guest.check`): past its deadline, or stopped, the guest ends there. No
other call blocks: there are no files, directories, sockets or terminal, and wasmtime's stdin is empty.

They are host functions with raw arguments (`sandbox.native`): guest pointers arrive as unsigned addresses,
checked against the memory's size, never trusted.
"""

import ctypes
import os
import struct
import time
from typing import NamedTuple

from wasmtime import Engine, Linker

from sandbox import native
from sandbox.guest import Guest, GuestStopped, OutputTooLarge, current_guest
from sandbox.native import Memory

WASI = "wasi_snapshot_preview1"
_EBADF, _EFAULT, _EINVAL = 8, 21, 28  # WASI errno values
_IOV_MAX = 1024  # iovecs per call, as POSIX's IOV_MAX: a guest cannot make the host build a huge list
_POLL_MAX = 1024  # subscriptions per poll, for the same reason (a guest has three descriptors to poll)
_RANDOM_CHUNK = 1 << 20
_IOVEC = struct.Struct("<II")
_U32 = struct.Struct("<I")
# subscription: userdata, tag, clock id or fd, timeout (ns), precision, flags; event: userdata, errno, type,
# nbytes, flags (WASI preview 1's layouts: 48 and 32 bytes)
_SUBSCRIPTION = struct.Struct("<QB7xI4xQQH6x")
_EVENT = struct.Struct("<QHB5xQH6x")
_CLOCK, _FD_READ, _FD_WRITE = 0, 1, 2  # eventtype, also the subscription's tag
_REALTIME, _MONOTONIC = 0, 1  # clockid
_ABSTIME = 1  # subclockflags
_HANGUP = 1  # eventrwflags


def _guest() -> Guest:
    guest = current_guest()
    if guest is None:  # a store of ours run outside `Runner.run`: nothing may run without its limits
        raise GuestStopped("no run")
    guest.check()
    return guest


class _Call(NamedTuple):
    """A checked fd_read or fd_write: the guest memory's address, its buffers and where the count goes."""

    base: int
    vecs: list[tuple[int, int]]
    result: int


def _io_call(memory: Memory, iovs: int, count: int, result: int) -> _Call | int:
    """The call's arguments if the iovec array, every buffer it names and the result slot lie inside the guest's
    memory; otherwise the errno to return."""
    if count > _IOV_MAX:
        return _EINVAL
    if memory is None:
        return _EBADF
    base, size = memory
    if iovs + 8 * count > size or result + 4 > size:
        return _EFAULT
    vecs = list(_IOVEC.iter_unpack(ctypes.string_at(base + iovs, 8 * count)))
    if any(ptr + length > size for ptr, length in vecs):
        return _EFAULT
    return _Call(base, vecs, result)


def _fd_read(memory: Memory, fd: int, iovs: int, count: int, nread: int) -> int:
    io = _guest()
    call = _io_call(memory, iovs, count, nread) if fd == 0 else _EBADF
    if isinstance(call, int):
        return call
    base, vecs, nread = call
    total = 0
    for ptr, length in vecs:
        chunk = io.stdin[io.read:io.read + length]
        ctypes.memmove(base + ptr, chunk, len(chunk))
        io.read += len(chunk)
        total += len(chunk)
        if len(chunk) < length:
            break
    ctypes.memmove(base + nread, _U32.pack(total), 4)
    return 0


def _fd_write(memory: Memory, fd: int, iovs: int, count: int, nwritten: int) -> int:
    io = _guest()
    call = _io_call(memory, iovs, count, nwritten) if fd in (1, 2) else _EBADF
    if isinstance(call, int):
        return call
    base, vecs, nwritten = call
    total = sum(length for _, length in vecs)
    if fd == 1:
        if len(io.out) + total > io.out_limit:
            io.overflow = True
            raise OutputTooLarge
        for ptr, length in vecs:
            io.out += ctypes.string_at(base + ptr, length)
    else:
        for ptr, length in vecs:
            room = io.err_limit - len(io.err)
            if room > 0:
                io.err += ctypes.string_at(base + ptr, min(length, room))
    ctypes.memmove(base + nwritten, _U32.pack(total), 4)
    return 0


def _poll_oneoff(memory: Memory, subs: int, events: int, count: int, nevents: int) -> int:
    """Wait for the first of the subscriptions (clocks, or stdio, which is always ready), as wasmtime's does, but
    never past the run's deadline. Clock ids other than realtime and monotonic are refused (EINVAL), as there."""
    guest = _guest()
    if count == 0 or count > _POLL_MAX:  # no subscriptions: wasmtime refuses to sleep forever, so do we
        return _EINVAL
    if memory is None:
        return _EBADF
    base, size = memory
    if subs + _SUBSCRIPTION.size * count > size or events + _EVENT.size * count > size or nevents + 4 > size:
        return _EFAULT
    now = time.monotonic_ns()
    pending: list[bytes | tuple[int, int]] = []  # per subscription: its event if ready now, else (wake at, userdata)
    for userdata, tag, ident, timeout, _, flags in _SUBSCRIPTION.iter_unpack(
            ctypes.string_at(base + subs, _SUBSCRIPTION.size * count)):
        if tag == _CLOCK:
            if ident == _MONOTONIC:
                wake = guest.clock_origin_ns + timeout if flags & _ABSTIME else now + timeout
            elif ident == _REALTIME:
                wake = now + (timeout - time.time_ns() if flags & _ABSTIME else timeout)
            else:
                return _EINVAL
            pending.append((wake, userdata))
        elif tag == _FD_READ and ident == 0:
            left = len(guest.stdin) - guest.read
            pending.append(_EVENT.pack(userdata, 0, _FD_READ, left, 0 if left else _HANGUP))
        elif tag == _FD_WRITE and ident in (1, 2):
            room = guest.out_limit - len(guest.out) if ident == 1 else max(guest.err_limit - len(guest.err), 0)
            pending.append(_EVENT.pack(userdata, 0, _FD_WRITE, max(room, 0), 0))
        else:
            return _EBADF if tag in (_FD_READ, _FD_WRITE) else _EINVAL
    if not any(isinstance(p, bytes) for p in pending):  # only clocks: sleep until the first is due
        guest.sleep_until(min(p[0] for p in pending if isinstance(p, tuple)))
    now = time.monotonic_ns()
    ready = [p if isinstance(p, bytes) else _EVENT.pack(p[1], 0, _CLOCK, 0, 0) for p in pending
             if isinstance(p, bytes) or p[0] <= now]
    ctypes.memmove(base + events, b"".join(ready), _EVENT.size * len(ready))
    ctypes.memmove(base + nevents, _U32.pack(len(ready)), 4)
    return 0


def _random_get(memory: Memory, buf: int, length: int) -> int:
    guest = _guest()
    if memory is None:
        return _EBADF
    base, size = memory
    if buf + length > size:
        return _EFAULT
    for start in range(0, length, _RANDOM_CHUNK):
        if start:
            guest.check()
        chunk = os.urandom(min(_RANDOM_CHUNK, length - start))
        ctypes.memmove(base + buf + start, chunk, len(chunk))
    return 0


# name, parameter count, C callback: module-level, so they live as long as any linker that uses them
_HOST_FUNCTIONS = [(name, params, native.host_function(body, params)) for name, params, body in (
    ("fd_read", 4, _fd_read), ("fd_write", 4, _fd_write), ("poll_oneoff", 4, _poll_oneoff),
    ("random_get", 2, _random_get))]


def wasi_linker(engine: Engine) -> Linker:
    """WASI preview 1, with the calls above replaced by host functions that keep to the run's limits."""
    linker = Linker(engine)
    linker.define_wasi()
    linker.allow_shadowing = True
    for name, params, callback in _HOST_FUNCTIONS:
        native.define(linker, WASI, name, params, callback)
    linker.allow_shadowing = False
    return linker
