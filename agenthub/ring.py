"""The latest events of a gap-free sequence, kept once for every reader.

A feed pushes events in sequence order; readers (SSE streams, long polls) ask for everything after the last
sequence they saw and get it in one list, however many there are. Publishing costs the same for one reader as
for a thousand, and no reader is ever waited for: one that falls further behind than the ring reaches gets
None and reads the log instead.
"""

from collections import deque
from typing import Generic, TypeVar

import anyio

E = TypeVar("E")


class Ring(Generic[E]):
    def __init__(self, size: int, frontier: int = 0) -> None:
        self.frontier = frontier  # the sequence of the newest event pushed
        self._events: deque[E] = deque(maxlen=size)
        self._advanced = anyio.Event()
        self.ending = False

    def push(self, event: E) -> None:
        """Append the event with sequence `frontier + 1` and wake every waiting reader."""
        self.frontier += 1
        self._events.append(event)
        self._advanced.set()
        self._advanced = anyio.Event()

    def skip_to(self, frontier: int) -> None:
        """Start from `frontier` (events before it are only in the log)."""
        self.frontier = frontier
        self._events.clear()

    def after(self, sequence: int) -> list[E] | None:
        """Every event after `sequence`, oldest first, without waiting ([] if none); None when the ring no longer
        reaches back to it."""
        missed = self.frontier - sequence  # the ring ends at the frontier, so they are its last `missed` events
        if missed <= 0:
            return []
        if missed > len(self._events):
            return None
        return [self._events[-i] for i in range(missed, 0, -1)]  # indexing from the right end: O(missed)

    def at(self, sequence: int) -> E | None:
        """The event with this sequence, if the ring still holds it."""
        back = self.frontier - sequence  # 0: the newest
        if back < 0 or back >= len(self._events):
            return None
        return self._events[-1 - back]

    async def changed(self) -> None:
        """Return at the next push (or at once if the ring is ending)."""
        if not self.ending:
            await self._advanced.wait()

    def end(self) -> None:
        """Shutting down: wake every reader; `changed` no longer waits."""
        self.ending = True
        self._advanced.set()

    async def wait_beyond(self, sequence: int, seconds: float) -> None:
        """Return when the frontier passes `sequence`, or after `seconds`."""
        with anyio.move_on_after(seconds):
            while self.frontier <= sequence and not self.ending:
                await self.changed()
