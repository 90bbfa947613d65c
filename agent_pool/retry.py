"""Retrying transient failures with exponential backoff and jitter (the delays of `supervisor.Backoff`)."""

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from supervisor.policy import Backoff

logger = logging.getLogger(__name__)
T = TypeVar("T")


async def retry(fn: Callable[[], Awaitable[T]], *, retry_on: tuple[type[BaseException], ...], attempts: int,
                backoff: Backoff, on_retry: Callable[[BaseException, float], Awaitable[None]] | None = None,
                rng: random.Random | None = None) -> T:
    """Call `fn` until it succeeds or `attempts` calls failed with one of `retry_on`; the last error propagates.
    `attempts` < 1 means no limit. Other exceptions propagate at once. An error with a `retry_after` (seconds) is
    not retried sooner than that."""
    rng = rng or random.Random()
    attempt = 0
    while True:
        try:
            return await fn()
        except retry_on as exc:
            attempt += 1
            if 0 < attempts <= attempt:
                raise
            delay = max(backoff.delay(attempt, rng), getattr(exc, "retry_after", None) or 0.0)
            logger.debug("attempt %d failed (%s); retrying in %.2f s", attempt, exc, delay)
            if on_retry is not None:
                await on_retry(exc, delay)
            await anyio.sleep(delay)
