"""Resolved tokens on one replica, and their invalidation on every replica.

A replica believes a resolved token for `ttl` seconds (never past its expiry) without asking PostgreSQL again.
Revoking a token publishes its id on `hub.tokens.revoked`, and every replica drops it from its cache on receipt,
so its next request is read from the database and refused. The message only wakes replicas up: it makes them
forget, never believe, so a forged one costs a database read. A replica that misses the message (NATS was down)
stops believing the token when its entry ends, at most `ttl` seconds later. A resolution that was reading when a
revocation arrived is not cached, so a read that began before the revocation committed cannot keep the token.

Long responses (SSE streams) run inside `bound_to`: revoking their token on any replica ends them at once, and
they end at its expiry.

When a token was last used is recorded without a write per request: a token is marked at most once per
`touch_seconds`, and the marks are written in one statement every `flush_seconds`.
"""

import logging
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import anyio
import asyncpg
from pydantic import BaseModel

from agenthub.auth import Principal, TokenInfo, record_token_use, resolve_token, revoke_token
from agenthub.bus import Bus, BusListener
from agenthub.database import DATABASE_ERRORS, log_failure, unavailable
from agenthub.ids import TokenId

logger = logging.getLogger(__name__)

REVOKED_SUBJECT = "hub.tokens.revoked"
_CACHE_MAX = 4096


class TokenRevoked(BaseModel):
    """Hub to hub: forget this token now."""

    token_id: str


async def announce_revoked(bus: Bus, token_ids: Iterable[str]) -> None:
    """Make every replica forget these tokens now (they are revoked in the database already)."""
    for token_id in token_ids:
        await bus.publish(bus.subject(REVOKED_SUBJECT), TokenRevoked(token_id=token_id))


class TokenCache(BusListener[TokenRevoked]):
    """Enter it to hear revocations and write last-use marks (once only)."""

    def __init__(self, pool: asyncpg.Pool, bus: Bus, *, ttl: float, touch_seconds: float = 60.0,
                 flush_seconds: float = 5.0) -> None:
        super().__init__(bus, REVOKED_SUBJECT, TokenRevoked, flush_seconds)
        self._pool = pool
        self.ttl = ttl
        self._touch_seconds = touch_seconds
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._generation = 0  # moves on every revocation heard: a read that spans one is not cached
        self._marked: dict[TokenId, float] = {}
        self._used: dict[TokenId, datetime] = {}
        self._bound: dict[TokenId, set[anyio.CancelScope]] = {}  # token -> the streams it holds open here

    async def resolve(self, token: str) -> Principal:
        """The token's principal; `Unauthenticated` when it is unknown, expired or revoked."""
        now = time.monotonic()
        cached = self._cache.get(token)
        if cached is not None and cached[0] > now:
            principal = cached[1]
        else:
            generation = self._generation
            try:
                principal = await resolve_token(self._pool, token)
            except Exception as exc:
                if (down := unavailable(exc)) is None:
                    raise
                raise down from exc
            if generation == self._generation:
                deadline = now + self.ttl
                if principal.expires_at is not None:
                    deadline = min(deadline, now + (principal.expires_at - datetime.now(UTC)).total_seconds())
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                self._cache[token] = (deadline, principal)
        self._mark_used(principal, now)
        return principal

    async def revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token in the database, then make every replica forget it."""
        info = await revoke_token(self._pool, token_id)
        self.forget(info.token_id)
        await announce_revoked(self._bus, [info.token_id])
        logger.info("revoked token %s", info.token_id)
        return info

    def forget(self, token_id: str) -> None:
        self._generation += 1
        for token in [t for t, (_, p) in self._cache.items() if p.token_id == token_id]:
            del self._cache[token]
        for scope in self._bound.get(TokenId(token_id), ()):
            scope.cancel()

    @contextmanager
    def bound_to(self, principal: Principal) -> Iterator[anyio.CancelScope]:
        """Run the block (a stream) only while `principal`'s token holds: cancelled when it is revoked (on any
        replica) or expires (then the scope yielded has `cancelled_caught`)."""
        token_id = principal.token_id
        deadline = math.inf
        if principal.expires_at is not None:
            deadline = anyio.current_time() + (principal.expires_at - datetime.now(UTC)).total_seconds()
        with anyio.CancelScope(deadline=deadline) as scope:
            if token_id is None:  # authentication is off
                yield scope
                return
            scopes = self._bound.setdefault(token_id, set())
            scopes.add(scope)
            try:
                yield scope
            finally:
                scopes.discard(scope)
                if not scopes:
                    del self._bound[token_id]

    async def on_payload(self, payload: TokenRevoked) -> None:
        self.forget(payload.token_id)

    def _mark_used(self, principal: Principal, now: float) -> None:
        token_id = principal.token_id
        if token_id is None:
            return
        last = self._marked.get(token_id)
        if last is not None and now - last < self._touch_seconds:
            return
        if len(self._marked) >= 4 * _CACHE_MAX:
            self._marked.clear()
        self._marked[token_id] = now
        self._used[token_id] = datetime.now(UTC)

    async def tick(self) -> None:
        """Write the last-use marks gathered since the last tick."""
        if not self._used:
            return
        used, self._used = self._used, {}
        try:
            await record_token_use(self._pool, used)
        except DATABASE_ERRORS as exc:  # marks only: go on
            log_failure(logger, f"could not record when {len(used)} tokens were last used", exc)
