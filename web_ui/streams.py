"""`GET /discoveries/stream`: discoveries as Server-Sent Events, resumable by sequence; and `GET /events/stream`,
the hub-wide stream (below).

Filters come from a subscription (`subscription_id=`) or from query parameters (type, role, agent_id,
min_confidence). The stream starts after `Last-Event-ID` (header, or `last_event_id=`), else after `start`
(`now`, `beginning` or a sequence; a subscription's default is its stored cursor). It replays what it must from
the log, then follows the live feed, writing whatever is waiting in one go; an event id is a sequence, so a
client that drops resumes exactly where it was. A client that stops reading is disconnected when a write times
out, and can resume. A position the retention policy deleted is refused (410, naming the oldest one left), or,
when retention overtakes a replay, ends the stream with an `expired` event saying the same. Both streams end when
their token is revoked (on any replica) or expires, and at once when the hub shuts down.

A stream is written by its request's own task (`EventStream`), with one more small task that waits for the
client to go away; its heartbeat and the deadline of a blocked write are checked by the feed's tick. A thousand
streams on one replica are the point: sse-starlette's response runs four tasks in a task group per stream and a
cancel scope per write, which took most of the memory of an idle connection and a third of the CPU of a
delivery.
"""

import asyncio
import json
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial

import anyio
from pydantic import ValidationError
from sse_starlette import ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from agenthub.auth import Principal
from agenthub.errors import CursorExpired, CursorInFuture, HubError, InvalidInput, TooManyConnections
from collaboration.feed import FeedEvent
from collaboration.filters import DiscoveryFilter
from web_ui.api import DiscoveryFilterQuery
from web_ui.endpoints import check_params, parse_query
from web_ui.ops import snapshot
from web_ui.problems import problem_for, validation_problem
from web_ui.state import HubState, hub_of, principal_of

logger = logging.getLogger(__name__)

_POSITION_PARAMS = frozenset({"start", "last_event_id", "access_token"})  # not filters
_REPLAY_PAGE = 100
_RETRY_MS = 2000
_HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}  # no proxy buffers or caches the stream
_MEDIA_TYPE = "text/event-stream"
# ASCII digits only (str.isdigit also takes '²', which int() refuses), and few enough for int() to parse.
_SEQUENCE = re.compile(r"[0-9]{1,20}")


def _start_point(request: Request, default: int, oldest: int, newest: int) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None:
        raw = request.query_params.get("start")
    if raw is None or raw == "now":
        start = default
    elif raw == "beginning":
        start = oldest
    elif _SEQUENCE.fullmatch(raw):
        start = int(raw)
    else:
        raise InvalidInput(f"invalid stream position {raw!r}: use a sequence number, 'now' or 'beginning'")
    if start > newest:
        raise CursorInFuture(start, newest)
    if start < oldest:
        raise CursorExpired(start, oldest)
    return start


class _Endpoint:
    """A stream endpoint as a bare ASGI app rather than a Starlette function endpoint, whose wrappers (a
    `Request` and two closures around `send`) would live as long as the stream and stand in every write."""

    __slots__ = ("_open",)

    def __init__(self, open_: Callable[[Request], Awaitable[ASGIApp]]) -> None:
        self._open = open_

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._open(Request(scope, receive, send))
        await response(scope, receive, send)


async def _discovery_stream(request: Request) -> ASGIApp:
    hub = hub_of(request)
    try:
        who = principal_of(request)
        check_params(request)
        oldest, newest = await hub.collab.log.bounds()
        filters = set(request.query_params) - _POSITION_PARAMS
        sub_id = request.query_params.get("subscription_id")
        if sub_id is not None:
            if filters - {"subscription_id"}:
                raise InvalidInput("give either subscription_id or filter parameters, not both")
            sub = await hub.collab.own_subscription(who, sub_id)
            flt, default = sub.flt, sub.cursor
        else:
            query = parse_query(DiscoveryFilterQuery, request.query_params, skip=_POSITION_PARAMS)
            flt, default = query.to_filter(), newest
        start = _start_point(request, default, oldest, newest)
    except ValidationError as exc:
        return validation_problem(exc)
    except HubError as exc:
        return problem_for(exc)
    return _open(hub, who, request, partial(DiscoveryStream, hub, who, flt, start, newest))


def _open(hub: HubState, who: Principal, request: Request, make: "Callable[[], EventStream]") -> ASGIApp:
    """The stream's response once its request is valid: headers only for HEAD, else counted against the replica's
    limit and the agent's quota (`TooManyConnections`, `QuotaExceeded`)."""
    try:
        if hub.collab.feed.stream_count >= hub.settings.sse.max_clients:
            raise TooManyConnections(hub.settings.sse.max_clients)
        if request.method == "HEAD":
            return Response(media_type=_MEDIA_TYPE, headers=_HEADERS)
        if who.agent_id is not None:
            hub.limiter.open_stream(who.agent_id)
    except HubError as exc:
        return problem_for(exc)
    stream = make()
    hub.collab.feed.add_stream(stream.tick)  # counted now, so concurrent connections cannot all pass the limit
    return stream


discovery_stream = _Endpoint(_discovery_stream)


# -- the response --------------------------------------------------------------------------------------------------


class EventStream(ABC):
    """A Server-Sent Events response written by its request's own task, counted by the feed from its creation to
    its end: its `hello` event, then each chunk `_next` returns.

    A second task only waits for the client to disconnect (ASGI says so only through `receive`). The feed calls
    `tick` twice a second: it wakes the stream to write its heartbeat, and ends a stream whose write has been
    blocked for `send_timeout_seconds` (a client that stopped reading: dropped, counted, and it can resume); the
    write path itself holds no timer. The stream runs inside its token's lifetime (`TokenCache.bound_to`):
    revoked or expired, the response ends properly; and it ends when `_next` says so (the hub shuts down, or a
    replay expired).

    A stream's state lives in its slots rather than in a generator's frame, and it waits on one asyncio future
    per wait (`_arm`), which the feed sets directly (`DiscoveryFeed.next_event`) and the heartbeat too: the
    cheapest wake there is, since each event wakes every stream.
    """

    __slots__ = ("_hub", "_who", "_hello", "_future", "_scope", "_next_beat", "_beat", "_sending_since", "_gone",
                 "_dropped", "_last")

    def __init__(self, hub: HubState, who: Principal, hello: bytes) -> None:
        self._hub = hub
        self._who = who
        self._hello: bytes | None = hello
        self._future: asyncio.Future[None] | None = None
        self._scope: anyio.CancelScope | None = None
        self._next_beat = time.monotonic() + hub.settings.sse.heartbeat_seconds
        self._beat = False
        self._sending_since: float | None = None
        self._gone = self._dropped = self._last = False

    @abstractmethod
    async def _next(self) -> bytes | None:
        """What to write next: one or more whole events, b"" when woken with nothing new (the heartbeat), None
        when the stream ends."""

    def _final(self, chunk: bytes) -> bytes:
        """`chunk`, after which the stream ends."""
        self._last = True
        return chunk

    def _arm(self) -> asyncio.Future[None]:
        """A new future for the next wait, which the heartbeat completes (or whatever else it is given to)."""
        self._future = future = asyncio.get_running_loop().create_future()
        return future

    async def _wait(self) -> None:
        """Wait for the heartbeat only."""
        await self._arm()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self._hub
        watcher: asyncio.Task[None] | None = None
        try:
            with hub.tokens.bound_to(self._who) as held:
                self._scope = held
                watcher = asyncio.get_running_loop().create_task(self._watch(receive))
                await send({"type": "http.response.start", "status": 200, "headers": _RAW_HEADERS})
                chunk, self._hello = self._hello, None
                while chunk is not None:
                    if self._beat:
                        self._beat = False
                        chunk += _ping()
                    if chunk:
                        self._sending_since = time.monotonic()
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        self._sending_since = None
                    chunk = None if self._last else await self._next()
            if self._dropped:
                hub.metrics.sse_dropped.inc()
                logger.info("dropped an SSE client that stopped reading")
            elif not self._gone:  # the stream ended, or its token was revoked or expired: end the response
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.wait([watcher])
            hub.collab.feed.remove_stream(self.tick)
            if self._who.agent_id is not None:
                hub.limiter.close_stream(self._who.agent_id)

    def tick(self) -> None:
        if self._scope is None:  # not started yet
            return
        now = time.monotonic()
        sse = self._hub.settings.sse
        if self._sending_since is not None and now - self._sending_since >= sse.send_timeout_seconds:
            self._dropped = True
            self._scope.cancel()
        elif now >= self._next_beat:
            self._next_beat = now + sse.heartbeat_seconds
            self._beat = True
            future = self._future
            if future is not None and not future.done():
                future.set_result(None)

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._gone = True
        assert self._scope is not None
        self._scope.cancel()


_RAW_HEADERS = [(b"content-type", f"{_MEDIA_TYPE}; charset=utf-8".encode()), (b"connection", b"keep-alive"),
                *((k.encode(), v.encode()) for k, v in _HEADERS.items())]


def _ping() -> bytes:
    return f": ping - {datetime.now(UTC)}\r\n\r\n".encode()


# -- the discovery stream ------------------------------------------------------------------------------------------


class DiscoveryStream(EventStream):
    """Replay the log up to what was newest at connect time, then follow the feed, back to the log whenever the
    stream falls further behind than the feed keeps."""

    __slots__ = ("_flt", "_cursor", "_catch_up_to")

    def __init__(self, hub: HubState, who: Principal, flt: DiscoveryFilter, cursor: int, newest: int) -> None:
        super().__init__(hub, who, ServerSentEvent(json.dumps({"cursor": cursor, "newest": newest}),
                                                   event="connected", retry=_RETRY_MS).encode())
        self._flt = flt
        self._cursor = cursor
        self._catch_up_to = newest

    async def _next(self) -> bytes | None:
        feed = self._hub.collab.feed
        while True:
            if self._cursor < self._catch_up_to:
                try:
                    items, self._cursor = await self._hub.collab.log.read(self._flt, self._cursor, _REPLAY_PAGE)
                except CursorExpired as exc:  # retention overtook a slow replay: say so rather than skip
                    return self._final(_expired(exc))
                return b"".join(FeedEvent(d).frame for d in items)
            events = feed.ring.after(self._cursor)
            if events is None:
                self._catch_up_to = feed.frontier
                continue
            if events:
                self._cursor = events[-1].discovery.sequence
                flt = self._flt
                return b"".join([e.frame for e in events if flt.matches(e.discovery)])  # all that was waiting
            if feed.ring.ending:  # the hub is shutting down
                return None
            await feed.next_event(self._arm())
            return b""


def _expired(exc: CursorExpired) -> bytes:
    """The last event of a stream whose position retention deleted: where the log now begins, then the end."""
    return ServerSentEvent(json.dumps({"detail": exc.message, "cursor": exc.cursor, "oldest_cursor": exc.oldest}),
                           event="expired").encode()


# -- the hub-wide stream -------------------------------------------------------------------------------------------

_HUB_POSITION = re.compile(r"([0-9]{1,20})\.([0-9]{1,20})")


def _hub_start(request: Request, oldest: int, discoveries: int, activity: int) -> tuple[int, int]:
    """Where a hub-wide stream starts: after `Last-Event-ID` ("<discovery sequence>.<activity sequence>"), or at
    `start` (`now`, the default, or `beginning`)."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is not None:
        match = _HUB_POSITION.fullmatch(raw)
        if match is None:
            raise InvalidInput(f"invalid Last-Event-ID {raw!r}: the stream's ids are '<discovery>.<activity>'")
        d, e = int(match[1]), int(match[2])
        if d > discoveries:
            raise CursorInFuture(d, discoveries)
        if d < oldest:
            raise CursorExpired(d, oldest)
        if e > activity:
            raise InvalidInput(f"activity position {e} is beyond the newest activity {activity}")
        return d, e
    start = request.query_params.get("start", "now")
    if start == "now":
        return discoveries, activity
    if start == "beginning":
        return oldest, 0
    raise InvalidInput(f"invalid stream start {start!r}: use 'now' or 'beginning' (or Last-Event-ID to resume)")


async def _hub_stream(request: Request) -> ASGIApp:
    """`GET /events/stream`: everything that happens in the hub, as Server-Sent Events.

    `discovery` events, the activity log's `agent`, `task`, `bid`, `transfer`, `approval` (requested, decided,
    expired) and `budget` (a soft limit crossed, a metric exhausted or denied) events, and `metrics_update`
    (the `/metrics/system` JSON) at connect and every few seconds. Each logged event's id is
    "<discovery sequence>.<activity sequence>", the stream's position after it, so `Last-Event-ID` resumes both
    exactly: every event once, none skipped.
    """
    hub = hub_of(request)
    try:
        who = principal_of(request)
        (oldest, discoveries), activity = await hub.collab.log.bounds(), await hub.activity.log.newest()
        d, e = _hub_start(request, oldest, discoveries, activity)
    except HubError as exc:
        return problem_for(exc)
    return _open(hub, who, request, partial(HubStream, hub, who, d, e))


hub_stream = _Endpoint(_hub_stream)


class HubStream(EventStream):
    __slots__ = ("_d", "_e", "_version")

    def __init__(self, hub: HubState, who: Principal, d: int, e: int) -> None:
        super().__init__(hub, who, ServerSentEvent(json.dumps({"discovery_cursor": d, "activity_cursor": e}),
                                                   event="connected", retry=_RETRY_MS).encode())
        self._d, self._e = d, e
        self._version: int | None = None  # of the last `metrics_update` sent; None before the first

    async def _next(self) -> bytes | None:
        hub = self._hub
        feed, ring, snapshots = hub.collab.feed, hub.activity.ring, hub.snapshots
        if self._version is None:
            self._version = snapshots.version
            return ServerSentEvent(json.dumps(await snapshot(hub)), event="metrics_update").encode()
        if feed.ring.ending:
            return None
        frames: list[bytes] = []
        discoveries = feed.ring.after(self._d)
        if discoveries is None:  # further behind than the ring reaches: from the log
            try:
                items, _ = await hub.collab.log.read(_EVERYTHING, self._d, _REPLAY_PAGE)
            except CursorExpired as exc:
                return self._final(_expired(exc))
            discoveries = [FeedEvent(item) for item in items]
        for event in discoveries:
            self._d = event.discovery.sequence
            frames.append(ServerSentEvent(event.data, event="discovery", id=f"{self._d}.{self._e}").encode())
        activity = ring.after(self._e)
        if activity is None:
            activity = await hub.activity.log.read(self._e, _REPLAY_PAGE)
        for item in activity:
            self._e = item.seq
            frames.append(item.frame(f"{self._d}.{self._e}"))
        if snapshots.version != self._version and snapshots.latest is not None:
            self._version = snapshots.version
            frames.append(ServerSentEvent(snapshots.latest, event="metrics_update").encode())
        if not frames:  # this stream is for the few who watch the whole hub: a task group per wait is fine here
            await _first(feed.ring.changed, ring.changed, snapshots.changed, self._wait)
        return b"".join(frames)


_EVERYTHING = DiscoveryFilter()


async def _first(*waits: Callable[[], Awaitable[None]]) -> None:
    """Return as soon as one of `waits` returns."""
    async with anyio.create_task_group() as tg:

        async def one(wait: Callable[[], Awaitable[None]]) -> None:
            await wait()
            tg.cancel_scope.cancel()

        for wait in waits:
            tg.start_soon(one, wait)
