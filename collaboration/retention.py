"""The retention policy: keeps a long-lived hub's discovery log from growing without bound.

Every `interval_seconds` it deletes the oldest discoveries beyond `max_discoveries` or older than
`max_age_seconds` (either or both; neither set, the default, keeps everything), `batch` at a time so shares wait
at most one short transaction. It always deletes a prefix of the log, so the log stays gap-free from its oldest
retained position, which readers behind it are told (`CursorExpired`). It also forgets the per-minute figures
older than an hour. It runs on every replica; the counter's row lock makes them take turns.
"""

import logging

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from agenthub.database import DATABASE_ERRORS, log_failure
from agenthub.settings import RetentionSettings
from collaboration.discoveries import DiscoveryLog

logger = logging.getLogger(__name__)


class Retention:
    def __init__(self, log: DiscoveryLog, settings: RetentionSettings) -> None:
        self._log = log
        self._settings = settings

    async def run(self, task_status: TaskStatus[None]) -> None:
        task_status.started()
        while True:
            await anyio.sleep(self._settings.interval_seconds)
            try:
                await self.apply()
            except DATABASE_ERRORS as exc:  # PostgreSQL away for a moment: the next round retries
                log_failure(logger, "applying the retention policy failed", exc)

    async def apply(self) -> int:
        """Apply the policy once; returns how many discoveries were deleted."""
        await self._log.forget_old_minutes()
        s = self._settings
        if s.max_discoveries is None and s.max_age_seconds is None:
            return 0
        deleted = 0
        while True:
            n = await self._log.prune(keep=s.max_discoveries, max_age_seconds=s.max_age_seconds, batch=s.batch)
            deleted += n
            if n < s.batch:
                return deleted
            await anyio.lowlevel.checkpoint()  # let waiting shares take the counter between batches
