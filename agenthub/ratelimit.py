"""Rate limits and quotas, shared by the replicas of a hub.

Rates are token buckets (a rate per second and a burst) kept in memory per key: the requests of a token, the
discoveries and the questions of an agent. Taking from one costs a dict lookup and a little arithmetic, never a
database query. Replicas draw on one bucket per key: every `sync_seconds` each replica tells the others over NATS
(`hub.limits`) how much of each bucket it used since it last said, and each charges what the others used to its
own copy. A copy may go into debt, down to minus one burst, so that what replicas let through before hearing of
each other is paid back. How close that is:

- sustained, N replicas together admit the configured rate, plus at any moment at most what the other replicas
  admitted during the last `sync_seconds` plus a NATS hop, which this one has not heard of yet;
- a burst that reaches all N replicas in the same instant, before they hear of each other, can pass up to N
  bursts; the excess is charged back as debt, so the next requests wait longer.

Open SSE streams per agent are counted, not rated: each replica sends its counts with its usage (at least every
second while it holds any, and once when they change), and forgets the counts of a replica it has not heard from
for three seconds (it stopped). Two replicas opening the same agent's last allowed stream in the same instant can
both succeed: at most N - 1 over.

A usage message only ever makes a replica stricter; the hub's NATS permissions keep agents from publishing one.
"""

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, Field

from agenthub.bus import Bus, BusListener
from agenthub.errors import QuotaExceeded, RateLimited
from agenthub.settings import RateLimitSettings

logger = logging.getLogger(__name__)

USAGE_SUBJECT = "hub.limits"
REQUESTS = "requests"  # per token
DISCOVERIES = "discoveries"  # per agent
QUESTIONS = "questions"  # per agent
STREAMS = "streams"  # per agent, counted
SUBSCRIPTIONS = "subscriptions"  # per agent, counted (in PostgreSQL, by `collaboration.subscriptions`)
_STREAMS_REFRESH = 1.0  # a replica holding streams says so at least this often
_STREAMS_FORGET = 3.0  # counts of a replica not heard from for this long are forgotten
_SWEEP_SECONDS = 10.0  # how often full (idle) buckets are dropped
_KEYS_PER_MESSAGE = 5000


@dataclass(slots=True, kw_only=True)
class TokenBucket:
    """`level` tokens, refilled at `rate` a second up to `burst`; one taken per admitted event. Charges of what
    other replicas admitted may take it below zero, at most one burst deep."""

    rate: float
    burst: float
    level: float
    stamp: float

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 when admitted, else the seconds until one will be there (nothing taken)."""
        self._refill(now)
        if self.level >= 1.0:
            self.level -= 1.0
            return 0.0
        return (1.0 - self.level) / self.rate

    def charge(self, now: float, count: int) -> None:
        """Take `count` tokens admitted elsewhere, into debt if need be."""
        self._refill(now)
        self.level = max(self.level - count, -self.burst)

    def available(self, now: float) -> float:
        self._refill(now)
        return self.level


@dataclass(frozen=True, slots=True, kw_only=True)
class Rate:
    per_second: float
    burst: int
    what: str  # how a refusal names the limit


class LimitUsage(BaseModel):
    """Hub to hub: what one replica admitted since its last message, and the streams it holds now."""

    replica: str
    used: dict[str, int] = Field(default_factory=dict)  # "<kind>:<key>" -> events admitted
    streams: dict[str, int] | None = None  # agent id -> streams open on that replica; None: unchanged


class RateLimiter(BusListener[LimitUsage]):
    """One replica's side of the limits. Enter it to exchange usage with the other replicas (once only)."""

    def __init__(self, bus: Bus, settings: RateLimitSettings, *, clock: Callable[[], float] = time.monotonic,
                 on_refused: Callable[[str], None] = lambda limit: None) -> None:
        super().__init__(bus, USAGE_SUBJECT, LimitUsage, settings.sync_seconds)
        self.settings = settings
        self._clock = clock
        self.refused = on_refused  # called with the limit's name on each refusal (the hub counts them)
        self.replica = secrets.token_hex(8)  # per process: replicas may share a data directory and its name
        s = settings
        self._rates = {
            REQUESTS: Rate(per_second=s.requests_per_second, burst=s.request_burst,
                           what=f"requests of this token ({s.requests_per_second:g}/s, bursts of {s.request_burst})"),
            DISCOVERIES: Rate(per_second=s.discoveries_per_second, burst=s.discovery_burst,
                              what=f"discoveries shared by this agent ({s.discoveries_per_second:g}/s, bursts of "
                                   f"{s.discovery_burst})"),
            QUESTIONS: Rate(per_second=s.questions_per_minute / 60, burst=s.question_burst,
                            what=f"questions asked by this agent ({s.questions_per_minute:g} a minute, bursts of "
                                 f"{s.question_burst})"),
        }
        self._buckets: dict[str, TokenBucket] = {}
        self._used: dict[str, int] = {}
        self._streams: dict[str, int] = {}
        self._remote_streams: dict[str, tuple[float, dict[str, int]]] = {}
        self._streams_changed = False
        self._streams_sent = 0.0
        self._swept = 0.0

    # -- rates -----------------------------------------------------------------------------------------------------

    def take(self, kind: str, key: str) -> None:
        """Admit one event of `kind` for `key` (a token id, an agent id), or raise `RateLimited`."""
        if not self.settings.enabled:
            return
        name = f"{kind}:{key}"
        now = self._clock()
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = self._new_bucket(kind, now)
        wait = bucket.take(now)
        if wait > 0.0:
            self.refused(kind)
            raise RateLimited(self._rates[kind].what, wait)
        self._used[name] = self._used.get(name, 0) + 1

    def available(self, kind: str, key: str) -> float:
        """What `key` may still take of `kind` on this replica now (negative: in debt)."""
        bucket = self._buckets.get(f"{kind}:{key}")
        return bucket.available(self._clock()) if bucket is not None else float(self._rates[kind].burst)

    def _new_bucket(self, kind: str, now: float) -> TokenBucket:
        rate = self._rates[kind]
        return TokenBucket(rate=rate.per_second, burst=rate.burst, level=rate.burst, stamp=now)

    # -- open streams ----------------------------------------------------------------------------------------------

    def streams_open(self, agent_id: str) -> int:
        """The agent's open streams on every replica this one has heard from lately."""
        now = self._clock()
        remote = sum(counts.get(agent_id, 0) for seen, counts in self._remote_streams.values()
                     if now - seen < _STREAMS_FORGET)
        return self._streams.get(agent_id, 0) + remote

    def open_stream(self, agent_id: str) -> None:
        """Count a stream the agent opens, or raise `QuotaExceeded`; pair with `close_stream`."""
        if self.settings.enabled and self.streams_open(agent_id) >= self.settings.max_streams:
            self.refused(STREAMS)
            raise QuotaExceeded("streams open at once by this agent", self.settings.max_streams,
                                "close one of its streams first")
        self._streams[agent_id] = self._streams.get(agent_id, 0) + 1
        self._streams_changed = True

    def close_stream(self, agent_id: str) -> None:
        left = self._streams.get(agent_id, 0) - 1
        if left > 0:
            self._streams[agent_id] = left
        else:
            self._streams.pop(agent_id, None)
        self._streams_changed = True

    # -- between replicas ------------------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Tell the other replicas what this one admitted since it last said (and its streams, when due)."""
        now = self._clock()
        streams_due = self._streams_changed or (bool(self._streams) and now - self._streams_sent >= _STREAMS_REFRESH)
        used, self._used = self._used, {}
        if now - self._swept >= _SWEEP_SECONDS:
            self._sweep(now)
        if not used and not streams_due:
            return
        streams = dict(self._streams) if streams_due else None
        if streams_due:
            self._streams_changed, self._streams_sent = False, now
        names = list(used)
        for start in range(0, max(len(names), 1), _KEYS_PER_MESSAGE):
            chunk = {name: used[name] for name in names[start:start + _KEYS_PER_MESSAGE]}
            await self._bus.publish(self._bus.subject(USAGE_SUBJECT),
                                    LimitUsage(replica=self.replica, used=chunk, streams=streams))
            streams = None

    def _sweep(self, now: float) -> None:
        """Drop full buckets (a new one starts full, so forgetting them changes nothing) and the stream counts of
        replicas gone quiet."""
        self._swept = now
        self._buckets = {name: b for name, b in self._buckets.items() if b.available(now) < b.burst}
        self._remote_streams = {r: v for r, v in self._remote_streams.items() if now - v[0] < _STREAMS_FORGET}

    async def on_payload(self, usage: LimitUsage) -> None:
        if usage.replica == self.replica:
            return
        now = self._clock()
        for name, count in usage.used.items():
            kind = name.partition(":")[0]
            if kind not in self._rates or count <= 0:
                continue
            bucket = self._buckets.get(name)
            if bucket is None:
                bucket = self._buckets[name] = self._new_bucket(kind, now)
            bucket.charge(now, count)
        if usage.streams is not None:
            self._remote_streams[usage.replica] = (now, usage.streams)
        elif usage.replica in self._remote_streams:
            self._remote_streams[usage.replica] = (now, self._remote_streams[usage.replica][1])
