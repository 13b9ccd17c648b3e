"""What the asyncio handler sees, under both hosts, against the simulator on loopback:
Decimal prices at the simulator's rate; a new position within a second (and ``async with``
leaving nothing behind); a raising handler
counted while the stream goes on; a slow handler that sees conflated prices but every
lifecycle event in order, without holding up other positions."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any

import pytest

from bridge_support import (HOSTS, Leftovers, Recorder, assert_nothing_left, control, open_linear_positions,
                            run_on, set_marks, simulator, wait_subscribed, wait_until)
from hybrid_actors import BybitHybridStream

pytestmark = pytest.mark.system
__all__ = ["simulator"]  # the fixture, imported

KEYS = {"event", "symbol", "category", "side", "size", "entry_price", "mark_price", "unrealized_pnl", "position_idx",
        "source", "exchange_ts", "received_ts", "leverage", "liq_price", "take_profit", "stop_loss", "trailing_stop",
        "cum_realised_pnl", "created_time", "updated_time", "mark_age_ms"}
RATE = 20.0  # simulator ticks per second per subscribed symbol



@pytest.mark.parametrize("host", HOSTS)
def test_events_carry_decimals_and_keep_flowing_at_the_simulators_rate(host, simulator):
    sim = simulator(rate=RATE)
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]

    async def main() -> None:
        await open_linear_positions(sim, symbols)
        handler = Recorder()
        async with BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs()) as stream:
            await wait_subscribed(stream, 3)
            loop = asyncio.get_running_loop()
            start, first = loop.time(), handler.mark()

            def per_symbol() -> dict[str, int]:
                got = handler.events[first:]
                return {s: sum(1 for _, d in got if d["symbol"] == s and d["source"] == "ticker") for s in symbols}

            # the simulator sets the pace: wait for price events from every symbol, not for a time
            await wait_until(lambda: min(per_symbol().values()) >= 3, what="three price events of every symbol")
            elapsed = loop.time() - start
            got, counts = handler.events[first:], per_symbol()
            health = stream.health()
        names = {name for name, _ in got}
        assert names == {"position.update"}
        for _, data in got:
            assert set(data) == KEYS
            assert type(data["mark_price"]) is Decimal and type(data["size"]) is Decimal
            assert type(data["entry_price"]) is Decimal and type(data["unrealized_pnl"]) is Decimal
        # Each tick moves a mark with probability 0.3: ~6 moves/s per symbol at 20 Hz. Demand a
        # quarter of that from every symbol, and never more price events than ticks.
        for symbol, count in counts.items():
            assert RATE * 0.3 * elapsed / 4 <= count <= RATE * elapsed + 2, (symbol, count, elapsed)
        assert health.events["handler_errors"] == 0 and health.events["bridge_conflated"] == 0

    run_on(host, main)


@pytest.mark.parametrize("host", HOSTS)
def test_a_position_opened_in_the_simulator_reaches_the_handler_within_a_second(host, simulator):
    sim = simulator(rate=RATE)

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT"])
        before = Leftovers.take()
        handler = Recorder()
        async with BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs()) as stream:
            assert stream.running
            loop = asyncio.get_running_loop()
            mark = handler.mark()
            opened_at = loop.time()
            await control(sim, "open_position", symbol="ETHUSDT", side="Sell", size="2")
            name, data = await handler.wait_for(lambda n, d: d["symbol"] == "ETHUSDT", after=mark, timeout=1.0)
            assert loop.time() - opened_at < 1.0
            assert name == "position.update" and data["side"] == "Sell" and data["size"] == Decimal(2)
            assert type(data["mark_price"]) is Decimal and data["source"] in ("position", "rest")
            assert "ETHUSDT" in {p.symbol for p in stream.positions()}
            # and its ticker follows
            await handler.wait_for(lambda n, d: d["symbol"] == "ETHUSDT" and d["source"] == "ticker", after=mark)
            mark = handler.mark()
            await control(sim, "close_position", symbol="ETHUSDT")
            name, data = await handler.wait_for(lambda n, d: d["symbol"] == "ETHUSDT" and n == "position.closed",
                                                after=mark, timeout=1.0)
            assert data["size"] == 0
        assert stream.state == "stopped"  # by the async with
        await stream.stop()
        await assert_nothing_left(before, host)

    run_on(host, main)


@pytest.mark.parametrize("host", HOSTS)
def test_a_raising_handler_is_logged_counted_and_the_stream_goes_on(host, simulator, caplog):
    sim = simulator(rate=0)  # prices move only when the test says so
    caplog.set_level(logging.ERROR, logger="hybrid_actors.bridge")

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT", "ETHUSDT", "SOLUSDT"])
        good = Recorder()
        raised = 0

        async def handler(name: str, data: dict[str, Any]) -> None:
            nonlocal raised
            if name.startswith("stream."):
                return
            if data["symbol"] == "BTCUSDT":  # fails at once
                raised += 1
                raise ValueError(f"bad handler on {data['symbol']}")
            if data["symbol"] == "ETHUSDT":  # fails after waiting for something
                await asyncio.sleep(0)
                raised += 1
                raise KeyError("missing")
            good.record(name, data)

        stream = BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs())
        await stream.start()
        try:
            await wait_subscribed(stream, 3)
            for step in range(1, 4):
                await set_marks(sim, ("BTCUSDT", "ETHUSDT", "SOLUSDT"), 1000 + step)
                await good.wait_for(lambda n, d, p=Decimal(1000 + step): d["mark_price"] == p)
            await wait_until(lambda: raised >= 8, what="the failing calls")  # 2 symbols x (snapshot + 3 prices)
            assert stream.running and stream.handler_errors == raised
            health = stream.health()
            assert health.status == "ok" and health.events["handler_errors"] == raised
            assert [d["mark_price"] for _, d in good.of("SOLUSDT") if d["source"] == "ticker"][-3:] == [
                Decimal(1001), Decimal(1002), Decimal(1003)]
        finally:
            await stream.stop()
        return raised

    raised = run_on(host, main)
    failures = [r for r in caplog.records if r.name == "hybrid_actors.bridge" and "event handler raised" in r.getMessage()]
    assert len(failures) == min(raised, 10)  # the first ten per minute with a traceback
    assert any("BTCUSDT" in r.getMessage() and r.exc_info[0] is ValueError for r in failures)
    assert any("ETHUSDT" in r.getMessage() and r.exc_info[0] is KeyError for r in failures)
    assert all(sim.api_secret not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("host", HOSTS)
def test_a_plain_def_handler_raising_stopiteration_is_logged_and_counted(host, simulator, caplog):
    """``next()`` on an exhausted iterator in a plain ``def`` handler is a bug like any other,
    not a coroutine finishing: it must not vanish unlogged and uncounted."""
    sim = simulator(rate=0)
    caplog.set_level(logging.ERROR, logger="hybrid_actors.bridge")

    async def main() -> int:
        await open_linear_positions(sim, ["BTCUSDT", "ETHUSDT"])
        good = Recorder()
        raised = 0

        def handler(name: str, data: dict[str, Any]) -> None:
            nonlocal raised
            if name == "position.update" and data["symbol"] == "BTCUSDT":
                raised += 1
                next(iter(()))  # no matching order: StopIteration
            good.record(name, data)

        async with BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs()) as stream:
            await good.wait_for(lambda n, d: d["symbol"] == "ETHUSDT")
            await wait_until(lambda: raised >= 1, what="the BTCUSDT call")
            assert stream.handler_errors == raised and stream.health().events["handler_errors"] == raised
        return raised

    raised = run_on(host, main)
    failures = [r for r in caplog.records if "event handler raised" in r.getMessage()]
    assert len(failures) == raised and all(r.exc_info[0] is StopIteration for r in failures)
    assert all("BTCUSDT" in r.getMessage() for r in failures)


@pytest.mark.parametrize("host", HOSTS)
def test_a_slow_handler_sees_conflated_prices_but_every_lifecycle_event_in_order(host, simulator):
    """BTCUSDT's handler is stuck while its prices and lifecycle events pile up; ETHUSDT's
    prices keep arriving meanwhile. The lanes fill up (event_buffer=2) and the stream holds
    the rest back. When it resumes, BTCUSDT sees the latest price between lifecycle events
    and every lifecycle event, in order, one call at a time."""
    sim = simulator(rate=0)

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT", "ETHUSDT"])
        seen = Recorder()
        gate = asyncio.Event()
        in_flight: dict[str, int] = {}
        overlaps: list[str] = []

        async def handler(name: str, data: dict[str, Any]) -> None:
            symbol = data["symbol"]
            in_flight[symbol] = in_flight.get(symbol, 0) + 1
            if in_flight[symbol] > 1:
                overlaps.append(symbol)
            try:
                seen.record(name, data)
                if symbol == "BTCUSDT":
                    await gate.wait()
            finally:
                in_flight[symbol] -= 1

        async def push(symbol: str, price: int) -> None:
            await control(sim, "set_mark_price", symbol=symbol, price=str(price))

        async def btc_size_is(size: str | None) -> None:
            def check() -> bool:
                sizes = {p.symbol: p.size for p in stream.positions()}
                return sizes.get("BTCUSDT") == (None if size is None else Decimal(size))
            await wait_until(check, what=f"BTCUSDT size {size}")

        # event_buffer=2: at most two lifecycle events wait in the lanes; the third waits upstream
        stream = BybitHybridStream(sim.api_key, sim.api_secret, handler, event_buffer=2, **sim.stream_kwargs())
        await stream.start()
        try:
            await wait_subscribed(stream, 2)
            await seen.wait_for(lambda n, d: d["symbol"] == "BTCUSDT")  # ...and now it is stuck
            for price in range(2001, 2006):
                await push("BTCUSDT", price)
            await push("ETHUSDT", 3001)
            await seen.wait_for(lambda n, d: d["mark_price"] == Decimal(3001))  # not held up by BTCUSDT
            await control(sim, "modify_position", symbol="BTCUSDT", size="2")
            await btc_size_is("2")
            for price in range(2011, 2014):
                await push("BTCUSDT", price)
            await push("ETHUSDT", 3002)
            await seen.wait_for(lambda n, d: d["mark_price"] == Decimal(3002))
            await control(sim, "modify_position", symbol="BTCUSDT", size="3")
            await btc_size_is("3")
            await control(sim, "close_position", symbol="BTCUSDT")
            await btc_size_is(None)
            assert len(seen.of("BTCUSDT")) == 1  # still stuck in its first call
            health = stream.health()
            assert health.events["bridge_lifecycle_queued"] == 2  # full: the close waits in the stream
            assert health.status == "degraded" and any("handler is behind" in p for p in health.problems)
            gate.set()  # room frees up, the bridge wakes the trio side, the close comes through
            await seen.wait_for(lambda n, d: d["symbol"] == "BTCUSDT" and n == "position.closed")
        finally:
            await stream.stop()
        btc = [(name, data["source"], data["size"], data["mark_price"]) for name, data in seen.of("BTCUSDT")]
        assert btc[1:] == [
            ("position.update", "ticker", Decimal(1), Decimal(2005)),  # 2001..2004 conflated away
            ("position.update", "position", Decimal(2), Decimal(2005)),
            ("position.update", "ticker", Decimal(2), Decimal(2013)),  # 2011, 2012 conflated away
            ("position.update", "position", Decimal(3), Decimal(2013)),
            ("position.closed", "position", Decimal(0), Decimal(2013)),
        ], btc
        assert overlaps == []
        received = [data["received_ts"] for _, data in seen.of("BTCUSDT")]
        assert received == sorted(received)

    run_on(host, main)


@pytest.mark.parametrize("host", HOSTS)
def test_a_handler_that_cancels_its_own_task_does_not_stop_delivery(host, simulator, caplog):
    """Fast handlers run inside the shared delivery task; one that cancels "its" task must
    not silence every other position."""
    sim = simulator(rate=0)

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT", "ETHUSDT"])
        good = Recorder()
        sabotaged = 0

        async def handler(name: str, data: dict[str, Any]) -> None:
            nonlocal sabotaged
            if data["symbol"] == "BTCUSDT" and sabotaged < 3:
                sabotaged += 1
                asyncio.current_task().cancel()
                return
            good.record(name, data)

        stream = BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs())
        await stream.start()
        try:
            await wait_subscribed(stream, 2)
            for step in range(1, 6):
                await set_marks(sim, ("BTCUSDT", "ETHUSDT"), 2000 + step)
                await good.wait_for(lambda n, d, p=Decimal(2000 + step): d["symbol"] == "ETHUSDT"
                                    and d["mark_price"] == p)
            await good.wait_for(lambda n, d: d["symbol"] == "BTCUSDT" and d["mark_price"] == Decimal(2005))
            assert sabotaged == 3 and stream.running
        finally:
            await stream.stop()

    run_on(host, main)
    assert any("delivery task was cancelled" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("host", HOSTS)
def test_stream_notices_reach_the_handler_in_order_with_event_in_the_data(host, simulator):
    from hybrid_actors.notices import StreamAlert, StreamRollback, StreamState

    sim = simulator(rate=0.0)
    notices = [StreamRollback("divergence", 1), StreamAlert("warning", "lag", "slow", 3, 2, "firing", 2),
               StreamState("degraded", "public:linear disconnected", {"private": True, "public:linear": False}, 3)]

    async def main() -> None:
        handler = Recorder()
        async with BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs()) as stream:
            hub = stream._stream.hub  # the trio side's; notices are queued from trio, like the actors do
            for notice in notices:
                stream._token.run_sync_soon(hub.emit_notice, notice)
            await handler.wait_for_state("degraded")
            got = [(name, data) for name, data in handler.notices if data["ts"] in (1, 2, 3)]
        assert got == [(n.event, n.as_dict()) for n in notices]
        assert all(data["event"] == name for name, data in got)
        assert stream.handler_errors == 0

    run_on(host, main)
