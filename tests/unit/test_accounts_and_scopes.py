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
