"""Issue 8, defects 5 and 6 end to end: a Classic account's stream, and a snapshot that is
authoritative only for the settle coins it asked for."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
import trio

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
    with trio.fail_after(TEST_TIMEOUT * 5):
        async with running(linear_settle_coins=("USDT",), reconcile_interval=30.0) as s:
            s.sim.control.open_position("BTCPERP", "Buy", "0.2")  # settled in USDC: outside the config
            s.sim.control.open_position("ETHUSDT", "Sell", "1")
            await s.log.wait_for(lambda e: e.symbol == "BTCPERP")
            await s.log.wait_for(lambda e: e.symbol == "ETHUSDT")
            for _ in range(2):  # two reconciliations (and a reconnect snapshot)
                done = s.stream.health().events["reconciliations"]
                await eventually(lambda d=done: s.stream.health().events["reconciliations"] > d)
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
