"""Seeing a blocked loop: :class:`LoopWatch`, like asyncio's slow-callback warning.

trio and asyncio share the loop's thread in both hosts, so synchronous bot code that runs
long (a handler that sleeps, a heavy computation) stops the sockets being read too. The
watch keeps one timer armed on the loop every ``interval`` seconds; when it fires later
than ``threshold`` past its time the thread was blocked that long: a *stall*, counted,
logged, shown by ``health()`` and reported to ``on_stall`` (the stream wakes its alert
actor with it, so ``loop_stalled`` fires even while no event comes). While the thread is
blocked, another thread reading
:meth:`LoopWatch.blocked_for` sees the timer overdue, so an exporter calling ``health()``
from its own thread sees the block as it happens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import attrs

__all__ = ["DEFAULT_STALL_THRESHOLD", "LoopWatch"]

log = logging.getLogger("hybrid_actors.bridge")

#: a loop blocked this long (seconds) is a stall
DEFAULT_STALL_THRESHOLD: Final = 0.25
#: at most one stall warning per this many seconds; the rest are counted
_LOG_EVERY: Final = 10.0
#: health() lists a stall this recent (seconds) in its events
RECENT: Final = 60.0


@attrs.define(eq=False)
class LoopWatch:
    loop: asyncio.AbstractEventLoop
    threshold: float = DEFAULT_STALL_THRESHOLD
    #: called on the loop's thread after each stall is counted
    on_stall: Callable[[], None] = lambda: None
    stalls: int = 0
    max_stall: float = 0.0
    last_stall: float | None = None
    #: ``time.monotonic()`` when the last stall ended
    last_stall_end: float | None = None
    _expected: float | None = None
    _handle: asyncio.TimerHandle | None = None
    _logged_at: float = -_LOG_EVERY
    _unlogged: int = 0

    @property
    def interval(self) -> float:
        return min(self.threshold / 2, 0.25)

    def start(self) -> None:
        self._arm(time.monotonic())

    def stop(self) -> None:
        handle, self._handle = self._handle, None
        self._expected = None
        if handle is not None:
            handle.cancel()

    def _arm(self, now: float) -> None:
        self._expected = now + self.interval
        self._handle = self.loop.call_later(self.interval, self._check)

    def _check(self) -> None:
        now = time.monotonic()
        expected = self._expected
        if expected is not None and (late := now - expected) >= self.threshold:
            self._stalled(late, now)
        self._arm(now)

    def _stalled(self, seconds: float, now: float) -> None:
        self.stalls += 1
        self.max_stall = max(self.max_stall, seconds)
        self.last_stall, self.last_stall_end = seconds, now
        self.on_stall()
        if now - self._logged_at < _LOG_EVERY:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last warning)" if self._unlogged else ""
        self._logged_at, self._unlogged = now, 0
        log.warning("the asyncio loop's thread was blocked for %.3fs (stall threshold %gs)%s: trio shares that "
                    "thread, so the stream's sockets were not read meanwhile and events waited; move slow "
                    "synchronous work off the loop (loop.run_in_executor, asyncio.to_thread)", seconds,
                    self.threshold, more)

    def blocked_for(self) -> float:
        """How long the loop's thread has been blocked right now (0 unless over the threshold).
        Safe from any thread."""
        expected = self._expected
        if expected is None:
            return 0.0
        late = time.monotonic() - expected
        return late if late >= self.threshold else 0.0

    def summary(self) -> dict[str, Any]:
        """Counters for ``health().events``; safe from any thread."""
        end, last = self.last_stall_end, self.last_stall
        age = None if end is None else time.monotonic() - end
        return {"loop_stalls": self.stalls, "loop_stall_threshold_ms": round(self.threshold * 1000, 3),
                "loop_stall_max_ms": round(self.max_stall * 1000, 3) if self.stalls else None,
                "loop_stall_last_ms": round(last * 1000, 3) if last is not None else None,
                "loop_stall_last_age_s": round(age, 3) if age is not None else None,
                "loop_blocked_ms": round(self.blocked_for() * 1000, 3)}
