"""The public socket's fast paths give exactly what the general ones give.

- ``decode_hot`` (a ticker frame as a plain ``TickerFields`` tuple, read inline) against
  ``decode`` (a ``TickerSnapshot``/``TickerDelta``): the same values, types and Decimal
  spelling on every recorded frame, on generated tickers of every shape the general
  decoder accepts or refuses, and (through ``decode_and_use``) on the fuzz corpus.
- ``TickerBook.apply_fields`` against ``TickerBook.apply``: the same merged state and the
  same returned marks, frame by frame; a marks-only book (``fields=False``, the public
  actors') the same marks, counters and symbols.
- The combiner's views carry every record field under its own name (they are built
  positionally on the ticker path).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundation_helpers import assert_exact, load_vector
from hybrid_actors.protocol.frames import Position, TickerFrame, TickerSnapshot, decode, decode_hot
from hybrid_actors.state import Combiner, Mark, TickerBook
from test_foundation_properties import FEWER, WS_MESSAGES, frames_for, ticker_histories

pytestmark = pytest.mark.unit

CATEGORIES = (None, "linear", "inverse", "spot", "option")


def general(data: str | bytes, category: str | None) -> Any:
    """What ``decode_hot`` must return: ``decode``'s frame, a ticker as its fields."""
    frame = decode(data, category=category)
    if isinstance(frame, TickerFrame):
        return (frame.symbol, isinstance(frame, TickerSnapshot), frame.data, frame.mark_price, frame.ts, frame.cs)
    return frame


def assert_agrees(data: str | bytes, category: str | None) -> Any:
    hot = decode_hot(data, category=category)
    assert_exact(hot, general(data, category))
    return hot


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_recorded_frame_decodes_alike(category):
    for message in WS_MESSAGES:
        assert_agrees(message if isinstance(message, str) else json.dumps(message), category)


def test_the_common_ticker_shapes_take_the_inline_path():
    """Bybit's snapshot and delta (integer ``ts`` and ``cs``) come back as tuples; the
    dict is the parsed ``data`` itself (no copy per frame)."""
    for name in ("ticker_linear_snapshot", "ticker_linear_delta"):
        for message in load_vector(name)["messages"]:
            text = message if isinstance(message, str) else json.dumps(message)
            hot = assert_agrees(text, "linear")
            assert type(hot) is tuple and hot[1] is (json.loads(text)["type"] == "snapshot")


#: values a ticker frame's fields may carry, usable or not
ODD: tuple[Any, ...] = (None, "", "12", "-3", "1.5", "NaN", "Infinity", "1e999", "abc", True, 7, 1.5, [], {},
                        "snapshot", "delta", "tickers.BTCUSDT", "BTCUSDT", "1700000000000")
ODD_VALUES = st.sampled_from(ODD)
TOP_KEYS = ("topic", "type", "ts", "cs", "data")
DATA_KEYS = ("symbol", "markPrice", "lastPrice")
DROPPED = object()


def variants(frame: dict[str, Any]) -> list[dict[str, Any]]:
    """``frame`` with each top-level and ``data`` field in turn dropped or set to each odd value."""
    out = []
    for where, keys in (("top", TOP_KEYS), ("data", DATA_KEYS)):
        for key in keys:
            for value in (DROPPED, *ODD):
                changed = {**frame, "data": dict(frame["data"])}
                target = changed if where == "top" else changed["data"]
                if value is DROPPED:
                    target.pop(key, None)
                else:
                    target[key] = value
                out.append(changed)
    return out


@pytest.mark.parametrize("name", ["ticker_linear_snapshot", "ticker_linear_delta", "ticker_spot", "ticker_option"])
def test_every_field_of_a_recorded_ticker_dropped_or_odd_decodes_alike(name):
    for message in load_vector(name)["messages"]:
        frame = json.loads(message) if isinstance(message, str) else message
        for variant in variants(frame):
            text = json.dumps(variant)
            for category in CATEGORIES:
                assert_agrees(text, category)


@st.composite
def ticker_variants(draw: st.DrawFn) -> dict[str, Any]:
    """A generated ticker frame, then perhaps one field changed to an odd value or dropped:
    shapes the inline path reads, shapes it leaves to ``decode``, and refusals."""
    frame = draw(st.sampled_from(frames_for(draw(ticker_histories()))))
    frame = {**frame, "data": dict(frame["data"])}
    where = draw(st.sampled_from(["none", "top", "data"]))
    if where != "none":
        target = frame if where == "top" else frame["data"]
        key = draw(st.sampled_from(["topic", "type", "ts", "cs", "data"] if where == "top"
                                   else ["symbol", "markPrice", "lastPrice"]))
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            value = draw(ODD_VALUES)
            target[key] = str(frame["ts"]) if value == "12" and key == "ts" else value
    return frame


@FEWER
@given(ticker_variants(), st.sampled_from(CATEGORIES))
def test_generated_tickers_decode_alike(frame, category):
    assert_agrees(json.dumps(frame), category)


@FEWER
@given(ticker_histories(), st.sampled_from(["linear", "inverse"]))
def test_the_book_merges_fields_as_it_merges_frames(history, category):
    by_frame, by_fields = TickerBook(category), TickerBook(category)
    marks_only = TickerBook(category, fields=False)  # the public actors' book
    for frame in frames_for(history):
        text = json.dumps(frame)
        expected = by_frame.apply(decode(text, category=category))
        assert_exact(by_fields.apply_fields(*decode_hot(text, category=category)), expected)
        assert_exact(marks_only.apply_fields(*decode_hot(text, category=category)), expected)
    for symbol in by_frame.symbols():
        assert_exact(dict(by_fields.ticker(symbol)), dict(by_frame.ticker(symbol)))  # type: ignore[arg-type]
        assert_exact(by_fields.mark_price(symbol), by_frame.mark_price(symbol))
        assert_exact(marks_only.mark_price(symbol), by_frame.mark_price(symbol))
    assert by_fields.symbols() == by_frame.symbols() == marks_only.symbols()
    assert (marks_only.orphan_deltas, marks_only.out_of_order, marks_only.last_ts) == \
        (by_frame.orphan_deltas, by_frame.out_of_order, by_frame.last_ts)
    with pytest.raises(ValueError, match="marks only"):
        marks_only.ticker(next(iter(marks_only.symbols()), "BTCUSDT"))


def test_a_ticker_view_carries_every_record_field_under_its_name():
    record = Position("linear", "BTCUSDT", "Sell", Decimal("2"), 2, entry_price=Decimal("100"),
                      mark_price=Decimal("99"), updated_time=1_000, seq=4, created_time=500,
                      leverage=Decimal("3"), liq_price=Decimal("150"), take_profit=Decimal("80"),
                      stop_loss=Decimal("120"), trailing_stop=Decimal("5"), cum_realised_pnl=Decimal("-7"))
    combiner = Combiner()
    combiner.apply_push([record], received_ts=1_000)
    [event] = combiner.apply_marks("linear", {"BTCUSDT": Mark(Decimal("90.5"), 2_000, 2_010)})
    assert_exact(event.as_dict(), {
        "event": "position.update", "symbol": "BTCUSDT", "category": "linear", "side": "Sell",
        "size": Decimal("2"), "entry_price": Decimal("100"), "mark_price": Decimal("90.5"),
        "unrealized_pnl": Decimal("19.0"), "position_idx": 2, "source": "ticker", "exchange_ts": 2_000,
        "received_ts": 2_010, "leverage": Decimal("3"), "liq_price": Decimal("150"),
        "take_profit": Decimal("80"), "stop_loss": Decimal("120"), "trailing_stop": Decimal("5"),
        "cum_realised_pnl": Decimal("-7"), "created_time": 500, "updated_time": 1_000, "mark_age_ms": 0})
