"""Each fault knob does what it says: dropped sockets (close, FIN, RST, half-open), refused
subscribes and auth, REST errors / 5xx / hangs, injected garbage, handshake refusals and
the connection rate limit, withheld pongs, slow-consumer cut, stopped tickers."""

from __future__ import annotations

import httpx
import orjson
import pytest
import trio
import wsproto
import wsproto.events as wse
from trio_websocket import ConnectionClosed, ConnectionRejected

from conftest import CUSHION_AUTOJUMP
from hybrid_actors.testing.simulator import DropMode, InjectKind, open_simulator
from sim_support import (TEST_TIMEOUT, auth_args, config, connect, future_ms, private_session, recv, recv_control,
                         send)

pytestmark = pytest.mark.integration


async def _subscribed(sim, ws, symbol: str = "BTCUSDT") -> None:
    await send(ws, {"op": "subscribe", "args": [f"tickers.{symbol}"]})
    assert (await recv(ws))["success"] is True
    assert (await recv(ws))["type"] == "snapshot"


class RawClient:
    """A WebSocket client on a bare trio stream (wsproto), to see FIN vs RST on the wire."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)

    @classmethod
    async def open(cls, url: str) -> RawClient:
        host, port_path = url.removeprefix("ws://").split(":")
        port, _, path = port_path.partition("/")
        client = cls(await trio.open_tcp_stream(host, int(port)))
        await client.stream.send_all(client.ws.send(wse.Request(host=host, target=f"/{path}")))
        accepted = False
        while not accepted:
            accepted = any(isinstance(e, wse.AcceptConnection) for e in await client._events())
        return client

    async def _events(self) -> list[wse.Event]:
        data = await self.stream.receive_some(65536)
        self.ws.receive_data(data or None)
        return list(self.ws.events())

    async def read_until_closed(self) -> str:
        """"fin" for an orderly TCP close without a close frame, "rst" for a reset, "close" for a close frame."""
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError as exc:
                assert isinstance(exc.__cause__, ConnectionResetError)
                return "rst"
            if not data:
                return "fin"
            self.ws.receive_data(data)
            if any(isinstance(e, wse.CloseConnection) for e in self.ws.events()):
                return "close"


@pytest.mark.parametrize("mode, seen", [(DropMode.CLOSE, "close"), (DropMode.EOF, "fin"), (DropMode.RESET, "rst")])
async def test_drop_modes_on_the_wire(loopback_clock, mode, seen):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            client = await RawClient.open(sim.url("linear"))
            async with client.stream:
                info = await sim.observe.wait_connection("linear")
                assert sim.control.drop_public("linear", mode) == [info.conn_id]
                assert await client.read_until_closed() == seen
            closed = await sim.observe.wait_closed(info.conn_id)
            assert closed.close_cause == mode.value


async def test_clean_close_carries_the_code_and_only_hits_the_target(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with connect(sim.url("linear")) as linear, connect(sim.url("spot")) as spot, \
                    private_session(sim) as private:
                sim.control.drop_public("linear", code=4000, reason="maintenance")
                with pytest.raises(ConnectionClosed) as closed:
                    await linear.get_message()
                assert (closed.value.reason.code, closed.value.reason.reason) == (4000, "maintenance")
                for ws in (spot, private):
                    await send(ws, {"op": "ping"})
                    await recv(ws)
                sim.control.drop_private(DropMode.EOF)
                with pytest.raises(ConnectionClosed) as cut:
                    await private.get_message()
                assert cut.value.reason.code == 1006
                await send(spot, {"op": "ping"})
                assert (await recv(spot))["ret_msg"] == "pong"


async def test_half_open_stops_sending_and_answering_but_keeps_tcp(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT * 10):
        async with open_simulator(config(half_open_timeout=100.0)) as sim:
            async with connect(sim.url("linear")) as ws:
                await _subscribed(sim, ws)
                (conn_id,) = sim.control.half_open("linear")
                await sim.control.tick()  # data no longer flows
                await send(ws, {"op": "ping", "req_id": "anyone?"})
                start = trio.current_time()
                with trio.move_on_after(30) as silent:
                    await ws.get_message()
                assert silent.cancelled_caught
                with trio.move_on_after(30) as unanswered:
                    await ws.ping(b"protocol-level")
                assert unanswered.cancelled_caught
                assert sim.observe.connection(conn_id).is_open and sim.observe.connection(conn_id).half_open
                # eventually the server gives up on it (half_open_timeout) with a reset
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()
                assert trio.current_time() - start == pytest.approx(100, abs=1)
            assert (await sim.observe.wait_closed(conn_id)).close_cause == "half_open"


async def test_a_half_open_socket_can_then_be_reset(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with private_session(sim) as ws:
                (conn_id,) = sim.control.half_open("private")
                sim.control.open_position("BTCUSDT", "Buy", "0.001")  # not pushed to a dead socket
                sim.control.drop(conn_id, DropMode.RESET)
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()


async def test_rejected_subscribes_then_success(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            sim.control.reject_subscribes("ETHUSDT", 2, ret_msg="error:busy,topic:{topic}")
            async with connect(sim.url("linear")) as ws:
                for _ in range(2):
                    await send(ws, {"op": "subscribe", "args": ["tickers.ETHUSDT", "tickers.BTCUSDT"]})
                    ack = await recv_control(ws)
                    assert (ack["success"], ack["ret_msg"]) == (False, "error:busy,topic:tickers.ETHUSDT")
                    assert sim.observe.subscribed_symbols("linear") == {"BTCUSDT"}  # the other topic went through
                await send(ws, {"op": "subscribe", "args": ["tickers.ETHUSDT"]})
                assert (await recv_control(ws))["success"] is True
                assert sim.observe.subscribed_symbols("linear") == {"BTCUSDT", "ETHUSDT"}
            assert len(sim.observe.requests("linear", op="subscribe", topic="tickers.ETHUSDT")) == 3


async def test_fail_auth_next_n_and_always(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with connect(sim.url("private")) as ws:
                sim.control.fail_auth(2)
                outcomes = []
                for _ in range(3):
                    await send(ws, {"op": "auth", "args": auth_args(sim, future_ms(sim))})
                    outcomes.append((await recv(ws))["success"])
                assert outcomes == [False, False, True]
                sim.control.fail_auth(None)
                for _ in range(3):
                    await send(ws, {"op": "auth", "args": auth_args(sim, future_ms(sim))})
                    assert (await recv(ws))["ret_msg"] == "Params Error"
                sim.control.clear_auth_failures()
                await send(ws, {"op": "auth", "args": auth_args(sim, future_ms(sim))})
                assert (await recv(ws))["success"] is True
            reasons = [a.reason for a in sim.observe.auth_attempts(ok=False)]
            assert reasons == ["forced failure"] * 5


async def test_rest_faults_error_5xx_and_hang(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT * 10):
        async with open_simulator(config()) as sim:
            async with httpx.AsyncClient(base_url=sim.rest_url, timeout=120) as client:
                sim.control.rest_error(10006, "Too many visits!", count=2, path="/v5/market/tickers")
                sim.control.rest_http_error(502)
                sim.control.rest_hang(45.0, path="/v5/market/time")
                time_path, tickers = "/v5/market/time", "/v5/market/tickers?category=linear"
                first = await client.get(tickers)
                assert (first.status_code, first.json()["retCode"], first.json()["retMsg"]) == (
                    200, 10006, "Too many visits!")
                assert first.json()["result"] == {} and isinstance(first.json()["time"], int)
                start = trio.current_time()
                hung = await client.get(time_path)
                assert hung.status_code == 502  # the any-path 502 was armed before the hang: it fires first
                hung = await client.get(time_path)
                assert hung.status_code == 200 and hung.json()["retCode"] == 0
                assert trio.current_time() - start == pytest.approx(45, abs=0.5)
                second = await client.get(tickers)
                assert second.json()["retCode"] == 10006
                assert (await client.get(tickers)).json()["retCode"] == 0
            statuses = [(c.path, c.status, c.ret_code) for c in sim.observe.rest_calls()]
            assert statuses == [("/v5/market/tickers", 200, 10006), ("/v5/market/time", 502, None),
                                ("/v5/market/time", 200, 0), ("/v5/market/tickers", 200, 10006),
                                ("/v5/market/tickers", 200, 0)]


@pytest.mark.parametrize("target", ["linear", "private"])
async def test_injected_garbage_arrives_in_order_and_the_socket_stays_open(loopback_clock, target):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with connect(sim.url(target)) as ws:
                await sim.observe.wait_connection(target)
                for kind, text in ((InjectKind.NON_JSON, None), (InjectKind.MALFORMED, None),
                                   (InjectKind.UNKNOWN_TOPIC, None), (InjectKind.RAW, '{"hello":"world"}'),
                                   (InjectKind.BINARY, None)):
                    assert len(sim.control.inject(kind, target, text=text)) == 1
                assert await ws.get_message() == "this is not JSON"
                malformed = await ws.get_message()
                with pytest.raises(orjson.JSONDecodeError):
                    orjson.loads(malformed)
                assert orjson.loads(await ws.get_message())["topic"] == "mystery.BTCUSDT"
                assert await ws.get_message() == '{"hello":"world"}'
                assert isinstance(await ws.get_message(), bytes)
                await send(ws, {"op": "ping", "req_id": "1"})
                pong = await recv(ws)
                assert pong.get("ret_msg") == "pong" or pong.get("op") == "pong"


async def test_oversized_frame_exceeds_a_one_mib_client_limit(loopback_clock):
    # megabytes through loopback fill socket buffers: the kernel's window updates can lag
    loopback_clock.autojump_threshold = CUSHION_AUTOJUMP
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with connect(sim.url("spot"), max_message_size=1 << 20) as small:
                async with connect(sim.url("spot"), max_message_size=4 << 20) as big:
                    await sim.observe.wait_connection("spot", 2)
                    sim.control.inject("oversized", "spot")
                    frame = await big.get_message()
                    assert len(frame) > 1 << 20 and orjson.loads(frame)["data"]["symbol"] == "BTCUSDT"
                    with pytest.raises(ConnectionClosed) as closed:
                        await small.get_message()
                    assert closed.value.reason.code == 1009


async def test_handshake_refusals_and_the_connection_rate_limit(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT * 20):
        async with open_simulator(config(max_connections_per_window=3, connection_window=300.0)) as sim:
            with pytest.raises(ConnectionRejected) as unknown:
                async with connect(f"{sim.ws_url}/v5/public/spread"):
                    pytest.fail("unknown path accepted")
            assert unknown.value.status_code == 404

            sim.control.reject_connections(2, status=502, target="private")
            for _ in range(2):
                with pytest.raises(ConnectionRejected) as refused:
                    async with connect(sim.url("private")):
                        pytest.fail("refused handshake accepted")
                assert refused.value.status_code == 502
            start = trio.current_time()
            for _ in range(3):
                async with connect(sim.url("linear")) as ws:
                    assert ws.closed is None
            with pytest.raises(ConnectionRejected) as limited:
                async with connect(sim.url("private")):
                    pytest.fail("over the limit")
            assert limited.value.status_code == 429
            await trio.sleep_until(start + 300)
            async with connect(sim.url("private")) as ws:
                assert ws.closed is None  # the window has passed
            sim.control.set_connection_limit(0, status=403)
            with pytest.raises(ConnectionRejected) as banned:
                async with connect(sim.url("spot")):
                    pytest.fail("banned")
            assert banned.value.status_code == 403
            statuses = [h.status for h in sim.observe.handshakes()]
            assert statuses == [404, 502, 502, 101, 101, 101, 429, 101, 403]


async def test_withheld_pongs_are_recorded_and_resume(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            sim.control.withhold_pongs("linear", count=2)
            async with connect(sim.url("linear")) as linear, connect(sim.url("inverse")) as inverse:
                for n in range(3):
                    await send(linear, {"op": "ping", "req_id": str(n)})
                assert (await recv(linear))["req_id"] == "2"  # pings 0 and 1 went unanswered
                await send(inverse, {"op": "ping", "req_id": "i"})
                assert (await recv(inverse))["req_id"] == "i"
                sim.control.withhold_pongs()  # every socket, until resumed
                await send(inverse, {"op": "ping", "req_id": "lost"})
                await sim.observe.wait_pings(2, kind="inverse")
                sim.control.resume_pongs()
                await send(inverse, {"op": "ping", "req_id": "back"})
                assert (await recv(inverse))["req_id"] == "back"
            answered = [(p.kind, p.req_id, p.answered) for p in sim.observe.pings()]
            assert answered == [("linear", "0", False), ("linear", "1", False), ("linear", "2", True),
                                ("inverse", "i", True), ("inverse", "lost", False), ("inverse", "back", True)]


async def test_a_consumer_too_far_behind_is_cut(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config(outbox_limit=5)) as sim:
            async with connect(sim.url("linear")) as ws:
                info = await sim.observe.wait_connection("linear")
                for n in range(10):  # queued faster than any writer can drain: the 6th overflows
                    sim.control.inject(InjectKind.RAW, "linear", text=str(n))
                with pytest.raises(ConnectionClosed):
                    while True:
                        await ws.get_message()
            assert (await sim.observe.wait_closed(info.conn_id)).close_cause == "overflow"


async def test_stopped_ticker_goes_silent_and_catches_up_on_restart(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with connect(sim.url("linear")) as early, connect(sim.url("linear")) as late:
                await _subscribed(sim, early, "ETHUSDT")
                sim.control.stop_ticker("ETHUSDT")
                await send(late, {"op": "subscribe", "args": ["tickers.ETHUSDT"]})
                assert (await recv(late))["success"] is True  # acked, but no snapshot while stopped
                await sim.control.tick()
                sim.control.set_mark_price("ETHUSDT", "3600.01")
                for ws in (early, late):
                    await send(ws, {"op": "ping", "req_id": "q"})
                    assert (await recv(ws))["req_id"] == "q"
                sim.control.start_ticker("ETHUSDT")
                snapshot = await recv(late)
                assert snapshot["type"] == "snapshot" and snapshot["data"]["markPrice"] == "3600.01"
                catch_up = await recv(early)
                assert catch_up["type"] == "delta" and catch_up["data"]["markPrice"] == "3600.01"
                await sim.control.tick()
                assert (await recv(early)) == (await recv(late))


async def test_clear_faults_disarms_every_rule(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            sim.control.fail_auth(None)
            sim.control.reject_subscribes("BTCUSDT", None)
            sim.control.rest_http_error(503, count=None)
            sim.control.reject_connections(None)
            sim.control.withhold_pongs()
            sim.control.clear_faults()
            async with private_session(sim) as private, connect(sim.url("linear")) as linear:
                await _subscribed(sim, linear)
                await send(private, {"op": "ping", "req_id": "p"})
                assert (await recv(private))["req_id"] == "p"
            async with httpx.AsyncClient(base_url=sim.rest_url) as client:
                assert (await client.get("/v5/market/time")).status_code == 200
