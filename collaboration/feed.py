"""The live discovery feed of one hub replica: every discovery exactly once, in sequence order, to whoever listens.

NATS `discoveries.>` brings discoveries from every replica, possibly out of order (two replicas publish
concurrently) or not at all (a publish failed). The feed keeps a frontier (the highest sequence delivered)
and delivers only the next one; when a later one arrives first, or a periodic check of the log's counter finds
the frontier behind, the missing range is read from PostgreSQL, a page at a time (a replica back from a NATS
outage, or an import, may be a million behind). So listeners see a gap-free, ordered stream.

Delivered events go into a `Ring` shared by every stream (`agenthub/ring.py`): a stream that wakes up late
takes everything it missed in one go, and one that falls further behind than the ring reaches reads the log
instead (`events_after` returns None). Pollers wait on `wait_beyond`. Hooks (MCP resource notifications) run
for each event in order.
"""

import json
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup
from nats.aio.msg import Msg
from pydantic import ValidationError
from sse_starlette import ServerSentEvent

from agenthub.bus import Bus
from agenthub.ring import Ring
from collaboration.discoveries import DiscoveryLog
from collaboration.models import Discovery

logger = logging.getLogger(__name__)

Hook = Callable[[Discovery], Awaitable[None]]


class FeedEvent:
    """One discovery, with its Server-Sent Events data and frame encoded once, when a stream first needs them (a
    replica with no stream open, catching up a million, encodes none)."""

    __slots__ = ("_data", "_frame", "discovery")

    def __init__(self, discovery: Discovery) -> None:
        self.discovery = discovery
        self._data: str | None = None
        self._frame: bytes | None = None

    @property
    def data(self) -> str:
        """The `discovery` event's data: the discovery and the MCP notification."""
        if self._data is None:
            d = self.discovery
            uri = json.dumps(d.uri)
            notification = f'{{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{{"uri":{uri}}}}}'
            self._data = f'{{"discovery":{d.model_dump_json()},"uri":{uri},"notification":{notification}}}'
        return self._data

    @property
    def frame(self) -> bytes:
        """The whole SSE event; its id is the sequence."""
        if self._frame is None:
            self._frame = ServerSentEvent(self.data, event="discovery", id=str(self.discovery.sequence)).encode()
        return self._frame


class DiscoveryFeed:
    def __init__(self, log: DiscoveryLog, bus: Bus, *, ring_size: int, sync_interval: float) -> None:
        self._log = log
        self._bus = bus
        self._sync_interval = sync_interval
        self._pending: dict[int, Discovery] = {}
        self.ring: Ring[FeedEvent] = Ring(ring_size)
        self._streams = 0
        self._hooks: list[Hook] = []
        self._lock = anyio.Lock()
        self._tg: TaskGroup | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("DiscoveryFeed is already running")
        self.ring.skip_to(await self._log.newest_sequence())
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

    @property
    def frontier(self) -> int:
        """The sequence of the newest discovery delivered."""
        return self.ring.frontier

    def end_streams(self) -> None:
        """The hub is shutting down: every `events_after` returns [] from now on, so streams end."""
        self.ring.end()

    async def events_after(self, sequence: int) -> list[FeedEvent] | None:
        """Wait until the feed has delivered past `sequence`, then return every event after it, oldest first.

        None means the ring no longer reaches back to `sequence`: the caller reads the log from there instead.
        An empty list means the feed is ending.
        """
        return await self.ring.events_after(sequence)

    async def wait_beyond(self, sequence: int, seconds: float) -> None:
        """Return when the frontier passes `sequence`, or after `seconds`."""
        await self.ring.wait_beyond(sequence, seconds)

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
            while self.frontier < upto:  # a page at a time: a replica far behind catches up in bounded memory
                if self.frontier + 1 not in self._pending:
                    for d in await self._log.read_range(self.frontier + 1, upto):
                        self._pending.setdefault(d.sequence, d)
                if self.frontier + 1 not in self._pending:
                    oldest, _ = await self._log.bounds()
                    if oldest <= self.frontier:  # not in the log (yet): a sequence NATS named is not believed
                        break
                    logger.warning("discoveries %d..%d were deleted by retention before this feed delivered them",
                                   self.frontier + 1, oldest)
                    self.ring.skip_to(oldest)
                await self._deliver_ready()

    async def _deliver_ready(self) -> None:
        while (d := self._pending.pop(self.frontier + 1, None)) is not None:
            self.ring.push(FeedEvent(d))  # wakes the streams and pollers first; hooks may take a moment
            for hook in self._hooks:
                try:
                    await hook(d)
                except Exception:  # one failing notifier must not stop delivery to everyone else
                    logger.exception("discovery hook failed")
        self._pending = {s: d for s, d in self._pending.items() if s > self.frontier}
