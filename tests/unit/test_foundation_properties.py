"""Hypothesis properties of the codec and the state.

(a) a ticker snapshot merged with any sequence of deltas equals the last full state;
(b) any sequence of position pushes followed by a REST snapshot ends in exactly the REST state;
(c) decoding arbitrary bytes, text, JSON-ish values and mutated vector frames never raises
    and yields well-typed frames.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundation_helpers import assert_exact, load_vector
from hybrid_actors.errors import RestError
from hybrid_actors.protocol.frames import (SIDES, AuthResult, MalformedFrame, Pong, Position, PositionPush,
                                           SubscribeResult, TickerDelta, TickerFrame, TickerSnapshot,
                                           UnknownFrame, decode, decode_hot)
from hybrid_actors.protocol.rest import parse_position_page, parse_tickers
from hybrid_actors.state import SNAPSHOT_SKEW_MS, Combiner, Mark, PositionBook, TickerBook, unrealized_pnl

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: for the secondary properties (variations of the main ones)
FEWER = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- (a) ticker snapshot + deltas == last full state ------------------------------------

TICKER_FIELDS = ("lastPrice", "markPrice", "indexPrice", "bid1Price", "bid1Size", "ask1Price", "ask1Size",
                 "fundingRate", "openInterest", "tickDirection")
OTHER_FIELDS = tuple(f for f in TICKER_FIELDS if f != "markPrice")
SYMBOLS = ("BTCUSDT", "ETHUSDT")

prices = st.one_of(st.sampled_from(["0", "1", "1.5", "66666.60", "17217.33", "0.00000009"]),
                   st.integers(0, 10**9).map(lambda n: f"{n // 100}.{n % 100:02d}"))
field_values = st.one_of(prices, st.just(""), st.sampled_from(["PlusTick", "MinusTick", "ZeroPlusTick"]))


@st.composite
def ticker_histories(draw: st.DrawFn) -> list[tuple[str, dict[str, str]]]:
    """Interleaved full states of the symbols: ``[(symbol, state), ...]``; each symbol's
    first state is its snapshot; later ones change a few fields (markPrice stays a price)."""
    current: dict[str, dict[str, str]] = {}
    history = []
    for _ in range(draw(st.integers(1, 25))):
        symbol = draw(st.sampled_from(SYMBOLS))
        changes = draw(st.dictionaries(st.sampled_from(OTHER_FIELDS), field_values, max_size=4))
        if draw(st.booleans()):
            changes["markPrice"] = draw(prices)
        if symbol not in current:
            base = {f: draw(field_values) for f in TICKER_FIELDS}
            base["markPrice"] = draw(prices)
            current[symbol] = base | changes
        else:
            current[symbol] = current[symbol] | changes
        history.append((symbol, dict(current[symbol])))
    return history


def frames_for(history: list[tuple[str, dict[str, str]]]) -> list[dict[str, Any]]:
    """Wire frames: a snapshot per symbol first, then deltas of only the changed fields;
    ``cs`` strictly increasing per symbol."""
    last: dict[str, dict[str, str]] = {}
    out = []
    for cs, (symbol, state) in enumerate(history, start=1000):
        if symbol not in last:
            kind, data = "snapshot", {"symbol": symbol, **state}
        else:
            kind = "delta"
            data = {"symbol": symbol, **{k: v for k, v in state.items() if last[symbol][k] != v}}
        last[symbol] = state
        out.append({"topic": f"tickers.{symbol}", "type": kind, "data": data, "cs": cs, "ts": 1_700_000_000_000 + cs})
    return out


def final_states(history: list[tuple[str, dict[str, str]]]) -> dict[str, dict[str, str]]:
    return {symbol: {"symbol": symbol, **state} for symbol, state in history}


def check_book(book: TickerBook, history: list[tuple[str, dict[str, str]]]) -> None:
    expected = final_states(history)
    assert book.symbols() == expected.keys()
    for symbol, state in expected.items():
        assert dict(book.ticker(symbol)) == state  # type: ignore[arg-type]
        assert book.mark_price(symbol) == Decimal(state["markPrice"])
        assert type(book.mark_price(symbol)) is Decimal
    assert book.orphan_deltas == 0 and book.out_of_order == 0


@SETTINGS
@given(ticker_histories())
def test_snapshot_plus_deltas_equals_the_last_full_state(history):
    book = TickerBook("linear")
    marks: dict[str, Decimal] = {}
    for frame in frames_for(history):
        data = frame["data"]
        cls = TickerSnapshot if frame["type"] == "snapshot" else TickerDelta
        mark = Decimal(data["markPrice"]) if "markPrice" in data else None
        returned = book.apply(cls("linear", data["symbol"], data, mark, frame["ts"], frame["cs"]))
        # the return value says whether this frame set or changed the mark
        if frame["type"] == "snapshot" or (mark is not None and mark != marks.get(data["symbol"])):
            assert returned == mark
        else:
            assert returned is None
        if mark is not None:
            marks[data["symbol"]] = mark
    check_book(book, history)


@SETTINGS
@given(ticker_histories(), st.sampled_from(["linear", "inverse"]))
def test_merge_through_json_text_and_decode(history, category):
    book = TickerBook(category)
    for frame in frames_for(history):
        decoded = decode(json.dumps(frame), category=category)
        assert isinstance(decoded, TickerSnapshot if frame["type"] == "snapshot" else TickerDelta)
        book.apply(decoded)
    check_book(book, history)


@FEWER
@given(ticker_histories())
def test_a_delta_with_a_lower_cs_does_not_change_the_state(history):
    frames = frames_for(history)
    book = TickerBook("linear")
    for frame in frames:
        book.apply(decode(json.dumps(frame), category="linear"))
    symbol = history[-1][0]
    stale = {"topic": f"tickers.{symbol}", "type": "delta", "cs": 1,
             "data": {"symbol": symbol, "markPrice": "123456.78", "lastPrice": "1"}, "ts": 1}
    assert book.apply(decode(json.dumps(stale), category="linear")) is None
    assert book.out_of_order == 1
    assert dict(book.ticker(symbol)) == final_states(history)[symbol]  # type: ignore[arg-type]


# --- (b) pushes then a REST snapshot == the REST state ----------------------------------

CATEGORIES = ("linear", "inverse", "option")
KEYS = [(c, s, i) for c in CATEGORIES for s in ("BTCUSDT", "ETHUSDT") for i in (0, 1, 2)]


@st.composite
def records(draw: st.DrawFn, key: tuple[str, str, int], updated_time: int, seq: int) -> Position:
    category, symbol, idx = key
    side = draw(st.sampled_from(["Buy", "Sell", ""]))
    size = Decimal(0) if side == "" else draw(st.sampled_from([Decimal(0), Decimal("0.001"), Decimal(1),
                                                               Decimal("2.5"), Decimal(300)]))
    entry = draw(st.sampled_from([Decimal(0), Decimal("100.5"), Decimal(27000), Decimal("0.3615")]))
    mark = draw(st.sampled_from([None, Decimal("101"), Decimal(28000)]))
    return Position(category=category, symbol=symbol, side=side, size=size, position_idx=idx,  # type: ignore[arg-type]
                    entry_price=entry, mark_price=mark, updated_time=updated_time, seq=seq)


@st.composite
def push_then_snapshot(draw: st.DrawFn) -> tuple[list[list[Position]], list[Position], int]:
    pushes: list[list[Position]] = []
    newest: dict[tuple[str, str, int], tuple[int, int]] = {}
    for _ in range(draw(st.integers(0, 12))):
        batch = []
        for key in draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3)):
            ut = draw(st.integers(1_000, 2_000))
            seq = draw(st.integers(0, 50))
            batch.append(draw(records(key, ut, seq)))
            newest[key] = max(newest.get(key, (0, 0)), (ut, seq))
        pushes.append(batch)
    snapshot_keys = draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=len(KEYS)))
    snapshot = []
    for key in snapshot_keys:
        # taken after every push: its version is >= anything pushed for the key
        ut0, seq0 = newest.get(key, (1_000, 0))
        ut = ut0 + draw(st.integers(0, 500))
        seq = seq0 + draw(st.integers(0, 5))
        snapshot.append(draw(records(key, ut, seq)))
    latest = max([ut for ut, _ in newest.values()] + [p.updated_time for p in snapshot] + [0])
    # built after every push by more than the read-to-response skew the book allows for
    as_of_ms = latest + SNAPSHOT_SKEW_MS + draw(st.integers(0, 100))
    return pushes, snapshot, as_of_ms


@SETTINGS
@given(push_then_snapshot())
def test_pushes_then_a_rest_snapshot_end_in_the_rest_state(case):
    pushes, snapshot, as_of_ms = case
    book = PositionBook()
    for batch in pushes:
        book.apply_push(batch)
    book.apply_snapshot(snapshot, CATEGORIES, as_of_ms)
    expected = {p for p in snapshot if p.is_open}
    assert set(book.open_positions()) == expected
    assert len(book) == len(expected)
    for category in CATEGORIES:
        assert book.symbols(category) == {p.symbol for p in expected if p.category == category}


@SETTINGS
@given(push_then_snapshot())
def test_the_combiner_ends_in_the_rest_state_too(case):
    pushes, snapshot, as_of_ms = case
    combiner = Combiner()
    for n, batch in enumerate(pushes):
        combiner.apply_push(batch, received_ts=n)
    combiner.apply_snapshot(snapshot, categories=CATEGORIES, as_of_ms=as_of_ms, received_ts=10**6)
    views = {v.key: (v.side, v.size, v.entry_price, v.mark_price) for v in combiner.current()}
    assert views == {p.key: (p.side, p.size, p.entry_price, p.mark_price) for p in snapshot if p.is_open}
    for view in combiner.current():
        assert view.unrealized_pnl == unrealized_pnl(view.category, view.side, view.size, view.entry_price,
                                                     view.mark_price)


@FEWER
@given(push_then_snapshot())
def test_a_snapshot_leaves_other_categories_alone(case):
    pushes, snapshot, as_of_ms = case
    book = PositionBook()
    for batch in pushes:
        book.apply_push(batch)
    before = {p for p in book.open_positions() if p.category != "linear"}
    book.apply_snapshot([p for p in snapshot if p.category == "linear"], ["linear"], as_of_ms)
    assert {p for p in book.open_positions() if p.category != "linear"} == before
    assert {p for p in book.open_positions() if p.category == "linear"} == {
        p for p in snapshot if p.category == "linear" and p.is_open}


# --- (c) decoding never raises ----------------------------------------------------------

FRAME_TYPES = (AuthResult, SubscribeResult, Pong, PositionPush, TickerSnapshot, TickerDelta, UnknownFrame,
               MalformedFrame)
WS_VECTORS = ("auth_ok", "auth_fail", "subscribe_ok", "subscribe_fail", "pong_public", "pong_private",
              "position_push", "ticker_linear_snapshot", "ticker_linear_delta", "ticker_spot", "ticker_option")
WS_MESSAGES = [m for name in WS_VECTORS for m in load_vector(name)["messages"]]
SOCKETS = st.sampled_from([None, "linear", "inverse", "spot", "option"])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                    st.sampled_from(["", "0", "-1", "1e5", "NaN", "Infinity", "tickers.BTCUSDT", "pong",
                                     "position", "snapshot", "delta", "auth", "subscribe", "COMMAND_RESP"]))
jsonish = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=10), st.sampled_from(
        ["op", "topic", "type", "data", "success", "ret_msg", "req_id", "args", "symbol", "ts", "cs",
         "markPrice", "side", "size", "positionIdx", "category", "conn_id"])), children, max_size=5)),
    max_leaves=20)


def is_int(value: Any) -> bool:
    return type(value) is int


def opt(value: Any, kind: type) -> bool:
    return value is None or type(value) is kind


def assert_well_typed(frame: Any) -> None:
    """The decoder returns one of its frame types, with the field types it promises."""
    assert isinstance(frame, FRAME_TYPES), type(frame)
    if isinstance(frame, MalformedFrame):
        assert type(frame.reason) is str and type(frame.excerpt) is str
    elif isinstance(frame, UnknownFrame):
        assert type(frame.reason) is str and isinstance(frame.payload, Mapping) and opt(frame.topic, str)
    elif isinstance(frame, AuthResult):
        assert type(frame.success) is bool and type(frame.ret_msg) is str
        assert opt(frame.conn_id, str) and opt(frame.req_id, str)
    elif isinstance(frame, SubscribeResult):
        assert frame.op in ("subscribe", "unsubscribe", None) and type(frame.success) is bool
        assert type(frame.ret_msg) is str and opt(frame.conn_id, str) and opt(frame.req_id, str)
        assert all(type(t) is str for t in (*frame.success_topics, *frame.fail_topics))
        failure = frame.failure
        assert failure is None or all(type(t) is str for t in failure.topics)
    elif isinstance(frame, Pong):
        assert frame.shape in ("public", "private", "option")
        assert opt(frame.req_id, str) and opt(frame.conn_id, str) and opt(frame.server_time_ms, int)
    elif isinstance(frame, PositionPush):
        assert type(frame.topic) is str and opt(frame.id, str) and opt(frame.creation_time, int)
        for p in frame.positions:
            assert type(p.category) is str and p.category, p.category
            assert type(p.symbol) is str and p.symbol
            assert p.side in SIDES and type(p.size) is Decimal and p.size.is_finite() and p.size >= 0
            assert p.position_idx in (0, 1, 2) and is_int(p.position_idx)
            for name in ("entry_price", "mark_price", "unrealised_pnl", "leverage", "liq_price", "take_profit",
                         "stop_loss", "trailing_stop", "position_value", "cum_realised_pnl"):
                value = getattr(p, name)
                assert value is None or (type(value) is Decimal and value.is_finite()), name
            for name in ("updated_time", "seq", "created_time"):
                assert opt(getattr(p, name), int), name
            assert opt(p.position_status, str)
    elif isinstance(frame, TickerFrame):
        assert type(frame.symbol) is str and isinstance(frame.data, Mapping)
        assert frame.data["symbol"] == frame.symbol
        assert is_int(frame.ts) and opt(frame.cs, int)
        assert frame.mark_price is None or (type(frame.mark_price) is Decimal and frame.mark_price.is_finite())


def decode_and_use(data: str | bytes, category: str | None) -> None:
    """Decode, check types, and feed the result to the state (which must not raise either)."""
    frame = decode(data, category=category)
    assert_well_typed(frame)
    # the public socket's fast path says the same (a ticker as its fields; test_hot_path.py)
    assert_exact(decode_hot(data, category=category),
                 (frame.symbol, isinstance(frame, TickerSnapshot), frame.data, frame.mark_price, frame.ts, frame.cs)
                 if isinstance(frame, TickerFrame) else frame)
    if isinstance(frame, TickerFrame):
        book = TickerBook(category)
        book.apply(frame)
        mark = book.mark_price(frame.symbol)
        if mark is not None:
            combiner = Combiner()
            combiner.apply_push([Position("linear", frame.symbol, "Buy", Decimal(3), 0, Decimal("2.5"))],
                                received_ts=0)
            combiner.apply_marks("linear", {frame.symbol: Mark(mark, frame.ts, 0)})
    elif isinstance(frame, PositionPush):
        events = Combiner().apply_push(frame.positions, received_ts=0)
        for event in events:
            json.dumps(event.to_json())


@FUZZ
@given(st.binary(max_size=300), SOCKETS)
def test_decoding_arbitrary_bytes_never_raises(data, category):
    decode_and_use(data, category)


@FUZZ
@given(st.text(max_size=300), SOCKETS)
def test_decoding_arbitrary_text_never_raises(text, category):
    decode_and_use(text, category)


@FUZZ
@given(jsonish, SOCKETS)
def test_decoding_arbitrary_json_never_raises(value, category):
    decode_and_use(json.dumps(value), category)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out += paths(child, (*prefix, i))
    return out


def replaced(value: Any, path: tuple, new: Any, delete: bool) -> Any:
    if not path:
        return new
    head, *rest = path
    copy = dict(value) if isinstance(value, dict) else list(value)
    if delete and not rest:
        del copy[head]
    else:
        copy[head] = replaced(copy[head], tuple(rest), new, delete)
    return copy


@st.composite
def mutated_vectors(draw: st.DrawFn) -> Any:
    message = draw(st.sampled_from(WS_MESSAGES))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(message)))
        delete = bool(path) and draw(st.booleans())
        message = replaced(message, path, draw(jsonish), delete)
    return message


@FUZZ
@given(mutated_vectors(), SOCKETS)
def test_decoding_mutated_vector_frames_never_raises(message, category):
    decode_and_use(json.dumps(message), category)


@FUZZ
@given(st.sampled_from(WS_MESSAGES), st.integers(0, 10_000), SOCKETS)
def test_decoding_truncated_vector_frames_never_raises(message, cut, category):
    text = json.dumps(message)
    decode_and_use(text[: cut % (len(text) + 1)], category)


numbers = st.one_of(
    st.integers(-10**30, 10**30).map(str),
    st.builds(lambda m, e: f"{m}e{e}", st.integers(-10**6, 10**6), st.integers(-10**7, 10**7)),
    st.decimals(allow_nan=False, allow_infinity=False).map(str))


@FUZZ
@given(st.sampled_from(["linear", "inverse", "option"]), st.sampled_from(["Buy", "Sell"]), numbers, numbers,
       numbers)
def test_numbers_the_codec_accepts_never_break_the_pnl(category, side, size, entry, mark):
    """Whatever ``size``/``entryPrice``/``markPrice`` text a push decodes with, the combiner
    can compute and print its PnL (no decimal Overflow from absurd exponents)."""
    item = {"category": category, "symbol": "BTCUSDT", "side": side, "size": size, "positionIdx": 0,
            "entryPrice": entry, "markPrice": mark, "updatedTime": "1"}
    frame = decode(json.dumps({"topic": "position", "data": [item]}))
    assert_well_typed(frame)
    if isinstance(frame, PositionPush):
        for event in Combiner().apply_push(frame.positions, received_ts=0):
            json.dumps(event.to_json())


# --- REST parsing never raises anything but RestError -------------------------------

REST_MESSAGES = [m for name in ("rest_position_list", "rest_tickers", "rest_errors")
                 for m in load_vector(name)["messages"]]


def parse_all(body: str | bytes) -> None:
    for parse in (parse_position_page, parse_tickers):
        try:
            parse(body)
        except RestError:
            pass


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200), jsonish.map(json.dumps)))
def test_rest_parsing_of_garbage_raises_only_rest_errors(body):
    parse_all(body)


@st.composite
def mutated_rest(draw: st.DrawFn) -> Any:
    message = draw(st.sampled_from(REST_MESSAGES))
    path = draw(st.sampled_from(paths(message)))
    return replaced(message, path, draw(st.one_of(jsonish, st.just("9" * 5000))), bool(path) and draw(st.booleans()))


@FUZZ
@given(mutated_rest())
def test_rest_parsing_of_mutated_vectors_raises_only_rest_errors(message):
    parse_all(json.dumps(message))
