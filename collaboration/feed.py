"""The live discovery feed of one hub replica: every discovery exactly once, in sequence order, to whoever listens,
and exactly as PostgreSQL holds it.

What the feed delivers comes from two places only. Discoveries this replica wrote come straight from the write
(`DiscoveryLog.add_listener`), so sharing costs no read. Everything else is read from the log: a message on NATS
`discoveries.>` is only a hint that the log has grown up to its sequence, and a periodic check of the log's
counter catches what NATS never brought (a lost publish, an import). One task delivers: it takes this replica's
own writes as they come, and reads the range up to the newest hint a page at a time, once per batch of hints (a
replica back from a NATS outage may be a million behind). So listeners see a gap-free, ordered stream.

Nothing on NATS is believed: a message whose payload differs from the row the log holds for its sequence is
forged, one naming a sequence the log does not hold is out of range, one older than the feed still remembers is
a replay; each is dropped and counted (`agenthub_bus_rejected_total{kind}`), never shown, and never holds up
the real discovery. A huge sequence costs one read of the log's bounds, and its claim is dropped.

Delivered events go into a `Ring` shared by every stream (`agenthub/ring.py`): a stream that wakes up late
takes everything it missed in one go (`ring.after`), and one that falls further behind than the ring reaches
reads the log instead (`ring.after` returns None). Streams wait on `next_event`, pollers on `wait_beyond`. Hooks
(MCP resource notifications) run for each event in order.
"""

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Literal, Self

import anyio
from anyio.abc import TaskGroup, TaskStatus
from nats.aio.msg import Msg
from pydantic import ValidationError
from sse_starlette import ServerSentEvent

from agenthub.bus import Bus
from agenthub.database import log_failure
from agenthub.metrics import HubMetrics
from agenthub.ring import Ring
from collaboration.discoveries import DiscoveryLog
from collaboration.models import Discovery

logger = logging.getLogger(__name__)

Hook = Callable[[Discovery], Awaitable[None]]
Rejected = Literal["malformed", "forged", "out_of_range", "replayed", "overflow"]
TICK_SECONDS = 0.5  # how often each stream's `tick` runs
_MAX_CLAIMS = 10_000  # NATS payloads waiting for their check; beyond, hints are dropped (the periodic sync remains)


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
    def __init__(self, log: DiscoveryLog, bus: Bus, metrics: HubMetrics, *, ring_size: int,
                 sync_interval: float) -> None:
        self._log = log
        self._bus = bus
        self._rejected = metrics.bus_rejected
        self._sync_interval = sync_interval
        self._own: dict[int, Discovery] = {}  # written by this replica: true, delivered without a read
        self._claims: dict[int, list[Discovery]] = {}  # NATS payloads beyond the frontier, not checked yet
        self._claimed = 0
        self._log_reaches = 0  # a sequence the log's counter was seen at (periodic sync)
        self._wake = anyio.Event()
        log.add_listener(self._stored)
        self.ring: Ring[FeedEvent] = Ring(ring_size)
        self._streams: set[Callable[[], None]] = set()  # each live stream's tick
        self._waiting: set[asyncio.Future[None]] = set()  # streams waiting for the next event (`next_event`)
        self._next_round = 0.0  # the loop time before which waking the streams again waits (`_streams_behind`)
        self._round: asyncio.TimerHandle | None = None  # a round of waking put off until then
        self._hooks: list[Hook] = []
        self._tg: TaskGroup | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("DiscoveryFeed is already running")
        self.ring.skip_to(await self._log.newest_sequence())
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self._deliver_forever)
        self._sub = await self._bus.subscribe_discoveries(self._on_message)
        self._tg.start_soon(self._sync_forever)
        self._tg.start_soon(self._tick_forever)
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

    def add_stream(self, tick: Callable[[], None]) -> None:
        """Count a live stream (an SSE client), and call its `tick` every `TICK_SECONDS` (its heartbeat, the deadline
        of a blocked write: one timer for all streams rather than one each) until `remove_stream(tick)`."""
        self._streams.add(tick)

    def remove_stream(self, tick: Callable[[], None]) -> None:
        self._streams.discard(tick)

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def frontier(self) -> int:
        """The sequence of the newest discovery delivered."""
        return self.ring.frontier

    def end_streams(self) -> None:
        """The hub is shutting down: `ring.ending` from now on, and every stream waiting is woken, so streams end."""
        self.ring.end()
        self._wake_streams(asyncio.get_running_loop())

    async def next_event(self, woken: asyncio.Future[None]) -> None:
        """Return at the feed's next event or its end, or when `woken` is set by someone else (a stream's heartbeat).

        A stream waits on a future of its own rather than on the ring's `anyio.Event`, so that one future serves
        every reason to wake it: this is the path each event takes to each of a thousand streams.
        """
        self._waiting.add(woken)
        try:
            await woken
        finally:
            self._waiting.discard(woken)

    def _streams_behind(self) -> None:
        """New events for the streams: wake them now, or, if the last round of waking them ended less time ago
        than it took, then. A round is each stream writing all it has not sent yet; under a burst, putting off the
        next one leaves the rest of the hub (the calls that share discoveries) as much time as the streams had,
        and the next round carries every event that arrived meanwhile, in one write per stream. When events come
        further apart than a round lasts, they go out at once."""
        if self._round is not None:  # already put off: that round takes this event too
            return
        loop = asyncio.get_running_loop()
        delay = self._next_round - loop.time()
        if delay > 0:
            self._round = loop.call_later(delay, self._wake_streams, loop)
        else:
            self._wake_streams(loop)

    def _wake_streams(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._round is not None:
            self._round.cancel()
            self._round = None
        waiting, self._waiting = self._waiting, set()
        for woken in waiting:
            if not woken.done():
                woken.set_result(None)
        # Each woken stream writes in its first step, all of which the loop runs before this.
        loop.call_soon(self._round_ended, loop, loop.time())

    def _round_ended(self, loop: asyncio.AbstractEventLoop, started: float) -> None:
        now = loop.time()
        self._next_round = now + (now - started)

    async def wait_beyond(self, sequence: int, seconds: float) -> None:
        """Return when the frontier passes `sequence`, or after `seconds`."""
        await self.ring.wait_beyond(sequence, seconds)

    # -- feeding ---------------------------------------------------------------------------------------------------

    def _stored(self, discoveries: list[Discovery]) -> None:
        """This replica's own write, handed over by the log right after it committed."""
        for d in discoveries:
            if d.sequence > self.frontier:
                self._own[d.sequence] = d
        self._wake.set()

    async def _on_message(self, msg: Msg) -> None:
        try:
            claim = Discovery.model_validate_json(msg.data)
        except ValidationError:
            self._reject("malformed", msg.subject)
            return
        sequence = claim.sequence
        if sequence <= self.frontier:  # delivered already: the echo of our own publish, or a replay
            self._check_delivered(claim)
            return
        own = self._own.get(sequence)
        if own is not None:
            if own != claim:
                self._reject("forged", msg.subject)
            return
        if self._claimed >= _MAX_CLAIMS:
            self._reject("overflow", msg.subject)
            return
        self._claims.setdefault(sequence, []).append(claim)
        self._claimed += 1
        self._wake.set()

    def _check_delivered(self, claim: Discovery) -> None:
        event = self.ring.at(claim.sequence)
        if event is None:
            self._reject("replayed", f"sequence {claim.sequence}")
        elif event.discovery != claim:
            self._reject("forged", f"sequence {claim.sequence}")

    def _reject(self, kind: Rejected, what: str) -> None:
        self._rejected.labels(kind).inc()
        logger.warning("dropped a %s discovery message (%s)", kind.replace("_", " "), what)

    async def _sync_forever(self) -> None:
        while True:
            await anyio.sleep(self._sync_interval)
            try:
                self._log_reaches = max(self._log_reaches, await self._log.newest_sequence())
            except Exception as exc:  # the database may be briefly unreachable; the next tick tries again
                log_failure(logger, "discovery feed sync failed", exc)
                continue
            if self._log_reaches > self.frontier:
                self._wake.set()

    async def _tick_forever(self) -> None:
        while True:
            await anyio.sleep(TICK_SECONDS)
            for tick in list(self._streams):
                tick()

    async def _deliver_forever(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            claims, self._claims, self._claimed = self._claims, {}, 0
            try:
                await self._catch_up(claims)
            except Exception as exc:  # these hints are dropped; the sync retries
                log_failure(logger, f"discovery feed could not read the log ({len(claims)} NATS hints dropped)", exc)

    async def _catch_up(self, claims: dict[int, list[Discovery]]) -> None:
        """Deliver up to the furthest sequence known or claimed: this replica's writes as they are, the rest read
        from the log (claims compared with what it holds); then drop the claims the log does not hold."""
        target = max(self._log_reaches, max(claims, default=0), max(self._own, default=0))
        while self.frontier < target:
            if (own := self._own.pop(self.frontier + 1, None)) is not None:
                await self._deliver(own, claims.pop(own.sequence, ()))
                continue
            # Read up to the next discovery of our own (everything before it is committed), or the target.
            last = min((s for s in self._own if s > self.frontier), default=target + 1) - 1
            rows = await self._log.read_range(self.frontier + 1, min(last, target))
            if not rows or rows[0].sequence != self.frontier + 1:
                oldest, _ = await self._log.bounds()
                if oldest <= self.frontier:  # not in the log: whatever named it is not believed
                    break
                logger.warning("discoveries %d..%d were deleted by retention before this feed delivered them",
                               self.frontier + 1, oldest)
                self.ring.skip_to(oldest)
                continue
            for d in rows:
                if d.sequence != self.frontier + 1:
                    break
                self._own.pop(d.sequence, None)
                await self._deliver(d, claims.pop(d.sequence, ()))
        if self._log_reaches <= self.frontier:
            self._log_reaches = 0
        self._own = {s: d for s, d in self._own.items() if s > self.frontier}
        self._claims_unchecked(claims)

    def _claims_unchecked(self, claims: dict[int, list[Discovery]]) -> None:
        """Claims left after a catch-up: delivered meanwhile (compared with what was), or not in the log."""
        for sequence, items in claims.items():
            for claim in items:
                if sequence <= self.frontier:
                    self._check_delivered(claim)
                else:
                    self._reject("out_of_range", f"sequence {sequence}")

    async def _deliver(self, d: Discovery, claims: Iterable[Discovery]) -> None:
        for claim in claims:
            if claim != d:
                self._reject("forged", f"sequence {d.sequence}")
        self.ring.push(FeedEvent(d))  # wakes the pollers and streams first; hooks may take a moment
        self._streams_behind()
        for hook in self._hooks:
            try:
                await hook(d)
            except Exception:  # one failing notifier must not stop delivery to everyone else
                logger.exception("discovery hook failed")
