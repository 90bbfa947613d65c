"""`GET /discoveries/stream`: discoveries as Server-Sent Events, resumable by sequence; and `GET /events/stream`,
the hub-wide stream (below).

Filters come from a subscription (`subscription_id=`) or from query parameters (type, role, agent_id,
min_confidence). The stream starts after `Last-Event-ID` (header, or `last_event_id=`), else after `start`
(`now`, `beginning` or a sequence; a subscription's default is its stored cursor). It replays what it must from
the log, then follows the live feed, writing whatever is waiting in one go; an event id is a sequence, so a
client that drops resumes exactly where it was. A client that stops reading is disconnected when a write times
out, and can resume. A position the retention policy deleted is refused (410, naming the oldest one left), or,
when retention overtakes a replay, ends the stream with an `expired` event saying the same. Both streams end when
their token is revoked (on any replica) or expires.
"""

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import anyio
from pydantic import ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from agenthub.auth import Principal
from agenthub.errors import CursorExpired, CursorInFuture, HubError, InvalidInput, QuotaExceeded, TooManyConnections
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


async def discovery_stream(request: Request) -> Response:
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
        if hub.collab.feed.stream_count >= hub.settings.sse.max_clients:
            raise TooManyConnections(hub.settings.sse.max_clients)
    except ValidationError as exc:
        return validation_problem(exc)
    except HubError as exc:
        return problem_for(exc)
    if request.method == "HEAD":
        return EventSourceResponse(iter(()))  # headers only
    try:
        release = _count_stream(hub, who)
    except QuotaExceeded as exc:
        return problem_for(exc)
    hub.collab.feed.add_stream()  # counted now, so concurrent connections cannot all pass the limit
    return _Stream(
        _events(hub, flt, start, newest),
        ping=hub.settings.sse.heartbeat_seconds,
        send_timeout=hub.settings.sse.send_timeout_seconds,
        hold=hub.tokens.bound_to(who),
        on_drop=hub.metrics.sse_dropped.inc,
        on_close=release,
    )


def _count_stream(hub: HubState, who: Principal) -> Callable[[], None]:
    """Count an agent's stream against its quota (`QuotaExceeded` past it); returns what to call when it ends."""
    if who.agent_id is None:
        return lambda: None
    hub.limiter.open_stream(who.agent_id)
    return partial(hub.limiter.close_stream, who.agent_id)


class _Stream(EventSourceResponse):
    """A client that stops reading is dropped when a send times out: expected, so counted and logged quietly."""

    def __init__(self, *args: Any, hold: AbstractContextManager[anyio.CancelScope], on_drop: Callable[[], None],
                 on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hold = hold  # the stream runs inside it: its token's lifetime (`TokenCache.bound_to`)
        self._on_drop = on_drop
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            with self._hold as held:
                await super().__call__(scope, receive, tracked)
            if held.cancelled_caught and started:  # its token was revoked or expired: end the response properly
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except* SendTimeoutError:
            self._on_drop()
            logger.info("dropped an SSE client that stopped reading")
        finally:
            self._on_close()


async def _events(hub: HubState, flt: DiscoveryFilter, cursor: int, newest: int
                  ) -> AsyncIterator[ServerSentEvent | bytes]:
    """Replay the log up to what was newest at connect time, then follow the feed, back to the log whenever the
    stream falls further behind than the feed keeps."""
    feed = hub.collab.feed
    try:
        yield ServerSentEvent(json.dumps({"cursor": cursor, "newest": newest}), event="connected", retry=_RETRY_MS)
        catch_up_to = newest
        while True:
            if cursor < catch_up_to:
                try:
                    items, cursor = await hub.collab.log.read(flt, cursor, _REPLAY_PAGE)
                except CursorExpired as exc:  # retention overtook a slow replay: say so rather than skip
                    yield _expired(exc)
                    return
                if items:
                    yield b"".join(FeedEvent(d).frame for d in items)
                continue
            events = await feed.events_after(cursor)
            if events is None:
                catch_up_to = feed.frontier
                continue
            if not events:  # the hub is shutting down
                return
            cursor = events[-1].discovery.sequence
            frames = [e.frame for e in events if flt.matches(e.discovery)]
            if frames:
                yield b"".join(frames)  # all that was waiting, in one write
    finally:
        feed.remove_stream()


def _expired(exc: CursorExpired) -> ServerSentEvent:
    """The last event of a stream whose position retention deleted: where the log now begins, then the end."""
    return ServerSentEvent(json.dumps({"detail": exc.message, "cursor": exc.cursor, "oldest_cursor": exc.oldest}),
                           event="expired")


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


async def hub_stream(request: Request) -> Response:
    """`GET /events/stream`: everything that happens in the hub, as Server-Sent Events.

    `discovery` events, the activity log's `agent`, `task`, `bid` and `transfer` events, and `metrics_update`
    (the `/metrics/system` JSON) at connect and every few seconds. Each logged event's id is
    "<discovery sequence>.<activity sequence>", the stream's position after it, so `Last-Event-ID` resumes both
    exactly: every event once, none skipped.
    """
    hub = hub_of(request)
    try:
        who = principal_of(request)
        (oldest, discoveries), activity = await hub.collab.log.bounds(), await hub.activity.log.newest()
        d, e = _hub_start(request, oldest, discoveries, activity)
        if hub.collab.feed.stream_count >= hub.settings.sse.max_clients:
            raise TooManyConnections(hub.settings.sse.max_clients)
    except HubError as exc:
        return problem_for(exc)
    if request.method == "HEAD":
        return EventSourceResponse(iter(()))
    try:
        release = _count_stream(hub, who)
    except QuotaExceeded as exc:
        return problem_for(exc)
    hub.collab.feed.add_stream()
    return _Stream(_hub_events(hub, d, e), ping=hub.settings.sse.heartbeat_seconds,
                   send_timeout=hub.settings.sse.send_timeout_seconds, hold=hub.tokens.bound_to(who),
                   on_drop=hub.metrics.sse_dropped.inc, on_close=release)


async def _hub_events(hub: HubState, d: int, e: int) -> AsyncIterator[ServerSentEvent | bytes]:
    feed, ring, snapshots = hub.collab.feed, hub.activity.ring, hub.snapshots
    everything = DiscoveryFilter()
    try:
        yield ServerSentEvent(json.dumps({"discovery_cursor": d, "activity_cursor": e}), event="connected",
                              retry=_RETRY_MS)
        yield ServerSentEvent(json.dumps(await snapshot(hub)), event="metrics_update")
        version = snapshots.version
        while not feed.ring.ending:
            frames: list[bytes] = []
            discoveries = feed.ring.after(d)
            if discoveries is None:  # further behind than the ring reaches: from the log
                try:
                    items, _ = await hub.collab.log.read(everything, d, _REPLAY_PAGE)
                except CursorExpired as exc:
                    yield _expired(exc)
                    return
                discoveries = [FeedEvent(item) for item in items]
            for event in discoveries:
                d = event.discovery.sequence
                frames.append(ServerSentEvent(event.data, event="discovery", id=f"{d}.{e}").encode())
            activity = ring.after(e)
            if activity is None:
                activity = await hub.activity.log.read(e, _REPLAY_PAGE)
            for item in activity:
                e = item.seq
                frames.append(item.frame(f"{d}.{e}"))
            if snapshots.version != version and snapshots.latest is not None:
                version = snapshots.version
                frames.append(ServerSentEvent(snapshots.latest, event="metrics_update").encode())
            if frames:
                yield b"".join(frames)
                continue
            await _first(feed.ring.changed, ring.changed, snapshots.changed)
    finally:
        feed.remove_stream()


async def _first(*waits: Callable[[], Awaitable[None]]) -> None:
    """Return as soon as one of `waits` returns."""
    async with anyio.create_task_group() as tg:

        async def one(wait: Callable[[], Awaitable[None]]) -> None:
            await wait()
            tg.cancel_scope.cancel()

        for wait in waits:
            tg.start_soon(one, wait)
