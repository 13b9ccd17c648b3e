"""Pure parts of the simulator: number formatting, instruments, the price model, the
position book and cursors. No sockets, no event loop."""

from __future__ import annotations

import random
import re
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_actors.testing.simulator.instruments import generate_instruments
from hybrid_actors.testing.simulator.market import Market
from hybrid_actors.testing.simulator.positions import PositionBook, rest_record, ws_record
from hybrid_actors.testing.simulator.rest_api import RetCodeError, decode_cursor, encode_cursor
from hybrid_actors.testing.simulator.wire import fmt_decimal, fmt_units, new_conn_id

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("units, decimals, text", [
    (6666660, 2, "66666.60"), (5, 3, "0.005"), (0, 2, "0.00"), (-15, 1, "-1.5"), (42, 0, "42"), (100, 2, "1.00")])
def test_fmt_units(units, decimals, text):
    assert fmt_units(units, decimals) == text


def test_fmt_decimal_never_uses_exponents():
    assert fmt_decimal(Decimal("1E+2")) == "100"
    assert fmt_decimal(Decimal("0E-8")) == "0"
    assert fmt_decimal(Decimal("1.23456789"), 4) == "1.2346"


def test_instruments_are_deterministic_and_on_tick():
    first, again = generate_instruments(60, 9), generate_instruments(60, 9)
    assert first == again
    for category, instruments in first.items():
        assert len(instruments) == 60, category
        for inst in instruments.values():
            assert inst.start_units % inst.tick_units == 0 and inst.start_units > 0
    assert {"BTCUSDT", "ETHUSDT", "BTCPERP", "SYM001USDT"} <= set(first["linear"])
    assert first["linear"]["BTCPERP"].settle_coin == "USDC"
    assert "BTCUSD" in first["inverse"] and "BTCUSDT" in first["spot"]
    assert all(re.fullmatch(r"(BTC|ETH|SOL)-\d{1,2}[A-Z]{3}\d{2}-\d+-[CP]", s) for s in first["option"])


def test_units_of_refuses_prices_off_the_tick():
    btc = generate_instruments(1, 1)["linear"]["BTCUSDT"]
    assert btc.tick_size == Decimal("0.10")
    assert btc.units_of(Decimal("100000.3")) == 10000030
    for bad in ("100000.05", "0", "-1"):
        with pytest.raises(ValueError):
            btc.units_of(Decimal(bad))


def _market(seed: int, symbols: int = 3) -> Market:
    return Market(generate_instruments(symbols, seed), random.Random(seed), lambda: 1_700_000_000.0, 10.0, 0.5, 0.5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), ticks=st.integers(1, 200))
def test_the_random_walk_stays_on_tick_with_a_sane_book(seed, ticks):
    market = _market(seed)
    rng = random.Random(seed)
    for category in ("linear", "inverse", "spot", "option"):
        for model in market.models[category].values():
            inst = model.instrument
            cs = model.cs
            for n in range(ticks):
                frame = orjson.loads(model.tick_frame(rng, 1_700_000_000_000 + n, 0.5, 0.5))
                assert model.mark % inst.tick_units == 0 and model.mark > 0
                assert 0 < model.bid < model.ask
                data = frame["data"]
                assert all(isinstance(v, str) for v in data.values())
                assert set(data) <= set(model.fields)
                if category != "option":
                    assert frame["cs"] == cs + n + 1
            assert Decimal(model.fields.get("markPrice", model.fields.get("usdIndexPrice"))) == model.mark_price


def test_position_book_pnl_and_records():
    market = _market(1)
    book = PositionBook(lambda c, s: market.require(c, s).instrument, market.mark_price, market.now_ms,
                        random.Random(1))
    long = book.open("linear", "BTCUSDT", "Buy", "0.5", entry_price="90000")
    assert long.unrealised_pnl(Decimal("100000")) == Decimal("5000")
    inverse = book.open("inverse", "BTCUSD", "Sell", "1000", entry_price="50000")
    assert inverse.unrealised_pnl(Decimal("40000")) == Decimal("0.005")  # short gains: 1000*(1/50000-1/40000)*-1
    with pytest.raises(ValueError):
        book.open("linear", "BTCUSDT", "Buy", "0.5")  # already open
    with pytest.raises(ValueError):
        book.open("linear", "BTCUSDT", "Buy", "0.0005", position_idx=1)  # below the qty step
    with pytest.raises(ValueError):
        book.open("linear", "ETHUSDT", "Sell", "1", position_idx=1)  # hedge idx 1 is the buy leg
    with pytest.raises(ValueError):
        book.open("spot", "BTCUSDT", "Buy", "1")
    with pytest.raises(ValueError):
        book.open("linear", "BTCUSDT", "Buy", 0.5, position_idx=1)  # floats are refused
    inst = market.require("linear", "BTCUSDT").instrument
    rest = rest_record(long, inst, Decimal("100000"))
    assert (rest["avgPrice"], rest["unrealisedPnl"], rest["markPrice"]) == ("90000", "5000", "100000.00")
    closed = book.close("linear", "BTCUSDT")
    assert closed.seq > long.seq and closed.cum_realised_pnl == (market.mark_price("linear", "BTCUSDT") - 90000) / 2
    ws = ws_record(closed, inst)
    assert (ws["side"], ws["size"], ws["entryPrice"], ws["unrealisedPnl"]) == ("", "0", "0", "0")
    assert [p.symbol for p in book.all()] == ["BTCUSD", "BTCUSDT"]
    assert [p.symbol for p in book.all(open_only=True)] == ["BTCUSD"]


def test_cursor_round_trip_is_url_encoded_and_tolerates_double_encoding():
    market = _market(1)
    book = PositionBook(lambda c, s: market.require(c, s).instrument, market.mark_price, market.now_ms,
                        random.Random(1))
    pos = book.open("linear", "ETHUSDT", "Buy", "1")
    cursor = encode_cursor(pos)
    assert re.fullmatch(r"ETHUSDT%2C\d+%2C0", cursor)
    assert decode_cursor(cursor) == ("ETHUSDT", 0)
    assert decode_cursor(cursor.replace("%", "%25")) == ("ETHUSDT", 0)
    for bad in ("", "junk", "A%2CB%2Cx"):
        with pytest.raises(RetCodeError):
            decode_cursor(bad)


def test_conn_ids_look_like_bybits():
    rng = random.Random(3)
    assert re.fullmatch(r"[0-9a-v]{20}-[0-9a-z]{1,5}", new_conn_id("private", rng))
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", new_conn_id("linear", rng))
    assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{16}-[0-9a-f]{8}", new_conn_id("option", rng))
