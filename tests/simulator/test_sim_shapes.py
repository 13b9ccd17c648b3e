"""Every reply the simulator sends has exactly the key set and value types of the matching
recorded frame in tests/vectors, per socket type. Driven by a plain trio-websocket client."""

from __future__ import annotations

import pytest
import trio

from hybrid_actors.testing.simulator import open_simulator
from sim_support import (TEST_TIMEOUT, assert_shape, auth_args, config, connect, future_ms, private_session, recv,
                         send, shape, vector)

pytestmark = pytest.mark.integration

DELTA_ENVELOPE = {"topic", "type", "data", "cs", "ts"}


async def test_linear_and_inverse_acks_pongs_snapshot_and_delta(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            for category, symbol in (("linear", "BTCUSDT"), ("inverse", "BTCUSD")):
                async with connect(sim.url(category)) as ws:
                    await send(ws, {"op": "subscribe", "args": [f"tickers.{symbol}"]})
                    ack = await recv(ws)
                    assert_shape(ack, vector("subscribe_ok.json", 2))
                    assert (ack["success"], ack["ret_msg"], ack["req_id"], ack["op"]) == (True, "", "", "subscribe")

                    snapshot = await recv(ws)
                    assert_shape(snapshot, vector("ticker_linear_snapshot.json", 0))
                    assert snapshot["type"] == "snapshot" and snapshot["topic"] == f"tickers.{symbol}"

                    sim.control.set_mark_price(symbol, sim.observe.mark_price(category, symbol) * 2, category=category)
                    delta = await recv(ws)
                    assert set(delta) == DELTA_ENVELOPE and delta["type"] == "delta"
                    assert shape(delta)["cs"] == "int" and shape(delta)["ts"] == "int"
                    assert set(delta["data"]) <= set(snapshot["data"]) and "markPrice" in delta["data"]
                    assert all(isinstance(v, str) for v in delta["data"].values())
                    assert delta["cs"] > snapshot["cs"]

                    await send(ws, {"op": "ping"})
                    pong = await recv(ws)
                    assert_shape(pong, vector("pong_public.json", 1))
                    assert pong["req_id"] == "" and pong["ret_msg"] == "pong"
                    await send(ws, {"op": "ping", "req_id": "ping-pp"})
                    pong = await recv(ws)
                    assert_shape(pong, vector("pong_public.json", 3))
                    assert pong["req_id"] == "ping-pp"

                    await send(ws, {"op": "unsubscribe", "args": [f"tickers.{symbol}"], "req_id": "3"})
                    unsub = await recv(ws)
                    assert_shape(unsub, vector("subscribe_ok.json", 4))
                    assert (unsub["op"], unsub["req_id"], unsub["success"]) == ("unsubscribe", "3", True)


async def test_spot_ack_pong_and_snapshot(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with connect(sim.url("spot")) as ws:
                await send(ws, {"req_id": "10001", "op": "subscribe", "args": ["tickers.BTCUSDT"]})
                ack = await recv(ws)
                assert_shape(ack, vector("subscribe_ok.json", 1))
                assert ack["ret_msg"] == "subscribe" and ack["req_id"] == "10001"
                snapshot = await recv(ws)
                assert_shape(snapshot, vector("ticker_spot.json", 0))
                sim.control.set_mark_price("BTCUSDT", "90000", category="spot")
                again = await recv(ws)  # spot is snapshot-only
                assert_shape(again, vector("ticker_spot.json", 0))
                assert again["type"] == "snapshot" and again["data"]["lastPrice"] == "90000.00"
                assert again["cs"] >= snapshot["cs"]

                await send(ws, {"req_id": "100001", "op": "ping"})
                pong = await recv(ws)
                assert_shape(pong, vector("pong_public.json", 0))

                await send(ws, {"op": "unsubscribe", "args": ["tickers.BTCUSDT"], "req_id": "u"})
                unsub = await recv(ws)
                assert set(unsub) == set(vector("subscribe_ok.json", 1))
                assert (unsub["op"], unsub["ret_msg"], unsub["success"]) == ("unsubscribe", "unsubscribe", True)


async def test_option_command_resp_pong_and_snapshot(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            symbol = sim.symbols("option")[0]
            async with connect(sim.url("option")) as ws:
                await send(ws, {"op": "subscribe", "args": [f"tickers.{symbol}"]})
                ack = await recv(ws)
                assert_shape(ack, vector("subscribe_ok.json", 3))
                assert ack["data"] == {"failTopics": [], "successTopics": [f"tickers.{symbol}"]}
                snapshot = await recv(ws)
                assert_shape(snapshot, vector("ticker_option.json", 0))
                assert "cs" not in snapshot and snapshot["id"].startswith(f"tickers.{symbol}-")

                await send(ws, {"op": "ping"})
                pong = await recv(ws)
                assert_shape(pong, vector("pong_public.json", 2))
                assert pong["args"][0].isdigit()

                await send(ws, {"op": "unsubscribe", "args": [f"tickers.{symbol}"]})
                unsub = await recv(ws)
                assert_shape(unsub, vector("subscribe_ok.json", 3))
                assert unsub["data"]["successTopics"] == [f"tickers.{symbol}"]


async def test_private_auth_subscribe_pong_push_and_unsubscribe(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with connect(sim.url("private")) as ws:
                await send(ws, {"op": "auth", "args": auth_args(sim, future_ms(sim))})
                assert_shape(await recv(ws), vector("auth_ok.json", 0))
                await send(ws, {"req_id": "r1", "op": "auth", "args": auth_args(sim, future_ms(sim))})
                echoed = await recv(ws)
                assert_shape(echoed, vector("auth_ok.json", 3))
                assert echoed["req_id"] == "r1"

                await send(ws, {"op": "subscribe", "args": ["position"]})
                ack = await recv(ws)
                assert_shape(ack, vector("subscribe_ok.json", 0))

                await send(ws, {"req_id": "test", "op": "ping"})
                pong = await recv(ws)
                assert_shape(pong, vector("pong_private.json", 0))
                assert pong["req_id"] == "test" and pong["op"] == "pong"

                sim.control.open_position("BTCUSDT", "Buy", "0.5")
                push = await recv(ws)
                assert_shape(push, vector("position_push.json", 0))
                sim.control.close_position("BTCUSDT")
                flat = await recv(ws)
                assert_shape(flat, vector("position_push.json", 0))
                assert (flat["data"][0]["side"], flat["data"][0]["size"]) == ("", "0")

                await send(ws, {"op": "unsubscribe", "args": ["position"]})
                unsub = await recv(ws)
                assert set(unsub) == set(vector("subscribe_ok.json", 0)) and unsub["op"] == "unsubscribe"


async def test_error_answers_match_the_recorded_failures(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with connect(sim.url("linear")) as ws:
                await send(ws, {"op": "subscribe", "args": ["tickers.ETHUSDT"], "req_id": "e5"})
                await recv(ws)
                await recv(ws)  # snapshot
                await send(ws, {"op": "subscribe", "args": ["tickers.ETHUSDT"], "req_id": "e6"})
                dup = await recv(ws)
                assert_shape(dup, vector("subscribe_fail.json", 3))
                assert dup["ret_msg"] == "error:already subscribed,topic:tickers.ETHUSDT"
                await send(ws, {"op": "subscribe", "args": ["orderbook.50.NOPEUSDT"], "req_id": "e1"})
                missing = await recv(ws)
                assert_shape(missing, vector("subscribe_fail.json", 2))
                assert missing["ret_msg"] == "error:handler not found,topic:orderbook.50.NOPEUSDT"
            async with connect(sim.url("spot")) as ws:
                await send(ws, {"op": "subscribe", "args": ["tickers.NOPEUSDT"], "req_id": ""})
                invalid = await recv(ws)
                assert_shape(invalid, vector("subscribe_fail.json", 4))
                assert invalid["ret_msg"] == "Invalid symbol :[tickers.NOPEUSDT]"
                await send(ws, {"op": "subscribe", "args": [f"tickers.S{i}" for i in range(11)]})
                too_many = await recv(ws)
                assert_shape(too_many, vector("subscribe_fail.json", 5))
                assert too_many["ret_msg"] == "args size >10"
            async with connect(sim.url("private")) as ws:
                await send(ws, {"op": "subscribe", "args": ["position"]})
                refused = await recv(ws)
                assert_shape(refused, vector("subscribe_fail.json", 6))
                assert refused["ret_msg"] == "Request not authorized"
                await send(ws, {"op": "auth", "args": ["test_key", future_ms(sim), "0" * 64]})
                failed = await recv(ws)
                assert_shape(failed, vector("auth_fail.json", 0))
                assert failed["ret_msg"] == "Params Error" and failed["success"] is False
            assert sim.observe.internal_errors() == []


async def test_pushes_of_every_category_keep_the_recorded_envelope(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with private_session(sim) as ws:
                for category, symbol, size in (("inverse", "BTCUSD", "100"),
                                               ("option", sim.symbols("option")[0], "0.5")):
                    sim.control.open_position(symbol, "Sell", size, category=category)
                    push = await recv(ws)
                    assert set(push) == set(vector("position_push.json", 0))
                    record = push["data"][0]
                    assert record["category"] == category and record["side"] == "Sell"
                    expected = set(vector("position_push.json", 0)["data"][0])
                    if category == "option":
                        expected |= {"delta", "gamma", "vega", "theta"}
                    assert set(record) == expected
