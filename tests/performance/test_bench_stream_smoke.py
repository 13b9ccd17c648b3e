"""A tiny run of scripts/bench_stream.py's measurements: the script keeps working and every
figure it prints is produced and well-formed. Timings are never asserted here; the
figures come from running the script itself."""

from __future__ import annotations

import json
import math
import sys

import pytest
import trio

from script_loading import load_script as load_scripts_module

pytestmark = pytest.mark.performance


def load_script():  # type: ignore[no-untyped-def]
    return load_scripts_module("bench_stream")


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def assert_distribution(figure: dict, keys: tuple[str, ...]) -> None:
    samples = figure["samples"]
    assert (samples if isinstance(samples, int) else len(samples)) > 0, figure
    for key in keys:
        assert is_number(figure[key]) and figure[key] >= 0, (key, figure)


def assert_per_frame_latency(figures: dict) -> None:
    """One stream's latency window: every matched frame has its own slice stamp, the old
    newest-segment figure is a lower bound of it, and reads, GC and the instrumentation's cost
    are reported."""
    honest, lower = figures["frame_to_event_instrumented_ms"], figures["frame_to_event_newest_segment_lower_bound_ms"]
    assert_distribution(honest, ("p50", "p99", "max"))
    assert lower["samples"] == honest["samples"]
    for key in ("p50", "p99", "max"):  # per frame, its slice's stamp is never newer than the read's newest
        assert lower[key] <= honest[key], key
    reads = figures["public_reads"]
    assert reads["reads"] > 0 and reads["kernel_stamped_slices"] > 0 and reads["messages_stamped"] > 0
    assert reads["length_mismatches"] == 0
    for key in ("wait_before_read_ms", "bytes_per_read", "frames_per_read", "slices_per_read"):
        assert_distribution(reads[key], ("p50", "p99", "max"))
    gc_pauses = figures["latency_gc"]
    assert isinstance(gc_pauses["count"], int) and is_number(gc_pauses["total_ms"])
    assert 0 <= gc_pauses["p99_tail_events_during_gc"] <= gc_pauses["p99_tail_events"] <= honest["samples"]
    tail = gc_pauses["p99_tail_stage_medians_ms"]  # where the tail's time went, stage by stage
    stages = figures["frame_to_event_stages_ms"]
    assert tuple(tail) == tuple(stages)
    for name, median in tail.items():  # stamps taken out of order (a misaligned event) go negative
        assert is_number(median) and median >= 0, name
    instrumentation = figures["instrumentation"]
    assert is_number(instrumentation["stamping_us_per_frame"]) and instrumentation["stamping_us_per_frame"] > 0
    assert_distribution(instrumentation["slicing_delay_ms"], ("p50", "p99", "max"))


def assert_send_stamped_latency(figures: dict) -> None:
    """One stream's send-stamped window: its figure is the row's ``frame_to_event_ms``, from
    frames the simulator stamped within the window, every one of them accounted for."""
    figure = figures["frame_to_event_ms"]
    assert_distribution(figure, ("p50", "p99", "max"))
    assert "unmatched_events" not in figure  # the instrumented window's figure has it: not this one
    stamped = figures["send_stamped"]
    # each stamped frame made one event here or is counted as making none; no hedge legs here
    assert stamped["duplicate_sends"] == 0 and stamped["events_sharing_a_frame"] == 0
    assert stamped["frames_stamped"] == figure["samples"] + stamped["frames_without_event"]
    assert 0 < figure["samples"] and stamped["frames_without_event"] < stamped["frames_stamped"]
    assert stamped["stamp_limit_reached"] is False
    first = stamped["first_of_burst_ms"]  # 20 Hz: bursts 50 ms apart, so a 1 s window has several
    assert_distribution(first, ("p50", "p99", "max"))
    assert stamped["window"]["frames"] > 0 and is_number(stamped["cpu_per_frame_us"])


@pytest.mark.parametrize(("transport", "compare"), [(None, True), ("trio-websocket", False)])
async def test_a_tiny_run_produces_every_figure(transport, compare, monkeypatch):
    bench = load_script()
    # every window flagged, so the flags must name each window the run measured (a window left
    # out of the checks, as the pairs once were, shows): bench_stream's own bench_support
    support = sys.modules["bench_support"]
    monkeypatch.setattr(support, "STOLEN_SHARE", -1.0)
    monkeypatch.setattr(support, "BUSY_MACHINE_SHARE", -math.inf)
    opts = bench.Options(symbols=5, rate=20.0, seconds=1.0, warmup=0.3, transport_seconds=0.5,
                         latency_seconds=1.0, drops=1, opens=2, seed=3, transport=transport,
                         pybit=compare, coalesce_ms=(0.0,) if compare else (),
                         pairs=2 if compare else 0, pair_seconds=0.5)
    order: list[str] = []  # which side each throughput window measured, in turn
    for name, side in (("measure_raw_ceiling", "bare"), ("measure_stream_cpu", "stream")):
        def recorded(*args, _measure=getattr(bench, name), _side=side, **kwargs):  # type: ignore[no-untyped-def]
            order.append(_side)
            return _measure(*args, **kwargs)
        monkeypatch.setattr(bench, name, recorded)
    with trio.fail_after(90):
        result = await bench.run_benchmark(opts)
    json.dumps(result)  # printable as one JSON object
    assert result["config"]["transport"] == (transport or "lean")
    assert result["latest_prices"]["symbols"] == 5 and is_number(result["latest_prices"]["ratio"])
    paired = result["ratio_to_ceiling_interleaved_pairs"]
    if compare:
        assert len(paired["pairs"]) == 2 and paired["seconds_each"] == 0.5
        for pair in paired["pairs"]:
            assert is_number(pair["bare"]) and is_number(pair["stream"])
            assert pair["ratio"] == round(pair["stream"] / pair["bare"], 3)
        assert paired["ratio_min"] <= paired["ratio_median"] <= paired["ratio_max"]
        assert [pair["first"] for pair in paired["pairs"]] == ["bare", "stream"]
        assert order == ["bare", "bare", "stream", "stream", "bare"]  # step 1, then the pairs in turns
        assert result["ratio_to_ceiling"] == paired["ratio_median"]  # what the target reads
    else:
        assert paired == {"skipped": "--pairs 0"}
        assert result["ratio_to_ceiling"] == result["ratio_to_ceiling_single_windows"]
    assert result["ratio_to_ceiling_single_windows"] == round(
        result["stream_msgs_per_cpu_s"] / result["raw_ceiling_msgs_per_cpu_s"], 3)
    assert result["targets"]["ratio_to_ceiling>=1.5"] == (result["ratio_to_ceiling"] >= 1.5)
    rows = result["comparison"]
    assert rows["bare trio-websocket + orjson"]["ratio_to_bare"] == 1.0
    default = ", default: adaptive coalescing <= 1 ms" if transport is None else ""
    assert is_number(rows[f"stream ({transport or 'lean'} transport{default})"]["frames_per_cpu_s"])
    if compare:
        coalesced = rows["stream (lean, no coalescing)"]
        assert is_number(coalesced["frames_per_cpu_s"]) and is_number(coalesced["frame_to_event_ms"]["p99"])
        assert is_number(coalesced["frame_to_event_instrumented_ms"]["p99"])
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
    streams = [{**details, "frame_to_event_ms": result["frame_to_event_overhead_ms"]},
               *details["coalesced_streams"].values()]
    assert len(streams) == (2 if compare else 1)
    for figures in streams:  # every stream row: both latency windows, per-read figures, GC pauses
        assert_per_frame_latency(figures)
        assert_send_stamped_latency(figures)
    for name, row in rows.items():
        if name.startswith("stream"):
            for key in ("frame_to_event_ms", "frame_to_event_instrumented_ms",
                        "frame_to_event_newest_segment_lower_bound_ms", "frames_per_read", "wait_before_read_ms"):
                assert is_number(row[key]["p99"]), (name, key)
            assert (row["frame_to_event_instrumented_ms"]["p50"]
                    >= row["frame_to_event_newest_segment_lower_bound_ms"]["p50"])
    assert result["frame_to_event_overhead_ms"]["p99"] == rows[f"stream ({transport or 'lean'} transport{default})"][
        "frame_to_event_ms"]["p99"]
    # the headline and the target are the send-stamped window's (assert_send_stamped_latency
    # ties its samples to that window's frames), not the instrumented one's
    assert "unmatched_events" in details["frame_to_event_instrumented_ms"]
    assert result["targets"]["frame_to_event_p99<3ms"] == (result["frame_to_event_overhead_ms"]["p99"] < 3.0)
    for window in ("raw", "transport", "stream"):
        assert details[window]["frames"] > 0 and details[window]["client_cpu_s"] > 0, window
        assert is_number(details[window]["sim_cpu_s"])
    assert details["stream"]["events"] > 0
    assert isinstance(details["stream"]["gc"]["count"], int)  # the uninstrumented window's GC, to compare
    assert details["public_reads"]["reads"] > 0
    totals = result["totals"]
    assert totals["frames"] > 0 and totals["events"] > 0 and totals["conflated"] >= 0
    assert totals["public_connects"] == 2  # the first connection and one after the drop
    assert is_number(totals["client_cpu_s"]) and is_number(totals["sim_cpu_s"])
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["python"]
    assert result["machine"]["idle"] == support.idle_settings()  # the kernel's own words, or None where it has none
    # every window says how much the hypervisor took (None where the kernel does not say), the
    # pairs' and the other coalescing windows' too; the flagged ones are named from the same set
    kinds = (int,) if support.machine_steal_seconds() is not None else (type(None),)
    windows = bench.measured_windows(details["raw"], details["transport"], details["read_floor"],
                                     details["stream"], details["send_stamped"]["window"], details["latency_window"],
                                     result["ratio_to_ceiling_interleaved_pairs"], details["coalesced_streams"],
                                     details["pybit"])
    expected = {"raw", "transport", "read_floor", "stream", "send_stamped", "latency"}
    if compare:
        expected |= {"pair_0_bare", "pair_0_stream", "pair_1_bare", "pair_1_stream",
                     "coalesce_0ms_stream", "coalesce_0ms_send_stamped", "coalesce_0ms_latency"}
        if "duration_s" in details["pybit"]:  # measured (the bench extra)
            expected.add("pybit")
    assert expected <= set(windows)
    assert all(isinstance(window["steal_ms"], kinds) for window in windows.values()), windows
    assert set(result["machine"]["steal_windows"]) == {n for n, w in windows.items() if w["steal_ms"] is not None}
    assert set(result["machine"]["busy_windows"]) == {n for n, w in windows.items() if w["others_cpu_s"] is not None}
    assert all(is_number(v) for v in result["durations_s"].values())
