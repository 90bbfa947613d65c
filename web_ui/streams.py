"""`GET /discoveries/stream`: discoveries as Server-Sent Events, resumable by sequence.

Filters come from a subscription (`subscription_id=`) or from query parameters (type, role, agent_id,
min_confidence). The stream starts after `Last-Event-ID` (header, or `last_event_id=`), else after `start`
(`now`, `beginning` or a sequence; a subscription's default is its stored cursor). It replays what it must from
the log, then follows the live feed, writing whatever is waiting in one go; an event id is a sequence, so a
client that drops resumes exactly where it was. A client that stops reading is disconnected when a write times
out, and can resume.
"""

import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from agenthub.errors import CursorInFuture, HubError, InvalidInput, TooManyConnections
from collaboration.feed import encode_event
from collaboration.filters import DiscoveryFilter
from web_ui.api import DiscoveryFilterQuery
from web_ui.endpoints import parse_query
from web_ui.problems import problem_for, validation_problem
from web_ui.state import HubState, hub_of, principal_of

logger = logging.getLogger(__name__)

_POSITION_PARAMS = frozenset({"start", "last_event_id", "access_token"})  # not filters
_REPLAY_PAGE = 100
_RETRY_MS = 2000
# ASCII digits only (str.isdigit also takes '²', which int() refuses), and few enough for int() to parse.
_SEQUENCE = re.compile(r"[0-9]{1,20}")


def _start_point(request: Request, default: int, newest: int) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None:
        raw = request.query_params.get("start")
    if raw is None or raw == "now":
        start = default
    elif raw == "beginning":
        start = 0
    elif _SEQUENCE.fullmatch(raw):
        start = int(raw)
    else:
        raise InvalidInput(f"invalid stream position {raw!r}: use a sequence number, 'now' or 'beginning'")
    if start > newest:
        raise CursorInFuture(start, newest)
    return start


async def discovery_stream(request: Request) -> Response:
    hub = hub_of(request)
    try:
        who = principal_of(request)
        newest = await hub.collab.log.newest_sequence()
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
        start = _start_point(request, default, newest)
        if hub.collab.feed.stream_count >= hub.settings.sse.max_clients:
            raise TooManyConnections(hub.settings.sse.max_clients)
    except ValidationError as exc:
        return validation_problem(exc)
    except HubError as exc:
        return problem_for(exc)
    if request.method == "HEAD":
        return EventSourceResponse(iter(()))  # headers only
    hub.collab.feed.add_stream()  # counted now, so concurrent connections cannot all pass the limit
    return _Stream(
        _events(hub, flt, start, newest),
        ping=hub.settings.sse.heartbeat_seconds,
        send_timeout=hub.settings.sse.send_timeout_seconds,
        on_drop=hub.metrics.sse_dropped.inc,
    )


class _Stream(EventSourceResponse):
    """A client that stops reading is dropped when a send times out: expected, so counted and logged quietly."""

    def __init__(self, *args: Any, on_drop: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_drop = on_drop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except* SendTimeoutError:
            self._on_drop()
            logger.info("dropped an SSE client that stopped reading")


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
                items, cursor = await hub.collab.log.read(flt, cursor, _REPLAY_PAGE)
                if items:
                    yield b"".join(encode_event(d).frame for d in items)
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
