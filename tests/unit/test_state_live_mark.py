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
