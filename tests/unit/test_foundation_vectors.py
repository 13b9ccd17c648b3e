"""Every message of every Bybit vector file decodes to the exact typed value we expect.

The table below has one entry per ``(file, index)``; ``test_every_vector_message_is_covered``
fails when a vector file gains a message (or a file appears) that the table does not
list, so nothing can be skipped silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from foundation_helpers import assert_exact, load_vector, vector_names
from hybrid_actors.errors import (AuthRejected, RestAuthError, RestClockSkew, RestError, RestRateLimited,
                                  RestUnavailable)
from hybrid_actors.protocol import client
from hybrid_actors.protocol.frames import (AuthResult, MalformedFrame, Pong, Position, PositionPush,
                                           SubscribeFailure, SubscribeResult, TickerDelta, TickerSnapshot,
                                           decode)
from hybrid_actors.protocol.rest import PositionPage, TickerRow, parse_position_page, parse_tickers
from hybrid_actors.protocol.session import Session, SessionState

pytestmark = pytest.mark.unit

D = Decimal
Check = Callable[[Any], None]
CASES: dict[tuple[str, int], Check] = {}


def case(name: str, index: int) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        assert (name, index) not in CASES, (name, index)
        CASES[(name, index)] = check
        return check
    return register


def expect_ws(name: str, index: int, expected: Any, *, category: str | None) -> None:
    """Register: the message decodes (as text and as bytes) to exactly ``expected``."""
    def check(message: Any) -> None:
        text = json.dumps(message)
        assert_exact(decode(text, category=category), expected)
        assert_exact(decode(text.encode(), category=category), expected)
    case(name, index)(check)


# --- auth ---------------------------------------------------------------------------

expect_ws("auth_ok", 0, AuthResult(True, "", conn_id="cejreaspqfh3sjdnldmg-p"), category=None)
expect_ws("auth_ok", 1, AuthResult(True, "", conn_id="ce3dpomvha7dha97tvp0-2xh"), category=None)
expect_ws("auth_ok", 2, AuthResult(True, "", conn_id="d266o6hqo29sqmnq4vk0-1yus1"), category=None)
expect_ws("auth_ok", 3, AuthResult(True, "", conn_id="cqg7829qo29sr7bfifu0-cuck",
                                   req_id="1e979e9f-c8ea-44f5-a631-79fc82af7f41"), category=None)
expect_ws("auth_fail", 0, AuthResult(False, "Params Error", conn_id="cldfn8fcgepd64b9hgg0-o8uhe"), category=None)
expect_ws("auth_fail", 1, AuthResult(False, "Params Error", conn_id="chledgksvfrsvugulp60-3xa3"), category=None)
expect_ws("auth_fail", 2, AuthResult(False, "Params Error", conn_id="cno3gd1qo29t7ommtc60-18fpo"), category=None)

# --- subscribe acks -----------------------------------------------------------------

expect_ws("subscribe_ok", 0, SubscribeResult("subscribe", True, "", conn_id="cejreassvfrsfvb9v1a0-2m"),
          category=None)
expect_ws("subscribe_ok", 1, SubscribeResult("subscribe", True, "subscribe",
                                             conn_id="2324d924-aa4d-45b0-a858-7b8be29ab52b", req_id="10001"),
          category="spot")
expect_ws("subscribe_ok", 2, SubscribeResult("subscribe", True, "", conn_id="3cd84cb1-4d06-4a05-930a-2efe5fc70f0f",
                                             req_id=None), category="linear")
expect_ws("subscribe_ok", 3, SubscribeResult(
    None, True, "", conn_id="aa01fbfffe80af37-00000001-000b37b9-7147f432704fd28c-00e1c172",
    success_topics=("orderbook.100.BTC-6JAN23-18000-C",), fail_topics=()), category="option")
expect_ws("subscribe_ok", 4, SubscribeResult("unsubscribe", True, "", conn_id="7188110e-6908-41e9-b863-6365127e92ad",
                                             req_id="3"), category="linear")


def expect_failure(index: int, category: str | None, *, req_id: str | None, conn_id: str, ret_msg: str,
                   kind: str, topics: tuple[str, ...]) -> None:
    expected = SubscribeResult("subscribe", False, ret_msg, conn_id=conn_id, req_id=req_id)
    def check(message: Any) -> None:
        frame = decode(json.dumps(message), category=category)
        assert_exact(frame, expected)
        assert_exact(frame.failure, SubscribeFailure(kind, topics, ret_msg))  # type: ignore[arg-type]
    case("subscribe_fail", index)(check)


expect_failure(0, "linear", conn_id="03f7ecc2-f1d3-453e-be43-eeed9f2ac133",
               req_id=load_vector("subscribe_fail")["messages"][0]["req_id"],
               ret_msg="error:already subscribed,topic:allLiquidation.ORDERUSDT",
               kind="already_subscribed", topics=("allLiquidation.ORDERUSDT",))
expect_failure(1, "linear", conn_id="cthp2bgd1vqpp1lds2o0-l9ny", req_id="kline.5.XRPUSDT",
               ret_msg="Params Error", kind="params_error", topics=())
expect_failure(2, "linear", conn_id="da7tmhs21nld3jk6lb70-8csm4", req_id="e1",
               ret_msg="error:handler not found,topic:orderbook.50.NOPEUSDT",
               kind="handler_not_found", topics=("orderbook.50.NOPEUSDT",))
expect_failure(3, "linear", conn_id="da7tmhs21nld3jk6lb70-8csm4", req_id="e6",
               ret_msg="error:already subscribed,topic:orderbook.1.ETHUSDT",
               kind="already_subscribed", topics=("orderbook.1.ETHUSDT",))
expect_failure(4, "spot", conn_id="x", req_id=None, ret_msg="Invalid symbol :[tickers.NOPEUSDT]",
               kind="invalid_symbol", topics=("tickers.NOPEUSDT",))
expect_failure(5, "spot", conn_id="x", req_id=None, ret_msg="args size >10", kind="too_many_args", topics=())
expect_failure(6, None, conn_id="x", req_id=None, ret_msg="Request not authorized",
               kind="not_authorized", topics=())


def test_every_recorded_auth_refusal_is_about_the_credentials_and_other_texts_are_not():
    for message in load_vector("auth_fail")["messages"]:
        refusal = decode(json.dumps(message))
        assert isinstance(refusal, AuthResult) and refusal.refuses_credentials
    for message in load_vector("auth_ok")["messages"]:
        ok = decode(json.dumps(message))
        assert isinstance(ok, AuthResult) and not ok.refuses_credentials
    for text in ("Invalid api_key", "error sign!", "error:request expired", "PARAMS ERROR"):
        assert AuthResult(False, text).refuses_credentials, text
    for text in ("", "Internal server error", "Too many visits!", "system busy", "error:invalid op"):
        assert not AuthResult(False, text).refuses_credentials, text


def test_the_existing_subscribe_success_acks_have_no_failure():
    for message in load_vector("subscribe_ok")["messages"]:
        frame = decode(json.dumps(message))
        assert isinstance(frame, SubscribeResult)
        assert frame.failure is None


# --- pongs --------------------------------------------------------------------------

expect_ws("pong_public", 0, Pong("public", conn_id="0970e817-426e-429a-a679-ff7f55e0b16a"), category="spot")
expect_ws("pong_public", 1, Pong("public", req_id=None, conn_id="465772b1-7630-4fdc-a492-e003e6f0f260"),
          category="linear")
expect_ws("pong_public", 2, Pong("option", server_time_ms=1672916271846), category="option")
expect_ws("pong_public", 3, Pong("public", req_id="ping-pp", conn_id="da7tou12ob6fpjtusqi0-8f1rr"),
          category="linear")
expect_ws("pong_private", 0, Pong("private", req_id="test", conn_id="cfcb4ocsvfriu23r3er0-1b",
                                  server_time_ms=1675418560633), category=None)
expect_ws("pong_private", 1, Pong("private", req_id="2", conn_id="d266o6hqo29sqmnq4vk0-1yus1",
                                  server_time_ms=1757405570352), category=None)

# --- position pushes ----------------------------------------------------------------

expect_ws("position_push", 0, PositionPush(
    topic="position", id="1003076014fb7eedb-c7e6-45d6-a8c1-270f0169171a", creation_time=1697682317044,
    positions=(Position(
        category="linear", symbol="BTCUSDT", side="", size=D("0"), position_idx=2,
        entry_price=D("0"), mark_price=D("28184.5"), unrealised_pnl=D("0"),
        updated_time=1697682317038, seq=8327597863, created_time=1694402496913, position_status="Normal",
        leverage=D("10"), liq_price=D("0"), take_profit=D("0"), stop_loss=D("0"), trailing_stop=D("0"),
        position_value=D("0"), cum_realised_pnl=D("-25.06579337")),)), category=None)
expect_ws("position_push", 1, PositionPush(
    topic="position", id="59232430b58efe-5fc5-4470-9337-4ce293b68edd", creation_time=1672364174455,
    positions=(Position(
        category="linear", symbol="XRPUSDT", side="Buy", size=D("75"), position_idx=0,
        entry_price=D("0.3615"), mark_price=D("0.3374"), unrealised_pnl=D("-1.8075"),
        updated_time=1672364174449, seq=None, created_time=1672121182216, position_status="Normal",
        leverage=D("10"), liq_price=None, take_profit=D("0"), stop_loss=D("0"), trailing_stop=D("0"),
        position_value=D("27.1125"), cum_realised_pnl=D("0.64782276")),)), category=None)
expect_ws("position_push", 2, PositionPush(
    topic="position", id="504b2671629b08e3c4f6960382a59363:3bc4028023786545:0:01", creation_time=1694566055295,
    positions=(Position(
        category="inverse", symbol="BTCUSD", side="Buy", size=D("3"), position_idx=0,
        entry_price=D("19358.58553268"), mark_price=D("25924.00"), unrealised_pnl=D("0.00003925"),
        updated_time=1694566055293, seq=None, created_time=1670083436351, position_status="Normal",
        leverage=D("10"), liq_price=D("15.00"), take_profit=D("0.00"), stop_loss=D("0.00"),
        trailing_stop=D("0.00"), position_value=D("0.00015497"), cum_realised_pnl=D("0.00011988")),)),
    category=None)


def test_position_push_keys_and_flatness():
    pushes = [decode(json.dumps(m)) for m in load_vector("position_push")["messages"]]
    (flat,), (long_xrp,), (long_inverse,) = (p.positions for p in pushes)  # type: ignore[union-attr]
    assert flat.key == ("linear", "BTCUSDT", 2) and not flat.is_open
    assert long_xrp.key == ("linear", "XRPUSDT", 0) and long_xrp.is_open
    assert long_inverse.key == ("inverse", "BTCUSD", 0) and long_inverse.is_open
    assert long_xrp.version == (1672364174449, -1)  # no seq in the 2023 example
    assert flat.version == (1697682317038, 8327597863)


# --- tickers ------------------------------------------------------------------------

def expect_ticker(name: str, index: int, cls: type, *, category: str, symbol: str, mark: Decimal | None,
                  ts: int, cs: int | None) -> None:
    def check(message: Any) -> None:
        frame = decode(json.dumps(message), category=category)
        assert_exact(frame, cls(category, symbol, message["data"], mark, ts, cs))
        assert frame.topic == f"tickers.{symbol}"
    case(name, index)(check)


expect_ticker("ticker_linear_snapshot", 0, TickerSnapshot, category="linear", symbol="BTCUSDT",
              mark=D("66666.60"), ts=1760325052630, cs=9532239429)
expect_ticker("ticker_linear_snapshot", 1, TickerSnapshot, category="linear", symbol="BTC-26DEC25",
              mark=D("121144.63"), ts=1760409119857, cs=31337927919)
expect_ticker("ticker_linear_snapshot", 2, TickerSnapshot, category="linear", symbol="BTCUSDT",
              mark=D("17217.33"), ts=1673272861686, cs=24987956059)
expect_ticker("ticker_linear_delta", 0, TickerDelta, category="linear", symbol="AAVEUSDT",
              mark=None, ts=1709210212704, cs=78039939929)
expect_ticker("ticker_linear_delta", 1, TickerDelta, category="linear", symbol="BTCUSDT",
              mark=D("86716.30"), ts=1790134712383, cs=814547789569)
expect_ticker("ticker_linear_delta", 2, TickerDelta, category="linear", symbol="BTCUSDT",
              mark=None, ts=1787590405983, cs=793092205004)
expect_ticker("ticker_spot", 0, TickerSnapshot, category="spot", symbol="BTCUSDT",
              mark=None, ts=1673853746003, cs=2588407389)
expect_ticker("ticker_option", 0, TickerSnapshot, category="option", symbol="BTC-6JAN23-17500-C",
              mark=D("7.86976724"), ts=1672917511074, cs=None)


@pytest.mark.parametrize("category", ["spot", "option"])
def test_a_delta_on_a_snapshot_only_socket_is_malformed(category):
    for message in load_vector("ticker_linear_delta")["messages"]:
        frame = decode(json.dumps(message), category=category)
        assert isinstance(frame, MalformedFrame)
        assert "never sends deltas" in frame.reason


def test_an_inverse_socket_decodes_the_same_snapshot_and_delta():
    snapshot = load_vector("ticker_linear_snapshot")["messages"][2]
    delta = load_vector("ticker_linear_delta")["messages"][1]
    assert isinstance(decode(json.dumps(snapshot), category="inverse"), TickerSnapshot)
    frame = decode(json.dumps(delta), category="inverse")
    assert isinstance(frame, TickerDelta) and frame.category == "inverse"


# --- REST: position list ------------------------------------------------------------

def expect_page(index: int, expected: PositionPage) -> None:
    def check(message: Any) -> None:
        text = json.dumps(message)
        assert_exact(parse_position_page(text), expected)
        assert_exact(parse_position_page(text.encode()), expected)
    case("rest_position_list", index)(check)


expect_page(0, PositionPage("inverse", (Position(
    category="inverse", symbol="BTCUSD", side="Sell", size=D("300"), position_idx=0,
    entry_price=D("27464.50441675"), mark_price=D("28224.50"), unrealised_pnl=D("-0.00029413"),
    updated_time=1697673600012, seq=5723621632, created_time=1676538056258, position_status="Normal",
    leverage=D("10"), liq_price=None, take_profit=D("0.00"), stop_loss=D("0.00"), trailing_stop=D("0.00"),
    position_value=D("0.01092319"), cum_realised_pnl=D("-0.00096902")),), "", 1697684980172))
expect_page(1, PositionPage("linear", (Position(
    category="linear", symbol="LTCUSDT", side="Buy", size=D("1.2"), position_idx=0,
    entry_price=D("64.59947917"), mark_price=D("71.1"), unrealised_pnl=D("7.800625"),
    updated_time=1699948800031, seq=15411084098, created_time=1677168085779, position_status="Normal",
    leverage=D("6"), liq_price=None, take_profit=None, stop_loss=None, trailing_stop=D("0"),
    position_value=D("77.519375"), cum_realised_pnl=D("-51.90142002")),), "LTCUSDT%2C1699948800031%2C0",
    1699976566190))
expect_page(2, PositionPage("linear", (Position(
    category="linear", symbol="LTCUSDT", side="", size=D("0"), position_idx=0,
    entry_price=D("0"), mark_price=D("68"), unrealised_pnl=None,
    updated_time=1701294996731, seq=15470569116, created_time=1677168085779, position_status="Normal",
    leverage=D("6"), liq_price=None, take_profit=None, stop_loss=None, trailing_stop=D("0"),
    position_value=None, cum_realised_pnl=D("-46.02652648")),), "LTCUSDT%2C1701294996731%2C0", 1706628043244))
expect_page(3, PositionPage("linear", (), "", 1696392159183))


def test_rest_uses_avg_price_not_entry_price():
    """A REST item carrying only ``entryPrice`` (the WS name) has no entry price."""
    message = load_vector("rest_position_list")["messages"][1]
    item = dict(message["result"]["list"][0])
    item["entryPrice"] = item.pop("avgPrice")
    body = {**message, "result": {**message["result"], "list": [item]}}
    (position,) = parse_position_page(json.dumps(body)).positions
    assert position.entry_price is None


# --- REST: tickers ------------------------------------------------------------------

def expect_tickers(index: int, category: str, symbol: str, mark: Decimal | None, last: Decimal) -> None:
    def check(message: Any) -> None:
        (item,) = message["result"]["list"]
        assert_exact(parse_tickers(json.dumps(message)), (TickerRow(category, symbol, mark, last, item),))
    case("rest_tickers", index)(check)


expect_tickers(0, "inverse", "BTCUSD", D("114898.43"), D("120635.50"))
expect_tickers(1, "option", "BTC-30DEC22-18000-C", D("0.00000009"), D("435"))
expect_tickers(2, "spot", "BTCUSDT", None, D("20533.13"))


# --- REST: errors -------------------------------------------------------------------

def expect_rest_error(index: int, cls: type[RestError], ret_code: int, ret_msg: str) -> None:
    def check(message: Any) -> None:
        for parse in (parse_position_page, parse_tickers):
            with pytest.raises(RestError) as info:
                parse(json.dumps(message))
            error = info.value
            assert type(error) is cls
            assert error.ret_code == ret_code
            assert error.ret_msg == ret_msg
            assert error.http_status == 200
            assert f"retCode {ret_code}" in str(error)
    case("rest_errors", index)(check)


expect_rest_error(0, RestAuthError, 10003, "API key is invalid.")
expect_rest_error(1, RestAuthError, 10004, "error sign!")
expect_rest_error(2, RestClockSkew, 10002,
                  "invalid request, please check your server timestamp or recv_window param. "
                  "req_timestamp[1696396708819],server_timestamp[1696396707813],recv_window[15000]")
expect_rest_error(3, RestAuthError, 10010, "Unmatched IP, please check your API key's bound IP addresses.")


def test_10004_redaction_drops_the_origin_string():
    message = load_vector("rest_errors")["messages"][1]
    origin = "1701783394711de21RcqOIH8Gfxvxvv15000"
    assert origin in message["retMsg"]  # the vector really carries it
    with pytest.raises(RestAuthError) as info:
        parse_position_page(json.dumps(message))
    error = info.value
    for text in (str(error), repr(error), error.ret_msg, *map(str, error.args)):
        assert "origin_string" not in text
        assert origin not in text
        assert "de21RcqOIH8Gfxvxvv1" not in text  # the API key inside the origin string


def test_auth_codes_are_auth_rejections_and_others_are_not():
    bodies = load_vector("rest_errors")["messages"]
    kinds = []
    for body in bodies:
        with pytest.raises(RestError) as info:
            parse_position_page(json.dumps(body))
        kinds.append(isinstance(info.value, AuthRejected))
    assert kinds == [True, True, False, True]


@pytest.mark.parametrize(("code", "cls"), [(10006, RestRateLimited), (10018, RestRateLimited),
                                           (10005, RestAuthError), (10001, RestError), (110001, RestError)])
def test_other_ret_codes_map_to_their_class(code, cls):
    body = {"retCode": code, "retMsg": "x", "result": {}, "retExtInfo": {}, "time": 1}
    with pytest.raises(RestError) as info:
        parse_position_page(json.dumps(body))
    assert type(info.value) is cls and info.value.ret_code == code


@pytest.mark.parametrize(("body", "status"), [
    ("<html>502 Bad Gateway</html>", 200), ('{"retCode": 0, "retMsg": "OK", "result": {}}', 502),
    ('{"hello": 1}', 200), ('{"retCode": 0, "retMsg": "OK", "result": []}', 200),
    ('{"retCode": 0, "retMsg": "OK", "result": {"category": "linear", "list": {}}}', 200),
    ('{"retCode": "zero", "retMsg": "OK"}', 200)])
def test_unusable_rest_bodies_are_unavailable_not_crashes(body, status):
    with pytest.raises(RestUnavailable):
        parse_position_page(body, http_status=status)


def test_an_unusable_position_record_is_dropped_alone():
    good = {"symbol": "BTCUSDT", "side": "Buy", "size": "1", "positionIdx": 0, "avgPrice": "60000",
            "markPrice": "60100", "updatedTime": "1700000000000", "seq": 7}
    body = {"retCode": 0, "retMsg": "OK", "time": 1700000000500,
            "result": {"category": "linear", "nextPageCursor": "c1",
                       "list": [dict(good, symbol="ETHUSDT", size="0.0.1"), good, "not a record"]}}
    page = parse_position_page(json.dumps(body))
    assert [p.symbol for p in page.positions] == ["BTCUSDT"] and page.next_cursor == "c1"
    assert [r.symbol for r in page.rejected] == ["ETHUSDT", None]  # whose, when it can be read
    assert page.rejected[0].reason.startswith("record 0 (ETHUSDT): FieldError") and "0.0.1" in page.rejected[0].reason
    assert page.rejected[1].reason.startswith("record 2 (None)")


def test_http_403_is_a_rate_limit():
    with pytest.raises(RestRateLimited) as info:
        parse_tickers("", http_status=403)
    assert info.value.http_status == 403


# --- client requests: our encoders make the same shapes -------------------------------

def shape(value: Any) -> Any:
    """Key set / list length / leaf type of a JSON value."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def expect_client(index: int, ours: Callable[[Any], str], *, exact: bool) -> None:
    def check(message: Any) -> None:
        produced = json.loads(ours(message))
        assert shape(produced) == shape(message)
        if exact:
            assert produced == message
    case("client_requests", index)(check)


expect_client(0, lambda m: client.auth_frame(m["args"][0], "some_secret", m["args"][1], req_id=m["req_id"]),
              exact=False)  # the vector's signature is the placeholder "signature"
expect_client(1, lambda m: client.ping_frame(m["req_id"]), exact=True)
expect_client(2, lambda m: client.request_frame(m["op"], m["args"], m["req_id"]), exact=True)
expect_client(3, lambda m: client.request_frame(m["op"], m["args"], m["req_id"]), exact=True)
expect_client(4, lambda m: client.request_frame(m["op"], m["args"], m["req_id"]), exact=True)
expect_client(5, lambda m: client.request_frame(m["op"], m["args"]), exact=True)
expect_client(6, lambda m: client.request_frame(m["op"], m["args"], "8c0d7e0e-uuid"), exact=False)


def test_auth_frame_for_the_docs_request_has_the_vector_values_but_a_real_signature():
    message = load_vector("client_requests")["messages"][0]
    produced = json.loads(client.auth_frame("api_key", "some_secret", 1662350400000, req_id="10001"))
    assert produced["req_id"] == "10001" and produced["op"] == "auth"
    assert produced["args"][:2] == message["args"][:2]
    signature = produced["args"][2]
    assert len(signature) == 64 and set(signature) <= set("0123456789abcdef")


def test_session_frames_have_the_documented_shapes():
    linear = Session("linear")
    (request,), refused = linear.subscribe(["tickers.BTCUSDT", "tickers.ETHUSDT"], now=0.0)
    assert refused == []
    assert shape(json.loads(request.text)) == shape(load_vector("client_requests")["messages"][6])
    (unsub,) = linear.unsubscribe(["tickers.BTCUSDT"], now=0.0)
    assert shape(json.loads(unsub.text)) == {"req_id": "str", "op": "str", "args": ["str"]}
    req_id, ping = linear.ping()
    assert json.loads(ping) == {"req_id": req_id, "op": "ping"}
    private = Session(None)
    auth = json.loads(private.auth("api_key", "s", 1662350400000))
    assert shape(auth) == shape(load_vector("client_requests")["messages"][0])
    assert private.state is SessionState.AUTHENTICATING


# --- the table is complete ----------------------------------------------------------

def all_messages() -> list[tuple[str, int]]:
    return [(name, i) for name in vector_names() for i, _ in enumerate(load_vector(name)["messages"])]


def test_every_vector_message_is_covered():
    present = set(all_messages())
    assert len(present) >= 45, "vector files missing?"
    assert present - CASES.keys() == set(), "vector messages without an expected value"
    assert CASES.keys() - present == set(), "expected values for messages that do not exist"


@pytest.mark.parametrize(("name", "index"), sorted(CASES))
def test_vector_message(name, index):
    CASES[(name, index)](load_vector(name)["messages"][index])


def test_a_401_is_an_auth_error_with_bybits_code_and_otherwise_awaits_confirmation():
    body = json.dumps(load_vector("rest_errors")["messages"][0])  # 10003 "API key is invalid."
    with pytest.raises(RestAuthError, match="10003"):
        parse_position_page(body, http_status=401)
    for other in (b"<html><body><h1>401</h1></body></html>", b'{"retCode": 10001, "retMsg": "x"}', b"{}"):
        with pytest.raises(RestUnavailable, match="HTTP 401") as caught:
            parse_position_page(other, http_status=401)
        assert caught.value.http_status == 401 and not isinstance(caught.value, AuthRejected)
