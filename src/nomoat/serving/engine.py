"""Admission per model (``parallel`` running, a bounded queue) and worker threads that can be stopped.

llama.cpp contexts are not thread-safe. So each model has a :class:`Slot`: ``parallel`` jobs run (1 for a plain
model, which generates one answer at a time; N under ``nomoat serve --parallel N``, whose batch engine decodes N
sequences together, see :mod:`nomoat.llm.batching`), at most ``max_queue`` wait, and one more is refused with
:class:`Busy` (HTTP 429) instead of piling up. A job runs in its own thread (it blocks in C for each token) and
hands its text to the event loop piece by piece; :meth:`Job.cancel` (client gone) makes the thread stop at the
next piece and close the generator, which ends llama.cpp's sampling loop (or frees the batch sequence). A place
is released only when the thread has really finished, because until then it still uses the model.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

JobEvent = tuple[str, Any]
Work = Callable[[Callable[[str], None], threading.Event], Any]
"""``work(emit, stop) -> result``: runs in a worker thread, calls ``emit(text)`` per piece, returns early once
``stop`` is set. Its return value (or exception) ends the job."""


class Busy(Exception):
    """The model is generating and its queue is full (HTTP 429)."""


class Slot:
    """Admission control for one model: up to ``parallel`` running jobs, at most ``max_queue`` waiting for a
    place, served in order.

    ``release`` hands the place straight to the longest waiter (it never becomes free in between), so a request
    arriving at that moment cannot jump the queue.
    """

    def __init__(self, max_queue: int, parallel: int = 1) -> None:
        self.max_queue, self.parallel = max_queue, parallel
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a place, waiting in line; raises Busy at once if ``max_queue`` requests are already waiting."""
        if self.running < self.parallel and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise Busy(f"the model is busy ({len(self._waiters)} requests waiting); retry shortly")
        turn = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed the slot just as we were cancelled: pass it on
            else:
                self._waiters.remove(turn)
            raise

    def release(self) -> None:
        """Give the place to the next in line, or free it. Runs on the event loop (threads use
        ``loop.call_soon_threadsafe``)."""
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.running -= 1


class Job:
    """``work`` running in a thread while holding ``slot`` (already acquired); read it with :meth:`next`."""

    def __init__(self, slot: Slot, work: Work) -> None:
        self.slot, self.work = slot, work
        self.stop = threading.Event()
        self.result: Any = None
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._thread: threading.Thread | None = None
        self._released = False
        self._next_check = 0.0  # loop time of the next client check

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nomoat-generate", daemon=True)
        self._thread.start()

    def _put(self, kind: str, value: Any) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))

    def _run(self) -> None:
        try:
            result = self.work(lambda text: self._put("text", text), self.stop)
            self._put("done", result)
        except BaseException as exc:  # handed to the request; the thread itself must end quietly
            self._put("error", exc)
        finally:
            self._loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.slot.release()

    async def next(self, disconnected: Callable[[], Awaitable[bool]] | None = None, poll_s: float = 0.5) -> JobEvent:
        """The next event, ``("text", piece)`` or ``("done", result)``; raises the work's exception.

        With ``disconnected`` (async, e.g. ``Request.is_disconnected``) the client is checked every ``poll_s``
        while waiting, and a client that left cancels the job: the model is not kept busy for nobody.
        """
        if self._thread is None:
            self.start()
        getter = asyncio.ensure_future(self._queue.get())
        try:
            while not getter.done():
                await asyncio.wait({getter}, timeout=poll_s if disconnected else None)
                if not getter.done():
                    await self._check(disconnected, poll_s)
            await self._check(disconnected, poll_s)  # a fast stream never waits: check between its pieces too
        finally:
            getter.cancel()  # a no-op when done; otherwise we were cancelled ourselves
        kind, value = getter.result()
        if kind == "error":
            raise value
        if kind == "done":
            self.result = value
        return kind, value

    async def _check(self, disconnected: Callable[[], Awaitable[bool]] | None, every_s: float) -> None:
        """Cancel the job if the client left (checked at most every ``every_s``). After a cancel the thread stops
        at its next piece and reports "done", so callers just keep reading."""
        now = self._loop.time()
        if disconnected is None or self.stop.is_set() or now < self._next_check:
            return
        self._next_check = now + every_s
        if await disconnected():
            self.cancel()

    def cancel(self) -> None:
        """Stop generating (the client went away). Frees the slot now if the thread never started."""
        self.stop.set()
        if self._thread is None:
            self._release()


async def run_to_end(job: Job, disconnected: Callable[[], Awaitable[bool]] | None = None) -> str:
    """All of a job's text (non-streaming requests); ``job.result`` is set afterwards."""
    parts: list[str] = []
    try:
        while True:
            kind, value = await job.next(disconnected)
            if kind == "done":
                return "".join(parts)
            parts.append(value)
    finally:
        job.cancel()  # a no-op once finished; stops the thread if we are cancelled ourselves
