"""The private position stream: event-driven pushes to authenticated subscribers only,
full records with seq/updatedTime bumps, and the max_active_time idle cut."""

from __future__ import annotations

from decimal import Decimal

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected

from hybrid_actors.testing.simulator import open_simulator, trio_wall_clock
from sim_support import TEST_TIMEOUT, auth_args, config, connect, future_ms, private_session, recv, send

pytestmark = pytest.mark.integration


async def _assert_quiet(ws) -> None:
    """Nothing is queued for us: a ping's pong is the very next frame."""
    await send(ws, {"op": "ping", "req_id": "quiet?"})
    frame = await recv(ws)
    assert frame.get("op") == "pong" and frame.get("req_id") == "quiet?", frame


async def test_no_snapshot_on_subscribe(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config(positions=3)) as sim:
            assert len(sim.observe.positions(open_only=True)) == 3
            async with private_session(sim) as ws:
                await _assert_quiet(ws)


async def test_pushes_reach_only_authenticated_subscribers_of_the_matching_topic(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with private_session(sim) as everything, \
                    private_session(sim, ("position.inverse",)) as inverse_only, \
                    private_session(sim, ()) as not_subscribed, \
                    connect(sim.url("private")) as anonymous:
                await send(anonymous, {"op": "subscribe", "args": ["position"]})
                assert (await recv(anonymous))["ret_msg"] == "Request not authorized"

                sim.control.open_position("BTCUSDT", "Buy", "0.010")
                push = await recv(everything)
                assert push["topic"] == "position" and push["data"][0]["symbol"] == "BTCUSDT"
                for ws in (inverse_only, not_subscribed, anonymous):
                    await _assert_quiet(ws)

                sim.control.open_position("BTCUSD", "Sell", "250", category="inverse")
                categorised = await recv(inverse_only)
                assert categorised["topic"] == "position.inverse"
                assert (await recv(everything))["topic"] == "position"
                assert categorised["data"] == [r for r in categorised["data"] if r["category"] == "inverse"]


async def test_open_modify_close_bump_seq_and_updated_time(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config(wall_clock=lambda: 1_700_000_000.0)) as sim:
            async with private_session(sim) as ws:
                opened = sim.control.open_position("ETHUSDT", "Sell", "2", entry_price="3400.5", leverage="5")
                records = [(await recv(ws))["data"][0]]
                sim.control.set_mark_price("ETHUSDT", "3300")
                sim.control.modify_position("ETHUSDT", size="1")
                records.append((await recv(ws))["data"][0])
                sim.control.modify_position("ETHUSDT")  # settings-only style re-push
                records.append((await recv(ws))["data"][0])
                sim.control.close_position("ETHUSDT")
                records.append((await recv(ws))["data"][0])

                first, resized, repushed, closed = records
                assert (first["side"], first["size"], first["entryPrice"], first["leverage"]) == (
                    "Sell", "2", "3400.5", "5")
                assert first["seq"] == opened.seq
                assert resized["size"] == "1" and resized["markPrice"] == "3300.00"
                assert Decimal(resized["curRealisedPnl"]) == (Decimal("3400.5") - 3300) * 1  # short gained
                assert Decimal(resized["unrealisedPnl"]) == Decimal("100.5")
                assert repushed["size"] == "1"
                assert (closed["side"], closed["size"], closed["entryPrice"], closed["positionValue"]) == (
                    "", "0", "0", "0")
                seqs = [r["seq"] for r in records]
                updated = [int(r["updatedTime"]) for r in records]
                assert seqs == sorted(seqs) and len(set(seqs)) == 4
                assert updated == sorted(updated) and len(set(updated)) == 4  # even with a frozen clock
                assert {r["createdTime"] for r in records} == {first["createdTime"]}
                assert sim.observe.positions("linear")[0].size == 0


async def test_mixing_all_in_one_and_categorised_topics_is_refused(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with private_session(sim, ()) as ws:
                await send(ws, {"op": "subscribe", "args": ["position", "position.linear"]})
                assert (await recv(ws))["ret_msg"] == "Params Error"
                await send(ws, {"op": "subscribe", "args": ["order"]})
                assert (await recv(ws))["ret_msg"] == "error:handler not found,topic:order"
                await send(ws, {"op": "subscribe", "args": ["position.linear", "position.option"]})
                assert (await recv(ws))["success"] is True
                await send(ws, {"op": "subscribe", "args": ["position.linear"]})
                assert (await recv(ws))["ret_msg"] == "error:already subscribed,topic:position.linear"


async def test_idle_private_socket_is_cut_after_max_active_time(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT * 10):
        async with open_simulator(config()) as sim:
            async with private_session(sim, url=sim.url("private", max_active_time="1m")) as ws:
                start = trio.current_time()
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == 1006  # TCP closed without a close frame
                assert trio.current_time() - start == pytest.approx(60, abs=0.5)
            info = (await sim.observe.wait_until(lambda: [c for c in sim.observe.connections("private")
                                                          if not c.is_open]))[0]
            assert info.close_cause == "idle" and info.max_active_time == 60


async def test_pings_and_pushes_keep_a_private_socket_alive(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT * 10):
        async with open_simulator(config()) as sim:
            async with private_session(sim, url=sim.url("private", max_active_time="30s")) as ws:
                start = trio.current_time()
                for _ in range(3):
                    await trio.sleep(25)
                    await send(ws, {"op": "ping"})
                    assert (await recv(ws))["op"] == "pong"
                await trio.sleep(25)
                sim.control.open_position("XRPUSDT", "Buy", "10")
                await recv(ws)
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()
                assert trio.current_time() - start == pytest.approx(100 + 30, abs=0.5)


async def test_default_idle_cut_is_ten_minutes(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT * 100):
        async with open_simulator(config()) as sim:
            async with private_session(sim) as ws:
                start = trio.current_time()
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()
                assert trio.current_time() - start == pytest.approx(600, abs=0.5)


@pytest.mark.parametrize("value", ["10s", "11m", "soon"])
async def test_out_of_range_max_active_time_is_refused_at_the_handshake(loopback_clock, value):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            with pytest.raises(ConnectionRejected) as rejected:
                async with connect(sim.url("private", max_active_time=value)):
                    pytest.fail("handshake should have been refused")
            assert rejected.value.status_code == 400


async def test_auth_expiry_is_checked_only_at_auth_time(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT * 10):
        async with open_simulator(config(wall_clock=trio_wall_clock())) as sim:
            async with connect(sim.url("private")) as ws:
                expires = future_ms(sim, 1.0)
                await send(ws, {"op": "auth", "args": auth_args(sim, expires)})
                assert (await recv(ws))["success"] is True
                await trio.sleep(5)
                assert sim.config.wall_clock() * 1000 > expires  # the expiry is in the past now
                await send(ws, {"op": "subscribe", "args": ["position"]})
                assert (await recv(ws))["success"] is True
            async with connect(sim.url("private")) as late:
                await send(late, {"op": "auth", "args": auth_args(sim, future_ms(sim, -1.0))})
                assert (await recv(late))["ret_msg"] == "Params Error"


async def test_a_sweep_interval_makes_the_cut_late_like_bybits(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT * 10):
        async with open_simulator(config(idle_sweep_interval=30.0)) as sim:
            await trio.sleep(10)  # be off the sweep grid
            async with private_session(sim, url=sim.url("private", max_active_time="45s")) as ws:
                start = trio.current_time()
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()
                assert 45 <= trio.current_time() - start < 45 + 30
                assert trio.current_time() % 30 == pytest.approx(0, abs=0.5)
