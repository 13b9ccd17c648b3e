"""The bridge's measurements: delivery delays in a bounded histogram, and its counters."""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = ["BridgeStats", "DelayHistogram"]


@attrs.define(eq=False)
class DelayHistogram:
    """Delays in bounded buckets: 1 µs below 1 ms, 10 µs below 10 ms, 1 ms above (capped at
    60 s), so at most ~2,900 buckets whatever the run length; ``max`` is exact."""

    _counts: dict[int, int] = attrs.Factory(dict)
    count: int = 0
    max_us: int = 0

    def add(self, delay_ns: int) -> None:
        us = delay_ns // 1000 if delay_ns > 0 else 0  # (a wall clock stepped back: count it as no delay)
        if us > self.max_us:
            self.max_us = us
        if us >= 1_000:
            us = us - us % 10 if us < 10_000 else min(us - us % 1_000, 60_000_000)
        counts = self._counts
        counts[us] = counts.get(us, 0) + 1
        self.count += 1

    def quantile_ms(self, q: float) -> float | None:
        """The smallest bucket at or below which ``q`` of the samples fall, in ms."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        counts = dict(self._counts)  # one C-level copy: safe while the loop's thread adds
        for us in sorted(counts):
            seen += counts[us]
            if seen >= rank:
                return us / 1000
        return self.max_us / 1000  # pragma: no cover - rank <= count

    def reset(self) -> None:
        self._counts.clear()
        self.count = 0
        self.max_us = 0

    def summary(self) -> dict[str, Any]:
        return {"samples": self.count, "p50_ms": self.quantile_ms(0.50), "p99_ms": self.quantile_ms(0.99),
                "max_ms": self.max_us / 1000 if self.count else None}


@attrs.define(eq=False)
class BridgeStats:
    """What the bridge did.

    ``frame_delays``: from the frame's read (the event's ``received_ts``, epoch ms, so 1 ms
    resolution) to the handler call: everything the bot waits for, a blocked loop included.
    ``delays``: from the trio side taking a batch to the handler call (µs): the bridge's own
    share. Read from any thread: every field is a number or a histogram whose summary copies
    its buckets in one step.
    """

    batches: int = 0
    events_in: int = 0
    handler_calls: int = 0
    handler_errors: int = 0
    conflated: int = 0
    dropped_on_stop: int = 0
    delays: DelayHistogram = attrs.Factory(DelayHistogram)
    frame_delays: DelayHistogram = attrs.Factory(DelayHistogram)
    #: the part of ``delays`` spent before the idle delivery task got the thread back (per
    #: wakeup): time the loop's thread was busy elsewhere (trio's own steps, other callbacks)
    wake_delays: DelayHistogram = attrs.Factory(DelayHistogram)

    def reset_delays(self) -> None:
        self.delays.reset()
        self.frame_delays.reset()
        self.wake_delays.reset()

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "events_in": self.events_in, "handler_calls": self.handler_calls,
                "handler_errors": self.handler_errors, "conflated": self.conflated,
                "dropped_on_stop": self.dropped_on_stop, "delivery_delay": self.frame_delays.summary(),
                "bridge_delay": self.delays.summary(), "wake_delay": self.wake_delays.summary()}

