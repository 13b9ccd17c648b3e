"""Wall clocks for tests: epoch time that moves with trio's (possibly virtual) clock."""

from __future__ import annotations

from typing import Callable

import trio

#: 2023-11-14T22:13:20Z, the instant of the worked signature examples in BYBIT_V5.md
EXAMPLE_EPOCH = 1_700_000_000.0


def trio_wall_clock(epoch: float = EXAMPLE_EPOCH) -> Callable[[], float]:
    """Epoch seconds that start at ``epoch`` on the first call and then advance with
    ``trio.current_time()``; under a MockClock they jump with virtual time.

    Give the same function to the simulator (``SimulatorConfig(wall_clock=...)``) and to
    the client under test, and auth expiry and REST recv_window checks follow virtual time.
    The first call must be inside ``trio.run``; it keeps that run's clock object, so later
    calls work from any thread too (as ``HybridStream.health()`` from an exporter's thread).
    """
    base: list[float] = []
    clock: list[trio.abc.Clock] = []

    def now() -> float:
        if not clock:
            clock.append(trio.lowlevel.current_clock())
        current = clock[0].current_time()
        if not base:
            base.append(current)
        return epoch + (current - base[0])

    return now
