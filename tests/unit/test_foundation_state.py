"""PositionBook, TickerBook, unrealized PnL and the Combiner (examples; the properties
live in test_foundation_properties.py)."""

from __future__ import annotations

import decimal
import json
from decimal import Decimal
from fractions import Fraction

import attrs
import pytest

from foundation_helpers import assert_exact, load_vector
from hybrid_actors.protocol.frames import Position, TickerDelta, TickerSnapshot, decode
from hybrid_actors.protocol.rest import parse_position_page
from hybrid_actors.state import (CLOSED_RETAIN_MS, SNAPSHOT_SKEW_MS, Combiner, Mark, PositionBook, PositionClosed, PositionUpdate, TickerBook,
                                 unrealized_pnl)

pytestmark = pytest.mark.unit

D = Decimal
CONTRACT_KEYS = {"event", "symbol", "category", "side", "size", "entry_price", "mark_price", "unrealized_pnl",
                 "position_idx", "source", "exchange_ts", "received_ts", "leverage", "liq_price", "take_profit",
                 "stop_loss", "trailing_stop", "cum_realised_pnl", "created_time", "updated_time", "mark_age_ms"}
RECORD_NONE = {"leverage": None, "liq_price": None, "take_profit": None, "stop_loss": None, "trailing_stop": None,
               "cum_realised_pnl": None, "created_time": None}


def pos(symbol: str = "BTCUSDT", *, category: str = "linear", side: str = "Buy", size: str = "2", idx: int = 0,
        entry: str | None = "100", mark: str | None = "110", ut: int | None = 1000, seq: int | None = 1,
        **more: object) -> Position:
    return Position(category=category, symbol=symbol, side=side, size=D(size), position_idx=idx,  # type: ignore[arg-type]
                    entry_price=None if entry is None else D(entry), mark_price=None if mark is None else D(mark),
                    updated_time=ut, seq=seq, **more)  # type: ignore[arg-type]


def flat(symbol: str = "BTCUSDT", **kw: object) -> Position:
    return pos(symbol, side="", size="0", entry="0", **kw)  # type: ignore[arg-type]


# --- unrealized PnL -----------------------------------------------------------------

@pytest.mark.parametrize(("category", "side", "size", "entry", "mark", "expected"), [
    ("linear", "Buy", "2", "100", "110", "20"),
    ("linear", "Sell", "2", "100", "110", "-20"),
    ("linear", "Buy", "0.5", "66666.60", "66000.10", "-333.25"),
    ("linear", "Sell", "0.5", "66666.60", "66000.10", "333.25"),
    ("linear", "Buy", "75", "0.3615", "0.3374", "-1.8075"),  # the 2023 docs push: unrealisedPnl "-1.8075"
    ("option", "Buy", "0.4", "7.5", "8.25", "0.3"),
    ("option", "Sell", "0.4", "7.5", "8.25", "-0.3"),
    ("option", "Sell", "3", "0.00000009", "0.00000001", "0.00000024"),
    ("inverse", "Buy", "100", "20000", "25000", "0.001"),
    ("inverse", "Sell", "100", "20000", "25000", "-0.001"),
    ("inverse", "Buy", "300", "25000", "20000", "-0.003"),
    ("inverse", "Sell", "300", "25000", "20000", "0.003"),
    ("inverse", "Buy", "8", "16000", "32000", "0.00025"),
])
def test_pnl_is_exact(category, side, size, entry, mark, expected):
    result = unrealized_pnl(category, side, D(size), D(entry), D(mark))
    assert type(result) is Decimal and result == D(expected)
    if category == "inverse":  # size * (1/entry - 1/mark), as an exact rational
        exact = Fraction(size) * (1 / Fraction(entry) - 1 / Fraction(mark))
        if side == "Sell":
            exact = -exact
        assert Fraction(result) == exact
    else:
        exact = (Fraction(mark) - Fraction(entry)) * Fraction(size) * (1 if side == "Buy" else -1)
        assert Fraction(result) == exact


@pytest.mark.parametrize("side", ["Buy", "Sell"])
@pytest.mark.parametrize(("size", "entry", "mark"), [("1", "3", "7"), ("3", "19358.58553268", "25924.00"),
                                                     ("300", "27464.50441675", "28224.50")])
def test_inverse_pnl_that_does_not_terminate_is_correctly_rounded(side, size, entry, mark):
    result = unrealized_pnl("inverse", side, D(size), D(entry), D(mark))
    exact = Fraction(size) * (1 / Fraction(entry) - 1 / Fraction(mark)) * (1 if side == "Buy" else -1)
    assert result is not None and Fraction(result) != exact
    # one rounding to 28 significant digits: within half a unit in the last place
    ulp = Fraction(10) ** (result.adjusted() - 27)
    assert abs(Fraction(result) - exact) <= ulp / 2


def test_pnl_ignores_the_callers_decimal_context():
    with decimal.localcontext() as ctx:
        ctx.prec = 3
        ctx.rounding = decimal.ROUND_DOWN
        assert unrealized_pnl("linear", "Buy", D("0.5"), D("66666.60"), D("66000.10")) == D("-333.25")
        assert unrealized_pnl("inverse", "Buy", D("8"), D("16000"), D("32000")) == D("0.00025")


@pytest.mark.parametrize("category", ["linear", "inverse", "option"])
@pytest.mark.parametrize(("side", "size"), [("", "0"), ("Buy", "0"), ("Sell", "0"), ("", "5")])
def test_flat_is_zero_pnl_even_without_prices(category, side, size):
    for entry, mark in ((D(100), D(110)), (None, None), (D(0), None)):
        result = unrealized_pnl(category, side, D(size), entry, mark)
        assert type(result) is Decimal and result == 0 and str(result) == "0"


@pytest.mark.parametrize("category", ["linear", "inverse", "option"])
@pytest.mark.parametrize("side", ["Buy", "Sell"])
def test_unknown_price_is_none(category, side):
    assert unrealized_pnl(category, side, D(1), D(100), None) is None
    assert unrealized_pnl(category, side, D(1), None, D(100)) is None


def test_inverse_with_a_zero_price_is_none_not_a_crash():
    assert unrealized_pnl("inverse", "Buy", D(1), D(0), D(100)) is None
    assert unrealized_pnl("inverse", "Sell", D(1), D(100), D(0)) is None


@pytest.mark.parametrize("category", ["linear", "inverse", "option"])
def test_no_negative_zero(category):
    result = unrealized_pnl(category, "Sell", D("2"), D("100.50"), D("100.5"))
    assert str(result) == "0"


def test_hedge_mode_legs_have_their_own_entry_and_side():
    combiner = Combiner()
    combiner.apply_push([pos(idx=1, side="Buy", size="2", entry="100", mark="100"),
                         pos(idx=2, side="Sell", size="3", entry="120", mark="100")], received_ts=1)
    events = combiner.apply_marks("linear", {"BTCUSDT": Mark(D("110"), 2000, 2)})
    assert {e.position_idx: e.unrealized_pnl for e in events} == {1: D(20), 2: D(30)}
    assert {e.position_idx: (e.side, e.entry_price) for e in events} == {1: ("Buy", D(100)), 2: ("Sell", D(120))}
    assert all(e.source == "ticker" and e.mark_price == D(110) for e in events)


@pytest.mark.parametrize(("category", "expected_buy", "expected_sell"), [
    ("linear", "25", "-22.5"), ("option", "25", "-22.5"), ("inverse", "0.002", "-0.00225")])
def test_hedge_mode_in_each_category(category, expected_buy, expected_sell):
    """idx 1 Buy 1 @ 100 and idx 2 Sell 0.5 @ 80 on one symbol, mark 125."""
    combiner = Combiner()
    combiner.apply_push([pos("X", category=category, idx=1, side="Buy", size="1", entry="100", mark=None),
                         pos("X", category=category, idx=2, side="Sell", size="0.5", entry="80", mark=None)],
                        received_ts=1)
    events = combiner.apply_marks(category, {"X": Mark(D(125), 5000, 5)})
    pnl = {e.position_idx: e.unrealized_pnl for e in events}
    assert pnl == {1: D(expected_buy), 2: D(expected_sell)}
    if category == "inverse":
        assert Fraction(pnl[1]) == 1 * (Fraction(1, 100) - Fraction(1, 125))
        assert Fraction(pnl[2]) == -Fraction(1, 2) * (Fraction(1, 80) - Fraction(1, 125))


# --- PositionBook -------------------------------------------------------------------

def test_a_push_replaces_the_entry_and_reports_the_diff():
    book = PositionBook()
    first = pos(size="1", ut=1000)
    assert book.apply_push([first]).opened == (first,)
    bigger = pos(size="3", ut=1001)
    diff = book.apply_push([bigger])
    assert diff.changed == (bigger,) and not diff.opened and not diff.closed
    assert book.get(first.key) == bigger
    diff = book.apply_push([flat(ut=1002)])
    assert diff.closed == (bigger,) and book.get(first.key) is None and len(book) == 0
    assert diff.closed_at == (1002,)  # the flat record's time, while closed keeps the last open record


def test_a_stale_push_is_ignored_and_an_equal_version_is_applied():
    book = PositionBook()
    book.apply_push([pos(size="3", ut=2000, seq=5)])
    assert not book.apply_push([pos(size="9", ut=1999, seq=9)])
    assert not book.apply_push([pos(size="9", ut=2000, seq=4)])
    assert book.get(("linear", "BTCUSDT", 0)).size == 3  # type: ignore[union-attr]
    # a settings-only change re-uses the trade's seq: equal version is not a duplicate
    diff = book.apply_push([pos(size="3", ut=2000, seq=5, take_profit=D(150))])
    assert diff.changed and book.get(("linear", "BTCUSDT", 0)).take_profit == 150  # type: ignore[union-attr]


def test_side_empty_or_size_zero_is_flat():
    book = PositionBook()
    book.apply_push([pos(idx=1), pos(idx=2, side="Sell")])
    diff = book.apply_push([pos(idx=1, side="", size="2", ut=1001), pos(idx=2, side="Sell", size="0", ut=1001)])
    assert len(diff.closed) == 2 and len(book) == 0


def test_a_flat_push_for_an_unknown_position_changes_nothing():
    book = PositionBook()
    assert not book.apply_push([flat()])
    assert len(book) == 0


def test_hedge_legs_are_separate_keys():
    book = PositionBook()
    book.apply_push([pos(idx=1), pos(idx=2, side="Sell")])
    assert set(book.keys_for("linear", "BTCUSDT")) == {("linear", "BTCUSDT", 1), ("linear", "BTCUSDT", 2)}
    book.apply_push([flat(idx=1, ut=1001)])
    assert book.keys_for("linear", "BTCUSDT") == (("linear", "BTCUSDT", 2),)
    assert book.symbols("linear") == {"BTCUSDT"}


def test_a_snapshot_returns_opened_changed_and_closed():
    book = PositionBook()
    a, b = pos("AAA", ut=1000), pos("BBB", ut=1000)
    book.apply_push([a, b])
    b2, c = pos("BBB", size="5", ut=1100), pos("CCC", ut=1100)
    diff = book.apply_snapshot([b2, c], ["linear"], as_of_ms=2200)
    assert diff.opened == (c,) and diff.changed == (b2,) and diff.closed == (a,)
    assert diff.closed_at == (2200,)  # vanished from a snapshot answered at as_of_ms
    assert set(book.open_positions()) == {b2, c}


def test_a_push_strictly_newer_than_the_snapshot_survives_it():
    book = PositionBook()
    pushed = pos(size="7", ut=2000, seq=10)
    book.apply_push([pushed])
    diff = book.apply_snapshot([pos(size="5", ut=1900, seq=9)], ["linear"], as_of_ms=1950)
    assert not diff and book.get(pushed.key) == pushed


def test_a_position_opened_after_the_snapshot_was_taken_survives_its_absence():
    book = PositionBook()
    pushed = pos("NEWUSDT", ut=2000)
    book.apply_push([pushed])
    # the list is read up to SNAPSHOT_SKEW_MS before the response's time
    assert not book.apply_snapshot([], ["linear"], as_of_ms=2000 + SNAPSHOT_SKEW_MS - 1)
    assert book.get(pushed.key) == pushed
    assert book.apply_snapshot([], ["linear"], as_of_ms=2000 + SNAPSHOT_SKEW_MS).closed == (pushed,)


def test_a_stale_push_after_a_snapshot_tombstone_is_ignored():
    book = PositionBook()
    book.apply_push([pos(ut=1000)])
    assert book.apply_snapshot([], ["linear"], as_of_ms=3000).closed  # closed by absence
    assert not book.apply_push([pos(size="4", ut=1900, seq=99)])  # older than the read: stale
    assert len(book) == 0
    assert book.apply_push([pos(size="4", ut=3001)]).opened  # genuinely newer: applied


def test_a_later_snapshot_listing_a_position_undoes_a_false_close():
    # a list that missed a live position (REST lagging the matching engine by more than the
    # skew) closed it; the next reconciliation lists it, unchanged since: it is open again
    book = PositionBook()
    record = pos(ut=1000, seq=10)
    book.apply_push([record])
    assert book.apply_snapshot([], ["linear"], as_of_ms=1000 + SNAPSHOT_SKEW_MS + 500).closed == (record,)
    again = book.apply_snapshot([record], ["linear"], as_of_ms=300_000)
    assert again.opened == (record,) and book.get(record.key) == record
    # and a push older than that record stays stale
    assert not book.apply_push([pos(size="9", ut=999, seq=10)])


def test_a_snapshot_read_before_the_tombstone_does_not_undo_it():
    book = PositionBook()
    book.apply_push([pos(ut=1000)])
    assert book.apply_snapshot([], ["linear"], as_of_ms=5000).closed  # tombstone: read at 4000
    # an answer read earlier (two snapshots in flight, this one slower) lists the old record
    assert not book.apply_snapshot([pos(ut=1000)], ["linear"], as_of_ms=4500)
    assert len(book) == 0


def test_a_tombstone_never_lowers_a_version():
    # updated exactly when the list was read: closed by it; an older record of that same
    # millisecond (lower seq) must stay stale after the close
    book = PositionBook()
    read_at = 9000
    book.apply_push([pos(ut=read_at, seq=10)])
    assert book.apply_snapshot([], ["linear"], as_of_ms=read_at + SNAPSHOT_SKEW_MS).closed
    assert not book.apply_push([pos(size="4", ut=read_at, seq=5)])
    assert len(book) == 0


def test_positions_updated_within_the_skew_are_reported_unconfirmed():
    book = PositionBook()
    recent, old = pos("NEWUSDT", ut=2000), pos("OLDUSDT", ut=500)
    book.apply_push([recent, old])
    diff = book.apply_snapshot([], ["linear"], as_of_ms=2000 + SNAPSHOT_SKEW_MS - 1)
    assert diff.closed == (old,) and diff.unconfirmed == (recent.key,)
    # a list read after the update settles it
    later = book.apply_snapshot([], ["linear"], as_of_ms=2000 + SNAPSHOT_SKEW_MS)
    assert later.closed == (recent,) and later.unconfirmed == ()


def test_a_one_way_position_reversed_in_one_record_closes_and_opens():
    book = PositionBook()
    long = pos(size="2", ut=1000)
    book.apply_push([long])
    short = pos(side="Sell", size="1", entry="105", ut=1001)
    diff = book.apply_push([short])
    assert [(kind, p) for kind, p, _ in diff.steps] == [("close", long), ("open", short)]
    assert diff.closed_at == (1001,) and book.get(short.key) == short
    assert book.symbols("linear") == {"BTCUSDT"}  # the ticker stays wanted


def test_hedge_legs_are_not_reversals():
    book = PositionBook()
    book.apply_push([pos(idx=1), pos(idx=2, side="Sell")])
    diff = book.apply_push([pos(idx=1, size="5", ut=1001), pos(idx=2, side="Sell", size="5", ut=1001)])
    assert not diff.closed and len(diff.changed) == 2


def test_symbols_churning_for_days_leave_nothing_behind_once_closed():
    # options and dated futures: a new symbol for every strike and expiry, each opened and
    # closed; what the book and combiner keep of closed ones is forgotten after an hour
    combiner = Combiner()
    start, step = 1_700_000_000_000, 60_000  # one symbol a minute, for two days
    for i in range(48 * 60):
        symbol, at = f"BTC-{i}-100000-C", start + i * step
        combiner.apply_push([pos(symbol, category="option", ut=at, seq=i)], received_ts=at)
        combiner.apply_marks("option", {symbol: Mark(D("101"), at + 1, at + 1)})
        combiner.apply_fallback_marks("option", {symbol: Mark(D("102"), at + 2, at + 2)})
        combiner.apply_push([flat(symbol, category="option", ut=at + 5, seq=i)], received_ts=at + 5)
    combiner.apply_snapshot([], categories=["option"], as_of_ms=start + 48 * 60 * step, received_ts=1)
    book = combiner.book
    assert len(book) == 0 and combiner.current() == () and not combiner._shown
    assert not book._by_symbol
    retained = CLOSED_RETAIN_MS // step + 1  # the last hour's closes
    assert len(book._versions) <= retained and len(book._closed) <= retained
    assert len(combiner.marks) <= retained and len(combiner.fallback) <= retained
    assert len(combiner._unheld) <= retained


def test_hedge_mode_idle_legs_leave_nothing_behind_either():
    # hedge mode pushes the idle leg flat beside the open one (BYBIT_V5 section 12): a key that is
    # only ever flat must expire like a closed one
    book = PositionBook()
    start, step = 1_700_000_000_000, 60_000
    for i in range(48 * 60):
        symbol, at = f"BTCUSDT-{i}", start + i * step
        book.apply_push([pos(symbol, idx=1, ut=at), flat(symbol, idx=2, ut=at)])
        book.apply_push([flat(symbol, idx=1, ut=at + 5), flat(symbol, idx=2, ut=at + 5)])
    retained = 2 * (CLOSED_RETAIN_MS // step + 1)  # both legs of the last hour's symbols
    assert len(book) == 0 and len(book._versions) <= retained and len(book._closed) <= retained


def test_a_stale_record_of_a_later_list_leaves_the_tombstone_in_place():
    book = PositionBook()
    book.apply_push([pos(ut=1000, seq=1)])
    assert book.apply_snapshot([], ["linear"], as_of_ms=5000).closed  # tombstone: read at 4000
    # a list read later shows a record older than the one we applied: ignored, and the
    # tombstone it did not replace still guards against pushes older than 4000
    assert not book.apply_snapshot([pos(ut=900, seq=1)], ["linear"], as_of_ms=9000)
    assert not book.apply_push([pos(ut=3000, seq=1)])
    assert len(book) == 0


def test_a_closed_position_is_remembered_for_the_retention():
    book = PositionBook()
    book.apply_push([pos(ut=1000, seq=5)])
    book.apply_push([flat(ut=2000, seq=6)])
    book.apply_push([pos("OTHER", ut=2000 + CLOSED_RETAIN_MS - 1)])
    book.apply_push([flat("OTHER", ut=2000 + CLOSED_RETAIN_MS)])  # a close an hour later...
    assert not book.apply_push([pos(ut=1500, seq=5)])  # ...the first close still guards
    book.apply_push([pos("THIRD", ut=2001 + CLOSED_RETAIN_MS)])
    book.apply_push([flat("THIRD", ut=2001 + CLOSED_RETAIN_MS + 1)])  # past the hour: forgotten
    assert ("linear", "BTCUSDT", 0) not in book._versions


def test_a_symbol_s_mark_outlives_its_position_by_the_retention_only():
    combiner = Combiner()
    combiner.apply_push([pos(ut=1000)], received_ts=1000)
    combiner.apply_marks("linear", {"BTCUSDT": Mark(D("111"), 1100, 1100)})
    combiner.apply_push([flat(ut=1200)], received_ts=1200)
    # reopened while its ticker is still subscribed (no new frame if the mark did not move):
    # the open carries the live mark it had
    reopened = only(combiner.apply_push([pos(ut=1300, mark=None)], received_ts=1300))
    assert reopened.mark_price == D("111")
    combiner.apply_push([flat(ut=1400)], received_ts=1400)
    combiner.apply_marks("linear", {"BTCUSDT": Mark(D("112"), 1500, 1500)})  # in flight before the unsubscribe
    # an hour of other symbols' closes later, it is gone
    combiner.apply_push([pos("ETHUSDT", ut=2000)], received_ts=2000)
    combiner.apply_push([flat("ETHUSDT", ut=2100)], received_ts=1401 + CLOSED_RETAIN_MS)
    assert set(combiner.marks) == set() and ("linear", "BTCUSDT") not in combiner._unheld


def test_a_stale_push_after_a_flat_snapshot_record_is_ignored():
    book = PositionBook()
    book.apply_push([pos(ut=1000)])
    book.apply_snapshot([flat(ut=2000, seq=5)], ["linear"], as_of_ms=2100)
    assert not book.apply_push([pos(ut=1500)])
    assert len(book) == 0


def test_a_snapshot_does_not_touch_other_categories():
    book = PositionBook()
    inverse = pos("BTCUSD", category="inverse")
    book.apply_push([inverse, pos()])
    diff = book.apply_snapshot([], ["linear"], as_of_ms=5000)
    assert [p.key for p in diff.closed] == [("linear", "BTCUSDT", 0)]
    assert book.open_positions() == (inverse,)


def test_a_snapshot_with_duplicate_records_keeps_the_newest():
    book = PositionBook()
    old, new = pos(size="1", ut=1000), pos(size="2", ut=1001)
    book.apply_snapshot([new, old], ["linear"], as_of_ms=2000)
    assert book.get(new.key) == new


def test_the_rest_vectors_apply_as_a_snapshot():
    pages = [parse_position_page(json.dumps(m)) for m in load_vector("rest_position_list")["messages"]]
    book = PositionBook()
    book.apply_snapshot(pages[0].positions, ["inverse"], pages[0].time_ms)
    book.apply_snapshot(pages[1].positions, ["linear"], pages[1].time_ms)
    assert book.symbols("inverse") == {"BTCUSD"} and book.symbols("linear") == {"LTCUSDT"}
    diff = book.apply_snapshot(pages[2].positions, ["linear"], pages[2].time_ms)  # LTCUSDT now flat
    assert [p.symbol for p in diff.closed] == ["LTCUSDT"] and book.symbols("linear") == frozenset()


# --- TickerBook ---------------------------------------------------------------------

def ticker(kind: str, symbol: str = "BTCUSDT", cs: int | None = 1, ts: int = 1, **data: str):
    frame = {"topic": f"tickers.{symbol}", "type": kind, "data": {"symbol": symbol, **data}, "ts": ts}
    if cs is not None:
        frame["cs"] = cs
    return decode(json.dumps(frame), category="linear")


def test_the_vector_snapshot_and_deltas_merge():
    book = TickerBook("linear")
    snapshot = decode(json.dumps(load_vector("ticker_linear_snapshot")["messages"][0]), category="linear")
    assert book.apply(snapshot) == D("66666.60")
    mark_delta, bid_delta = (decode(json.dumps(m), category="linear")
                             for m in load_vector("ticker_linear_delta")["messages"][1:])
    assert book.apply(mark_delta) == D("86716.30")
    assert book.apply(bid_delta) is None  # lower cs than the mark delta: out of order
    assert book.out_of_order == 1
    state = book.ticker("BTCUSDT")
    assert state["markPrice"] == "86716.30" and state["indexPrice"] == "86756.70"  # type: ignore[index]
    assert state["bid1Price"] == "66666.60" and state["lastPrice"] == "66666.60"  # type: ignore[index]
    assert book.mark_price("BTCUSDT") == D("86716.30")


def test_a_cs_that_restarts_lower_is_followed_after_a_few_deltas():
    # one or two older frames are strays (dropped); a sequence that went back and stays back
    # is the exchange's cs restarting: without following it the mark would freeze for good
    book = TickerBook("linear", fields=False)
    assert book.apply(ticker("snapshot", cs=1000, markPrice="100")) == D("100")
    assert book.apply(ticker("delta", cs=5, markPrice="101")) is None
    assert book.apply(ticker("delta", cs=1001, markPrice="102")) == D("102")  # in order: strays forgotten
    assert book.apply(ticker("delta", cs=6, markPrice="103")) is None
    assert book.apply(ticker("delta", cs=7, markPrice="104")) is None
    assert (book.out_of_order, book.cs_resets) == (3, 0)
    assert book.apply(ticker("delta", cs=8, markPrice="105")) == D("105")  # the third in a row: a restart
    assert book.apply(ticker("delta", cs=9, markPrice="106")) == D("106")
    assert (book.out_of_order, book.cs_resets, book.mark_price("BTCUSDT")) == (3, 1, D("106"))
    book.forget("BTCUSDT")
    assert book.apply(ticker("snapshot", cs=3, markPrice="1")) == D("1")


def test_a_delta_without_mark_keeps_the_last_mark():
    book = TickerBook("linear")
    book.apply(ticker("snapshot", markPrice="100", bid1Price="99"))
    assert book.apply(ticker("delta", cs=2, bid1Price="98")) is None
    assert book.mark_price("BTCUSDT") == D(100) and book.ticker("BTCUSDT")["bid1Price"] == "98"  # type: ignore[index]
    assert book.apply(ticker("delta", cs=3, markPrice="100")) is None  # unchanged mark: nothing to report
    assert book.apply(ticker("delta", cs=4, markPrice="101")) == D(101)


def test_a_delta_before_any_snapshot_is_an_orphan():
    book = TickerBook("linear")
    assert book.apply(ticker("delta", markPrice="5")) is None
    assert book.orphan_deltas == 1 and book.ticker("BTCUSDT") is None and book.mark_price("BTCUSDT") is None


def test_a_new_snapshot_replaces_the_state_entirely():
    book = TickerBook("linear")
    book.apply(ticker("snapshot", markPrice="100", fundingRate="0.0001"))
    book.apply(ticker("snapshot", cs=2, lastPrice="5"))
    assert dict(book.ticker("BTCUSDT")) == {"symbol": "BTCUSDT", "lastPrice": "5"}  # type: ignore[arg-type]
    assert book.mark_price("BTCUSDT") is None


def test_the_ticker_view_is_read_only_and_forget_drops_a_symbol():
    book = TickerBook("linear")
    book.apply(ticker("snapshot", markPrice="1"))
    with pytest.raises(TypeError):
        book.ticker("BTCUSDT")["markPrice"] = "2"  # type: ignore[index]
    assert len(book) == 1
    book.forget("BTCUSDT")
    assert book.symbols() == frozenset() and book.mark_price("BTCUSDT") is None and len(book) == 0
    assert book.last_ts == {} and book.apply(ticker("delta", cs=2, markPrice="2")) is None  # an orphan now
    # subscribed again: the new subscription's snapshot starts afresh, its cs need not exceed the old
    book.apply(ticker("snapshot", cs=1, markPrice="3"))
    assert book.apply(ticker("delta", cs=1, markPrice="4")) == D(4)


def test_spot_and_option_snapshots_only():
    book = TickerBook("option")
    frame = decode(json.dumps(load_vector("ticker_option")["messages"][0]), category="option")
    assert isinstance(frame, TickerSnapshot) and book.apply(frame) == D("7.86976724")
    spot = TickerBook("spot")
    assert spot.apply(decode(json.dumps(load_vector("ticker_spot")["messages"][0]), category="spot")) is None
    assert spot.mark_price("BTCUSDT") is None and spot.ticker("BTCUSDT")["lastPrice"] == "21109.77"  # type: ignore[index]


def test_a_delta_that_moves_only_bid_ask_reports_no_mark():
    book = TickerBook("linear")
    book.apply(decode(json.dumps(load_vector("ticker_linear_snapshot")["messages"][0]), category="linear"))
    delta = {"topic": "tickers.BTCUSDT", "type": "delta", "cs": 9532239430, "ts": 1760325052730,
             "data": {"symbol": "BTCUSDT", "bid1Price": "66666.50", "ask1Size": "1"}}
    frame = decode(json.dumps(delta), category="linear")
    assert isinstance(frame, TickerDelta) and frame.mark_price is None
    assert book.apply(frame) is None


# --- Combiner -----------------------------------------------------------------------

def only(events):
    assert len(events) == 1, events
    return events[0]


def test_open_change_close_from_pushes():
    combiner = Combiner()
    opened = only(combiner.apply_push([pos(size="2", entry="100", mark="110", ut=1000)], received_ts=5))
    assert_exact(opened, PositionUpdate(symbol="BTCUSDT", category="linear", side="Buy", size=D("2"),
                                        entry_price=D("100"), mark_price=D("110"), unrealized_pnl=D("20"),
                                        position_idx=0, source="position", exchange_ts=1000, received_ts=5,
                                        updated_time=1000, mark_age_ms=0))
    changed = only(combiner.apply_push([pos(size="3", entry="102", mark="111", ut=1100)], received_ts=6))
    assert (changed.size, changed.entry_price, changed.unrealized_pnl, changed.exchange_ts) == (3, 102, 27, 1100)
    closed = only(combiner.apply_push([flat(mark="112", ut=1200)], received_ts=7))
    assert type(closed) is PositionClosed
    assert closed.size == 0 and type(closed.size) is Decimal and closed.unrealized_pnl == 0
    assert (closed.side, closed.entry_price, closed.source, closed.received_ts) == ("Buy", D(102), "position", 7)
    assert combiner.current() == () and combiner.desired_symbols("linear") == frozenset()


def test_a_closed_event_carries_the_time_it_closed():
    combiner = Combiner()
    combiner.apply_push([pos(ut=1000)], received_ts=1)
    combiner.apply_marks("linear", {"BTCUSDT": Mark(D("120"), 1500, 2)})
    closed = only(combiner.apply_push([flat(ut=2000)], received_ts=3))
    assert closed.exchange_ts == 2000  # not 1000, the last open record's time
    combiner.apply_push([pos("ETHUSDT", ut=2100)], received_ts=4)
    closed = only(combiner.apply_snapshot([], categories=["linear"], as_of_ms=3200, received_ts=5))
    assert closed.symbol == "ETHUSDT" and closed.exchange_ts == 3200 and closed.source == "rest"


def test_open_change_close_from_snapshots():
    combiner = Combiner()
    opened = only(combiner.apply_snapshot([pos(ut=1000)], categories=["linear"], as_of_ms=1000, received_ts=1))
    assert type(opened) is PositionUpdate and opened.source == "rest"
    changed = only(combiner.apply_snapshot([pos(size="3", ut=1001)], categories=["linear"], as_of_ms=1001,
                                           received_ts=2))
    assert type(changed) is PositionUpdate and changed.size == D(3)
    # reversed through zero (one-way mode): the long closed, a short opened
    long_closed, short = combiner.apply_snapshot([pos(side="Sell", ut=1002)], categories=["linear"],
                                                 as_of_ms=1002, received_ts=3)
    assert type(long_closed) is PositionClosed and long_closed.side == "Buy" and long_closed.size == 0
    assert type(short) is PositionUpdate and short.side == "Sell" and short.unrealized_pnl == D(-20)
    closed = only(combiner.apply_snapshot([], categories=["linear"], as_of_ms=3000, received_ts=3))
    assert type(closed) is PositionClosed and closed.source == "rest" and closed.side == "Sell"


def test_a_reversal_is_a_close_then_an_open_for_the_consumer():
    combiner = Combiner()
    combiner.apply_push([pos(size="2", entry="100", mark="110", ut=1000)], received_ts=1)
    closed, opened = combiner.apply_push([pos(side="Sell", size="1", entry="110", mark="110", ut=1001)],
                                         received_ts=2)
    assert type(closed) is PositionClosed and (closed.side, closed.size, closed.entry_price) == ("Buy", 0, D(100))
    assert closed.updated_time == closed.exchange_ts == 1001
    assert type(opened) is PositionUpdate and (opened.side, opened.size, opened.entry_price) == ("Sell", 1, D(110))
    assert [p.side for p in combiner.book.open_positions()] == ["Sell"]


def test_a_reversal_not_handed_over_before_a_crash_is_a_close_then_an_open_on_resync():
    combiner = Combiner()
    combiner.apply_push([pos(size="2", ut=1000)], received_ts=1)
    assert len(combiner.apply_push([pos(side="Sell", size="1", ut=1001)], received_ts=2, commit=False)) == 2
    combiner.rollback()  # the crash came before the hand-over
    closed, opened = combiner.resync(3)
    assert type(closed) is PositionClosed and (closed.side, closed.size, closed.exchange_ts) == ("Buy", 0, 1001)
    assert type(opened) is PositionUpdate and (opened.side, opened.size) == ("Sell", 1)
    assert combiner.resync(4) == []  # handed over now: nothing more


def test_marks_move_pnl_and_are_deduplicated():
    combiner = Combiner()
    combiner.apply_push([pos(size="2", entry="100", mark="110", ut=1000)], received_ts=1)
    moved = only(combiner.apply_marks("linear", {"BTCUSDT": Mark(D("115"), 1500, 2)}))
    assert (moved.source, moved.mark_price, moved.unrealized_pnl, moved.exchange_ts, moved.received_ts) == (
        "ticker", D(115), D(30), 1500, 2)
    assert moved.is_lifecycle is False
    # the same price again (a delta that moved only bid/ask re-published the mark): nothing
    assert combiner.apply_marks("linear", {"BTCUSDT": Mark(D("115.0"), 1600, 3)}) == []
    # marks for symbols nobody holds: nothing
    assert combiner.apply_marks("linear", {"ETHUSDT": Mark(D("1"), 1600, 3)}) == []
    assert combiner.apply_marks("inverse", {"BTCUSDT": Mark(D("1"), 1600, 3)}) == []


def test_a_repeated_push_gives_no_event():
    combiner = Combiner()
    record = pos()
    assert combiner.apply_push([record], received_ts=1)
    assert combiner.apply_push([record], received_ts=2) == []
    # a push that changes only its time gives none either
    assert combiner.apply_push([pos(ut=1001, seq=2)], received_ts=3) == []
    # the events carry TP/SL, leverage...: a change of those is news
    changed = only(combiner.apply_push([pos(ut=1002, take_profit=D(200), leverage=D(5))], received_ts=4))
    assert (changed.take_profit, changed.leverage, changed.updated_time) == (D(200), D(5), 1002)


def test_a_rest_snapshot_equal_to_what_we_know_gives_no_event():
    push = decode(json.dumps(load_vector("position_push")["messages"][1]))
    combiner = Combiner()
    assert combiner.apply_push(push.positions, received_ts=1)  # type: ignore[union-attr]
    (known,) = push.positions  # type: ignore[union-attr]
    rest_item = {**load_vector("position_push")["messages"][1]["data"][0]}
    rest_item["avgPrice"] = rest_item.pop("entryPrice")
    rest_item["updatedTime"] = str(known.updated_time + 50)  # same position, REST's own stamp
    body = {"retCode": 0, "retMsg": "OK", "time": known.updated_time + 60,
            "result": {"category": "linear", "list": [rest_item], "nextPageCursor": ""}}
    page = parse_position_page(json.dumps(body))
    assert combiner.apply_snapshot(page.positions, categories=["linear"], as_of_ms=page.time_ms,
                                   received_ts=2) == []
    assert combiner.apply_snapshot([], categories=["inverse"], as_of_ms=page.time_ms, received_ts=3) == []


def test_a_ticker_mark_newer_than_the_push_mark_is_used():
    combiner = Combiner()
    combiner.apply_push([pos(size="2", entry="100", mark="100", ut=1000)], received_ts=1)
    combiner.apply_marks("linear", {"BTCUSDT": Mark(D("110"), 2000, 2)})
    # a push from before the tick: its own markPrice (105) is older than the ticker's
    update = only(combiner.apply_push([pos(size="3", entry="100", mark="105", ut=1500)], received_ts=3))
    assert (update.mark_price, update.unrealized_pnl, update.exchange_ts) == (D(110), D(30), 1500)
    # a push after the tick: its markPrice is the fresher one
    update = only(combiner.apply_push([pos(size="3", entry="100", mark="120", ut=2500)], received_ts=4))
    assert (update.mark_price, update.unrealized_pnl) == (D(120), D(60))
    # an older tick than the position's mark changes nothing
    assert combiner.apply_marks("linear", {"BTCUSDT": Mark(D("90"), 2400, 5)}) == []


def test_a_position_without_any_mark_has_unknown_pnl_until_a_tick():
    combiner = Combiner()
    update = only(combiner.apply_push([pos(mark=None)], received_ts=1))
    assert update.mark_price is None and update.unrealized_pnl is None
    update = only(combiner.apply_marks("linear", {"BTCUSDT": Mark(D("105"), None, 2)}))
    assert update.unrealized_pnl == D(10) and update.exchange_ts is None


def test_a_close_of_a_never_shown_position_is_silent():
    combiner = Combiner()
    assert combiner.apply_push([flat()], received_ts=1) == []
    assert combiner.apply_snapshot([flat()], categories=["linear"], as_of_ms=5, received_ts=1) == []


def test_events_json_contract():
    combiner = Combiner()
    update = only(combiner.apply_push([pos("PEPEUSDT", size="0.0000001", entry="0.00001", mark="0.00002",
                                           ut=1700000000000)], received_ts=1700000000123))
    data = update.to_json()
    assert data.keys() == CONTRACT_KEYS
    assert data == {"event": "position.update", "symbol": "PEPEUSDT", "category": "linear", "side": "Buy",
                    "size": "0.0000001", "entry_price": "0.00001", "mark_price": "0.00002",
                    "unrealized_pnl": "0.000000000001", "position_idx": 0, "source": "position",
                    "exchange_ts": 1700000000000, "received_ts": 1700000000123, **RECORD_NONE,
                    "updated_time": 1700000000000, "mark_age_ms": 123}
    assert str(update.size) == "1E-7"  # the Decimal's own str has an exponent; the JSON must not
    assert type(data["exchange_ts"]) is int and type(data["received_ts"]) is int
    text = json.dumps(data)
    assert "E-" not in text and "e-" not in text
    closed = only(combiner.apply_push([flat("PEPEUSDT", ut=1700000000500)], received_ts=1700000000600))
    data = closed.to_json()
    assert data.keys() == CONTRACT_KEYS
    assert (data["event"], data["size"], data["unrealized_pnl"], data["side"]) == ("position.closed", "0", "0", "Buy")
    assert data["entry_price"] == "0.00001" and type(data["received_ts"]) is int
    assert json.loads(json.dumps(data)) == data


def test_json_of_unknown_prices_is_null_and_large_values_have_no_exponent():
    combiner = Combiner()
    update = only(combiner.apply_push([pos(size="1E+3", entry=None, mark=None)], received_ts=0))
    data = update.to_json()
    assert (data["size"], data["entry_price"], data["mark_price"], data["unrealized_pnl"]) == ("1000", None, None, None)


def test_desired_symbols_per_category():
    combiner = Combiner()
    combiner.apply_push([pos(idx=1), pos(idx=2, side="Sell"), pos("BTCUSD", category="inverse"),
                         pos("BTC-6JAN23-17500-C", category="option"), flat("ETHUSDT")], received_ts=1)
    assert combiner.desired_symbols("linear") == {"BTCUSDT"}
    assert combiner.desired_symbols("inverse") == {"BTCUSD"}
    assert combiner.desired_symbols("option") == {"BTC-6JAN23-17500-C"}
    assert combiner.desired_symbols("spot") == frozenset()
    combiner.apply_push([flat(idx=1, ut=1001)], received_ts=2)
    assert combiner.desired_symbols("linear") == {"BTCUSDT"}  # the sell leg is still open
    combiner.apply_push([flat(idx=2, ut=1001)], received_ts=3)
    assert combiner.desired_symbols("linear") == frozenset()


def test_current_views_follow_the_events():
    combiner = Combiner()
    combiner.apply_push([pos(idx=1), pos(idx=2, side="Sell")], received_ts=1)
    combiner.apply_marks("linear", {"BTCUSDT": Mark(D("130"), 5000, 2)})
    views = {v.position_idx: v for v in combiner.current()}
    assert {i: v.unrealized_pnl for i, v in views.items()} == {1: D(60), 2: D(-60)}
    assert all(v.source == "ticker" for v in views.values())


def test_every_event_is_lifecycle_except_ticker_moves():
    combiner = Combiner()
    (opened,) = combiner.apply_push([pos()], received_ts=1)
    (closed,) = combiner.apply_push([flat(ut=1001)], received_ts=2)
    assert opened.is_lifecycle and closed.is_lifecycle


def test_events_carry_the_records_fields_and_the_marks_age():
    combiner = Combiner()
    record = pos(ut=1000, leverage=D("10"), liq_price=D("55.5"), take_profit=D("150"), stop_loss=D("90"),
                 trailing_stop=D("0"), cum_realised_pnl=D("-1.25"), created_time=500)
    opened = only(combiner.apply_push([record], received_ts=1400))
    assert (opened.leverage, opened.liq_price, opened.take_profit, opened.stop_loss, opened.trailing_stop,
            opened.cum_realised_pnl, opened.created_time, opened.updated_time) == (
        D(10), D("55.5"), D(150), D(90), D(0), D("-1.25"), 500, 1000)
    assert opened.mark_age_ms == 400  # the record's own mark, as of its updatedTime
    line = opened.to_json()
    assert (line["leverage"], line["liq_price"], line["cum_realised_pnl"], line["created_time"]) == (
        "10", "55.5", "-1.25", 500)
    assert opened.as_dict()["take_profit"] == D(150) and type(opened.as_dict()["stop_loss"]) is Decimal
    ticked = only(combiner.apply_marks("linear", {"BTCUSDT": Mark(D("111"), 1500, 1600)}))
    assert ticked.mark_age_ms == 0 and ticked.created_time == 500 and ticked.take_profit == D(150)
    pushed = only(combiner.apply_push([attrs.evolve(record, size=D(3), updated_time=1450)], received_ts=1750))
    assert pushed.mark_age_ms == 150  # the ticker mark (exchange 1500, received 1600) is fresher than the push's
    closed = only(combiner.apply_push([flat(ut=1800, created_time=500)], received_ts=1900))
    assert (closed.created_time, closed.updated_time, closed.leverage, closed.mark_age_ms) == (500, 1800, D(10), 300)


# --- found by a mutation sweep: behaviour no other test pinned ----------------------------

@pytest.mark.parametrize("field", ["leverage", "liq_price", "take_profit", "stop_loss", "trailing_stop",
                                   "cum_realised_pnl"])
def test_a_push_that_changes_only_one_record_field_is_news(field):
    """Every record field an event carries is part of what the consumer sees: a push that
    changes only it (a funding fee moves ``cumRealisedPnl`` alone, added margin the liq.
    price alone) is emitted, or the consumer keeps the old value until something else moves."""
    combiner = Combiner()
    combiner.apply_push([pos(ut=1000, **{field: D("1")})], received_ts=1)  # type: ignore[arg-type]
    changed = only(combiner.apply_push([pos(ut=1001, seq=2, **{field: D("2")})], received_ts=2))  # type: ignore[arg-type]
    assert (getattr(changed, field), changed.source, changed.size, changed.mark_price) == (D(2), "position", D(2),
                                                                                           D(110))


def test_a_rest_fallback_mark_that_moves_the_price_is_emitted_and_an_unchanged_one_is_not():
    """While the live mark is stale, the REST ticker poll is the only price the consumer gets:
    each fallback mark that moves it is an event (``source="rest"``) with its PnL; one at the
    price the consumer already has is no news, but is what ``current()`` shows from then on."""
    combiner = Combiner()
    combiner.apply_push([pos(size="2", entry="100", mark="110", ut=1000)], received_ts=1000)
    moved = only(combiner.apply_fallback_marks("linear", {"BTCUSDT": Mark(D("120"), 2000, 2100)}))
    assert (moved.source, moved.mark_price, moved.unrealized_pnl, moved.mark_age_ms) == ("rest", D(120), D(40), 0)
    moved = only(combiner.apply_fallback_marks("linear", {"BTCUSDT": Mark(D("90"), 3000, 3100)}))
    assert (moved.mark_price, moved.unrealized_pnl) == (D(90), D(-20))
    assert combiner.apply_fallback_marks("linear", {"BTCUSDT": Mark(D("90.0"), 4000, 4100)}) == []
    (view,) = combiner.current()
    assert (view.mark_price, view.received_ts, view.mark_age_ms) == (D("90.0"), 4100, 0)


def test_a_live_tick_as_new_as_the_rest_fallback_mark_wins_over_it():
    """A fallback mark wins over the live one only when the exchange stamped it later: a tick
    of the same moment is the ticker stream covering the position again (news at the same
    price: the mark is live again and its age counts from the tick)."""
    combiner = Combiner()
    combiner.apply_push([pos(size="2", entry="100", mark="100", ut=1000)], received_ts=1000)
    rest = only(combiner.apply_fallback_marks("linear", {"BTCUSDT": Mark(D("105"), 2000, 2100)}))
    assert (rest.source, rest.mark_price) == ("rest", D(105))
    live = only(combiner.apply_marks("linear", {"BTCUSDT": Mark(D("105"), 2000, 2200)}))
    assert (live.source, live.mark_price, live.exchange_ts, live.received_ts, live.mark_age_ms) == (
        "ticker", D(105), 2000, 2200, 0)


def test_a_rest_records_own_mark_is_as_old_as_the_answer_not_as_its_updated_time():
    """A REST list's ``markPrice`` is the mark when the list was read, however long ago the
    position itself last changed: its age counts from the answer (a position untouched for
    an hour must not look as if its price were an hour stale)."""
    combiner = Combiner()
    opened = only(combiner.apply_snapshot([pos(mark="110", ut=1000)], categories=["linear"], as_of_ms=3_600_000,
                                          received_ts=3_600_100))
    assert (opened.source, opened.mark_price, opened.mark_age_ms) == ("rest", D(110), 0)


def test_resync_does_not_make_a_mark_younger_when_the_wall_clock_stepped_back():
    """A close given again by ``resync`` ages the last shown mark by the time since it was shown,
    never by a negative amount (the wall clock may step back between the two)."""
    combiner = Combiner()
    opened = only(combiner.apply_push([pos(ut=1000)], received_ts=5000))
    combiner.apply_push([flat(ut=1100)], received_ts=5100, commit=False)
    combiner.rollback()  # the crash came before the hand-over
    closed = only(combiner.resync(4000))  # a second earlier than the open was received
    assert type(closed) is PositionClosed and closed.mark_age_ms == opened.mark_age_ms == 4000


def test_a_snapshot_reports_its_mark_even_when_the_price_is_the_one_held():
    """A snapshot sets the mark, whatever was held before: it is returned (and so handed to
    the combiner with the snapshot's exchange time), unlike a delta repeating the price."""
    book = TickerBook("linear", fields=False)
    assert book.apply(ticker("snapshot", cs=1, ts=1000, markPrice="100")) == D(100)
    assert book.apply(ticker("delta", cs=2, ts=2000, markPrice="100")) is None
    assert book.apply(ticker("snapshot", cs=3, ts=3000, markPrice="100")) == D(100)
    assert book.last_ts["BTCUSDT"] == 3000


def test_a_stray_older_frame_right_after_a_cs_restart_is_dropped_not_taken_for_another_restart():
    """A restart is the third behind delta in a row; the count starts again after it, so one
    stray frame from before the restart is dropped, not accepted with its stale mark."""
    book = TickerBook("linear", fields=False)
    book.apply(ticker("snapshot", cs=1000, markPrice="100"))
    assert book.apply(ticker("delta", cs=5, markPrice="101")) is None
    assert book.apply(ticker("delta", cs=6, markPrice="102")) is None
    assert book.apply(ticker("delta", cs=7, markPrice="103")) == D(103)  # the restart
    assert book.apply(ticker("delta", cs=3, markPrice="99")) is None  # older than the restart's frames
    assert (book.mark_price("BTCUSDT"), book.out_of_order, book.cs_resets) == (D(103), 3, 1)


def test_forget_leaves_no_sequence_behind():
    """``forget`` drops a symbol's ``cs`` and stray count too: a new subscription is followed
    from its first delta even when its snapshot carries no ``cs``, and symbols churning
    through subscriptions (options) leave nothing behind."""
    book = TickerBook("linear", fields=False)
    book.apply(ticker("snapshot", cs=500, markPrice="100"))
    book.forget("BTCUSDT")
    book.apply(ticker("snapshot", cs=None, markPrice="100"))
    assert book.apply(ticker("delta", cs=1, markPrice="101")) == D(101)
    assert book.out_of_order == 0
    for i in range(50):
        symbol = f"BTC-{i}-100000-C"
        book.apply(ticker("snapshot", symbol, cs=10, markPrice="5"))
        book.apply(ticker("delta", symbol, cs=9, markPrice="6"))  # a stray: counted
        book.forget(symbol)
    book.forget("BTCUSDT")
    assert len(book) == 0 and not book.last_ts and not book._cs and not book._behind and not book._marks
