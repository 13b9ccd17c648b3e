"""The lean transport: its frame parser fed directly (hypothesis), then the whole client
against a real trio-websocket server on 127.0.0.1, and against a raw TCP peer that writes
frames trio-websocket would never send (violations, fragments, split reads)."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import socket
import ssl
import struct
import subprocess
from functools import partial

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, serve_websocket

from hybrid_actors.errors import ConnectionLost, HandshakeError
from hybrid_actors.lean_transport import (
    ACCEPT_GUID, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, FrameParser, client_frame,
    mask, open_lean_transport,
)

pytestmark = pytest.mark.integration


# --- frames as a server writes them ------------------------------------------------------

def server_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
                 mask_key: bytes | None = None) -> bytes:
    """One frame as a server sends it (unmasked), or deliberately wrong (RSV bits, a mask)."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    size = len(payload)
    masked = 0x80 if mask_key is not None else 0
    if size < 126:
        header = bytes((first, masked | size))
    elif size < 1 << 16:
        header = bytes((first, masked | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((first, masked | 127)) + size.to_bytes(8, "big")
    if mask_key is not None:
        return header + mask_key + mask(payload, mask_key)
    return header + payload


def text(message: str) -> bytes:
    return server_frame(OP_TEXT, message.encode())


def close_frame(code: int, reason: str = "") -> bytes:
    return server_frame(OP_CLOSE, code.to_bytes(2, "big") + reason.encode())


def unmask_client_frame(data: bytes) -> tuple[int, bytes, int]:
    """(opcode, payload, frame length) of one whole client frame at the start of ``data``."""
    assert data[0] & 0x80, "we only send final frames"
    assert data[1] & 0x80, "client frames must be masked"
    size, at = data[1] & 0x7F, 2
    if size == 126:
        size, at = int.from_bytes(data[2:4], "big"), 4
    elif size == 127:
        size, at = int.from_bytes(data[2:10], "big"), 10
    key = data[at:at + 4]
    body = data[at + 4:at + 4 + size]
    return data[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(body)), at + 4 + size


# --- the parser, fed directly ---------------------------------------------------------------

MESSAGES = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    # 16- and 64-bit lengths, multi-byte characters that fragments and reads will cut apart
    st.builds(lambda char, count: char * count, st.sampled_from(["a", "é", "€", "😀"]),
              st.sampled_from([126, 20000, 70000])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(MESSAGES, max_size=8), data=st.data())
def test_any_fragmentation_and_any_read_chunking_decode_to_the_same_messages(messages, data):
    wire = bytearray()
    pings: list[bytes] = []
    for message in messages:
        payload = message.encode() if isinstance(message, str) else message
        cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=3), label="fragment cuts"))
        bounds = [0, *cuts, len(payload)]
        pieces = [payload[a:b] for a, b in zip(bounds, bounds[1:])]
        for index, piece in enumerate(pieces):
            opcode = (OP_TEXT if isinstance(message, str) else OP_BINARY) if index == 0 else OP_CONTINUATION
            wire += server_frame(opcode, piece, fin=index == len(pieces) - 1)
            if data.draw(st.booleans(), label="a ping or pong after this frame"):
                ping = data.draw(st.binary(max_size=125), label="control payload")
                if data.draw(st.booleans(), label="ping, not pong"):
                    wire += server_frame(OP_PING, ping)
                    pings.append(ping)
                else:
                    wire += server_frame(OP_PONG, ping)
    chunk_cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=30),
                                      label="read boundaries")))
    bounds = [0, *[c for c in chunk_cuts if c < len(wire)], len(wire)]
    parser = FrameParser()
    decoded: list[str | bytes] = []
    for a, b in zip(bounds, bounds[1:]):
        if b > a:  # an empty read is EOF, never fed
            decoded += parser.feed(bytes(wire[a:b]))
    assert decoded == messages
    assert parser.pings == pings
    assert parser.close is None and parser.failure is None


@given(payload=st.binary(max_size=600), key=st.binary(min_size=4, max_size=4))
def test_mask_is_the_bytewise_xor_with_the_repeated_key(payload, key):
    assert mask(payload, key) == bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert mask(mask(payload, key), key) == payload


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_client_frames_are_masked_with_the_shortest_length_encoding(size):
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    frame = client_frame(OP_TEXT, payload)
    opcode, body, length = unmask_client_frame(frame)
    assert (opcode, body, length) == (OP_TEXT, payload, len(frame))
    header = 2 if size < 126 else 4 if size < 65536 else 10
    assert len(frame) == header + 4 + size
    keys = {client_frame(OP_TEXT, payload)[header:header + 4] for _ in range(3)}
    assert len(keys) == 3  # a fresh random key per frame


PARSER_REFUSALS = {
    "a masked frame": (server_frame(OP_TEXT, b"hi", mask_key=b"abcd"), 1002),
    "RSV1 without an extension": (server_frame(OP_TEXT, b"hi", rsv=4), 1002),
    "RSV3 without an extension": (server_frame(OP_BINARY, b"hi", rsv=1), 1002),
    "opcode 3": (server_frame(3, b"hi"), 1002),
    "opcode 0xB": (server_frame(0xB, b""), 1002),
    "a fragmented ping": (server_frame(OP_PING, b"x", fin=False), 1002),
    "a 126-byte ping": (server_frame(OP_PING, b"x" * 126), 1002),
    "a continuation without a start": (server_frame(OP_CONTINUATION, b"x"), 1002),
    "a message inside a fragmented one": (server_frame(OP_TEXT, b"a", fin=False) + text("b"), 1002),
    "invalid UTF-8": (server_frame(OP_TEXT, b"\xc3\x28"), 1007),
    "a surrogate in UTF-8": (server_frame(OP_TEXT, b"\xed\xa0\x80"), 1007),
    "invalid UTF-8 across fragments": (server_frame(OP_TEXT, b"\xe2\x82", fin=False)
                                       + server_frame(OP_CONTINUATION, b"\x28"), 1007),
    "a close frame of one byte": (server_frame(OP_CLOSE, b"\x03"), 1002),
    "close code 1005 on the wire": (close_frame(1005), 1002),
    "close code 999": (close_frame(999), 1002),
    "a close reason in bad UTF-8": (server_frame(OP_CLOSE, b"\x03\xe8\xff"), 1007),
    "a message over the limit": (text("x" * 1025), 1009),
    "fragments over the limit together": (server_frame(OP_TEXT, b"x" * 600, fin=False)
                                          + server_frame(OP_CONTINUATION, b"x" * 600), 1009),
}


@pytest.mark.parametrize("case", sorted(PARSER_REFUSALS))
def test_the_parser_refuses_protocol_violations_after_the_good_messages(case):
    wire, code = PARSER_REFUSALS[case]
    parser = FrameParser(max_message_size=1024)
    assert parser.feed(text("before") + wire + text("after")) == ["before"]
    assert parser.failure is not None and parser.failure[0] == code
    assert parser.ended and parser.feed(text("later")) == []


def test_an_oversized_message_is_refused_from_its_header_before_its_payload_arrives():
    parser = FrameParser(max_message_size=1 << 20)
    header = bytes((0x81, 127)) + (1 << 40).to_bytes(8, "big")  # a 1 TiB frame, announced
    assert parser.feed(header[:5]) == []  # half a header: nothing known yet
    assert parser.failure is None
    assert parser.feed(header[5:]) == []
    assert parser.failure is not None and parser.failure[0] == 1009


@pytest.mark.parametrize(("wire", "close"), [
    (server_frame(OP_CLOSE), (1005, "")),
    (close_frame(1000), (1000, "")),
    (close_frame(1001, "going away"), (1001, "going away")),
    (close_frame(4000, "bybit says bye"), (4000, "bybit says bye")),
])
def test_a_close_frame_ends_parsing_with_its_code(wire, close):
    parser = FrameParser()
    assert parser.feed(text("last") + wire + text("never")) == ["last"]
    assert parser.close == close and parser.failure is None
    assert parser.feed(text("later")) == []


def test_a_long_frame_fed_in_small_reads_comes_out_once_complete():
    frame = text("€" * 30000)  # 90000 bytes: a 64-bit length
    parser = FrameParser()
    chunks = [frame[at:at + 1000] for at in range(0, len(frame), 1000)]
    assert all(parser.feed(chunk) == [] for chunk in chunks[:-1])
    assert parser.feed(chunks[-1]) == ["€" * 30000]
    assert parser.feed(text("next")) == ["next"]


# --- against a real trio-websocket server -----------------------------------------------------

async def start_server(nursery, handler, ssl_context=None):
    async def accept(request):
        if request.path != "/ok":
            await request.reject(404)
            return
        await handler(await request.accept())

    server = await nursery.start(serve_websocket, accept, "127.0.0.1", 0, ssl_context)
    return f"{'wss' if ssl_context else 'ws'}://127.0.0.1:{server.port}"


async def test_what_arrived_comes_a_reads_worth_per_batch_in_order(loopback_clock):
    sent = trio.Event()

    async def handler(ws):
        for i in range(200):
            await ws.send_message(f'{{"n":{i}}}')
        sent.set()
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, handler)
            async with open_lean_transport(f"{base}/ok") as transport:
                await sent.wait()
                await trio.testing.wait_all_tasks_blocked()
                batches = []
                while sum(map(len, batches)) < 200:
                    batches.append(await transport.receive_batch())
                assert [m for batch in batches for m in batch] == [f'{{"n":{i}}}' for i in range(200)]
                assert len(batches) <= 3  # a read's worth each (the kernel may split 200 segments)
            nursery.cancel_scope.cancel()


async def test_sent_frames_reach_the_server_intact_at_every_length_encoding(loopback_clock):
    async def echo(ws):
        while True:
            await ws.send_message(await ws.get_message())

    messages = ["hi", "é€😀", "x" * 126, "y" * 70000]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, echo)
            async with open_lean_transport(f"{base}/ok") as transport:
                for message in messages:
                    await transport.send(message)
                received: list = []
                while len(received) < len(messages):
                    received += await transport.receive_batch()
                assert received == messages
            nursery.cancel_scope.cancel()


async def test_a_ping_is_answered_while_the_reader_waits(loopback_clock):
    async def handler(ws):
        await ws.ping(b"are you there")  # returns once the matching pong came back
        await ws.send_message("pong seen")
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, handler)
            async with open_lean_transport(f"{base}/ok") as transport:
                assert await transport.receive_batch() == ["pong seen"]
            nursery.cancel_scope.cancel()


async def test_the_writer_and_the_pong_answering_reader_share_the_socket(loopback_clock):
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
            base = await start_server(nursery, handler)
            async with open_lean_transport(f"{base}/ok") as transport:
                async def writer():
                    for i in range(300):
                        await transport.send(f"m{i}" * 50)

                nursery.start_soon(writer)
                received: list = []
                while "done" not in received:
                    received += await transport.receive_batch()
            nursery.cancel_scope.cancel()
    assert got == [f"m{i}" * 50 for i in range(300)]


@pytest.mark.parametrize(("code", "reason"), [(1000, None), (1001, "going away"), (4000, "custom")])
async def test_the_peers_close_code_and_reason_arrive_in_connection_lost(loopback_clock, code, reason):
    async def closer(ws):
        await ws.send_message("last words")
        await ws.aclose(code, reason)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, closer)
            with pytest.raises(ConnectionLost) as caught:
                async with open_lean_transport(f"{base}/ok") as transport:
                    batches = [await transport.receive_batch()]
                    with pytest.raises(ConnectionLost) as on_receive:
                        while True:
                            batches.append(await transport.receive_batch())
                    assert on_receive.value.code == code
                    await transport.send("too late")  # raises: the connection is over
            nursery.cancel_scope.cancel()
    assert batches == [["last words"]]
    assert caught.value.code == code and caught.value.reason == (reason or "")
    assert f"closed with code {code}" in str(caught.value)


async def test_an_oversized_frame_is_refused_with_1009_on_both_ends(loopback_clock):
    codes: list[int] = []

    async def handler(ws):
        await ws.send_message("x" * 2048)
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            codes.append(exc.reason.code)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, handler)
            with pytest.raises(ConnectionLost) as caught:
                async with open_lean_transport(f"{base}/ok", max_message_size=1024) as transport:
                    await transport.receive_batch()
            assert caught.value.code == 1009 and "1009" in str(caught.value)
            while not codes:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert codes == [1009]


async def test_leaving_closes_politely_and_waits_for_the_reply(loopback_clock):
    codes: list[int] = []

    async def handler(ws):
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            codes.append(exc.reason.code)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, handler)
            async with open_lean_transport(f"{base}/ok") as transport:
                pass
            assert codes == [1000]  # the server saw it before we returned
            assert transport._stream.socket.fileno() == -1
            nursery.cancel_scope.cancel()


async def test_when_cancelled_the_close_frame_goes_out_without_waiting(loopback_clock):
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
                async with open_lean_transport(f"{base}/ok", close_timeout=5.0):
                    started = trio.current_time()
                    scope.cancel()
                    await trio.sleep_forever()
            assert trio.current_time() - started < 0.5  # not the 5 s close timeout
            while not codes:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert codes == [1000]


async def test_a_socket_the_peer_closed_is_released_at_once(loopback_clock):
    async def closer(ws):
        await ws.aclose(1000)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, closer)
            holder = []
            with pytest.raises(ConnectionLost):
                async with open_lean_transport(f"{base}/ok") as transport:
                    holder.append(transport)
                    await transport.receive_batch()
            assert holder[0]._stream.socket.fileno() == -1
            nursery.cancel_scope.cancel()


async def test_refused_and_unreachable_handshakes_are_handshake_errors(loopback_clock):
    async def handler(ws):
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, handler)
            with pytest.raises(HandshakeError, match="HTTP 404") as refused:
                async with open_lean_transport(f"{base}/nope"):
                    pass
            assert (refused.value.status, refused.value.retry_after) == (404, None)
            listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
            port = listener.socket.getsockname()[1]
            await listener.aclose()  # nothing listens there now
            with pytest.raises(HandshakeError, match="cannot connect"):
                async with open_lean_transport(f"ws://127.0.0.1:{port}/ok"):
                    pass
            with pytest.raises(HandshakeError, match="not a ws:// or wss:// URL"):
                async with open_lean_transport(f"http://127.0.0.1:{port}/ok"):
                    pass
            nursery.cancel_scope.cancel()


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """A certificate for 127.0.0.1 that no default trust store knows (made with openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_wss_runs_over_tls_and_verifies_the_certificate(loopback_clock, self_signed):
    async def echo(ws):
        while True:
            await ws.send_message(await ws.get_message())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await start_server(nursery, echo, ssl_context=self_signed)
            with pytest.raises(HandshakeError, match="cannot connect"):  # unknown issuer
                async with open_lean_transport(f"{base}/ok"):
                    pass
            async with open_lean_transport(f"{base}/ok", verify_tls=False) as transport:
                await transport.send("over tls")
                assert await transport.receive_batch() == ["over tls"]
            nursery.cancel_scope.cancel()


# --- against a raw peer that writes the frames itself ---------------------------------------

class RawPeer:
    """The server end of one TCP connection, byte by byte."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.key = b""

    async def _fill(self, size: int) -> bool:
        while len(self.buffer) < size:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return False
            self.buffer += chunk
        return True

    async def read_request(self) -> None:
        while b"\r\n\r\n" not in self.buffer:
            assert await self._fill(len(self.buffer) + 1)
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        self.key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", head).group(1)

    def answer(self, accept: bytes | None = None, extra_headers: bytes = b"") -> bytes:
        token = accept if accept is not None else base64.b64encode(hashlib.sha1(self.key + ACCEPT_GUID).digest())
        return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + token + b"\r\n" + extra_headers + b"\r\n")

    async def handshake(self, then: bytes = b"") -> None:
        await self.read_request()
        await self.stream.send_all(self.answer() + then)

    async def read_frame(self) -> tuple[int, bytes] | None:
        """The next client frame, unmasked; None at EOF."""
        if not await self._fill(2):
            return None
        size = self.buffer[1] & 0x7F
        header = 2 + {126: 2, 127: 8}.get(size, 0) + 4  # with the masking key
        if not await self._fill(header):
            return None
        if size >= 126:
            size = int.from_bytes(self.buffer[2:header - 4], "big")
        if not await self._fill(header + size):
            return None
        opcode, payload, length = unmask_client_frame(bytes(self.buffer[:header + size]))
        del self.buffer[:length]
        return opcode, payload

    async def close_code(self) -> int | None:
        """Read until the client's close frame: its code (None: EOF without one)."""
        while (frame := await self.read_frame()) is not None:
            opcode, payload = frame
            if opcode == OP_CLOSE:
                return int.from_bytes(payload[:2], "big") if payload else 1005
        return None


async def start_raw_server(nursery, script) -> str:
    async def serve(stream):
        await script(RawPeer(stream))

    [listener] = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    return f"ws://127.0.0.1:{listener.socket.getsockname()[1]}/raw"


async def test_fragments_around_a_ping_are_reassembled_and_the_ping_answered(loopback_clock):
    seen: list = []

    async def script(peer):
        await peer.handshake()
        payload = "frag€mented".encode()
        await peer.stream.send_all(server_frame(OP_TEXT, payload[:5], fin=False) + server_frame(OP_PING, b"p1")
                                   + server_frame(OP_CONTINUATION, payload[5:9], fin=False)
                                   + server_frame(OP_PONG, b"ignored")
                                   + server_frame(OP_CONTINUATION, payload[9:]))
        seen.append(await peer.read_frame())
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start_raw_server(nursery, script)
            async with open_lean_transport(url) as transport:
                assert await transport.receive_batch() == ["frag€mented"]
                while not seen:
                    await trio.sleep(0.01)
                transport.abandon()
            nursery.cancel_scope.cancel()
    assert seen == [(OP_PONG, b"p1")]


async def test_a_character_split_across_two_reads_decodes_whole(loopback_clock):
    async def script(peer):
        await peer.handshake()
        frame = text("price €42")
        cut = frame.index("€".encode()) + 1  # inside the euro sign
        await peer.stream.send_all(frame[:cut])
        await trio.testing.wait_all_tasks_blocked()  # the client read the first part and waits
        await peer.stream.send_all(frame[cut:])
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start_raw_server(nursery, script)
            async with open_lean_transport(url) as transport:
                assert await transport.receive_batch() == ["price €42"]
                transport.abandon()
            nursery.cancel_scope.cancel()


async def test_frames_that_came_with_the_handshake_answer_are_the_first_batch(loopback_clock):
    pongs: list = []

    async def script(peer):
        await peer.handshake(then=text("early") + server_frame(OP_PING, b"hello") + text("bird"))
        pongs.append(await peer.read_frame())
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start_raw_server(nursery, script)
            async with open_lean_transport(url) as transport:
                assert await transport.receive_batch() == ["early", "bird"]
                while not pongs:
                    await trio.sleep(0.01)
                transport.abandon()
            nursery.cancel_scope.cancel()
    assert pongs == [(OP_PONG, b"hello")]


WIRE_VIOLATIONS = {
    "masked": (server_frame(OP_TEXT, b"masked", mask_key=b"\x01\x02\x03\x04"), 1002),
    "rsv1": (server_frame(OP_TEXT, b"compressed?", rsv=4), 1002),
    "bad utf-8": (server_frame(OP_TEXT, b"\xff\xfe"), 1007),
    "fragmented ping": (server_frame(OP_PING, b"", fin=False), 1002),
    "oversized": (server_frame(OP_BINARY, b"z" * 5000), 1009),
}


@pytest.mark.parametrize("case", sorted(WIRE_VIOLATIONS))
async def test_a_protocol_violation_is_answered_with_its_close_code(loopback_clock, case):
    wire, code = WIRE_VIOLATIONS[case]
    answered: list = []

    async def script(peer):
        await peer.handshake(then=text("fine"))
        await trio.testing.wait_all_tasks_blocked()
        await peer.stream.send_all(wire)
        answered.append(await peer.close_code())
        answered.append(await peer.read_frame())  # then the client hangs up: EOF

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start_raw_server(nursery, script)
            with pytest.raises(ConnectionLost) as caught:
                async with open_lean_transport(url, max_message_size=4096) as transport:
                    assert await transport.receive_batch() == ["fine"]
                    await transport.receive_batch()
            while len(answered) < 2:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert caught.value.code == code
    assert answered == [code, None]


@pytest.mark.parametrize("how", ["eof", "reset"])
async def test_a_tcp_end_without_a_close_frame_is_1006(loopback_clock, how):
    async def script(peer):
        await peer.handshake(then=text("one"))
        await trio.testing.wait_all_tasks_blocked()
        if how == "reset":
            peer.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await peer.stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start_raw_server(nursery, script)
            with pytest.raises(ConnectionLost) as caught:
                async with open_lean_transport(url) as transport:
                    assert await transport.receive_batch() == ["one"]
                    await transport.receive_batch()
            nursery.cancel_scope.cancel()
    assert caught.value.code == 1006


async def test_an_abandoned_peer_gets_neither_a_close_frame_nor_a_wait(loopback_clock):
    ended: list = []

    async def deaf(peer):
        await peer.handshake()
        ended.append(await peer.read_frame())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start_raw_server(nursery, deaf)
            started = trio.current_time()
            async with open_lean_transport(url, close_timeout=5.0) as transport:
                transport.abandon()
            assert trio.current_time() - started < 1.0
            while not ended:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert ended == [None]  # EOF, no close frame


async def test_a_peer_that_never_answers_the_close_costs_close_timeout_at_most(loopback_clock):
    closes: list = []

    async def deaf(peer):
        await peer.handshake()
        closes.append(await peer.read_frame())
        await trio.sleep_forever()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await start_raw_server(nursery, deaf)
            started = trio.current_time()
            with pytest.raises(ConnectionLost, match="timed out"):
                async with open_lean_transport(url, close_timeout=3.0):
                    pass
            assert 3.0 <= trio.current_time() - started < 4.0
            # with an error already on its way out, that error is what the caller sees
            with pytest.raises(KeyError):
                async with open_lean_transport(url, close_timeout=3.0):
                    raise KeyError("the actor's own failure")
            nursery.cancel_scope.cancel()
    assert closes == [(OP_CLOSE, (1000).to_bytes(2, "big"))] * 2


HANDSHAKE_FAULTS = {
    "wrong accept": (lambda peer: peer.answer(accept=b"bm90IHRoZSByaWdodCB0b2tlbg=="), "Sec-WebSocket-Accept"),
    "an extension we did not offer": (lambda peer: peer.answer(extra_headers=b"Sec-WebSocket-Extensions: "
                                                                              b"permessage-deflate\r\n"),
                                      "did not offer"),
    "no upgrade": (lambda peer: b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n", "Upgrade"),
    "not HTTP": (lambda peer: b"SSH-2.0-OpenSSH\r\n\r\n", "broken HTTP"),
    "hang-up": (None, "closed the connection"),
}


@pytest.mark.parametrize(("status", "retry_after"), [(403, 600.0), (429, 300.0), (503, None)])
async def test_a_ban_or_rate_limit_asks_for_the_exchanges_cooldown(loopback_clock, status, retry_after):
    async def script(peer):
        await peer.read_request()
        await peer.stream.send_all(b"HTTP/1.1 %d No\r\nContent-Length: 0\r\n\r\n" % status)
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start_raw_server(nursery, script)
            with pytest.raises(HandshakeError, match=f"HTTP {status}") as refused:
                async with open_lean_transport(url):
                    pass
            nursery.cancel_scope.cancel()
    assert (refused.value.status, refused.value.retry_after) == (status, retry_after)


@pytest.mark.parametrize("case", sorted(HANDSHAKE_FAULTS))
async def test_a_bad_upgrade_answer_is_a_handshake_error(loopback_clock, case):
    answer, message = HANDSHAKE_FAULTS[case]

    async def script(peer):
        await peer.read_request()
        if answer is not None:
            await peer.stream.send_all(answer(peer))
            await trio.sleep_forever()
        await peer.stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await start_raw_server(nursery, script)
            with pytest.raises(HandshakeError, match=message):
                async with open_lean_transport(url):
                    pass
            nursery.cancel_scope.cancel()


async def test_a_silent_server_is_a_handshake_timeout(loopback_clock):
    async def silent(peer):
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await start_raw_server(nursery, silent)
            started = trio.current_time()
            with pytest.raises(HandshakeError, match="within 5s"):
                async with open_lean_transport(url, connect_timeout=5.0):
                    pass
            assert 5.0 <= trio.current_time() - started < 6.0
            nursery.cancel_scope.cancel()
