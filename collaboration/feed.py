"""The live discovery feed of one hub replica: every discovery exactly once, in sequence order, to whoever listens.

NATS `discoveries.>` brings discoveries from every replica, possibly out of order (two replicas publish
concurrently) or not at all (a publish failed). The feed keeps a frontier (the highest sequence delivered)
and delivers only the next one; when a later one arrives first, or a periodic check of the log's counter finds
the frontier behind, the missing range is read from PostgreSQL. So listeners see a gap-free, ordered stream.

Listeners are bounded streams (SSE clients); one that is full when an event arrives is closed and dropped,
never waited for, and can resume from the log by sequence. Pollers wait on `wait_beyond`. Hooks (MCP resource
notifications) run for each event in order.
"""

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from nats.aio.msg import Msg
from pydantic import ValidationError
from sse_starlette import ServerSentEvent

from agenthub.bus import Bus
from collaboration.discoveries import DiscoveryLog
from collaboration.filters import DiscoveryFilter
from collaboration.models import Discovery

logger = logging.getLogger(__name__)

Hook = Callable[[Discovery], Awaitable[None]]


@dataclass(slots=True, kw_only=True)
class FeedEvent:
    """One discovery, with its Server-Sent Events frame encoded once for every listener."""

    discovery: Discovery
    frame: bytes


def encode_event(d: Discovery) -> FeedEvent:
    """The SSE `discovery` event: id is the sequence; data holds the discovery and the MCP notification."""
    uri = json.dumps(d.uri)
    notification = f'{{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{{"uri":{uri}}}}}'
    data = f'{{"discovery":{d.model_dump_json()},"uri":{uri},"notification":{notification}}}'
    return FeedEvent(discovery=d, frame=ServerSentEvent(data, event="discovery", id=str(d.sequence)).encode())


@dataclass(eq=False, slots=True, kw_only=True)
class Listener:
    flt: DiscoveryFilter
    send: MemoryObjectSendStream[FeedEvent]
    receive: MemoryObjectReceiveStream[FeedEvent]
    registered_at: int
    dropped: bool = field(default=False)


class DiscoveryFeed:
    def __init__(self, log: DiscoveryLog, bus: Bus, *, queue_size: int, sync_interval: float = 1.0,
                 on_drop: Callable[[], None] = lambda: None) -> None:
        self._log = log
        self._bus = bus
        self._queue_size = queue_size
        self._sync_interval = sync_interval
        self._on_drop = on_drop
        self.frontier = 0
        self._pending: dict[int, Discovery] = {}
        self._listeners: set[Listener] = set()
        self._hooks: list[Hook] = []
        self._advanced = anyio.Event()
        self._lock = anyio.Lock()
        self._tg: TaskGroup | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("DiscoveryFeed is already running")
        self.frontier = await self._log.newest_sequence()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._sub = await self._bus.subscribe("discoveries.>", self._on_message)
        self._tg.start_soon(self._sync_forever)
        logger.info("discovery feed started at sequence %d", self.frontier)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
                        ) -> None:
        assert self._tg is not None
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self._sub.unsubscribe()
        self.end_listeners()
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(et, e, tb)

    # -- consumers -----------------------------------------------------------------------------------------------

    def add_hook(self, hook: Hook) -> None:
        self._hooks.append(hook)

    def listen(self, flt: DiscoveryFilter) -> Listener:
        """Register a bounded listener; it receives every matching discovery after `listener.registered_at`."""
        send, receive = anyio.create_memory_object_stream[FeedEvent](self._queue_size)
        listener = Listener(flt=flt, send=send, receive=receive, registered_at=self.frontier)
        self._listeners.add(listener)
        return listener

    def unlisten(self, listener: Listener) -> None:
        self._listeners.discard(listener)
        listener.send.close()
        listener.receive.close()

    def end_listeners(self) -> None:
        """End every listener's stream (the hub is shutting down); their clients resume elsewhere or later."""
        for listener in list(self._listeners):
            self._listeners.discard(listener)
            listener.send.close()

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    async def wait_beyond(self, sequence: int, seconds: float) -> None:
        """Return when the frontier passes `sequence`, or after `seconds`."""
        with anyio.move_on_after(seconds):
            while self.frontier <= sequence:
                await self._advanced.wait()

    # -- feeding ---------------------------------------------------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        try:
            d = Discovery.model_validate_json(msg.data)
        except ValidationError:
            logger.warning("ignoring malformed discovery on %s", msg.subject)
            return
        async with self._lock:
            if d.sequence <= self.frontier:
                return
            self._pending[d.sequence] = d
            if d.sequence > self.frontier + 1:
                await self._fill(d.sequence - 1)
            await self._deliver_ready()

    async def _sync_forever(self) -> None:
        while True:
            await anyio.sleep(self._sync_interval)
            try:
                newest = await self._log.newest_sequence()
                if newest > self.frontier:
                    async with self._lock:
                        await self._fill(newest)
                        await self._deliver_ready()
            except Exception:  # the database may be briefly unreachable; the next tick tries again
                logger.exception("discovery feed sync failed")

    async def _fill(self, upto: int) -> None:
        missing = [s for s in range(self.frontier + 1, upto + 1) if s not in self._pending]
        if missing:
            for d in await self._log.read_range(missing[0], missing[-1]):
                self._pending.setdefault(d.sequence, d)

    async def _deliver_ready(self) -> None:
        while (d := self._pending.pop(self.frontier + 1, None)) is not None:
            self.frontier = d.sequence
            event = encode_event(d)
            for listener in list(self._listeners):
                if listener.flt.matches(d):
                    try:
                        listener.send.send_nowait(event)
                    except anyio.WouldBlock:
                        self._drop(listener)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        self._listeners.discard(listener)
            for hook in self._hooks:
                try:
                    await hook(d)
                except Exception:  # one failing notifier must not stop delivery to everyone else
                    logger.exception("discovery hook failed")
        self._pending = {s: d for s, d in self._pending.items() if s > self.frontier}
        self._advanced.set()
        self._advanced = anyio.Event()

    def _drop(self, listener: Listener) -> None:
        listener.dropped = True
        self._listeners.discard(listener)
        listener.send.close()
        self._on_drop()
        logger.info("dropped a slow discovery listener at sequence %d", self.frontier)
