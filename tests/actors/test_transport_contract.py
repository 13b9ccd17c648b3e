"""The transport contract (``hybrid_actors/transport.py``'s docstring), one suite run against
both implementations: trio-websocket (the private socket) and the lean websockets-core client
(the public sockets). Servers: trio-websocket on 127.0.0.1 and a raw TCP peer."""

from __future__ import annotations

import socket
import ssl
import struct

import pytest
import trio
import trio.testing
import trustme
from trio_websocket import ConnectionClosed

from hybrid_actors.errors import ConnectionLost, HandshakeError
from transport_support import (
    OP_CLOSE, OP_PING, OP_PONG, OPENERS, close_frame, raw_server, read_until_lost, seconds_to_fail, server_frame,
    start_raw_server, start_ws_server, text, ws_server,
)

pytestmark = pytest.mark.integration


@pytest.fixture(params=sorted(OPENERS))
def opener(request):
    return OPENERS[request.param]


@pytest.fixture
def lean(opener):
    return opener is OPENERS["lean"]


def released(transport) -> bool:
    """The transport's TCP socket is closed (not left in CLOSE_WAIT)."""
    stream = transport._guard.inner if hasattr(transport, "_guard") else transport._stream
    return stream.socket.fileno() == -1


# --- messages ----------------------------------------------------------------------------------

async def test_messages_arrive_in_order_and_batches_cover_a_read(loopback_clock, opener, lean):
    sent = trio.Event()

    async def handler(ws):
        for i in range(200):
            await ws.send_message(f'{{"n":{i}}}')
        await ws.send_message(b"\x00binary")
        sent.set()
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with ws_server(handler) as base:
            async with opener(f"{base}/ok") as transport:
                await sent.wait()
                await trio.testing.wait_all_tasks_blocked()
                batches = []
                while sum(map(len, batches)) < 201:
                    batch = await transport.receive_batch()
                    assert batch  # never empty
                    batches.append(batch)
                received = [m for batch in batches for m in batch]
                assert received == [f'{{"n":{i}}}' for i in range(200)] + [b"\x00binary"]
                if lean:
                    assert len(batches) <= 3  # a read's worth each (the kernel may split the segments)


async def test_sent_frames_reach_the_server_intact_at_every_length_encoding(loopback_clock, opener):
    async def echo(ws):
        while True:
            await ws.send_message(await ws.get_message())

    messages = ["hi", "é€😀", "x" * 126, "y" * 70000]
    with trio.fail_after(10):
        async with ws_server(echo) as base:
            async with opener(f"{base}/ok") as transport:
                for message in messages:
                    await transport.send(message)
                received: list = []
                while len(received) < len(messages):
                    received += await transport.receive_batch()
                assert received == messages


async def test_a_ping_is_answered_while_the_reader_waits(loopback_clock, opener):
    async def handler(ws):
        await ws.ping(b"are you there")  # returns once the matching pong came back
        await ws.send_message("pong seen")
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with ws_server(handler) as base:
            async with opener(f"{base}/ok") as transport:
                assert await transport.receive_batch() == ["pong seen"]


async def test_one_task_sends_while_another_receives_and_answers_pings(loopback_clock, opener):
    got: list[str] = []

    async def handler(ws):
        async def pings():
            for i in range(20):
                await ws.ping(str(i).encode())

        async with trio.open_nursery() as inner:
            inner.start_soon(pings)
            while len(got) < 300:
                got.append(await ws.get_message())
        await ws.send_message("done")
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_ws_server(nursery, handler)
            async with opener(f"{base}/ok") as transport:
                async def writer():
                    for i in range(300):
                        await transport.send(f"m{i}" * 50)

                nursery.start_soon(writer)
                received: list = []
                while "done" not in received:
                    received += await transport.receive_batch()
            nursery.cancel_scope.cancel()
    assert got == [f"m{i}" * 50 for i in range(300)]


# --- cancel safety -------------------------------------------------------------------------------

async def test_a_receive_cancelled_while_the_pong_waits_to_be_written_loses_nothing(loopback_clock, opener):
    """The client's writes are stuck (the peer reads nothing), a read brings a ping and two
    messages, and receive_batch() is cancelled while the pong waits: the messages still come."""
    go = trio.Event()
    pongs: list[bytes] = []

    async def script(peer):
        await peer.handshake()
        await go.wait()
        await peer.stream.send_all(server_frame(OP_PING, b"p") + text("a") + text("b"))
        await trio.sleep(5)  # the client's receive is cancelled meanwhile
        while (frame := await peer.read_frame()) is not None:  # now drain the client's writes
            if frame[0] == OP_PONG:
                pongs.append(frame[1])

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            url = await start_raw_server(nursery, script)
            async with opener(url) as transport:
                flooding = True

                async def flood():
                    while flooding:
                        await transport.send("x" * 65536)

                nursery.start_soon(flood)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # the flood is stuck in a send
                go.set()
                flooding = False  # the send in progress is the last
                with trio.move_on_after(2) as scope:
                    await transport.receive_batch()
                assert scope.cancelled_caught
                received: list = []
                while len(received) < 2:
                    received += await transport.receive_batch()
                assert received == ["a", "b"]
                while not pongs:
                    await trio.sleep(0.1)
                assert pongs == [b"p"]
                transport.abandon()
                nursery.cancel_scope.cancel()


# --- the end of the connection --------------------------------------------------------------------

@pytest.mark.parametrize(("code", "reason"), [(1000, None), (1001, "going away"), (4000, "custom")])
async def test_the_peers_close_code_and_reason_arrive_in_connection_lost(loopback_clock, opener, code, reason):
    async def closer(ws):
        await ws.send_message("last words")
        await ws.aclose(code, reason)

    with trio.fail_after(10):
        async with ws_server(closer) as base:
            holder = []
            with pytest.raises(ConnectionLost) as caught:
                async with opener(f"{base}/ok") as transport:
                    holder.append(transport)
                    assert await transport.receive_batch() == ["last words"]
                    await transport.receive_batch()
            assert (caught.value.code, caught.value.reason) == (code, reason)
            assert released(holder[0])  # closed now, not left in CLOSE_WAIT until garbage collection


def recording_close_codes(codes: list[int], first: str | None = None):
    """A ws_server handler: sends ``first`` (if given), then waits for the client's close frame
    and records its code in ``codes``."""
    async def handler(ws):
        if first is not None:
            await ws.send_message(first)
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            codes.append(exc.reason.code)

    return handler


async def test_an_oversized_message_is_refused_with_1009_on_both_ends(loopback_clock, opener):
    codes: list[int] = []
    with trio.fail_after(10):
        async with ws_server(recording_close_codes(codes, first="x" * 2048)) as base:
            lost, received = await read_until_lost(opener, f"{base}/ok", max_message_size=1024)
            assert (lost.code, received) == (1009, [])
            while not codes:
                await trio.sleep(0.01)
    assert codes == [1009]


@pytest.mark.parametrize("how", ["eof", "reset"])
async def test_a_tcp_end_without_a_close_frame_is_1006(loopback_clock, opener, how):
    async def script(peer):
        await peer.handshake(then=text("one"))
        await trio.testing.wait_all_tasks_blocked()
        if how == "reset":
            peer.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await peer.stream.aclose()

    with trio.fail_after(10):
        async with raw_server(script) as url:
            lost, received = await read_until_lost(opener, url)
    assert (lost.code, received) == (1006, ["one"])


# --- the close handshake --------------------------------------------------------------------------

async def test_leaving_closes_politely_and_waits_for_the_reply(loopback_clock, opener):
    codes: list[int] = []
    with trio.fail_after(10):
        async with ws_server(recording_close_codes(codes)) as base:
            async with opener(f"{base}/ok") as transport:
                pass
            assert codes == [1000]  # the server saw it before we returned
            assert released(transport)


async def test_when_cancelled_the_close_frame_goes_out_without_waiting(loopback_clock, opener):
    codes: list = []

    async def deaf(peer):
        await peer.handshake()
        codes.append(await peer.close_code())
        await trio.sleep_forever()  # never answers

    with trio.fail_after(10):
        async with raw_server(deaf) as url:
            with trio.CancelScope() as scope:
                async with opener(url, close_timeout=5.0):
                    started = trio.current_time()
                    scope.cancel()
                    await trio.sleep_forever()
            assert trio.current_time() - started < 0.5  # not the 5 s close timeout
            while not codes:
                await trio.sleep(0.01)
    assert codes == [1000]


async def test_an_abandoned_peer_gets_neither_a_close_frame_nor_a_wait(loopback_clock, opener):
    ended: list = []

    async def deaf(peer):
        await peer.handshake()
        ended.append(await peer.read_frame())

    with trio.fail_after(10):
        async with raw_server(deaf) as url:
            started = trio.current_time()
            async with opener(url, close_timeout=5.0) as transport:
                transport.abandon()
            assert trio.current_time() - started < 1.0
            while not ended:
                await trio.sleep(0.01)
    assert ended == [None]  # EOF, no close frame


async def test_a_peer_that_never_answers_the_close_costs_close_timeout_at_most(loopback_clock, opener):
    closes: list = []

    async def deaf(peer):
        await peer.handshake()
        closes.append(await peer.read_frame())
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with raw_server(deaf) as url:
            assert 3.0 <= await seconds_to_fail(opener(url, close_timeout=3.0), ConnectionLost, "timed out") < 4.0
            # with an error already on its way out, that error is what the caller sees
            with pytest.raises(KeyError):
                async with opener(url, close_timeout=3.0):
                    raise KeyError("the actor's own failure")
    assert closes == [(OP_CLOSE, (1000).to_bytes(2, "big"))] * 2


# --- the upgrade ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "retry_after"), [(403, 600.0), (429, 300.0), (503, None), (404, None)])
async def test_a_refused_upgrade_carries_its_status_and_the_exchanges_cooldown(loopback_clock, opener, status,
                                                                                retry_after):
    async def script(peer):
        await peer.read_request()
        await peer.stream.send_all(b"HTTP/1.1 %d No\r\nContent-Length: 2\r\n\r\nno" % status)
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with raw_server(script) as url:
            with pytest.raises(HandshakeError, match=f"HTTP {status}") as refused:
                async with opener(url):
                    pass
    assert (refused.value.status, refused.value.retry_after) == (status, retry_after)


HANDSHAKE_FAULTS = {
    "wrong accept": lambda peer: peer.answer(accept=b"bm90IHRoZSByaWdodCB0b2tlbg=="),
    "an extension we did not offer": lambda peer: peer.answer(extra_headers=b"Sec-WebSocket-Extensions: "
                                                                            b"permessage-deflate\r\n"),
    "no upgrade header": lambda peer: b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n",
    "not HTTP": lambda peer: b"SSH-2.0-OpenSSH\r\n\r\n",
    "hang-up": None,
}


@pytest.mark.parametrize("case", sorted(HANDSHAKE_FAULTS))
async def test_a_bad_upgrade_answer_is_a_handshake_error(loopback_clock, opener, case):
    answer = HANDSHAKE_FAULTS[case]

    async def script(peer):
        await peer.read_request()
        if answer is not None:
            await peer.stream.send_all(answer(peer))
            await trio.sleep_forever()
        await peer.stream.aclose()

    with trio.fail_after(10):
        async with raw_server(script) as url:
            with pytest.raises(HandshakeError) as caught:
                async with opener(url, connect_timeout=5.0):
                    pass
    assert caught.value.status is None and caught.value.retry_after is None


async def test_unreachable_silent_and_malformed_endpoints_are_handshake_errors(loopback_clock, opener):
    async def silent(peer):
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with raw_server(silent) as url:
            assert 5.0 <= await seconds_to_fail(opener(url, connect_timeout=5.0), HandshakeError, "within 5s") < 6.0
            listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
            port = listener.socket.getsockname()[1]
            await listener.aclose()  # nothing listens there now
            await seconds_to_fail(opener(f"ws://127.0.0.1:{port}/ok"), HandshakeError, "cannot connect")
            await seconds_to_fail(opener(f"http://127.0.0.1:{port}/ok"), HandshakeError, "not a ws:// or wss:// URL")


# --- TLS ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls():
    """A CA we trust, its certificate for 127.0.0.1, one for another name, and one from a CA we do not trust."""
    ca, stranger = trustme.CA(), trustme.CA()
    contexts = {}
    for name, issuer, identity in (("good", ca, "127.0.0.1"), ("wrong host", ca, "bybit.example"),
                                   ("unknown issuer", stranger, "127.0.0.1")):
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        issuer.issue_cert(identity).configure_cert(server)
        contexts[name] = server
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return contexts, client


async def echo(ws):
    while True:
        await ws.send_message(await ws.get_message())


async def test_wss_verifies_the_certificate_chain_and_the_hostname(loopback_clock, opener, tls):
    servers, client = tls
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_ws_server(nursery, echo, ssl_context=servers["good"])
            async with opener(f"{base}/ok", ssl_context=client) as transport:
                await transport.send("over tls")
                assert await transport.receive_batch() == ["over tls"]
            for case, problem in (("wrong host", "Hostname mismatch|doesn't match|IP address mismatch"),
                                  ("unknown issuer", "unable to get local issuer|certificate verify failed")):
                base = await start_ws_server(nursery, echo, ssl_context=servers[case])
                with pytest.raises(HandshakeError, match=problem):
                    async with opener(f"{base}/ok", ssl_context=client):
                        pass
            # the default context (system trust store) knows none of them
            with pytest.raises(HandshakeError, match="certificate verify failed"):
                async with opener(f"{base}/ok"):
                    pass
            nursery.cancel_scope.cancel()


# --- the lean transport's adaptive coalescing ------------------------------------------------------

async def test_coalescing_waits_at_most_the_window_when_busy_and_not_at_all_when_quiet(loopback_clock):
    from hybrid_actors.lean_transport import open_lean_transport

    burst = [f'{{"n":{i},"pad":"{"x" * 200}"}}' for i in range(20)]  # ~4.5 KB: a busy socket's rate

    async def script(peer):
        await peer.handshake()
        await trio.sleep(0.1)
        await peer.stream.send_all(b"".join(text(m) for m in burst))
        await trio.sleep(0.1)
        await peer.stream.send_all(text("b"))  # few bytes after a busy read: within the window
        await trio.sleep(0.1)
        await peer.stream.send_all(text("c"))
        await trio.sleep(5)  # quiet
        await peer.stream.send_all(text("d"))
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with raw_server(script) as url:
            async with open_lean_transport(url, coalesce=1.0) as transport:
                assert await transport.receive_batch() == burst  # no rate known yet: at once
                first = trio.current_time()
                assert 0.1 <= first < 0.2
                # the burst's rate asks for more bytes than come: one read at the window's end
                assert await transport.receive_batch() == ["b", "c"]
                assert 1.0 <= trio.current_time() - first < 1.1
                assert await transport.receive_batch() == ["d"]
                assert 5.2 <= trio.current_time() - first < 5.3  # at once: a slow rate waits for nothing
                transport.abandon()


async def test_coalescing_wakes_once_enough_bytes_are_queued_not_at_the_windows_end(loopback_clock):
    """A busy socket waits for the bytes three quarters of the window bring at its rate (the
    kernel's low-water mark), so a burst is read as soon as it is there."""
    from hybrid_actors.lean_transport import MAX_LOW_WATER, open_lean_transport

    burst = [f'{{"n":{i},"pad":"{"x" * 200}"}}' for i in range(100)]  # more than MAX_LOW_WATER
    assert sum(map(len, burst)) > MAX_LOW_WATER

    async def script(peer):
        await peer.handshake(then=text("a"))
        await trio.sleep(0.1)
        await peer.stream.send_all(b"".join(text(m) for m in burst))
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with raw_server(script) as url:
            async with open_lean_transport(url, coalesce=1.0) as transport:
                assert await transport.receive_batch() == ["a"]
                first = trio.current_time()
                received = []
                while len(received) < len(burst):
                    received += await transport.receive_batch()
                assert received == burst
                assert trio.current_time() - first < 0.2  # on the bytes, not at the window's end (1 s)
                transport.abandon()


async def test_a_coalescing_read_leaves_no_low_water_mark_behind_for_the_close_handshake(loopback_clock):
    """The kernel's low-water mark is in force only while a coalescing read waits: the peer's
    few-byte close echo (and any read the TLS layer makes on its own) must not wait for a
    burst's worth of bytes."""
    from hybrid_actors.lean_transport import MAX_LOW_WATER, open_lean_transport

    small = [f'{{"n":{i},"pad":"{"x" * 200}"}}' for i in range(20)]
    big = [f'{{"m":{i},"pad":"{"y" * 200}"}}' for i in range(100)]
    assert sum(map(len, big)) > MAX_LOW_WATER
    closed = trio.Event()

    async def script(peer):
        await peer.handshake()
        await trio.sleep(0.1)
        await peer.stream.send_all(b"".join(text(m) for m in small))
        await trio.sleep(0.01)
        await peer.stream.send_all(b"".join(text(m) for m in big))  # wakes the coalescing read
        assert await peer.close_code() == 1000
        await peer.stream.send_all(close_frame(1000))  # 4 bytes: far below any low-water mark
        closed.set()
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with raw_server(script) as url:
            async with open_lean_transport(url, coalesce=1.0, close_timeout=5.0) as transport:
                assert await transport.receive_batch() == small
                received = []
                while len(received) < len(big):
                    received += await transport.receive_batch()
                leaving = trio.current_time()
            await closed.wait()
            assert trio.current_time() - leaving < 1.0  # the echo was read at once, no close timeout
