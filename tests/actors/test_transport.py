"""The batch transport against a real trio-websocket server on 127.0.0.1."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, serve_websocket

from hybrid_actors.errors import ConnectionLost, HandshakeError
from hybrid_actors.transport import open_transport

pytestmark = pytest.mark.integration


async def start_server(nursery, handler):
    async def accept(request):
        if request.path != "/ok":
            await request.reject(404)
            return
        await handler(await request.accept())

    server = await nursery.start(serve_websocket, accept, "127.0.0.1", 0, None)
    return f"ws://127.0.0.1:{server.port}"


async def test_everything_that_arrived_comes_as_one_batch_in_order(loopback_clock):
    sent = trio.Event()

    async def handler(ws):
        for i in range(200):
            await ws.send_message(f'{{"n":{i}}}')
        sent.set()
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, handler)
            async with open_transport(f"{base}/ok") as transport:
                await sent.wait()
                await trio.testing.wait_all_tasks_blocked()
                received: list = []
                batches = 0
                while len(received) < 200:
                    received += await transport.receive_batch()
                    batches += 1
                assert received == [f'{{"n":{i}}}' for i in range(200)]
                assert batches < 20  # not one wakeup per message
            nursery.cancel_scope.cancel()


async def test_leaving_closes_politely_even_when_cancelled(loopback_clock):
    codes: list[int] = []

    async def handler(ws):
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            codes.append(exc.reason.code)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, handler)
            with trio.CancelScope() as scope:
                async with open_transport(f"{base}/ok"):
                    scope.cancel()
                    await trio.sleep_forever()
            while not codes:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert codes == [1000]


async def test_an_abandoned_peer_gets_no_close_wait(loopback_clock):
    async def deaf(ws):
        await trio.sleep_forever()  # never reads, never answers the close handshake

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, deaf)
            started = trio.current_time()
            async with open_transport(f"{base}/ok", close_timeout=5.0) as transport:
                transport.abandon()
            assert trio.current_time() - started < 1.0
            nursery.cancel_scope.cancel()


async def test_an_oversized_frame_is_refused_with_1009(loopback_clock):
    async def handler(ws):
        await ws.send_message("x" * 2048)
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, handler)
            with pytest.raises(ConnectionLost) as caught:
                async with open_transport(f"{base}/ok", max_message_size=1024) as transport:
                    await transport.receive_batch()
            assert caught.value.code == 1009
            nursery.cancel_scope.cancel()


async def test_refused_and_unreachable_handshakes_are_handshake_errors(loopback_clock):
    async def handler(ws):
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, handler)
            with pytest.raises(HandshakeError, match="HTTP 404"):
                async with open_transport(f"{base}/nope"):
                    pass
            listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
            port = listener.socket.getsockname()[1]
            await listener.aclose()  # nothing listens there now
            with pytest.raises(HandshakeError, match="cannot connect"):
                async with open_transport(f"ws://127.0.0.1:{port}/ok"):
                    pass
            nursery.cancel_scope.cancel()


async def test_stopping_does_not_wait_for_a_close_reply_nobody_can_read(loopback_clock):
    codes: list[int] = []

    async def handler(ws):
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            codes.append(exc.reason.code)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, handler)
            with trio.CancelScope() as scope:
                async with open_transport(f"{base}/ok", close_timeout=5.0):
                    started = trio.current_time()
                    scope.cancel()
                    await trio.sleep_forever()
            assert trio.current_time() - started < 0.5  # not the 5 s close timeout
            while not codes:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert codes == [1000]  # the close frame still went out


async def test_a_socket_the_peer_closed_is_released_at_once(loopback_clock):
    async def closer(ws):
        await ws.aclose(1000)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, closer)
            holder = []
            with pytest.raises(ConnectionLost):
                async with open_transport(f"{base}/ok") as transport:
                    holder.append(transport)  # keep the connection object alive on purpose
                    await transport.receive_batch()
            # our end is closed now, not left in CLOSE_WAIT until garbage collection
            assert holder[0]._ws._stream.socket.fileno() == -1
            nursery.cancel_scope.cancel()
