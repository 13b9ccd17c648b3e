"""The latency recorder: percentiles over a window, the sparkline history, Prometheus buckets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_actors.latency import FINE_BOUNDS, PROMETHEUS_BOUNDS, Latency, LatencyHistogram, percentile

pytestmark = pytest.mark.unit


def test_fine_bounds_contain_every_prometheus_bound_and_are_at_most_20_percent_apart():
    assert set(PROMETHEUS_BOUNDS) <= set(FINE_BOUNDS)
    assert list(FINE_BOUNDS) == sorted(set(FINE_BOUNDS))
    assert all(high / low <= 1.2 + 1e-5 for low, high in zip(FINE_BOUNDS, FINE_BOUNDS[1:]))


def test_percentiles_match_the_exact_ones_within_a_bucket():
    rng = random.Random(3)
    values = [rng.expovariate(1 / 0.004) for _ in range(20_000)]
    hist = LatencyHistogram()
    for value in values:
        hist.observe(value, now=10.0)
    exact = sorted(values)
    summary = hist.summary(now=10.0)
    assert summary["count"] == summary["total"] == 20_000
    for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        truth = exact[int(q * len(exact))] * 1000
        assert truth / 1.2 <= summary[key] <= truth * 1.2, (key, summary[key], truth)
    assert summary["max"] == round(max(values) * 1000, 3)


def test_no_data_gives_none_not_zero():
    hist = LatencyHistogram()
    assert hist.summary(now=0.0) == {"count": 0, "p50": None, "p95": None, "p99": None, "total": 0, "max": None}
    assert percentile([0] * (len(FINE_BOUNDS) + 1), 0.5) is None


def test_the_window_forgets_old_slots_and_history_keeps_one_point_per_slot():
    hist = LatencyHistogram(slot=5.0, window=60.0, history=12)
    for second in range(0, 30):
        hist.observe(0.800, now=float(second))  # slow for the first 30 s
    for second in range(30, 100):
        hist.observe(0.002, now=float(second))
    at_99 = hist.summary(now=99.0)
    assert at_99["p99"] < 3.0  # the 800 ms samples left the window
    assert at_99["count"] == 60  # slots 40..95 (12 of 5 s), one sample per second
    assert at_99["total"] == 100 and at_99["max"] == 800.0
    history = hist.history_ms(now=99.0)
    assert len(history) == 12 and all(p is not None and p < 3.0 for p in history)
    # a silent stretch shows as gaps, and the window empties
    assert hist.history_ms(now=130.0)[-6:] == [None] * 6
    assert hist.summary(now=200.0)["count"] == 0


def test_the_window_includes_the_slot_at_its_edge():
    hist = LatencyHistogram(slot=5.0, window=60.0)
    hist.observe(0.5, now=41.0)  # slot [40, 45)
    assert hist.summary(now=100.0)["count"] == 1
    assert hist.summary(now=100.001)["count"] == 0


def test_negative_durations_from_clock_skew_count_as_zero():
    hist = LatencyHistogram()
    hist.observe(-0.25, now=1.0)
    buckets, total = hist.exported()
    assert buckets[0] == ("0.0005", 1) and total == 0.0


def test_values_above_the_top_bound_go_to_inf_and_report_the_top_bound():
    hist = LatencyHistogram()
    hist.observe(500.0, now=1.0)
    buckets, total = hist.exported()
    assert buckets[-2] == ("60.0", 0) and buckets[-1] == ("+Inf", 1) and total == 500.0
    assert hist.summary(now=1.0)["p50"] == FINE_BOUNDS[-1] * 1000


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=200, allow_nan=False), min_size=1, max_size=300))
def test_exported_buckets_are_exact_cumulative_counts(values):
    hist = LatencyHistogram()
    for value in values:
        hist.observe(value, now=0.0)
    buckets, total = hist.exported()
    assert [le for le, _ in buckets] == [repr(b) for b in PROMETHEUS_BOUNDS] + ["+Inf"]
    for le, count in buckets[:-1]:
        assert count == sum(1 for v in values if v <= float(le))
    assert buckets[-1][1] == len(values)
    assert total == pytest.approx(sum(values))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(min_value=-1, max_value=200, allow_nan=False), max_size=20), max_size=12),
       st.lists(st.floats(min_value=0, max_value=30), min_size=12, max_size=12))
def test_observing_a_chunk_at_once_is_observing_each_value(chunks, gaps):
    """``observe_many`` (the combiner's, once per chunk of ticker events) leaves exactly
    the state one ``observe`` per value leaves: counts, slots, sum (same float), maximum."""
    one, many = LatencyHistogram(slot=5.0, window=20.0), LatencyHistogram(slot=5.0, window=20.0)
    now = 0.0
    for chunk, gap in zip(chunks, gaps):
        now += gap
        for value in chunk:
            one.observe(value, now)
        many.observe_many(chunk, now)
    assert (many.counts, many.count, many.sum, many.maximum) == (one.counts, one.count, one.sum, one.maximum)
    assert list(many._slots) == list(one._slots) and many.recent(now) == one.recent(now)


def test_the_report_has_both_latencies_and_their_sparklines():
    latency = Latency()
    latency.frame_to_event.observe(0.001, now=3.0)
    latency.exchange_to_event.observe(0.120, now=3.0)
    report = latency.report(now=3.0)
    assert report["frame_to_event_ms"]["count"] == 1 and report["exchange_to_event_ms"]["count"] == 1
    assert 100.0 <= report["exchange_to_event_ms"]["p50"] <= 120.0
    assert report["history"]["slot_s"] == 5.0
    assert report["history"]["exchange_to_event_p99_ms"][-1] == report["exchange_to_event_ms"]["p99"]


def test_the_combiner_records_exchange_and_frame_latency_per_event_from_the_read_stamp():
    from decimal import Decimal

    from hybrid_actors import Credentials, StreamConfig
    from hybrid_actors.actors.emitter import CombinerActor
    from hybrid_actors.actors.hub import Hub
    from hybrid_actors.state import Mark, PositionClosed, PositionUpdate

    hub = Hub(StreamConfig(credentials=Credentials("abcdkey", "secret")), rest=None,  # type: ignore[arg-type]
              wall_clock=lambda: 1_700_000_000.250)
    actor = CombinerActor(hub)

    def update(source: str, exchange_ts: int | None, received_ts: int) -> PositionUpdate:
        return PositionUpdate(symbol="BTCUSDT", category="linear", side="Buy", size=Decimal(1),
                              entry_price=Decimal(1), mark_price=Decimal(2), unrealized_pnl=Decimal(1),
                              position_idx=0, source=source, exchange_ts=exchange_ts,  # type: ignore[arg-type]
                              received_ts=received_ts)

    marks = {"BTCUSDT": Mark(Decimal(2), 1_700_000_000_100, 1_700_000_000_248, read_at=1_700_000_000.2485)}
    actor._measure([update("ticker", 1_700_000_000_100, 1_700_000_000_248)], marks, now=1.0)
    assert hub.latency.exchange_to_event.sum == pytest.approx(0.150, abs=1e-6)  # ticker ts -> hand-over
    assert hub.latency.frame_to_event.sum == pytest.approx(0.0015, abs=1e-6)  # the float read stamp, not whole ms
    # a private push: its received_ts (ms) is the read; a REST snapshot is counted but not timed
    import attrs

    pushed = update("position", 1_700_000_000_000, 1_700_000_000_240)
    closed = PositionClosed(**{**attrs.asdict(pushed), "size": Decimal(0)})
    actor._measure([update("rest", 1_600_000_000_000, 1_700_000_000_249), closed], None, now=1.0)
    assert hub.latency.frame_to_event.count == 2 and hub.latency.exchange_to_event.count == 2
    assert hub.latency.exchange_to_event.sum == pytest.approx(0.150 + 0.250, abs=1e-6)
    assert hub.health.events_by_kind == {("position.update", "ticker"): 1, ("position.update", "rest"): 1,
                                         ("position.closed", "position"): 1}
