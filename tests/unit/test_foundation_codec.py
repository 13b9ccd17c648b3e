"""Example tests of the sans-IO codec beyond the recorded vectors: what is refused, what
is unknown, and the regressions the property tests found."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from foundation_helpers import load_vector
from hybrid_actors.errors import RestUnavailable
from hybrid_actors.protocol.fields import FieldError, dec, to_int
from hybrid_actors.protocol.frames import (EXCERPT, MalformedFrame, PositionPush, SubscribeResult, TickerDelta,
                                           TickerSnapshot, UnknownFrame, decode)
from hybrid_actors.protocol.rest import parse_position_page

pytestmark = pytest.mark.unit

OPEN_LONG = load_vector("position_push")["messages"][1]


def push_with(**changes: object) -> str:
    item = {**OPEN_LONG["data"][0], **changes}
    return json.dumps({**OPEN_LONG, "data": [item]})


def test_the_unchanged_push_decodes():
    assert isinstance(decode(push_with()), PositionPush)


@pytest.mark.parametrize("changes", [
    {"category": 5}, {"category": ""}, {"category": None},
    {"size": 75.0}, {"entryPrice": 0.3615}, {"markPrice": 0.3374},  # JSON floats: never float
    {"size": "-1"}, {"size": "NaN"}, {"size": "Infinity"}, {"size": ""}, {"side": "Long"},
    {"positionIdx": 3}, {"positionIdx": True}, {"positionIdx": "x"}, {"symbol": ""}, {"updatedTime": "12a"},
    {"entryPrice": "1e999999"}, {"markPrice": "1e-999999"}, {"size": "0e-999999"}, {"size": "1e41"},
])
def test_bad_position_fields_make_a_malformed_frame(changes):
    frame = decode(push_with(**changes))
    assert isinstance(frame, MalformedFrame), frame
    assert frame.reason


def test_a_numeric_category_is_refused_not_passed_through():
    """Regression: an item's ``"category": 5`` used to become ``Position.category == 5``."""
    frame = decode(push_with(category=5))
    assert isinstance(frame, MalformedFrame)
    assert "category" in frame.reason


def test_numbers_out_of_range_are_refused_before_they_reach_the_pnl():
    """Regression: ``entryPrice: "1e999999"`` decoded, then made the combiner raise
    decimal.Overflow (or DivisionByZero once entry*mark underflowed to 0)."""
    with pytest.raises(FieldError, match="out of range"):
        dec("1e999999")
    with pytest.raises(FieldError, match="out of range"):
        dec("1e-999999")
    assert dec("1e40") == Decimal("1e40") and dec("1e-40") == Decimal("1e-40")
    assert dec("0.00000009") == Decimal("0.00000009") and dec("0") == 0
    assert dec(12345678901234567890) == Decimal(12345678901234567890)


def test_integer_strings_with_too_many_digits_are_field_errors():
    """Regression: ``int()`` refuses > 4300 digits with a plain ValueError, which escaped
    ``parse_envelope`` (it only caught FieldError) as a non-RestError."""
    with pytest.raises(FieldError):
        to_int("9" * 5000)
    with pytest.raises(RestUnavailable):
        parse_position_page(json.dumps({"retCode": "9" * 5000, "retMsg": "OK", "result": {}}))


@pytest.mark.parametrize(("raw", "expected"), [("", None), (None, None), ("0", Decimal(0)), ("-1.5", Decimal("-1.5")),
                                               (7, Decimal(7))])
def test_dec(raw, expected):
    assert dec(raw) == expected and type(dec(raw)) is type(expected)


@pytest.mark.parametrize("raw", [1.5, True, [], {}, "abc", "1,5", "nan", "-inf"])
def test_dec_refuses(raw):
    with pytest.raises(FieldError):
        dec(raw)


@pytest.mark.parametrize(("raw", "expected"), [(5, 5), ("5", 5), ("-1", -1), ("", None), (None, None)])
def test_to_int(raw, expected):
    assert to_int(raw) == expected


@pytest.mark.parametrize("raw", [True, 1.0, "1.0", "-", "١٢", "1e3", " 1"])
def test_to_int_refuses(raw):
    with pytest.raises(FieldError):
        to_int(raw)


def test_a_categorised_topic_gives_items_without_category_their_category():
    item = {k: v for k, v in OPEN_LONG["data"][0].items() if k != "category"}
    frame = decode(json.dumps({"topic": "position.inverse", "data": [item]}))
    assert isinstance(frame, PositionPush)
    assert frame.positions[0].category == "inverse"
    assert isinstance(decode(json.dumps({"topic": "position", "data": [item]})), MalformedFrame)


def test_a_push_with_several_records_keeps_them_in_order():
    a, b = dict(OPEN_LONG["data"][0]), {**OPEN_LONG["data"][0], "positionIdx": 1, "symbol": "ETHUSDT"}
    frame = decode(json.dumps({"topic": "position", "data": [a, b]}))
    assert [p.key for p in frame.positions] == [("linear", "XRPUSDT", 0), ("linear", "ETHUSDT", 1)]  # type: ignore[union-attr]


@pytest.mark.parametrize("text", ["", "not json", "{", "[1, 2]", '"pong"', "42", "null", b"\xff\xfe", "{\"a\": NaN}"])
def test_non_objects_are_malformed(text):
    frame = decode(text)
    assert isinstance(frame, MalformedFrame)


def test_the_excerpt_is_truncated():
    frame = decode("x" * 10_000)
    assert isinstance(frame, MalformedFrame)
    assert len(frame.excerpt) < EXCERPT + 40 and "10000 chars" in frame.excerpt


@pytest.mark.parametrize(("obj", "topic"), [
    ({"topic": "orderbook.1.BTCUSDT", "type": "snapshot", "data": {}}, "orderbook.1.BTCUSDT"),
    ({"success": False, "ret_msg": "error:invalid op", "op": "frobnicate"}, None),
    ({"hello": "world"}, None),
])
def test_valid_json_we_do_not_use_is_unknown(obj, topic):
    frame = decode(json.dumps(obj))
    assert isinstance(frame, UnknownFrame) and frame.topic == topic and frame.payload == obj


@pytest.mark.parametrize("obj", [
    {"topic": "tickers.BTCUSDT", "type": "snapshot", "data": {"symbol": "ETHUSDT"}, "ts": 1},
    {"topic": "tickers.BTCUSDT", "type": "snapshot", "data": [], "ts": 1},
    {"topic": "tickers.BTCUSDT", "type": "snapshot", "data": {"symbol": "BTCUSDT"}},
    {"topic": "tickers.BTCUSDT", "type": "snapshot", "data": {"symbol": "BTCUSDT"}, "ts": True},
    {"topic": "tickers.BTCUSDT", "type": "weird", "data": {"symbol": "BTCUSDT"}, "ts": 1},
    {"topic": "tickers.BTCUSDT", "type": "delta", "data": {"symbol": "BTCUSDT", "markPrice": 1.5}, "ts": 1},
    {"topic": "tickers.BTCUSDT", "type": "delta", "data": {"symbol": "BTCUSDT"}, "ts": 1, "cs": "x"},
    {"op": "auth", "success": "true", "ret_msg": ""},
    {"op": "subscribe", "success": True, "ret_msg": 5},
    {"op": "subscribe", "success": True, "ret_msg": "", "req_id": ["x"]},
    {"type": "COMMAND_RESP", "success": True, "data": {"successTopics": "tickers.X"}},
    {"op": "pong", "args": [["x"]]},
])
def test_wrong_types_in_known_frames_are_malformed(obj):
    assert isinstance(decode(json.dumps(obj), category="linear"), MalformedFrame)


def test_ticker_numbers_stay_strings_and_only_the_mark_is_parsed():
    text = json.dumps(load_vector("ticker_linear_snapshot")["messages"][1])
    frame = decode(text, category="linear")
    assert isinstance(frame, TickerSnapshot)
    assert frame.data["fundingRate"] == "" and frame.data["lastPrice"] == "109401.50"
    assert frame.mark_price == Decimal("121144.63")


def test_a_delta_with_an_empty_mark_has_no_mark():
    frame = decode(json.dumps({"topic": "tickers.BTCUSDT", "type": "delta", "ts": 5, "cs": "7",
                               "data": {"symbol": "BTCUSDT", "markPrice": ""}}), category="linear")
    assert isinstance(frame, TickerDelta) and frame.mark_price is None and frame.cs == 7


def test_an_option_command_resp_with_fail_topics_is_a_failure_naming_them():
    frame = decode(json.dumps({"success": True, "conn_id": "c", "type": "COMMAND_RESP",
                               "data": {"failTopics": ["tickers.NOPE-1JAN30-1-C"], "successTopics": ["tickers.A"]}}),
                   category="option")
    assert isinstance(frame, SubscribeResult)
    assert frame.success is False and frame.fail_topics == ("tickers.NOPE-1JAN30-1-C",)
    assert frame.failure is not None and frame.failure.topics == ("tickers.NOPE-1JAN30-1-C",)


def test_an_integer_req_id_is_read_as_text():
    frame = decode(json.dumps({"op": "subscribe", "success": True, "ret_msg": "", "req_id": 7}))
    assert isinstance(frame, SubscribeResult) and frame.req_id == "7"
