"""Issue 8 in the pure layer: Classic accounts' ``"None"`` side, a bad record that no longer
costs its push, 10009 as an IP ban, and snapshots authoritative only for the (category,
settle coin) scopes they read. Every frame starts from a recorded one (../shared/bybit-vectors)."""

from __future__ import annotations

import copy
import json
from decimal import Decimal

import pytest

from foundation_helpers import load_vector
from hybrid_actors.errors import RestRateLimited
from hybrid_actors.protocol.frames import MalformedFrame, PositionPush, decode
from hybrid_actors.protocol.rest import error_for, is_ip_ban, parse_envelope, parse_position_page
from hybrid_actors.state import Combiner, PositionBook, PositionClosed, settle_coin_hint
from test_foundation_state import pos

pytestmark = pytest.mark.unit

PUSHES = load_vector("position_push")["messages"]
PAGES = load_vector("rest_position_list")["messages"]


def classic_hedge_push() -> dict:
    """The shape recorded in the wild (BYBIT_V5.md §12): an open Buy leg (idx 1) and a
    ``"side": "None"`` flat leg (idx 2) in one push; built from the docs' records."""
    push = copy.deepcopy(PUSHES[0])
    open_leg = copy.deepcopy(PUSHES[1]["data"][0])
    open_leg.update(positionIdx=1, symbol="BTCUSDT", seq=8327597862)
    flat_leg = push["data"][0]
    flat_leg["side"] = "None"
    push["data"] = [open_leg, flat_leg]
    return push


def test_a_None_side_is_flat_and_the_other_record_survives():
    frame = decode(json.dumps(classic_hedge_push()))
    assert isinstance(frame, PositionPush) and frame.rejected == ()
    open_leg, flat_leg = frame.positions
    assert (open_leg.side, open_leg.position_idx, open_leg.is_open) == ("Buy", 1, True)
    assert (flat_leg.side, flat_leg.size, flat_leg.position_idx, flat_leg.is_open) == ("", Decimal(0), 2, False)


def test_a_None_leg_closes_the_open_position_it_reports():
    combiner = Combiner()
    combiner.apply_push([pos(idx=2, side="Sell", ut=1697682317000, seq=8327597000)], received_ts=1)
    frame = decode(json.dumps(classic_hedge_push()))
    events = combiner.apply_push(frame.positions, received_ts=2)
    assert [(type(e).__name__, e.position_idx) for e in events] == [("PositionUpdate", 1), ("PositionClosed", 2)]


def test_a_bad_record_is_dropped_alone_and_said_why():
    push = classic_hedge_push()
    push["data"][1]["side"] = "Sideways"
    frame = decode(json.dumps(push))
    assert isinstance(frame, PositionPush)
    assert [p.position_idx for p in frame.positions] == [1]
    assert len(frame.rejected) == 1 and "record 1 (BTCUSDT)" in frame.rejected[0] and "Sideways" in frame.rejected[0]
    push["data"] = [push["data"][1]]  # nothing usable at all: malformed, as before
    assert isinstance(decode(json.dumps(push)), MalformedFrame)


def test_a_rest_page_with_a_None_side_parses():
    page = copy.deepcopy(PAGES[2])  # the recorded flat LTCUSDT record, side ""
    page["result"]["list"][0]["side"] = "None"
    parsed = parse_position_page(json.dumps(page))
    [record] = parsed.positions
    assert (record.side, record.size, record.is_open) == ("", Decimal(0), False)


def test_10009_is_an_ip_ban_like_http_403():
    body = dict(load_vector("rest_errors")["messages"][0], retCode=10009, retMsg="Your IP is banned")
    with pytest.raises(RestRateLimited) as banned:
        parse_envelope(json.dumps(body), path="/v5/position/list")
    assert is_ip_ban(banned.value) and "banned" in str(banned.value)
    with pytest.raises(RestRateLimited) as forbidden:
        parse_envelope(b"<html>403</html>", path="/v5/position/list", http_status=403)
    assert is_ip_ban(forbidden.value)
    assert not is_ip_ban(error_for(10006, "Too many visits!", path="/v5/position/list"))


@pytest.mark.parametrize(("symbol", "coin"), [
    ("BTCUSDT", "USDT"), ("BTCUSDT-26DEC25", "USDT"), ("BTCPERP", "USDC"), ("ETHUSDC", "USDC"),
    ("BTC-26DEC25", "USDC"), ("1000PEPEUSDT", "USDT"), ("WEIRD", None),
])
def test_settle_coin_hint_follows_bybit_naming(symbol, coin):
    assert settle_coin_hint("linear", symbol) == coin
    assert settle_coin_hint("inverse", symbol) is None


def test_a_snapshot_closes_only_within_the_scopes_it_read():
    book = PositionBook()
    usdt, usdc, odd = pos("ETHUSDT"), pos("BTCPERP"), pos("WEIRD")
    book.apply_push([usdt, usdc, odd])
    diff = book.apply_snapshot([], ["linear"], as_of_ms=5000, coverage=[("linear", "USDT")])
    assert [p.symbol for p in diff.closed] == ["ETHUSDT"]  # not the USDC one, not the unknown one
    diff = book.apply_snapshot([], ["linear"], as_of_ms=5000, coverage=[("linear", "USDC")])
    assert [p.symbol for p in diff.closed] == ["BTCPERP"]
    diff = book.apply_snapshot([], ["linear"], as_of_ms=5000, coverage=[("linear", "USDT"), ("linear", "USDC")])
    assert [p.symbol for p in diff.closed] == ["WEIRD"]  # every coin read: the category is covered


def test_a_scope_not_read_closes_nothing_and_a_coin_learned_from_rest_wins_over_the_name():
    book = PositionBook()
    book.apply_push([pos("BTCUSDT"), pos("ETHUSDT")])
    assert not book.apply_snapshot([], ["linear", "inverse"], as_of_ms=5000, coverage=[("inverse", None)])
    # a REST page asked for USDC listed "ODDUSDT": that is its coin, whatever its name says
    book.apply_snapshot([pos("ODDUSDT", settle_coin="USDC")], ["linear"], as_of_ms=5000,
                        coverage=[("linear", "USDC")])
    assert book.settle_coin(("linear", "ODDUSDT", 0)) == "USDC"
    diff = book.apply_snapshot([], ["linear"], as_of_ms=6000, coverage=[("linear", "USDT")])
    assert sorted(p.symbol for p in diff.closed) == ["BTCUSDT", "ETHUSDT"]
    assert book.get(("linear", "ODDUSDT", 0)) is not None


def test_without_coverage_a_snapshot_covers_its_categories_as_before():
    combiner = Combiner()
    combiner.apply_push([pos("BTCPERP", ut=1000)], received_ts=1)
    [closed] = combiner.apply_snapshot([], categories=["linear"], as_of_ms=5000, received_ts=2)
    assert isinstance(closed, PositionClosed) and closed.source == "rest"


# --- defect 8: "already subscribed" naming no topic; the args limit --------------------

SUBSCRIBE_FAILS = load_vector("subscribe_fail")["messages"]


def recorded_ack(req_id: str, ret_msg: str):
    """The recorded linear failure envelope (sieblyio/bybit-api#477) with our req_id."""
    from hybrid_actors.protocol.frames import SubscribeResult
    frame = dict(SUBSCRIBE_FAILS[0], req_id=req_id, ret_msg=ret_msg)
    decoded = decode(json.dumps(frame))
    assert isinstance(decoded, SubscribeResult)
    return decoded


@pytest.mark.parametrize("ret_msg", ["error:already subscribed", "error:already subscribed,topic:"])
def test_already_subscribed_naming_no_topic_confirms_a_one_topic_frame(ret_msg):
    from hybrid_actors.protocol.session import Session
    session = Session("linear")
    (request,), _ = session.subscribe(["tickers.BTCUSDT"], now=0.0)
    outcome = session.receive_ack(recorded_ack(request.req_id, ret_msg))
    assert outcome.confirmed == ("tickers.BTCUSDT",) and outcome.unknown == () and outcome.failed == ()
    assert session.budget.used_chars == len("tickers.BTCUSDT") + 3  # held: it is subscribed


def test_already_subscribed_naming_no_topic_on_a_bigger_frame_stays_unknown():
    from hybrid_actors.protocol.session import Session
    session = Session("linear")
    (request,), _ = session.subscribe(["tickers.A", "tickers.B"], now=0.0)
    outcome = session.receive_ack(recorded_ack(request.req_id, "error:already subscribed"))
    assert outcome.confirmed == () and outcome.unknown == ("tickers.A", "tickers.B")


def test_the_args_limit_answer_fails_every_topic_of_its_frame():
    from hybrid_actors.protocol.session import Session
    session = Session("linear")
    (request,), _ = session.subscribe(["tickers.A", "tickers.B"], now=0.0)
    outcome = session.receive_ack(recorded_ack(request.req_id, "Length of 'args' array over 21,000 characters"))
    assert [(t, f.kind) for t, f in outcome.failed] == [("tickers.A", "too_many_args"), ("tickers.B", "too_many_args")]
    assert outcome.unknown == () and session.budget.used_chars == 0


# --- defect 12: USDC contracts' PnL is since the last 8-hourly settlement -------------------

def usdc_push(session_avg: str) -> dict:
    """The recorded open long (docs 2023) as a USDC perpetual, with the session fields the
    current docs list (sessionAvgPrice)."""
    push = copy.deepcopy(PUSHES[1])
    record = push["data"][0]
    record.update(symbol="XRPPERP", sessionAvgPrice=session_avg, seq=1)
    return push


def test_usdc_pnl_is_measured_from_session_avg_price_and_entry_stays_avg_price():
    frame = decode(json.dumps(usdc_push("0.3500")))
    [position] = frame.positions
    assert (position.entry_price, position.session_avg_price) == (Decimal("0.3615"), Decimal("0.3500"))
    [event] = Combiner().apply_push(frame.positions, received_ts=1)
    assert event.entry_price == Decimal("0.3615")  # avgPrice: since the position opened
    assert event.mark_price == Decimal("0.3374")
    assert event.unrealized_pnl == (Decimal("0.3374") - Decimal("0.3500")) * 75  # since the settlement
    assert event.to_json()["unrealized_pnl"] == "-0.9450"


@pytest.mark.parametrize("session_avg", ["0", ""])
def test_without_a_session_price_pnl_is_from_the_entry(session_avg):
    [event] = Combiner().apply_push(decode(json.dumps(usdc_push(session_avg))).positions, received_ts=1)
    assert event.unrealized_pnl == (Decimal("0.3374") - Decimal("0.3615")) * 75 == Decimal("-1.8075")


def test_a_settlement_push_moves_pnl_and_is_emitted_though_entry_and_mark_stay():
    combiner = Combiner()
    combiner.apply_push(decode(json.dumps(usdc_push("0.3500"))).positions, received_ts=1)
    settled = usdc_push("0.3374")  # settled at the mark: PnL so far realised
    settled["data"][0].update(updatedTime="1672364175000", seq=2)
    [event] = combiner.apply_push(decode(json.dumps(settled)).positions, received_ts=2)
    assert event.unrealized_pnl == 0 and event.entry_price == Decimal("0.3615")


def test_a_rest_record_carries_session_avg_price_too():
    page = copy.deepcopy(PAGES[1])  # the recorded open LTCUSDT page, as a USDC contract
    page["result"]["list"][0].update(symbol="LTCPERP", sessionAvgPrice="70.00")
    [record] = parse_position_page(json.dumps(page)).positions
    [event] = Combiner().apply_snapshot([record], categories=["linear"], as_of_ms=1, received_ts=1)
    assert event.entry_price == Decimal("64.59947917")
    assert event.unrealized_pnl == (Decimal("71.1") - Decimal("70.00")) * Decimal("1.2")


def test_a_push_that_closes_and_reopens_a_position_ends_with_it_open():
    """Found by the interleavings fuzz: the close was emitted after the reopen, so the
    consumer saw the position closed while the book held it open."""
    combiner = Combiner()
    combiner.apply_push([pos(ut=1000, seq=1)], received_ts=1)
    flat = pos(side="", size="0", entry="0", ut=1001, seq=2)
    events = combiner.apply_push([flat, pos(side="Sell", ut=1002, seq=3)], received_ts=2)
    assert [(type(e).__name__, e.side) for e in events] == [("PositionClosed", "Buy"), ("PositionUpdate", "Sell")]
    assert [v.side for v in combiner.current()] == ["Sell"]
    # and the reverse: opened and closed within one push
    events = combiner.apply_push([pos("ETHUSDT", ut=1003, seq=4), pos("ETHUSDT", side="", size="0", entry="0",
                                                                        ut=1004, seq=5)], received_ts=3)
    assert [type(e).__name__ for e in events] == ["PositionUpdate", "PositionClosed"]
    assert {v.symbol for v in combiner.current()} == {"BTCUSDT"}
