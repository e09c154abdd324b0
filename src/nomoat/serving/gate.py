"""Admission for a backend that runs several generations at once (``--backend-url``): up to ``limit`` running,
at most ``max_queue`` waiting, one more refused with :class:`Busy` (429). The same contract as
:class:`nomoat.serving.engine.Slot`, which is this with ``limit`` 1: a local llama.cpp context runs one
generation, while vLLM or llama.cpp's server batch concurrent requests, so holding them to one would waste them.
"""

from __future__ import annotations

import asyncio
from collections import deque

from nomoat.serving.engine import Busy


class Gate:
    """Up to ``limit`` jobs at once, then a FIFO line of at most ``max_queue``; ``release`` hands a place straight
    to the longest waiter, so a request arriving at that moment cannot jump the line."""

    def __init__(self, max_queue: int, limit: int) -> None:
        self.max_queue, self.limit = max_queue, limit
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def running(self) -> bool:
        return self.active > 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise Busy(f"the backend has {self.active} generations running and {len(self._waiters)} waiting; "
                       "retry shortly")  # fmt: skip
        turn = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed a place just as we were cancelled: pass it on
            else:
                self._waiters.remove(turn)
            raise

    def release(self) -> None:
        """Give the place to the next in line, or free it (on the event loop, like ``Slot.release``)."""
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.active = max(0, self.active - 1)
