"""Public ticker streams: snapshot then deltas, cs/ts monotonic, mark price agreement,
error acks that leave the socket open, unsubscribe."""

from __future__ import annotations

from decimal import Decimal

import pytest
import trio

from hybrid_actors.testing.simulator import open_simulator
from sim_support import TEST_TIMEOUT, config, connect, recv, recv_control, send

pytestmark = pytest.mark.integration


async def test_stream_is_snapshot_then_partial_deltas_with_monotonic_cs_and_ts():
    # real clock: 100 Hz for a few hundred milliseconds (waiting on I/O, never sleeping)
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config(rate=100.0, symbols=3)) as sim:
            async with connect(sim.url("linear")) as ws:
                await send(ws, {"op": "subscribe", "args": ["tickers.BTCUSDT", "tickers.ETHUSDT"]})
                assert (await recv(ws))["success"] is True
                merged: dict[str, dict[str, str]] = {}
                last: dict[str, tuple[int, int]] = {}
                without_mark = with_mark = 0
                while min(without_mark, with_mark) < 5 or len(merged) < 2:
                    frame = await recv(ws)
                    symbol = frame["data"]["symbol"]
                    if symbol not in merged:
                        assert frame["type"] == "snapshot"
                        merged[symbol] = dict(frame["data"])
                    else:
                        assert frame["type"] == "delta"
                        merged[symbol].update(frame["data"])
                        if "markPrice" in frame["data"]:
                            with_mark += 1
                        else:
                            without_mark += 1
                    cs, ts = frame["cs"], frame["ts"]
                    if symbol in last:
                        assert cs >= last[symbol][0] and ts >= last[symbol][1]
                    last[symbol] = (cs, ts)
                for symbol, fields in merged.items():
                    inst = sim.exchange.market.require("linear", symbol).instrument
                    mark = Decimal(fields["markPrice"])
                    assert mark % inst.tick_size == 0
                    assert len(fields["markPrice"].split(".")[1]) == inst.price_decimals
                    assert Decimal(fields["bid1Price"]) < Decimal(fields["ask1Price"])


async def test_every_mark_change_is_carried_and_many_deltas_omit_it(loopback_clock):
    # rate 0: the test drives the market task's tick itself, one frame per subscribed symbol
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config(mark_move_probability=0.3)) as sim:
            market = sim.exchange.market
            async with connect(sim.url("linear")) as ws:
                await send(ws, {"op": "subscribe", "args": ["tickers.BTCUSDT"]})
                await recv(ws)
                merged = dict((await recv(ws))["data"])
                omitted = 0
                for _ in range(60):
                    before = market.mark_price("linear", "BTCUSDT")
                    await sim.control.tick()
                    delta = (await recv(ws))["data"]
                    merged.update(delta)
                    after = market.mark_price("linear", "BTCUSDT")
                    assert ("markPrice" in delta) == (after != before)
                    assert Decimal(merged["markPrice"]) == after
                    omitted += "markPrice" not in delta
                assert 20 < omitted < 60


async def test_each_new_subscriber_gets_its_own_snapshot(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with connect(sim.url("inverse")) as first, connect(sim.url("inverse")) as second:
                await send(first, {"op": "subscribe", "args": ["tickers.ETHUSD"]})
                await recv(first)
                assert (await recv(first))["type"] == "snapshot"
                await sim.control.tick()
                assert (await recv(first))["type"] == "delta"
                await send(second, {"op": "subscribe", "args": ["tickers.ETHUSD"]})
                await recv(second)
                snapshot = await recv(second)
                assert snapshot["type"] == "snapshot"
                assert snapshot["data"]["markPrice"] == str(sim.observe.mark_price("inverse", "ETHUSD"))
                await sim.control.tick()
                one, two = await recv(first), await recv(second)
                assert one == two and one["type"] == "delta"  # the same frame, encoded once


async def test_duplicate_is_refused_but_the_original_keeps_streaming(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with connect(sim.url("linear")) as ws:
                await send(ws, {"op": "subscribe", "args": ["tickers.BTCUSDT"]})
                await recv(ws)
                await recv(ws)
                await send(ws, {"op": "subscribe", "args": ["tickers.BTCUSDT"], "req_id": "again"})
                dup = await recv(ws)
                assert (dup["success"], dup["ret_msg"], dup["req_id"]) == (
                    False, "error:already subscribed,topic:tickers.BTCUSDT", "again")
                await sim.control.tick()
                assert (await recv(ws))["topic"] == "tickers.BTCUSDT"
                assert sim.observe.subscribed_symbols("linear") == {"BTCUSDT"}


async def test_one_ack_per_frame_names_the_first_bad_topic_and_keeps_the_good_ones(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config(symbols=12)) as sim:
            async with connect(sim.url("linear")) as ws:
                symbols = sim.symbols("linear")
                topics = [f"tickers.{s}" for s in symbols[:11]]  # linear accepts more than 10
                await send(ws, {"op": "subscribe", "args": [*topics, "tickers.NOPE1", "tickers.NOPE2"]})
                ack = await recv_control(ws)
                assert (ack["success"], ack["ret_msg"]) == (False, "error:handler not found,topic:tickers.NOPE1")
                await sim.observe.wait_subscribed("linear", symbols[:11])
                for _ in range(11):  # the snapshots of the good topics
                    assert (await recv(ws))["type"] == "snapshot"


async def test_spot_refuses_more_than_ten_args_entirely_but_accepts_ten(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config(symbols=11)) as sim:
            topics = [f"tickers.{s}" for s in sim.symbols("spot")]
            async with connect(sim.url("spot")) as ws:
                await send(ws, {"op": "subscribe", "args": topics})
                assert (await recv(ws))["ret_msg"] == "args size >10"
                assert sim.observe.subscribed_symbols("spot") == frozenset()
                await send(ws, {"op": "subscribe", "args": topics[:10]})
                assert (await recv(ws))["success"] is True
                assert len(sim.observe.subscribed_symbols("spot")) == 10


async def test_option_lists_failed_topics(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            good = f"tickers.{sim.symbols('option')[1]}"
            async with connect(sim.url("option")) as ws:
                await send(ws, {"op": "subscribe", "args": [good, "tickers.BTC-1JAN20-1-C"]})
                ack = await recv(ws)
                assert ack["success"] is False
                assert ack["data"] == {"failTopics": ["tickers.BTC-1JAN20-1-C"], "successTopics": [good]}
                # a topic it holds: listed under successTopics like every requested topic
                # (BYBIT_V5 section 12), and the original keeps streaming
                await send(ws, {"op": "subscribe", "args": [good]})
                dup = await recv_control(ws)  # skips the snapshot of the first subscribe
                assert dup["success"] is True and dup["data"] == {"failTopics": [], "successTopics": [good]}
                assert sim.observe.subscribed_symbols("option") == {good.removeprefix("tickers.")}


async def test_unsubscribe_stops_the_stream(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with connect(sim.url("linear")) as ws:
                await send(ws, {"op": "subscribe", "args": ["tickers.BTCUSDT", "tickers.ETHUSDT"]})
                await recv(ws)
                await recv(ws)
                await recv(ws)
                await send(ws, {"op": "unsubscribe", "args": ["tickers.BTCUSDT"]})
                assert (await recv(ws))["success"] is True
                await sim.observe.wait_unsubscribed("linear", ["BTCUSDT"])
                for _ in range(3):
                    await sim.control.tick()
                    assert (await recv(ws))["topic"] == "tickers.ETHUSDT"
                assert sim.exchange.market.active_symbols == 1


@pytest.mark.parametrize("category", ["linear", "spot", "option"])
async def test_garbage_from_the_client_gets_an_error_answer_and_the_socket_stays_open(loopback_clock, category):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with connect(sim.url(category)) as ws:
                await ws.send_message("hello")
                answer = await recv(ws)
                assert answer["success"] is False
                assert answer["ret_msg"].startswith("Failed to decode incoming data:readObjectStart: expect { or n, "
                                                    "but found h")
                await ws.send_message(b"\xff\xfe binary")
                assert (await recv(ws))["success"] is False
                await send(ws, "[1, 2]")
                assert "found [" in (await recv(ws))["ret_msg"]
                await send(ws, {"op": "dance", "req_id": "d"})
                invalid = await recv(ws)
                assert (invalid["success"], invalid["ret_msg"], invalid["op"]) == (False, "error:invalid op", "dance")
                await send(ws, {"op": "subscribe", "args": "tickers.BTCUSDT"})
                assert (await recv(ws))["success"] is False
                await send(ws, {"op": "subscribe", "args": [1, None]})
                assert (await recv(ws))["success"] is False
                await send(ws, {"op": "ping"})
                pong = await recv(ws)
                assert pong.get("ret_msg") == "pong" or pong.get("op") == "pong"
            assert sim.observe.internal_errors() == []


async def test_the_market_task_ticks_at_the_configured_rate(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config(rate=2.0)) as sim:
            async with connect(sim.url("linear")) as ws:
                await send(ws, {"op": "subscribe", "args": ["tickers.BTCUSDT"]})
                await recv(ws)
                snapshot = await recv(ws)
                start = trio.current_time()
                for _ in range(4):
                    await recv(ws)
                assert trio.current_time() - start == pytest.approx(2.0, abs=0.51)
                sim.control.set_rate(0)
                sim.control.set_rate(10.0)
                start = trio.current_time()
                for _ in range(5):
                    await recv(ws)
                assert trio.current_time() - start == pytest.approx(0.5, abs=0.11)
                assert snapshot["type"] == "snapshot"
