"""Latency histograms: cheap to record on the hot path, read as percentiles and Prometheus buckets.

Pure: no trio, no clock. The recorder is given durations (seconds) and the current
monotonic time (for its window); one writer (the combiner) records, anyone reads.

Recording is one ``bisect`` over ~90 fixed bounds and three integer/float additions:
no allocation, no sorting, nothing that grows. The bounds are geometric (20% apart,
50 µs to 120 s) plus every Prometheus bucket bound (:data:`PROMETHEUS_BOUNDS`), so

- percentiles over the recent window are interpolated inside one fine bucket (at most
  20% wide), and
- the cumulative counts at the Prometheus bounds are exact.

The window is a ring of ``slot`` second slots; ``window`` seconds of them give the
percentiles, ``history`` slots give the sparkline (one p50/p99 per slot).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

import attrs

__all__ = ["PROMETHEUS_BOUNDS", "FINE_BOUNDS", "LatencyHistogram", "Latency", "percentile"]

#: the ``le`` bounds of the exported ``hybrid_*_seconds`` histograms (seconds)
PROMETHEUS_BOUNDS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _fine_bounds(lowest: float = 0.00005, highest: float = 120.0, ratio: float = 1.2) -> tuple[float, ...]:
    bounds = set(PROMETHEUS_BOUNDS)
    value = lowest
    while value < highest:
        bounds.add(round(value, 9))
        value *= ratio
    bounds.add(highest)
    return tuple(sorted(bounds))


FINE_BOUNDS: Final[tuple[float, ...]] = _fine_bounds()
#: indexes of the Prometheus bounds in FINE_BOUNDS
_EXPORT_INDEX: Final[tuple[int, ...]] = tuple(FINE_BOUNDS.index(b) for b in PROMETHEUS_BOUNDS)


def percentile(counts: Sequence[int], q: float, bounds: Sequence[float] = FINE_BOUNDS) -> float | None:
    """The ``q`` quantile (0..1) of bucketed ``counts`` (one more than ``bounds``: the last
    counts values above the highest bound), interpolated linearly inside its bucket; None
    without data. A value above the highest bound reports that bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(bounds):
                return bounds[-1]
            low = bounds[index - 1] if index else 0.0
            high = bounds[index]
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return bounds[-1]  # pragma: no cover - rank <= total always stops the loop


@attrs.define(eq=False)
class LatencyHistogram:
    """One latency: totals since start (for Prometheus) and a ring of recent slots."""

    slot: float = 5.0
    window: float = 60.0
    history: int = 60
    bounds: tuple[float, ...] = FINE_BOUNDS
    #: counts per fine bucket since start; the last one counts values above the highest bound
    counts: list[int] = attrs.field(init=False)
    count: int = 0
    sum: float = 0.0
    maximum: float = 0.0
    #: (slot start, counts) of the recent slots, oldest first; the last one is being filled
    _slots: deque[tuple[float, list[int]]] = attrs.field(init=False)
    _current: list[int] = attrs.field(init=False)
    _slot_end: float = attrs.field(init=False, default=-math.inf)

    def __attrs_post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)
        self._slots = deque(maxlen=max(self.history, int(self.window // self.slot) + 1))
        self._current = [0] * (len(self.bounds) + 1)  # replaced by the first slot

    def observe(self, seconds: float, now: float) -> None:
        """Record one duration (negative ones, from clock skew, count as 0) at monotonic ``now``."""
        if now >= self._slot_end:
            self._rotate(now)
        if seconds < 0.0:
            seconds = 0.0
        index = bisect_left(self.bounds, seconds)
        self.counts[index] += 1
        self._current[index] += 1
        self.count += 1
        self.sum += seconds
        if seconds > self.maximum:
            self.maximum = seconds

    def observe_many(self, values: Sequence[float], now: float) -> None:
        """:meth:`observe` for each of ``values``, all at ``now`` (one slot check per call;
        the combiner records a chunk of ticker events at once)."""
        if not values:
            return
        if now >= self._slot_end:
            self._rotate(now)
        counts, current, bounds = self.counts, self._current, self.bounds
        total, high, n = self.sum, self.maximum, 0  # summed in order: the same float as observe()
        for seconds in values:
            if seconds < 0.0:
                seconds = 0.0
            index = bisect_left(bounds, seconds)
            counts[index] += 1
            current[index] += 1
            total += seconds
            if seconds > high:
                high = seconds
            n += 1
        self.count += n
        self.sum = total
        self.maximum = high

    def _rotate(self, now: float) -> None:
        start = now - now % self.slot
        self._current = [0] * (len(self.bounds) + 1)
        self._slots.append((start, self._current))
        self._slot_end = start + self.slot

    # --- readers (never write) -------------------------------------------------------------
    def recent(self, now: float) -> list[int]:
        """Bucket counts of the slots that started within the last ``window`` seconds (so
        between ``window - slot`` and ``window`` seconds of data)."""
        merged = [0] * (len(self.bounds) + 1)
        since = now - self.window
        for start, counts in tuple(self._slots):
            if since <= start <= now:
                for index, count in enumerate(counts):
                    if count:
                        merged[index] += count
        return merged

    def summary(self, now: float) -> dict[str, Any]:
        """``{count, p50, p95, p99}`` over the recent window, in milliseconds (None without data),
        plus ``total`` (count since start) and ``max`` (ms, since start)."""
        recent = self.recent(now)
        return {"count": sum(recent), **{f"p{int(q * 100)}": _ms(percentile(recent, q, self.bounds))
                                          for q in (0.5, 0.95, 0.99)},
                "total": self.count, "max": _ms(self.maximum) if self.count else None}

    def history_ms(self, now: float, q: float = 0.99) -> list[float | None]:
        """The ``q`` quantile of each of the last ``history`` slots up to ``now``, oldest first
        (None for a slot without data): the sparkline."""
        by_start = {start: counts for start, counts in tuple(self._slots)}
        current = now - now % self.slot
        out: list[float | None] = []
        for i in range(self.history - 1, -1, -1):
            counts = by_start.get(current - i * self.slot)
            out.append(None if counts is None else _ms(percentile(counts, q, self.bounds)))
        return out

    def exported(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative ``(le, count)`` pairs at :data:`PROMETHEUS_BOUNDS` plus ``+Inf``, and the sum."""
        counts = list(self.counts)
        buckets: list[tuple[str, int]] = []
        cumulative = 0
        done = 0
        for bound, index in zip(PROMETHEUS_BOUNDS, _EXPORT_INDEX):
            cumulative += sum(counts[done:index + 1])
            done = index + 1
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", cumulative + sum(counts[done:])))
        return buckets, self.sum


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


@attrs.define(eq=False)
class Latency:
    """The stream's two latencies, recorded by the combiner when it hands events over:

    - ``exchange_to_event``: the exchange's timestamp of what the event reports (the ticker's
      ``ts``, the position's ``updatedTime``) to the hand-over, on the wall clock: it includes
      Bybit's own push delay and any clock skew;
    - ``frame_to_event``: our read of the frame that carried it to the hand-over.
    """

    exchange_to_event: LatencyHistogram = attrs.Factory(LatencyHistogram)
    frame_to_event: LatencyHistogram = attrs.Factory(LatencyHistogram)

    def report(self, now: float) -> dict[str, Any]:
        """``health()['latency']``: percentiles (ms) over the window and the p99 sparkline."""
        exchange, frame = self.exchange_to_event, self.frame_to_event
        return {"window_s": exchange.window, "exchange_to_event_ms": exchange.summary(now),
                "frame_to_event_ms": frame.summary(now),
                "history": {"slot_s": exchange.slot, "exchange_to_event_p99_ms": exchange.history_ms(now),
                            "frame_to_event_p99_ms": frame.history_ms(now)}}
