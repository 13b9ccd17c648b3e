"""Control over HTTP (for other processes), observation and waiting helpers, the scenario."""

from __future__ import annotations

import time

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from hybrid_actors.testing.simulator import ScenarioConfig, open_simulator
from hybrid_actors.testing.simulator.scenario import scenario_step
from sim_support import TEST_TIMEOUT, config, connect, private_session, recv, send

pytestmark = pytest.mark.integration


async def test_control_over_http_drives_the_same_exchange(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with httpx.AsyncClient(base_url=sim.rest_url) as client, private_session(sim) as ws:
                opened = await client.post("/control/open_position",
                                           json={"symbol": "BTCUSDT", "side": "Buy", "size": "0.25"})
                assert opened.status_code == 200 and opened.json()["result"]["size"] == "0.25"
                push = await recv(ws)
                assert (push["data"][0]["symbol"], push["data"][0]["size"]) == ("BTCUSDT", "0.25")

                moved = await client.post("/control/set_mark_price", json={"symbol": "BTCUSDT", "price": "123456.70"})
                assert moved.status_code == 200
                assert str(sim.observe.mark_price("linear", "BTCUSDT")) == "123456.70"

                state = (await client.get("/control/state")).json()
                assert [p["symbol"] for p in state["positions"]] == ["BTCUSDT"]
                assert state["opened"]["private"] == 1
                assert state["connections"][0]["topics"] == ["position"]

                dropped = await client.post("/control/drop_private", json={"mode": "reset"})
                assert dropped.json()["result"] == [state["connections"][0]["conn_id"]]

                for path, body, status in (("/control/open_position", {"symbol": "BTCUSDT"}, 400),
                                           ("/control/open_position", {"symbol": "NOPE", "side": "Buy", "size": "1"}, 400),
                                           ("/control/set_mark_price", {"symbol": "BTCUSDT", "price": "1.01"}, 400),
                                           ("/control/_ex", {}, 404), ("/control/run_scenario", {}, 404),
                                           ("/control/nothing", {}, 404)):
                    answer = await client.post(path, json=body)
                    assert answer.status_code == status, (path, answer.text)
                assert (await client.post("/control/fail_auth", content=b"[1]")).status_code == 400
            assert sim.observe.rest_calls() == []  # control calls are not exchange REST calls


async def test_wait_helpers_follow_state_changes(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with trio.open_nursery() as nursery:
                seen: list[str] = []

                async def watch() -> None:
                    info = await sim.observe.next_connection("linear")
                    seen.append(info.conn_id)
                    await sim.observe.wait_subscribed("linear", ["BTCUSDT", "ETHUSDT"])
                    seen.append("subscribed")
                    await sim.observe.wait_unsubscribed("linear", ["BTCUSDT", "ETHUSDT"])
                    seen.append("unsubscribed")

                nursery.start_soon(watch)
                await trio.testing.wait_all_tasks_blocked()
                version = sim.observe.subscription_version
                async with connect(sim.url("linear")) as ws:
                    await send(ws, {"op": "subscribe", "args": ["tickers.BTCUSDT", "tickers.ETHUSDT"]})
                    assert await sim.observe.wait_subscription_change(version) > version
                    await recv(ws)
                info = await sim.observe.wait_closed(sim.observe.connections("linear")[0].conn_id)
                assert info.close_cause == "peer" and info.topics == frozenset()
            assert seen == [info.conn_id, "subscribed", "unsubscribed"]
            assert sim.observe.opened_count("linear") == 1 and sim.observe.open_connections() == []


async def test_sent_frames_are_logged_with_timestamps_when_asked(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            assert sim.observe.frames_sent() == []
            sim.control.record_frames(3)
            async with connect(sim.url("linear")) as ws:
                await send(ws, {"op": "subscribe", "args": ["tickers.BTCUSDT"]})
                await recv(ws)
                snapshot = await recv(ws)
                for _ in range(3):
                    await sim.control.tick()
                    await recv(ws)
            frames = sim.observe.frames_sent()
            assert len(frames) == 3 and all(f.kind == "linear" and f.time_ns > 0 for f in frames)
            assert [f.at for f in frames] == sorted(f.at for f in frames)
            assert all('"type":"delta"' in f.text for f in frames) and snapshot["type"] == "snapshot"
            sim.control.record_frames(0)
            assert sim.observe.frames_sent() == []


async def test_send_stamps_name_each_ticker_frame_and_stay_bounded(loopback_clock):
    """``stamp_sends``: each frame stamped as it goes to its socket, at most ``limit``;
    ``ticker_send_stamps`` (over HTTP, as bench_stream uses it) names the ticker frames of one
    category by (symbol, ts), in send order, and nothing else (acks, other categories)."""
    def key(message: dict) -> tuple[str, int]:
        return message["topic"][len("tickers."):], message["ts"]

    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with httpx.AsyncClient(base_url=sim.rest_url) as client:
                async def stamps(category: str = "linear") -> list[tuple[str, int]]:
                    answer = await client.post("/control/ticker_send_stamps", json={"category": category})
                    assert answer.status_code == 200, answer.text
                    result = answer.json()["result"]
                    assert [ns for *_key, ns in result] == sorted(ns for *_key, ns in result)  # send order
                    assert all(ns > 0 for *_key, ns in result)
                    return [(symbol, ts) for symbol, ts, _ns in result]

                assert (await client.post("/control/stamp_sends", json={"limit": 100})).status_code == 200
                async with connect(sim.url("linear")) as ws:
                    await send(ws, {"op": "subscribe", "args": ["tickers.BTCUSDT", "tickers.ETHUSDT"]})
                    assert "topic" not in await recv(ws)  # the ack
                    linear = [await recv(ws), await recv(ws)]
                    async with connect(sim.url("inverse")) as other:
                        await send(other, {"op": "subscribe", "args": ["tickers.BTCUSD"]})
                        assert "topic" not in await recv(other)
                        inverse = [await recv(other)]
                        await sim.control.tick()
                        linear += [await recv(ws), await recv(ws)]
                        inverse.append(await recv(other))
                    assert [m["type"] for m in linear] == ["snapshot", "snapshot", "delta", "delta"]
                    assert await stamps() == [key(m) for m in linear]  # no ack, no inverse frame
                    assert await stamps("inverse") == [key(m) for m in inverse]

                    # garbage on the socket is stamped too, but names no ticker frame
                    for garbage in ("malformed", "non_json", "unknown_topic"):
                        sim.control.inject(garbage, "linear")
                        await ws.get_message()
                    assert await stamps() == [key(m) for m in linear]
                    assert len(sim.observe.send_stamps or ()) == 2 + 4 + 2 + 3  # 2 acks, 4 + 2 tickers, garbage

                    await client.post("/control/stamp_sends", json={"limit": 2})  # afresh, and bounded
                    before = time.time_ns()  # the stamps' clock is the wall clock another process reads
                    await sim.control.tick()
                    await sim.control.tick()
                    later = [await recv(ws) for _ in range(4)]
                    after = time.time_ns()
                    assert await stamps() == [key(m) for m in later[:2]]
                    assert all(before <= ns <= after for *_key, ns in sim.observe.send_stamps or ())
                    assert len(sim.observe.send_stamps or ()) == 2
                stopped = await client.post("/control/stamp_sends", json={"limit": 0})
                assert stopped.json()["result"] == 2  # what the log it ended had stamped
                assert await stamps() == [] and sim.observe.send_stamps is None


async def test_a_send_stamp_is_taken_by_the_write_that_carries_the_frame(loopback_clock):
    """The stamp is the start of the frame's own write: not when the writer took the frame
    (trio-websocket's send lock yields before the write, and another task may run for
    milliseconds then), and not a pong's write that got the lock first."""
    from hybrid_actors.testing.simulator.server import SimStream

    with trio.fail_after(TEST_TIMEOUT):
        left, right = trio.socket.socketpair()
        stream = SimStream(trio.SocketStream(left), "t1", ("127.0.0.1", 1))
        log: list[tuple[str, str, int]] = []
        frame = '{"topic":"tickers.BTCUSDT","ts":1}'
        stream.stamp_next = (log, "linear", frame, frame.encode())
        await stream.send_all(b"\x8a\x04pong")  # another frame's write: no stamp taken
        assert log == [] and stream.stamp_next is not None
        before = time.time_ns()
        await stream.send_all(b"\x81\x23" + frame.encode())
        assert [(kind, text) for kind, text, _ns in log] == [("linear", frame)] and stream.stamp_next is None
        assert before <= log[0][2] <= time.time_ns()
        await stream.send_all(b"\x81\x23" + frame.encode())  # taken once
        assert len(log) == 1
        await stream.aclose()
        right.close()


async def test_scenario_opens_resizes_and_closes_positions_over_time(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT * 10):
        scenario = ScenarioConfig(seed=3, min_interval=1.0, max_interval=2.0, max_open=4,
                                  categories=("linear", "inverse"))
        async with open_simulator(config(scenario=scenario)) as sim:
            async with private_session(sim) as ws:
                changes = [(await recv(ws))["data"][0] for _ in range(15)]
            assert trio.current_time() >= 15
            kinds = {("close" if r["size"] == "0" else "live") for r in changes}
            assert kinds == {"close", "live"}
            assert {r["category"] for r in changes} == {"linear", "inverse"}
            assert len(sim.observe.positions(open_only=True)) <= 4


async def test_scenario_steps_are_deterministic_for_a_seed():
    import random

    from hybrid_actors.testing.simulator.exchange import Exchange

    def run(seed: int) -> tuple[list[str], list[tuple[str, str, str, str]]]:
        """The actions taken and the positions they left (which symbols, sides and sizes)."""
        ex = Exchange.create(config(), 1)
        rng = random.Random(seed)
        actions = [scenario_step(ex, ScenarioConfig(max_open=3), rng) for _ in range(30)]
        return actions, [(p.category, p.symbol, p.side, str(p.size)) for p in ex.book.all()]

    first = run(5)
    assert run(5) == first  # a fresh exchange and the same seed: the same steps, the same book
    assert run(6) != first  # and the seed is what decides them
    assert set(first[0]) >= {"open", "close"} and first[1]


async def test_leaving_the_block_closes_open_sockets_with_1001(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        leave = trio.Event()

        async def serve(*, task_status=trio.TASK_STATUS_IGNORED):
            async with open_simulator(config()) as sim:
                task_status.started(sim)
                await leave.wait()

        async with trio.open_nursery() as nursery:
            sim = await nursery.start(serve)
            async with connect(sim.url("linear")) as ws:
                await sim.observe.wait_connection("linear")
                leave.set()
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == 1001
        info = sim.observe.connections("linear")[0]
        assert info.close_cause == "shutdown"


async def test_prices_given_as_floats_are_refused(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            with pytest.raises(ValueError, match="float"):
                sim.control.set_mark_price("BTCUSDT", 100000.5)
            with pytest.raises(ValueError, match="tick"):
                sim.control.set_mark_price("BTCUSDT", "100000.55")
            with pytest.raises(KeyError):
                sim.control.set_mark_price("NOPE", "1")
            sim.control.set_mark_price("BTCUSDT", 100001)
            assert str(sim.observe.mark_price("linear", "BTCUSDT")) == "100001.00"
