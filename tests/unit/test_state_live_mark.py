from decimal import Decimal

import pytest

from hybrid_actors.protocol.frames import Position
from hybrid_actors.state import Combiner, Mark

pytestmark = pytest.mark.unit


def pos(mark: str = "100", updated: int = 1000) -> Position:
    return Position(category="linear", symbol="BTCUSDT", side="Buy", size=Decimal("1"), position_idx=0,
                    entry_price=Decimal("90"), mark_price=Decimal(mark), updated_time=updated, seq=1)


def test_the_first_live_mark_is_emitted_even_at_the_pushed_price():
    c = Combiner()
    [opened] = c.apply_push([pos()], received_ts=1001)
    assert (opened.source, opened.mark_price) == ("position", Decimal("100"))
    [live] = c.apply_marks("linear", {"BTCUSDT": Mark(Decimal("100"), 1100, 1101)})
    assert (live.source, live.mark_price, live.exchange_ts) == ("ticker", Decimal("100"), 1100)
    assert c.apply_marks("linear", {"BTCUSDT": Mark(Decimal("100"), 1200, 1201)}) == []  # no news
    [moved] = c.apply_marks("linear", {"BTCUSDT": Mark(Decimal("101"), 1300, 1301)})
    assert moved.unrealized_pnl == Decimal("11")


def test_a_stale_ticker_mark_does_not_count_as_live():
    c = Combiner()
    c.apply_marks("linear", {"BTCUSDT": Mark(Decimal("99"), 500, 501)})  # older than the push
    [opened] = c.apply_push([pos(updated=1000)], received_ts=1001)
    assert opened.mark_price == Decimal("100")


def test_events_lost_before_hand_over_are_given_again_by_resync():
    c = Combiner()
    c.apply_push([pos()], received_ts=1)  # open, handed over
    lost = c.apply_push([Position(category="linear", symbol="ETHUSDT", side="Sell", size=Decimal("2"),
                                  position_idx=0, entry_price=Decimal("10"), mark_price=Decimal("11"),
                                  updated_time=2000, seq=1)], received_ts=2, commit=False)
    closed = c.apply_push([Position(category="linear", symbol="BTCUSDT", side="", size=Decimal("0"),
                                    position_idx=0, updated_time=2100, seq=2)], received_ts=3, commit=False)
    assert [e.name for e in lost + closed] == ["position.update", "position.closed"]
    # ... and then the actor crashed before putting them in the queue
    again = c.resync(received_ts=4)
    assert sorted((e.name, e.symbol) for e in again) == [("position.closed", "BTCUSDT"),
                                                        ("position.update", "ETHUSDT")]
    assert c.resync(received_ts=5) == []  # nothing left unseen


def test_resync_after_a_clean_hand_over_emits_nothing():
    c = Combiner()
    c.apply_push([pos()], received_ts=1)
    assert c.resync(received_ts=2) == []
