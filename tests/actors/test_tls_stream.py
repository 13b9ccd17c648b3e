"""``hybrid_actors.tls.TlsStream`` (the lean transport's TLS) against a real TLS server on
127.0.0.1: trio's own server-side ``SSLStream`` with a trustme certificate."""

from __future__ import annotations

import ssl
from functools import partial

import pytest
import trio
import trio.testing
import trustme

from hybrid_actors.tls import TlsStream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def contexts():
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def connect(nursery: trio.Nursery, server_ctx, client_ctx, script) -> TlsStream:
    """Serve ``script(ssl_stream, tcp_stream)`` on 127.0.0.1 and return a handshaken client."""

    async def serve(tcp):
        server = trio.SSLStream(tcp, server_ctx, server_side=True)
        await server.do_handshake()
        await script(server, tcp)

    listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    client = TlsStream(await trio.open_tcp_stream("127.0.0.1", port), client_ctx, "127.0.0.1")
    await client.do_handshake()
    return client


async def calls_to_receive(stream: trio.abc.Stream, size: int) -> tuple[int, bytes]:
    received = b""
    calls = 0
    while len(received) < size:
        received += await stream.receive_some(64 * 1024)
        calls += 1
    return calls, received


@pytest.mark.parametrize("client_kind", ["TlsStream", "trio.SSLStream"])
async def test_every_record_one_read_brought_comes_back_from_one_call(loopback_clock, contexts, client_kind):
    """The reason TlsStream exists: trio.SSLStream returns one record (one exchange frame) per call."""
    server_ctx, client_ctx = contexts
    sent = trio.Event()
    frames = [f'{{"topic":"tickers.S{i}","n":{i}}}'.encode() for i in range(50)]

    async def serve(tcp):
        server = trio.SSLStream(tcp, server_ctx, server_side=True)
        await server.do_handshake()
        for frame in frames:
            await server.send_all(frame)  # one TLS record each, as the exchange writes frames
        sent.set()
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
            tcp = await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1])
            if client_kind == "TlsStream":
                client = TlsStream(tcp, client_ctx, "127.0.0.1")
            else:
                client = trio.SSLStream(tcp, client_ctx, server_hostname="127.0.0.1", https_compatible=True)
            await client.do_handshake()
            await sent.wait()
            await trio.testing.wait_all_tasks_blocked()
            calls, received = await calls_to_receive(client, sum(map(len, frames)))
            assert received == b"".join(frames)
            if client_kind == "TlsStream":
                assert calls <= 3  # a read's worth each (the kernel may deliver the segments in steps)
            else:
                assert calls == len(frames)
            nursery.cancel_scope.cancel()


async def test_plaintext_over_max_bytes_stays_for_the_next_call_in_order(loopback_clock, contexts):
    payload = bytes(range(256)) * 400  # 100 KiB: several full records

    async def script(server, tcp):
        await server.send_all(payload)
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            client = await connect(nursery, *contexts, script)
            received = b""
            while len(received) < len(payload):
                chunk = await client.receive_some(7000)
                assert 0 < len(chunk) <= 7000
                received += chunk
            assert received == payload
            with pytest.raises(ValueError):
                await client.receive_some(0)
            nursery.cancel_scope.cancel()


async def test_a_cancelled_receive_loses_nothing(loopback_clock, contexts):
    go = trio.Event()

    async def script(server, tcp):
        await go.wait()
        await server.send_all(b"first")
        await server.send_all(b"second")
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            client = await connect(nursery, *contexts, script)
            with trio.move_on_after(1) as scope:
                await client.receive_some()  # nothing comes: cancelled while waiting on TCP
            assert scope.cancelled_caught
            go.set()
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as scope:
                scope.cancel()  # cancelled before it starts: takes nothing
                await client.receive_some()
            received = b""
            while received != b"firstsecond":
                received += await client.receive_some()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("ending", ["close_notify", "tcp only"])
async def test_the_end_of_the_stream_reads_as_empty(loopback_clock, contexts, ending):
    async def script(server, tcp):
        await server.send_all(b"last words")
        if ending == "close_notify":
            await server.aclose()
        else:  # no close_notify: what many servers do (https-compatible, like trio.SSLStream's mode)
            await tcp.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            client = await connect(nursery, *contexts, script)
            received = b""
            while (chunk := await client.receive_some()) != b"":
                received += chunk
            assert received == b"last words"
            assert await client.receive_some() == b""  # and stays ended
            nursery.cancel_scope.cancel()


async def test_a_corrupt_record_is_a_broken_resource_naming_tls(loopback_clock, contexts):
    async def script(server, tcp):
        # a TLS application-data record header and garbage the cipher cannot authenticate
        await tcp.send_all(b"\x17\x03\x03\x00\x20" + b"\x5a" * 32)
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            client = await connect(nursery, *contexts, script)
            with pytest.raises(trio.BrokenResourceError, match="TLS error") as caught:
                await client.receive_some()
            assert isinstance(caught.value.__cause__, ssl.SSLError)
            nursery.cancel_scope.cancel()


async def test_sends_from_two_tasks_arrive_whole_and_in_order(loopback_clock, contexts):
    received = []

    async def script(server, tcp):
        data = b""
        while len(data) < 2 * 200 * len(b"a0000\n"):
            data += await server.receive_some()
        received.append(data)
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            client = await connect(nursery, *contexts, script)

            async def sender(tag: bytes):
                for i in range(200):
                    await client.send_all(tag + b"%04d" % i + b"\n")

            async with trio.open_nursery() as senders:
                senders.start_soon(sender, b"a")
                senders.start_soon(sender, b"b")
            while not received:
                await trio.sleep(0.01)
            lines = received[0].split(b"\n")[:-1]
            assert [line for line in lines if line.startswith(b"a")] == [b"a%04d" % i for i in range(200)]
            assert [line for line in lines if line.startswith(b"b")] == [b"b%04d" % i for i in range(200)]
            nursery.cancel_scope.cancel()
