"""A tiny run of scripts/bench_health.py: every figure is produced and well-formed, and the
polling thread really called health() while the stall was measured. Timings are never
asserted; the figures come from the script."""

from __future__ import annotations

import argparse

import pytest
import trio

from script_loading import load_script

pytestmark = pytest.mark.performance


def test_bench_health_reports_call_costs_and_stalls():
    bench_health = load_script("bench_health")
    opts = argparse.Namespace(symbols=5, rate=5.0, calls=3, seconds=0.5, poll_hz=20.0, warmup=0.2, seed=1)
    figures = trio.run(bench_health.run, opts)
    assert figures["open_positions"] == 5
    for name in ("health", "health_without_rows", "positions"):
        call = figures["call_ms"][name]
        assert call["samples"] == 3 and call["p50"] > 0, (name, call)  # each call was timed
    for window in ("quiet", "polled"):
        stall = figures["stall_ms"][window]
        # one sample per 1 ms sleep: a 0.5 s window holds at most ~500 of them, and some;
        # trio never wakes a sleep early, so no lateness is negative
        assert 0 < stall["samples"] <= 500 and stall["p50"] >= 0, (window, stall)
    polled = figures["polled_calls"]
    # the thread called health() while the polled window ran, at most poll_hz times a second
    assert 1 <= polled["samples"] <= opts.seconds * opts.poll_hz and polled["p50"] > 0, polled
