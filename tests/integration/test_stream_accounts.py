"""Issue 8, defects 5 and 6 end to end: a Classic account's stream, and a snapshot that is
authoritative only for the settle coins it asked for."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
import trio

from hybrid_actors.rollout import RolloutPolicy
from hybrid_actors.state import PositionClosed
from stack import TEST_TIMEOUT, eventually, running, sim_config

pytestmark = pytest.mark.integration


async def test_a_classic_account_streams_and_reports_what_it_lacks(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        sim = sim_config()
        async with running(sim, categories=("linear", "inverse", "option")) as s:
            s.sim.control.set_account(classic=True)
            s.sim.control.open_position("BTCUSDT", "Buy", "0.5", position_idx=1)
            s.sim.control.open_position("BTCUSDT", "Sell", "0.3", position_idx=2)
            await s.log.wait_for(lambda e: e.symbol == "BTCUSDT" and e.position_idx == 2)
            # the recorded shape: one push with an open Buy leg and a "None" flat leg
            push = s.sim.exchange.book.close("linear", "BTCUSDT", 2)
            s.sim.exchange.push_position(push)
            closed = await s.log.wait_for(lambda e: isinstance(e, PositionClosed))
            assert (closed.symbol, closed.position_idx, closed.source) == ("BTCUSDT", 2, "position")
            [view] = s.stream.positions()
            assert (view.side, view.position_idx, view.size) == ("Buy", 1, Decimal("0.5"))

            s.hub.request_reconcile()  # a reconciliation on a Classic account: no crash, no loop
            await eventually(lambda: s.stream.health().events["reconciliations"] >= 1)
            health = s.stream.health()
            assert set(health.rest["skipped"]) == {"linear/USDC", "option"}
            assert health.actors["reconciler"]["crashes"] == 0 and health.actors["private"]["crashes"] == 0
            assert [p.symbol for p in s.stream.positions()] == ["BTCUSDT"]
            assert orjson.loads(orjson.dumps(health.as_dict()))["rest"]["skipped"]["option"]


async def test_a_classic_push_with_a_None_leg_keeps_its_other_records(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            s.sim.control.set_account(classic=True)
            both = [s.sim.exchange.book.open("linear", "ETHUSDT", "Buy", "2", position_idx=1),
                    s.sim.exchange.book.open("linear", "ETHUSDT", "Sell", "1", position_idx=2)]
            both[1] = s.sim.exchange.book.close("linear", "ETHUSDT", 2)
            from hybrid_actors.testing.simulator.positions import ws_record
            inst = s.sim.exchange.market.require("linear", "ETHUSDT").instrument
            records = [ws_record(p, inst) for p in both]
            records[1]["side"] = "None"
            frame = orjson.dumps({"id": "classic-1", "topic": "position", "creationTime": 1, "data": records})
            s.sim.control.inject("raw", "private", text=frame.decode())
            opened = await s.log.wait_for(lambda e: e.symbol == "ETHUSDT")
            assert (opened.side, opened.position_idx, opened.size) == ("Buy", 1, Decimal("2"))
            assert s.stream.health().connections["private"]["malformed"] == 0


async def test_a_usdt_snapshot_does_not_close_a_usdc_position(loopback_clock):
    # about snapshot scopes, not prices: without the REST stale-price fallback, which would
    # poll every second once the quiet simulator's marks are 3 s old (half the clock jumps)
    quiet = RolloutPolicy(stale_after=None)
    with trio.fail_after(TEST_TIMEOUT * 5):
        async with running(linear_settle_coins=("USDT",), reconcile_interval=30.0, rollout=quiet) as s:
            s.sim.control.open_position("BTCPERP", "Buy", "0.2")  # settled in USDC: outside the config
            s.sim.control.open_position("ETHUSDT", "Sell", "1")
            await s.log.wait_for(lambda e: e.symbol == "BTCPERP")
            await s.log.wait_for(lambda e: e.symbol == "ETHUSDT")
            for _ in range(2):  # two reconciliations (and a reconnect snapshot), 30 s apart
                done = s.stream.health().events["reconciliations"]
                await eventually(lambda d=done: s.stream.health().events["reconciliations"] > d, max_step=5.0)
            s.sim.control.drop_private()
            await eventually(lambda: s.hub.health.link("private").connects >= 2)
            s.hub.request_reconcile()
            await eventually(lambda: s.stream.health().events["reconciliations"] >= 3)
            assert not [e for e in s.log.events if isinstance(e, PositionClosed)]
            assert {p.symbol for p in s.stream.positions()} == {"BTCPERP", "ETHUSDT"}
            assert s.stream.health().events["reconcile_corrections"] == 0

            # the USDT scope is still authoritative: a USDT close the stream missed is healed
            s.sim.exchange.book.close("linear", "ETHUSDT")  # no push
            closed = await s.log.wait_for(lambda e: isinstance(e, PositionClosed))
            assert (closed.symbol, closed.source) == ("ETHUSDT", "rest")
            # and a USDC close arrives by its push, as always
            s.sim.control.close_position("BTCPERP")
            closed = await s.log.wait_for(lambda e: isinstance(e, PositionClosed) and e.symbol == "BTCPERP")
            assert closed.source == "position"


async def test_already_subscribed_naming_no_topic_is_a_confirmation_not_a_retry_loop(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim = s.sim
            sim.control.reject_subscribes("BTCUSDT", 1, ret_msg="error:already subscribed")
            sim.control.open_position("BTCUSDT", "Buy", "0.5")
            await s.log.wait_for(lambda e: e.symbol == "BTCUSDT")
            await eventually(lambda: "BTCUSDT" in s.hub.subscriptions["linear"].confirmed)
            await trio.sleep(45.0)  # long enough for several retries of an unknown outcome
            sent = sim.observe.requests("linear", op="subscribe", topic="tickers.BTCUSDT")
            assert len(sent) == 1 and sent[0].success is False
            health = s.stream.health().subscriptions["linear"]
            assert health["confirmed"] == 1 and health["missing"] == [] and health["failed"] == {}


async def test_usdc_pnl_follows_the_8_hourly_settlement(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim = s.sim
            sim.control.open_position("BTCPERP", "Buy", "0.5", entry_price="100000.00")
            await sim.observe.wait_subscribed("linear", ["BTCPERP"])
            sim.control.set_mark_price("BTCPERP", "101000.00")
            moved = await s.log.wait_for(lambda e: e.symbol == "BTCPERP" and e.mark_price == Decimal("101000.00"))
            assert moved.unrealized_pnl == Decimal("500.0000")  # no settlement yet: from the entry

            start = s.log.mark()
            assert [p.symbol for p in sim.control.settle_usdc()] == ["BTCPERP"]  # the 8-hourly timer's work
            settled = await s.log.wait_for(lambda e: e.symbol == "BTCPERP", after=start)
            assert settled.source == "position" and settled.unrealized_pnl == 0  # realised at settlement
            assert settled.entry_price == Decimal("100000")  # avgPrice: since the position opened
            await trio.sleep(0.01)  # a later tick: the settlement record is stamped a millisecond ahead
            sim.control.set_mark_price("BTCPERP", "100500.00")
            after = await s.log.wait_for(lambda e: e.symbol == "BTCPERP" and e.mark_price == Decimal("100500.00"))
            assert after.unrealized_pnl == Decimal("-250.0000")  # since the settlement at 101000
            [view] = s.stream.positions()
            assert (view.entry_price, view.unrealized_pnl) == (Decimal("100000"), Decimal("-250.0000"))


async def test_paging_that_never_ends_costs_a_bounded_snapshot_and_shows_in_health(loopback_clock):
    from hybrid_actors.rest import MAX_REQUESTS_PER_SNAPSHOT
    with trio.fail_after(TEST_TIMEOUT):
        async with running(linear_settle_coins=("USDT",)) as s:
            sim = s.sim
            sim.control.open_position("BTCUSDT", "Buy", "1")
            await s.log.wait_for(lambda e: e.symbol == "BTCUSDT")
            sim.control.set_account(paging="endless")
            before = len(sim.observe.rest_calls("/v5/position/list"))
            s.hub.request_reconcile()
            await eventually(lambda: s.stream.health().events["reconciliations"] >= 1)
            assert len(sim.observe.rest_calls("/v5/position/list")) - before == MAX_REQUESTS_PER_SNAPSHOT
            health = s.stream.health()
            assert "linear/USDT" in health.rest["paging_problems"]
            assert any("REST position/list linear/USDT" in p for p in health.problems)
            assert [p.symbol for p in s.stream.positions()] == ["BTCUSDT"]  # nothing closed, nothing lost

            sim.control.set_account(paging="last_page_cursor")  # the recorded shape: ends by itself
            before = len(sim.observe.rest_calls("/v5/position/list"))
            s.hub.request_reconcile()
            await eventually(lambda: s.stream.health().events["reconciliations"] >= 2)
            assert len(sim.observe.rest_calls("/v5/position/list")) - before == 2
            assert s.stream.health().rest["paging_problems"] == {}


@pytest.mark.parametrize("coins", [("USTD",), ("USDT", "USDCC")])
async def test_a_misspelt_settle_coin_is_a_config_error_not_a_stream_without_those_positions(loopback_clock, coins):
    """``linear_settle_coins=("USTD",)`` is well-formed, so it was accepted: position/list was
    asked for USTD (the simulator answers an empty page; what Bybit answers is not on record,
    so the check must not depend on it), and the stream came up 'live' without the account's
    USDT positions."""
    from hybrid_actors import ConfigError, StreamConfig
    from hybrid_actors.supervisor import open_hybrid_stream
    from hybrid_actors.testing.simulator import open_simulator, trio_wall_clock

    wall = trio_wall_clock()
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(sim_config(wall_clock=wall)) as sim:
            sim.control.open_position("BTCUSDT", "Buy", "1")
            with pytest.raises(ConfigError) as caught:
                config = StreamConfig(credentials=sim.credentials, endpoints=sim.endpoints,
                                      linear_settle_coins=coins)
                async with open_hybrid_stream(config, wall_clock=wall) as stream:
                    pytest.fail(f"started with positions {[p.symbol for p in stream.positions()]}")
            bad = coins[-1]
            assert f"{bad!r} is not a settle coin of Bybit's linear contracts" in str(caught.value)
            assert "USDT, USDC" in str(caught.value)
            assert sim.observe.rest_calls("/v5/position/list") == []  # refused before asking anything
