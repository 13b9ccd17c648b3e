"""A tiny run of scripts/bench_stream.py's measurements: the script keeps working and every
figure it prints is produced and well-formed. Timings are never asserted here; the
figures come from running the script itself."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib

import pytest
import trio

pytestmark = pytest.mark.performance

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "bench_stream.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_stream", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def assert_distribution(figure: dict, keys: tuple[str, ...]) -> None:
    samples = figure["samples"]
    assert (samples if isinstance(samples, int) else len(samples)) > 0, figure
    for key in keys:
        assert is_number(figure[key]) and figure[key] >= 0, (key, figure)


@pytest.mark.parametrize(("transport", "compare"), [(None, True), ("trio-websocket", False)])
async def test_a_tiny_run_produces_every_figure(transport, compare):
    bench = load_script()
    opts = bench.Options(symbols=5, rate=20.0, seconds=1.0, warmup=0.3, transport_seconds=0.5,
                         latency_seconds=1.0, drops=1, opens=2, seed=3, transport=transport,
                         pybit=compare, coalesce_ms=(1.0,) if compare else ())
    with trio.fail_after(90):
        result = await bench.run_benchmark(opts)
    json.dumps(result)  # printable as one JSON object
    assert result["config"]["transport"] == (transport or "lean")
    assert result["latest_prices"]["symbols"] == 5 and is_number(result["latest_prices"]["ratio"])
    rows = result["comparison"]
    assert rows["bare trio-websocket + orjson"]["ratio_to_bare"] == 1.0
    assert is_number(rows[f"stream ({transport or 'lean'} transport)"]["frames_per_cpu_s"])
    if compare:
        coalesced = rows["stream (lean, adaptive coalescing <= 1 ms)"]
        assert is_number(coalesced["frames_per_cpu_s"]) and is_number(coalesced["frame_to_event_ms"]["p99"])
        assert result["details"]["read_floor"]["reads"] > 0
        pytest.importorskip("pybit")  # (a module is always true: it is no part of the assertion)
        assert rows["pybit WebSocket.ticker_stream"]["frames_per_cpu_s"] > 0
        assert result["details"]["pybit"]["tick_to_callback_ms"]["samples"] > 0

    for key in ("raw_ceiling_msgs_per_cpu_s", "stream_msgs_per_cpu_s", "ratio_to_ceiling"):
        assert is_number(result[key]) and result[key] > 0, key
    assert_distribution(result["frame_to_event_overhead_ms"], ("p50", "p99", "max"))
    stages = result["details"]["frame_to_event_stages_ms"]
    assert tuple(stages) == bench.STAGES
    for stage in bench.STAGES:  # every matched event stamped at every stage
        assert_distribution(stages[stage], ("p50", "p99", "max"))
    assert_distribution(result["public_drop_to_fresh_price_s"], ("median", "max"))
    assert len(result["public_drop_to_fresh_price_s"]["samples"]) == 1
    assert_distribution(result["open_to_first_mark_ms"], ("p50", "p99", "max"))
    assert result["open_to_first_mark_ms"]["samples"] == 2
    assert set(result["targets"]) and all(isinstance(v, bool) for v in result["targets"].values())

    details = result["details"]
    for window in ("raw", "transport", "stream"):
        assert details[window]["frames"] > 0 and details[window]["client_cpu_s"] > 0, window
        assert is_number(details[window]["sim_cpu_s"])
    assert details["stream"]["events"] > 0
    assert details["public_reads"]["reads"] > 0
    totals = result["totals"]
    assert totals["frames"] > 0 and totals["events"] > 0 and totals["conflated"] >= 0
    assert totals["public_connects"] == 2  # the first connection and one after the drop
    assert is_number(totals["client_cpu_s"]) and is_number(totals["sim_cpu_s"])
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["python"]
    assert all(is_number(v) for v in result["durations_s"].values())
