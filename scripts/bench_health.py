#!/usr/bin/env python
"""What ``health()`` and ``positions()`` cost a bot at N open positions; print ONE JSON object.

Both are safe from any thread, and a bot (or a metrics exporter) often calls them from its
own. The calling thread gives the GIL up only when another has waited CPython's switch
interval (5 ms), so the stream's one trio thread, which reads every ticker, cannot run
during a call of a few ms: its length is a stall of the stream. This
benchmark runs the stream with every actor against the simulator in a subprocess
(``bench_stream``'s: ``--symbols`` positions, ``--rate`` tickers a second each) and reports:

    call_ms        per call on the trio thread, ``--calls`` calls each: ``health`` (with
                   every open position's row, what the bot gets), ``health_without_rows``
                   (what the alert rules read once a second), ``positions``
    stall_ms       the stream thread's stall: how late a 1 ms ``trio.sleep`` wakes, over
                   ``--seconds``, ``quiet`` (nothing else runs) and ``polled`` (a thread of
                   this process calls ``health()`` ``--poll-hz`` times a second, as a bot's
                   thread would); p50, p99, max
    polled_calls   how many calls the thread made, and their ms

Usage: python scripts/bench_health.py [--symbols 500] [--rate 10] [--calls 30]
                                      [--seconds 10] [--poll-hz 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_stream, also when loaded by path
import bench_stream as bench  # noqa: E402
from bench_support import percentiles  # noqa: E402

from hybrid_actors.supervisor import HybridStream, build_health_report  # noqa: E402

#: the sleep whose lateness measures the stream thread's stalls (s)
TICK = 0.001


async def call_ms(call: Callable[[], object], calls: int) -> dict[str, Any]:
    """``calls`` timed calls on the trio thread, 50 ms apart (the stream runs in between)."""
    spans: list[float] = []
    for _ in range(calls):
        began = time.perf_counter()
        call()
        spans.append((time.perf_counter() - began) * 1000)
        await trio.sleep(0.05)
    return percentiles(spans)


async def lateness_ms(seconds: float) -> list[float]:
    """How late each 1 ms sleep of ``seconds`` woke (ms): the time the thread could not run."""
    late: list[float] = []
    end = trio.current_time() + seconds
    while (now := trio.current_time()) < end:
        await trio.sleep(TICK)
        late.append((trio.current_time() - now - TICK) * 1000)
    return late


def poll(stream: HybridStream, hz: float, stop: threading.Event, spans: list[float]) -> None:
    """A bot's thread: ``stream.health()`` ``hz`` times a second until ``stop``."""
    while not stop.wait(1 / hz):
        began = time.perf_counter()
        stream.health()
        spans.append((time.perf_counter() - began) * 1000)


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    async with bench.stream_on_positions(opts) as stream:
        positions = len(stream.positions())
        calls = {"health": await call_ms(stream.health, opts.calls),
                 "health_without_rows": await call_ms(lambda: build_health_report(stream.hub, rows=False),
                                                      opts.calls),
                 "positions": await call_ms(stream.positions, opts.calls)}
        quiet = await lateness_ms(opts.seconds)
        stop = threading.Event()
        spans: list[float] = []
        async with trio.open_nursery() as nursery:
            # a bot's own thread, as the bridge's users have (trio.to_thread: joined on exit)
            nursery.start_soon(trio.to_thread.run_sync, poll, stream, opts.poll_hz, stop, spans)
            try:
                polled = await lateness_ms(opts.seconds)
            finally:
                stop.set()
    return {"symbols": opts.symbols, "rate": opts.rate, "open_positions": positions, "call_ms": calls,
            "stall_ms": {"quiet": percentiles(quiet), "polled": percentiles(polled)},
            "polled_calls": {"hz": opts.poll_hz, **percentiles(spans)}}


def main() -> int:
    parser = bench.stream_bench_parser(__doc__, seconds=10.0)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--poll-hz", type=float, default=10.0)
    opts = parser.parse_args()
    print(json.dumps(trio.run(run, opts)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
