"""The live discovery feed of one hub replica: every discovery exactly once, in sequence order, to whoever listens.

NATS `discoveries.>` brings discoveries from every replica, possibly out of order (two replicas publish
concurrently) or not at all (a publish failed). The feed keeps a frontier (the highest sequence delivered)
and delivers only the next one; when a later one arrives first, or a periodic check of the log's counter finds
the frontier behind, the missing range is read from PostgreSQL. So listeners see a gap-free, ordered stream.

Delivered events go into a bounded ring shared by every stream: publishing an event costs the same for one
client as for a thousand, and a stream that wakes up late takes everything it missed in one go. The feed never
waits for a stream; one that falls further behind than the ring reaches reads the log instead (`events_after`
returns None). Pollers wait on `wait_beyond`. Hooks (MCP resource notifications) run for each event in order.
"""

import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup
from nats.aio.msg import Msg
from pydantic import ValidationError
from sse_starlette import ServerSentEvent

from agenthub.bus import Bus
from collaboration.discoveries import DiscoveryLog
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


class DiscoveryFeed:
    def __init__(self, log: DiscoveryLog, bus: Bus, *, ring_size: int, sync_interval: float) -> None:
        self._log = log
        self._bus = bus
        self._sync_interval = sync_interval
        self.frontier = 0
        self._pending: dict[int, Discovery] = {}
        self._ring: deque[FeedEvent] = deque(maxlen=ring_size)  # the latest events, consecutive sequences
        self._streams = 0
        self._ending = False
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
        self.end_streams()
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(et, e, tb)

    # -- consumers -----------------------------------------------------------------------------------------------

    def add_hook(self, hook: Hook) -> None:
        self._hooks.append(hook)

    def add_stream(self) -> None:
        """Count a live stream (an SSE client); `remove_stream` when it ends."""
        self._streams += 1

    def remove_stream(self) -> None:
        self._streams -= 1

    @property
    def stream_count(self) -> int:
        return self._streams

    def end_streams(self) -> None:
        """The hub is shutting down: every `events_after` returns [] from now on, so streams end."""
        self._ending = True
        self._advanced.set()

    async def events_after(self, sequence: int) -> list[FeedEvent] | None:
        """Wait until the feed has delivered past `sequence`, then return every event after it, oldest first.

        None means the ring no longer reaches back to `sequence`: the caller reads the log from there instead.
        An empty list means the feed is ending.
        """
        while self.frontier <= sequence and not self._ending:
            await self._advanced.wait()
        if self._ending:
            return []
        missed = self.frontier - sequence  # the ring ends at the frontier, so they are its last `missed` events
        if missed > len(self._ring):
            return None
        return [self._ring[-i] for i in range(missed, 0, -1)]  # indexing from the right end: O(missed)

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
        await self._advance(d.sequence, arrived=d)

    async def _sync_forever(self) -> None:
        while True:
            await anyio.sleep(self._sync_interval)
            try:
                await self._advance(await self._log.newest_sequence())
            except Exception:  # the database may be briefly unreachable; the next tick tries again
                logger.exception("discovery feed sync failed")

    async def _advance(self, upto: int, *, arrived: Discovery | None = None) -> None:
        """Deliver everything up to `upto` (with `arrived` from NATS), reading from the log whatever is missing."""
        async with self._lock:
            if upto <= self.frontier:
                return
            if arrived is not None:
                self._pending.setdefault(arrived.sequence, arrived)
            missing = [s for s in range(self.frontier + 1, upto + 1) if s not in self._pending]
            if missing:
                for d in await self._log.read_range(missing[0], missing[-1]):
                    self._pending.setdefault(d.sequence, d)
            await self._deliver_ready()

    async def _deliver_ready(self) -> None:
        while (d := self._pending.pop(self.frontier + 1, None)) is not None:
            self.frontier = d.sequence
            self._ring.append(encode_event(d))
            self._advanced.set()  # wake the streams and pollers first; hooks may take a moment
            self._advanced = anyio.Event()
            for hook in self._hooks:
                try:
                    await hook(d)
                except Exception:  # one failing notifier must not stop delivery to everyone else
                    logger.exception("discovery hook failed")
        self._pending = {s: d for s, d in self._pending.items() if s > self.frontier}
