"""A tiny run of scripts/bench_observe.py: the script keeps working and prints every figure.
Timings are never asserted here; the figures come from running the script itself."""

from __future__ import annotations

import argparse
import math

import pytest

from script_loading import load_script as load_scripts_module

pytestmark = pytest.mark.performance


def load_script():  # type: ignore[no-untyped-def]
    return load_scripts_module("bench_observe")


async def test_bench_observe_prints_every_figure():
    bench = load_script()
    figures = await bench.main(argparse.Namespace(positions=4, rate=5.0, repeat=2))
    assert figures["positions"] == 4
    for name in ("record_event_us", "health_report_ms", "health_json_ms", "metrics_render_ms",
                 "dashboard_render_25_rows_ms", "http_health_ms", "http_metrics_ms", "max_actor_stall_ms",
                 "baseline_p99_stall_ms"):
        value = figures[name]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, (name, value)
    assert figures["health_bytes"] > 0 and figures["metrics_bytes"] > 0
