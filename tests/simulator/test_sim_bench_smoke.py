"""A short run of scripts/bench_simulator.py's code path (the figures come from the script itself)."""

from __future__ import annotations

import argparse
import importlib.util
import pathlib

import pytest
import trio

pytestmark = pytest.mark.performance

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "bench_simulator.py"


async def test_bench_script_measures_a_small_run():
    spec = importlib.util.spec_from_file_location("bench_simulator", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(symbols=20, rate=20.0, seconds=1.0, warmup=0.3, connections=2, category="linear")
    with trio.fail_after(30):
        result = await bench.bench(args)
    assert result["symbols"] == 20 and result["target_frames_per_s"] == 400
    assert result["frames"] > 0 and result["sim_cpu_s_per_1000_frames"] is not None
    assert result["simulator_exit_code"] == 0
