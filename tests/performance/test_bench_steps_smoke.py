"""A tiny run of scripts/bench_steps.py: the stream's task steps are watched and every figure
is produced and well-formed. Timings are never asserted; the figures come from the script."""

from __future__ import annotations

import argparse

import pytest
import trio

from script_loading import load_script

pytestmark = pytest.mark.performance


def test_bench_steps_reports_every_task_of_the_stream():
    bench_steps = load_script("bench_steps")
    opts = argparse.Namespace(symbols=5, rate=5.0, seconds=1.0, warmup=0.2, top=50, seed=1)
    figures = trio.run(bench_steps.run, opts)
    assert figures["public_frames"] > 0
    tasks = {row["task"] for row in figures["by_task"]}
    # the reader and the combiner ran in the window, and each step was counted once
    assert any(name.endswith("PublicStreamActor.run") for name in tasks), tasks
    assert any(name.endswith("CombinerActor._prices") for name in tasks), tasks
    assert sum(row["steps"] for row in figures["by_task"]) == figures["steps"]
    for row in figures["by_task"]:
        assert row["steps"] > 0 and row["cpu_ms"] >= 0 and row["longest_step_ms"] > 0, row
    longest = figures["longest_steps"]
    assert len(longest) == min(figures["steps_over_1ms"], opts.top)
    assert [step["wall_ms"] for step in longest] == sorted((step["wall_ms"] for step in longest), reverse=True)
    for step in longest:
        assert step["wall_ms"] > 1.0 and step["cpu_ms"] >= 0 and step["task"], step
