"""Issue 4: the hybrid stream end to end against the simulator on loopback."""

from __future__ import annotations

from decimal import Decimal

import pytest
import trio

from hybrid_actors.state import PositionClosed, PositionUpdate
from stack import TEST_TIMEOUT, eventually, running, sim_config

pytestmark = pytest.mark.integration


async def test_open_subscribes_and_updates_carry_the_current_mark_and_exact_pnl(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim = s.sim
            sim.control.open_position("BTCUSDT", "Buy", "0.5", entry_price="60000.0")
            await sim.observe.wait_subscribed("linear", ["BTCUSDT"])
            opened = await s.log.wait_for(lambda e: e.symbol == "BTCUSDT" and e.source == "position")
            assert isinstance(opened, PositionUpdate)
            assert (opened.side, opened.size, opened.entry_price) == ("Buy", Decimal("0.5"), Decimal("60000.0"))
            for mark in ("60123.4", "59950.1", "61000.0"):
                sim.control.set_mark_price("BTCUSDT", mark)
                event = await s.log.wait_for(lambda e, m=Decimal(mark): e.symbol == "BTCUSDT" and e.mark_price == m)
                assert event.source == "ticker"
                assert event.mark_price == sim.observe.mark_price("linear", "BTCUSDT")
                assert event.unrealized_pnl == (Decimal(mark) - Decimal("60000.0")) * Decimal("0.5")
                assert type(event.mark_price) is Decimal and type(event.unrealized_pnl) is Decimal
            [view] = s.stream.positions()
            assert view.mark_price == Decimal("61000.0") and view.unrealized_pnl == Decimal("500.00")


async def test_sell_and_inverse_pnl_use_the_fresh_mark(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running(categories=("linear", "inverse")) as s:
            sim = s.sim
            sim.control.open_position("ETHUSDT", "Sell", "2", entry_price="3000.00")
            sim.control.open_position("BTCUSD", "Buy", "1000", entry_price="50000.0", category="inverse")
            await sim.observe.wait_subscribed("linear", ["ETHUSDT"])
            await sim.observe.wait_subscribed("inverse", ["BTCUSD"])
            sim.control.set_mark_price("ETHUSDT", "2950.00")
            sim.control.set_mark_price("BTCUSD", "40000.0", category="inverse")
            eth = await s.log.wait_for(lambda e: e.symbol == "ETHUSDT" and e.mark_price == Decimal("2950.00"))
            btc = await s.log.wait_for(lambda e: e.symbol == "BTCUSD" and e.mark_price == Decimal("40000.0"))
            assert eth.unrealized_pnl == Decimal("100.00")  # short gains as the price falls
            assert btc.category == "inverse"
            assert btc.unrealized_pnl == Decimal("-0.005")  # 1000 * (1/50000 - 1/40000)


async def test_close_emits_position_closed_and_unsubscribes_after_the_grace(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim = s.sim
            sim.control.open_position("SOLUSDT", "Buy", "10", entry_price="150.00")
            sim.control.open_position("ETHUSDT", "Buy", "1", entry_price="3000.00")
            await sim.observe.wait_subscribed("linear", ["SOLUSDT", "ETHUSDT"])
            sim.control.close_position("SOLUSDT")
            closed_at = trio.current_time()
            closed = await s.log.wait_for(lambda e: isinstance(e, PositionClosed))
            assert (closed.symbol, closed.size, closed.side, closed.unrealized_pnl) == (
                "SOLUSDT", Decimal(0), "Buy", Decimal(0))
            assert closed.to_json()["event"] == "position.closed"
            await sim.observe.wait_unsubscribed("linear", ["SOLUSDT"])
            grace = s.hub.config.subscriptions.unsubscribe_grace
            assert trio.current_time() - closed_at >= grace
            assert sim.observe.subscribed_symbols("linear") == {"ETHUSDT"}
            assert [p.symbol for p in s.stream.positions()] == ["ETHUSDT"]


async def test_an_unsubscribed_symbol_is_forgotten_and_its_reopen_prices_from_a_fresh_snapshot(loopback_clock):
    """Churn costs nothing: once the exchange confirms an unsubscribe, the public socket
    forgets the symbol's merged ticker state and activity (by the next frame it reads), so
    ticker state = subscriptions = open positions. Reopened, the symbol is subscribed again
    and priced from the fresh snapshot (a delta never needs the forgotten state)."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim, hub = s.sim, s.hub
            sim.control.open_position("SOLUSDT", "Buy", "10", entry_price="150.00")
            sim.control.open_position("ETHUSDT", "Buy", "1", entry_price="3000.00")
            await sim.observe.wait_subscribed("linear", ["SOLUSDT", "ETHUSDT"])
            await eventually(lambda: s.stream.health().connections["public:linear"]["tickers"] == 2)
            sim.control.close_position("SOLUSDT")
            await sim.observe.wait_unsubscribed("linear", ["SOLUSDT"])
            sim.control.set_mark_price("ETHUSDT", "3001.00")  # a frame after the unsubscribe ack
            await eventually(lambda: s.stream.health().connections["public:linear"]["tickers"] == 1)
            assert set(hub.activity["linear"]) == {"ETHUSDT"} == hub.subscriptions["linear"].confirmed
            assert sim.observe.subscribed_symbols("linear") == {p.symbol for p in s.stream.positions()}
            sim.control.set_mark_price("SOLUSDT", "151.50")
            reopened = s.log.mark()
            sim.control.open_position("SOLUSDT", "Sell", "3", entry_price="151.00")
            await sim.observe.wait_subscribed("linear", ["SOLUSDT"])
            priced = await s.log.wait_for(lambda e: e.symbol == "SOLUSDT" and e.source == "ticker", after=reopened)
            assert (priced.side, priced.mark_price) == ("Sell", Decimal("151.50"))
            sim.control.set_mark_price("SOLUSDT", "152.00")  # a delta on the new snapshot
            await s.log.wait_for(lambda e: e.symbol == "SOLUSDT" and e.mark_price == Decimal("152.00"))
            assert s.stream.health().connections["public:linear"]["tickers"] == 2


async def test_a_flipped_position_keeps_its_ticker(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim = s.sim
            sim.control.open_position("XRPUSDT", "Buy", "100")
            await sim.observe.wait_subscribed("linear", ["XRPUSDT"])
            sim.control.close_position("XRPUSDT")
            await s.log.wait_for(lambda e: isinstance(e, PositionClosed))
            sim.control.open_position("XRPUSDT", "Sell", "50")
            reopened = await s.log.wait_for(lambda e: e.symbol == "XRPUSDT" and e.side == "Sell")
            assert reopened.size == Decimal("50")
            await trio.sleep(s.hub.config.subscriptions.unsubscribe_grace * 3)
            unsubscribes = sim.observe.requests("linear", op="unsubscribe")
            assert unsubscribes == []  # no churn within the grace period
            assert sim.observe.subscribed_symbols("linear") == {"XRPUSDT"}


async def test_150_positions_opened_at_once_are_all_subscribed(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running(sim_config(symbols=160)) as s:
            sim = s.sim
            symbols = sim.symbols("linear")[:150]
            for symbol in symbols:
                sim.control.open_position(symbol, "Buy", "1")
            await sim.observe.wait_subscribed("linear", symbols)
            await s.wait_subscriptions_match_positions()
            await s.log.wait_for(lambda e: len({x.symbol for x in s.log.events}) >= 150)
            requests = sim.observe.requests("linear", op="subscribe")
            assert all(len(r.args) <= 50 for r in requests)
            assert sum(len(r.args) for r in requests) == 150  # each topic once: nothing redundant
            await eventually(lambda: s.stream.health().subscriptions["linear"]["confirmed"] == 150)
            assert s.stream.health().subscriptions["linear"]["missing"] == []


async def test_hedge_mode_legs_are_separate_positions(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim = s.sim
            sim.control.open_position("BTCUSDT", "Buy", "1", entry_price="60000.0", position_idx=1)
            sim.control.open_position("BTCUSDT", "Sell", "2", entry_price="61000.0", position_idx=2)
            await sim.observe.wait_subscribed("linear", ["BTCUSDT"])
            sim.control.set_mark_price("BTCUSDT", "60500.0")
            long = await s.log.wait_for(lambda e: e.position_idx == 1 and e.mark_price == Decimal("60500.0"))
            short = await s.log.wait_for(lambda e: e.position_idx == 2 and e.mark_price == Decimal("60500.0"))
            assert long.unrealized_pnl == Decimal("500.0")
            assert short.unrealized_pnl == Decimal("1000.0")
            sim.control.close_position("BTCUSDT", position_idx=1)
            await s.log.wait_for(lambda e: isinstance(e, PositionClosed) and e.position_idx == 1)
            assert sim.observe.subscribed_symbols("linear") == {"BTCUSDT"}  # the other leg still needs it
            assert [(p.symbol, p.position_idx) for p in s.stream.positions()] == [("BTCUSDT", 2)]


async def test_positions_open_at_start_come_from_the_rest_snapshot(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running(sim_config(positions=6, symbols=30)) as s:
            expected = {(p.symbol, p.position_idx) for p in s.sim.observe.positions("linear", open_only=True)}
            assert expected
            assert {(p.symbol, p.position_idx) for p in s.stream.positions()} == expected
            assert all(e.source == "rest" for e in s.log.events[:len(expected)])
            await s.wait_subscriptions_match_positions()


async def test_live_ticker_stream_keeps_prices_flowing(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running(sim_config(rate=10.0)) as s:
            sim = s.sim
            sim.control.open_position("BTCUSDT", "Buy", "1", entry_price="60000.0")
            await sim.observe.wait_subscribed("linear", ["BTCUSDT"])
            start = s.log.mark()
            await trio.sleep(2.5)
            ticks = [e for e in s.log.events[start:] if e.source == "ticker"]
            assert len(ticks) >= 2  # the model moves the mark on ~30% of 10 Hz ticks
            sim.control.stop_ticker("BTCUSDT")
            await trio.sleep(1)
            last = [e for e in s.log.events if e.symbol == "BTCUSDT"][-1]
            assert last.mark_price == sim.observe.mark_price("linear", "BTCUSDT")
            assert last.unrealized_pnl == (last.mark_price - Decimal("60000.0")) * 1


async def test_events_carry_the_exchanges_position_fields_and_the_marks_age(loopback_clock):
    from hybrid_actors.testing.simulator.positions import ws_record

    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim = s.sim
            sim.control.open_position("ETHUSDT", "Buy", "2", entry_price="3000.00", leverage="5")
            await sim.observe.wait_subscribed("linear", ["ETHUSDT"])
            sim.control.modify_position("ETHUSDT", take_profit="3500.00", stop_loss="2800.00", size="1")
            event = await s.log.wait_for(lambda e: e.symbol == "ETHUSDT" and e.take_profit == Decimal("3500.00"))
            [exchange] = sim.observe.positions("linear", open_only=True)
            wire = ws_record(exchange, sim.exchange.market.instruments["linear"]["ETHUSDT"])
            assert (event.leverage, event.take_profit, event.stop_loss, event.cum_realised_pnl) == (
                exchange.leverage, exchange.take_profit, exchange.stop_loss, exchange.cum_realised_pnl)
            assert event.liq_price == Decimal(wire["liqPrice"]) and event.trailing_stop == Decimal(wire["trailingStop"])
            assert (event.created_time, event.updated_time) == (exchange.created_ms, exchange.updated_ms)
            assert event.cum_realised_pnl != 0  # the resize realised some
            for name in ("leverage", "liq_price", "take_profit", "stop_loss", "trailing_stop", "cum_realised_pnl"):
                assert type(getattr(event, name)) is Decimal, name
                assert event.to_json()[name] == format(getattr(event, name), "f")
            assert event.as_dict()["created_time"] == exchange.created_ms
            # a price move (a virtual second later: a tick no newer than the record loses to its mark):
            # same record fields, a mark received just now
            await trio.sleep(1)
            sim.control.set_mark_price("ETHUSDT", "3100.00")
            ticked = await s.log.wait_for(lambda e: e.symbol == "ETHUSDT" and e.mark_price == Decimal("3100.00"))
            assert ticked.source == "ticker" and ticked.mark_age_ms == 0
            assert (ticked.created_time, ticked.take_profit) == (exchange.created_ms, exchange.take_profit)
            # a push a while later carries the exchange's mark as of its own updatedTime: age 0
            await trio.sleep(5)
            sim.control.modify_position("ETHUSDT", stop_loss="2900.00")
            later = await s.log.wait_for(lambda e: e.symbol == "ETHUSDT" and e.stop_loss == Decimal("2900.00"))
            assert later.mark_price == Decimal("3100.00") and later.mark_age_ms == 0
            assert later.updated_time == sim.observe.positions("linear")[0].updated_ms > event.updated_time
