"""The per-event fast paths of the ticker pipeline (issue #9, ``scripts/bench_pipeline.py``)
give exactly what the general paths give.

- ``Combiner.apply_marks`` (the ticker view built from the mark at hand, ``_ticker_view``)
  against the general loop it replaced (``_view(position, "ticker", ...)`` for every key of
  the symbol): the same events, field by field with Decimal spelling, the same staged and
  shown state, with and without REST fallback marks, hedge mode, stale and missing marks.
- ``SourceSwitch.offer_hybrid``'s inlined admission against ``_admit`` per event.
- ``plain_decimal`` (``str`` unless it has an exponent) against ``format(value, "f")``.
- ``EventQueue``: a producer waiting for lifecycle room is woken by the drain that makes room,
  also when notices took the queue past its capacity.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from foundation_helpers import assert_exact
from hybrid_actors.actors.mailboxes import EventQueue
from hybrid_actors.actors.switch import SourceSwitch
from hybrid_actors.notices import StreamState
from hybrid_actors.protocol.frames import Position
from hybrid_actors.rollout import RolloutPolicy, routes_hybrid
from hybrid_actors.state import Combiner, Event, Mark, PositionClosed, PositionUpdate, plain_decimal
from test_foundation_properties import FEWER, SETTINGS

pytestmark = pytest.mark.unit

SYMBOLS = ("BTCUSDT", "ETHUSDT", "XRPUSDT")
PRICES = st.sampled_from(["0.0001", "1", "1.50", "99.5", "100", "100.00", "65000.1", "1E+2", "0.00000001"]).map(Decimal)
MAYBE = st.none() | PRICES
TIMES = st.none() | st.integers(900, 1100)


@st.composite
def positions(draw: st.DrawFn, category: str) -> Position:
    symbol = draw(st.sampled_from(SYMBOLS))
    idx = draw(st.sampled_from([0, 1, 2]))
    side = "Buy" if idx == 1 else "Sell" if idx == 2 else draw(st.sampled_from(["Buy", "Sell"]))
    return Position(category, symbol, side, draw(PRICES), idx,  # type: ignore[arg-type]
                    entry_price=draw(MAYBE), mark_price=draw(MAYBE), updated_time=draw(TIMES), seq=1,
                    created_time=draw(st.none() | st.just(500)), leverage=draw(MAYBE), liq_price=draw(MAYBE),
                    take_profit=draw(MAYBE), stop_loss=draw(MAYBE), trailing_stop=draw(MAYBE),
                    cum_realised_pnl=draw(MAYBE), session_avg_price=draw(st.none() | PRICES))


@st.composite
def marks(draw: st.DrawFn) -> Mark:
    return Mark(draw(PRICES), draw(TIMES), draw(st.integers(950, 1200)), draw(st.none() | st.just(1.5)))


@st.composite
def mark_histories(draw: st.DrawFn) -> dict[str, Any]:
    category = draw(st.sampled_from(["linear", "inverse", "option"]))
    return {"category": category,
            "positions": draw(st.lists(positions(category), min_size=1, max_size=6)),
            "fallback": draw(st.dictionaries(st.sampled_from(SYMBOLS), marks(), max_size=2)),
            "batches": draw(st.lists(st.dictionaries(st.sampled_from(SYMBOLS), marks(), max_size=3),
                                     min_size=1, max_size=6)),
            "commit_every": draw(st.sampled_from([1, 2]))}


def general_apply_marks(combiner: Combiner, category: str, batch: dict[str, Mark]) -> list[Event]:
    """``Combiner.apply_marks`` as it was before the fast path: the general view per key."""
    events: list[Event] = []
    for symbol, mark in batch.items():
        combiner.marks[(category, symbol)] = mark
        for key in combiner.book.keys_for(category, symbol):
            position = combiner.book.get(key)
            if position is not None:
                combiner._emit_if_changed(*combiner._view(position, "ticker", mark.received_ts), events, key)
    return events


def combiner_with(case: dict[str, Any]) -> Combiner:
    combiner = Combiner()
    combiner.apply_push(case["positions"], received_ts=1000)
    for symbol, mark in case["fallback"].items():
        combiner.fallback[(case["category"], symbol)] = mark
    return combiner


@SETTINGS
@given(mark_histories())
def test_apply_marks_makes_the_events_of_the_general_view(case):
    fast, general = combiner_with(case), combiner_with(case)
    category = case["category"]
    for n, batch in enumerate(case["batches"], 1):
        commit = n % case["commit_every"] == 0
        expected = general_apply_marks(general, category, batch)
        if commit:
            general.commit()
        assert_exact(fast.apply_marks(category, batch, commit=commit), expected)
        assert_exact(fast.marks, general.marks)
        assert_exact(fast._staged, general._staged)
        assert_exact(fast._shown, general._shown)
        assert_exact(fast.current(), general.current())


@SETTINGS
@given(positions("linear"), marks())
def test_the_ticker_view_is_the_general_view_of_the_latest_mark(position, mark):
    combiner = Combiner()
    combiner.marks[("linear", position.symbol)] = mark
    assert_exact(combiner._ticker_view(position, mark), combiner._view(position, "ticker", mark.received_ts))


def update(symbol: str, mark: str, idx: int = 0) -> PositionUpdate:
    return PositionUpdate(symbol, "linear", "Buy", Decimal(1), Decimal(100), Decimal(mark), Decimal(0), idx,
                          "ticker", 1, 2)


@st.composite
def offers(draw: st.DrawFn) -> tuple[dict[Any, Any], dict[Any, Any], list[list[Event]]]:
    """What the consumer has seen (from either source) and batches of updates and closes."""
    events = st.builds(update, st.sampled_from(SYMBOLS), st.sampled_from(["1", "2", "2.0"]), st.sampled_from([0, 1]))
    seen: dict[Any, Any] = {}
    by: dict[Any, Any] = {}
    for event in draw(st.lists(events, max_size=4)):
        seen[event.key] = event
        by[event.key] = draw(st.sampled_from(["hybrid", "rest"]))
    batches = []
    for batch in draw(st.lists(st.lists(events | events.map(lambda e: PositionClosed(
            **{**attrs.asdict(e, recurse=False), "size": Decimal(0)})), max_size=5), max_size=4)):
        batches.append(batch)
    return seen, by, batches


@FEWER
@given(offers())
def test_the_switch_admits_ticker_updates_as_admit_does(case):
    seen, by, batches = case
    queue, reference_queue = EventQueue(), EventQueue()
    switch = SourceSwitch("production", RolloutPolicy(), queue, seen=dict(seen), delivered_by=dict(by))
    reference = SourceSwitch("production", RolloutPolicy(), reference_queue, seen=dict(seen), delivered_by=dict(by))
    assert switch.all_hybrid
    for batch in batches:
        switch.offer_hybrid(batch)
        admitted = [e for e in batch if reference._admit(e, "hybrid")]
        reference._put(admitted, "hybrid")
        assert switch.seen == reference.seen and switch.delivered_by == reference.delivered_by
        assert switch.delivered == reference.delivered
    assert queue.drain() == reference_queue.drain()


SPECIAL = ["0", "-0", "0E-12", "1E+2", "-1E-7", "123.4500", "NaN", "-Infinity", "sNaN", "1E-6", "0.000001",
           "1.0E+1", "12345678901234567890.123456789"]


@FEWER
@given(st.decimals(allow_nan=True, allow_infinity=True) | st.sampled_from(SPECIAL).map(Decimal))
def test_plain_is_format_f(value):
    assert plain_decimal(value) == format(value, "f")
    assert plain_decimal(None) is None


async def test_a_producer_waiting_for_room_wakes_when_a_drain_makes_room():
    queue = EventQueue(capacity=2)
    queue.put(update("BTCUSDT", "1"))  # price-only: takes no lifecycle room
    queue.put_many([StreamState("live", "", {}, 1.0), StreamState("live", "", {}, 2.0),
                    StreamState("live", "", {}, 3.0)])  # notices may pass the capacity
    woken: list[int] = []

    async def producer() -> None:
        await queue.wait_for_space()
        woken.append(queue.lifecycle_queued)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert await queue.get_batch(2) and woken == []  # still 2 lifecycle events queued: full
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        await queue.get_batch(1)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [1]


@FEWER
@given(st.lists(st.tuples(st.none() | st.integers(1_700_000_000_000, 1_700_000_000_300),
                          st.none() | st.floats(1_700_000_000.0, 1_700_000_000.3)), min_size=1, max_size=4))
def test_measuring_one_ticker_event_records_what_a_chunk_of_them_records(stamps):
    """The emitter's one-event path (no lists) against its chunk path, event for event."""
    from hybrid_actors import Credentials, StreamConfig
    from hybrid_actors.actors.emitter import CombinerActor
    from hybrid_actors.actors.hub import Hub

    def hub() -> Hub:
        return Hub(StreamConfig(credentials=Credentials("abcdkey", "secret")), rest=None,  # type: ignore[arg-type]
                   wall_clock=lambda: 1_700_000_000.5)

    one, chunk = hub(), hub()
    for exchange_ts, read_at in stamps:
        event = attrs.evolve(update("BTCUSDT", "1"), exchange_ts=exchange_ts, received_ts=1_700_000_000_200)
        marks = {"BTCUSDT": Mark(Decimal(1), exchange_ts, 1_700_000_000_200, read_at)}
        CombinerActor(one)._measure([event], marks, now=3.0)
        CombinerActor(chunk)._measure([event, event], marks, now=3.0)
    for name in ("frame_to_event", "exchange_to_event"):
        a, b = getattr(one.latency, name), getattr(chunk.latency, name)
        assert [2 * c for c in a.counts] == b.counts and 2 * a.count == b.count and a.maximum == b.maximum
        assert a.recent(3.0) == [c // 2 for c in b.recent(3.0)]
    assert 2 * one.health.events_by_kind[("position.update", "ticker")] == \
        chunk.health.events_by_kind[("position.update", "ticker")]


# --- the switch's lifecycle rules (found by a mutation sweep) ------------------------------------

def closed(event: PositionUpdate) -> PositionClosed:
    return PositionClosed(**{**attrs.asdict(event, recurse=False), "size": Decimal(0), "source": "position"})


def view(symbol: str, mark: str = "1", *, side: str = "Buy", size: str = "1") -> PositionUpdate:
    return attrs.evolve(update(symbol, mark), side=side, size=Decimal(size), source="rest")


def test_the_switch_passes_one_close_per_shown_position_and_none_for_one_never_shown():
    """A close reaches the consumer only for a position it was shown open, once: a close the
    combiner repeats (a resync after the hand-over) or one of a position it never saw would
    be a second, or a phantom, ``position.closed``. Closed keys leave nothing behind."""
    queue = EventQueue()
    switch = SourceSwitch("production", RolloutPolicy(), queue)
    opened = update("BTCUSDT", "1")
    switch.offer_hybrid([closed(update("ETHUSDT", "1"))])
    switch.offer_hybrid([opened, closed(opened)])
    switch.offer_hybrid([closed(opened)])
    assert [(type(e).__name__, e.symbol) for e in queue.drain()] == [("PositionUpdate", "BTCUSDT"),
                                                                    ("PositionClosed", "BTCUSDT")]
    assert switch.seen == {} and switch.delivered_by == {}


def test_a_rest_sync_from_a_snapshot_older_than_the_routing_change_closes_nothing():
    """After a rollback, only a REST snapshot fetched since may say a position is gone: an
    older REST book would close positions the hybrid stream opened meanwhile."""
    queue = EventQueue()
    switch = SourceSwitch("production", RolloutPolicy(), queue)
    switch.offer_hybrid([update("BTCUSDT", "1")])
    queue.drain()
    switch.rest_snapshot_taken(switch.epoch)
    assert switch.roll_back("test", 0.0)
    assert switch.sync("rest", [], [], 5) == 0 and queue.drain() == []
    switch.rest_snapshot_taken(switch.epoch)
    assert switch.sync("rest", [], [], 6) == 1
    (gone,) = queue.drain()
    assert (type(gone), gone.symbol, gone.source, gone.received_ts) == (PositionClosed, "BTCUSDT", "rest", 6)


def test_a_sync_closes_only_the_positions_routed_to_its_source():
    """At a partial cutover each source speaks for its own positions: the REST book not
    holding a hybrid-routed position says nothing about it."""
    keys = [("linear", f"S{i}USDT", 0) for i in range(40)]
    hybrid = next(k for k in keys if routes_hybrid(k, 50))
    rest = next(k for k in keys if not routes_hybrid(k, 50))
    queue = EventQueue()
    switch = SourceSwitch("production", RolloutPolicy(cutover_percent=50), queue)
    switch.rest_snapshot_taken(switch.epoch)
    switch.offer_hybrid([update(hybrid[1], "1")])
    switch.sync("rest", [view(rest[1])], [rest], 1)
    assert set(switch.seen) == {hybrid, rest}
    queue.drain()
    assert switch.sync("rest", [], [], 2) == 1  # the REST book lost the REST-routed one
    assert [(type(e), e.symbol) for e in queue.drain()] == [(PositionClosed, rest[1])]
    assert set(switch.seen) == {hybrid}


def test_a_sync_labels_a_lifecycle_change_position_and_only_a_price_move_ticker():
    """Returning to the hybrid stream, what the consumer missed goes out with a label: a
    resize is lifecycle (``source="position"``: never conflated), a mark move alone is a
    ``ticker`` update, which a later price update of the position may replace in the queue."""
    queue = EventQueue()
    switch = SourceSwitch("production", RolloutPolicy(), queue)
    assert switch.roll_back("test", 0.0)
    switch.rest_snapshot_taken(switch.epoch)
    switch.sync("rest", [view("BTCUSDT", "1"), view("ETHUSDT", "1")], [("linear", "BTCUSDT", 0),
                                                                       ("linear", "ETHUSDT", 0)], 1)
    queue.drain()
    assert switch.return_to_hybrid("test", 1.0)
    switch.sync("hybrid", [view("BTCUSDT", "1", size="2"), view("ETHUSDT", "2")],
                [("linear", "BTCUSDT", 0), ("linear", "ETHUSDT", 0)], 2)
    assert [(e.symbol, e.source, e.size, e.mark_price, e.is_lifecycle) for e in queue.drain()] == [
        ("BTCUSDT", "position", Decimal(2), Decimal(1), True), ("ETHUSDT", "ticker", Decimal(1), Decimal(2), False)]


def test_a_sync_that_finds_a_position_reversed_closes_the_old_one_first():
    """One-way mode: Buy when the consumer last saw it, Sell now: the Buy position closed and
    a Sell one opened, in that order (not a Buy turned into a Sell in place)."""
    queue = EventQueue()
    switch = SourceSwitch("rest", RolloutPolicy(), queue)
    switch.rest_snapshot_taken(switch.epoch)
    key = ("linear", "BTCUSDT", 0)
    switch.sync("rest", [view("BTCUSDT", side="Buy", size="2")], [key], 1)
    queue.drain()
    switch.sync("rest", [view("BTCUSDT", side="Sell", size="1")], [key], 2)
    assert [(type(e), e.side, e.size) for e in queue.drain()] == [(PositionClosed, "Buy", Decimal(0)),
                                                                  (PositionUpdate, "Sell", Decimal(1))]
    assert switch.seen[key].side == "Sell"
