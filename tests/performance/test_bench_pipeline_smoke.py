"""A tiny run of scripts/bench_pipeline.py: the script keeps working, drives the real actors
end to end and prints every figure. Timings are never asserted here; the figures come from
running the script itself."""

from __future__ import annotations

import math

import pytest

from script_loading import load_script as load_scripts_module

pytestmark = pytest.mark.performance

STAGES = ("ws_parse", "decode_hot", "book_mark", "public_read", "mailbox", "apply_marks", "emit", "measure",
          "to_json", "reader_loop_rest")


def load_script():  # type: ignore[no-untyped-def]
    return load_scripts_module("bench_pipeline")


def finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_bench_pipeline_prints_every_figure():
    bench = load_script()
    figures = bench.run(bench.parse_args(["--symbols", "12", "--ticks", "2", "--repeats", "1", "--fit", "1,3",
                                          "--idle-ms", "1", "--idle-frames-per-read", "4"]))
    assert figures["frames"] == 24
    for name in STAGES:
        assert finite(figures["stages_us_per_frame"][name]), name
    e2e = figures["end_to_end"]
    for name in ("us_per_frame", "library_us_per_frame", "stages_sum_us_per_frame", "no_events_us_per_frame"):
        assert finite(e2e[name]) and e2e[name] > 0, name
    for name in ("event_chain_us_per_event", "library_event_chain_us_per_event"):  # differences: noisy at this size
        assert finite(e2e[name]), name
    assert set(e2e["us_per_frame_by_frames_per_read"]) == {"1", "3"}
    assert finite(e2e["fit_us"]["per_read_F"]) and finite(e2e["fit_us"]["per_frame_v"])
    idle = figures["idle_between_reads"]
    assert idle["frames_per_read"] == 4
    assert set(idle["library_us_per_frame_by_idle_ms"]) == {"0", "1"}
    assert all(finite(v) and v > 0 for v in idle["library_us_per_frame_by_idle_ms"].values())
    assert set(idle["extra_us_per_wakeup_by_idle_ms"]) == {"1"} and finite(idle["extra_us_per_wakeup_by_idle_ms"]["1"])
    assert set(idle["bare_client_us_per_frame_by_idle_ms"]) == set(idle["ratio_to_bare_by_idle_ms"]) == {"0", "1"}
    assert all(finite(v) and v > 0 for v in idle["bare_client_us_per_frame_by_idle_ms"].values())
    assert all(finite(v) and v > 0 for v in idle["ratio_to_bare_by_idle_ms"].values())


def test_the_bare_client_reads_every_frame_through_a_real_upgrade():
    """trio-websocket's own client, its upgrade answered by wsproto's server side, reads every
    frame of every window (as bench_stream's bare client does against the simulator)."""
    bench = load_script()
    work = bench.build_workload(8, 4)
    cpu, frames = bench.bare_client(work, 1, 3, 1, 5)
    assert frames == 24
    assert cpu > 0  # the window ran the client: its CPU was counted


def test_an_idle_gap_run_reads_every_chunk_and_sleeps_before_each(monkeypatch):
    """The idle figure is only honest if the window covers every read and its sleep."""
    bench = load_script()
    work = bench.build_workload(8, 4)
    sleeps = []
    real_sleep = bench.trio.sleep

    async def counting_sleep(seconds):
        sleeps.append(seconds)
        await real_sleep(seconds)

    monkeypatch.setattr(bench.trio, "sleep", counting_sleep)
    run = bench.end_to_end(work, 1, 3, 1, 4, output=False, gap=0.001)
    assert run.frames == 24 and run.reads == 6
    assert sleeps.count(0.001) == 6


def test_the_end_to_end_run_carries_every_price_to_the_consumer():
    """The real actors deliver an event for every mark the market model moved (the mailbox
    and the queue may conflate only within a read; one frame per read here, so nothing is
    merged away that the stage inputs did not merge too)."""
    bench = load_script()
    work = bench.build_workload(8, 4)
    prep = bench.prepare(work, 1, 3, 1)
    run = bench.end_to_end(work, 1, 3, 1, 1, output=True)
    assert run.frames == prep.frames == 24
    assert run.reads == 24
    assert run.events == prep.events > 0
    assert run.marks_taken == sum(len(take) for take in prep.takes)
    assert run.json_bytes > 0
