"""Hostile and broken servers, against both transports: a raw TCP peer writes frames no
well-behaved library would send. Each case ends in a clear ConnectionLost (the actors then
restart the socket), never a hang, never unbounded memory; what is legal but awkward (frames
cut at any byte, pings between fragments, long lengths) is decoded exactly."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from conftest import CUSHION_AUTOJUMP
from hybrid_actors.errors import ConnectionLost
from hybrid_actors.lean_transport import MAX_FRAGMENTS, _LeanTransport
from transport_support import (
    OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, OPENERS, close_frame, raw_server, read_until_lost,
    server_frame, text,
)

pytestmark = pytest.mark.integration


@pytest.fixture(params=sorted(OPENERS))
def opener(request):
    return OPENERS[request.param]


# --- legal but awkward ------------------------------------------------------------------------------

LONG_16 = "sixteen-bit length " * 10  # 190 bytes: a 16-bit length
WIRE = (text('{"topic":"tickers.BTCUSDT","price":"€42"}')
        + server_frame(OP_TEXT, LONG_16.encode())
        + server_frame(OP_TEXT, "frag€".encode()[:5], fin=False)  # the euro sign cut in two
        + server_frame(OP_PING, b"between")
        + server_frame(OP_CONTINUATION, "frag€".encode()[5:], fin=False)
        + server_frame(OP_PONG, b"unsolicited")
        + server_frame(OP_CONTINUATION, b"mented")
        + server_frame(OP_BINARY, b"\x00\xff"))
WIRE_MESSAGES = ['{"topic":"tickers.BTCUSDT","price":"€42"}', LONG_16, "frag€mented", b"\x00\xff"]


async def test_frames_cut_at_every_byte_boundary_decode_whole_and_every_ping_is_answered(loopback_clock, opener):
    cuts = range(1, len(WIRE))
    pongs: list[bytes] = []

    async def script(peer):
        await peer.handshake()
        for cut in cuts:
            await peer.stream.send_all(WIRE[:cut])
            await trio.testing.wait_all_tasks_blocked()  # the client read the first part and waits
            await peer.stream.send_all(WIRE[cut:])
        while len(pongs) < len(cuts):
            frame = await peer.read_frame()
            assert frame is not None and frame[0] == OP_PONG
            pongs.append(frame[1])
        await trio.sleep_forever()

    with trio.fail_after(120):
        async with raw_server(script) as url:
            async with opener(url) as transport:
                received: list = []
                while len(received) < len(WIRE_MESSAGES) * len(cuts):
                    received += await transport.receive_batch()
                assert received == WIRE_MESSAGES * len(cuts)
                while len(pongs) < len(cuts):
                    await trio.sleep(0.01)
                transport.abandon()
    assert pongs == [b"between"] * len(cuts)


async def test_16_and_64_bit_lengths_and_a_message_near_the_limit_arrive_intact(loopback_clock, opener):
    messages = ["x" * 125, "y" * 126, "z" * 65535, "é" * 32768, "w" * 70000, "v" * (1 << 20)]

    async def script(peer):
        await peer.handshake(then=b"".join(text(m) for m in messages))
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with raw_server(script) as url:
            async with opener(url, max_message_size=1 << 20) as transport:
                received: list = []
                while len(received) < len(messages):
                    received += await transport.receive_batch()
                assert received == messages
                transport.abandon()


# --- violations: each ends the connection with its close code ----------------------------------------

VIOLATIONS = {
    "a 64-bit length with the top bit set": (server_frame(OP_TEXT, length=1 << 63), {1002, 1009}),
    "a 2 MiB message (limit 1 MiB)": (server_frame(OP_TEXT, b"m" * (2 << 20)), {1009}),
    "invalid UTF-8": (server_frame(OP_TEXT, b"\xc3\x28 not utf-8"), {1007}),
    "invalid UTF-8 across fragments": (server_frame(OP_TEXT, b"\xe2\x82", fin=False)
                                       + server_frame(OP_CONTINUATION, b"\x28"), {1007}),
    "a compressed frame never negotiated (RSV1)": (server_frame(OP_TEXT, b"\x4a\x4c\x02\x00", rsv=4), {1002}),
    "a masked server frame": (server_frame(OP_TEXT, b"masked", mask_key=b"\x01\x02\x03\x04"), {1002}),
    "an unknown opcode": (server_frame(0x3, b"?"), {1002}),
    "a fragmented ping": (server_frame(OP_PING, b"", fin=False), {1002}),
    "a continuation with no message": (server_frame(OP_CONTINUATION, b"orphan"), {1002}),
    # a close frame inside a fragmented message: a protocol error to websockets, a close to wsproto
    "a close frame mid-message": (server_frame(OP_TEXT, b"part", fin=False) + close_frame(1000), {1000, 1002}),
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
async def test_a_violation_ends_in_connection_lost_with_its_close_code(loopback_clock, opener, case):
    wire, codes = VIOLATIONS[case]
    answered: list = []

    async def script(peer):
        await peer.handshake(then=text("fine"))
        await trio.testing.wait_all_tasks_blocked()
        try:
            await peer.stream.send_all(wire)
        except trio.BrokenResourceError:  # the client refused the frame from its header and hung up
            pass
        answered.append(await peer.close_code())

    with trio.fail_after(20):
        async with raw_server(script) as url:
            lost, received = await read_until_lost(opener, url)
            while not answered:
                await trio.sleep(0.01)
    assert received == ["fine"] and lost.code in codes, lost
    assert answered[0] in (lost.code, None)  # our close frame carried the same code (or we hung up)


async def test_endless_empty_continuation_frames_end_the_connection(loopback_clock, opener):
    """Each frame adds nothing to the message's size, so only a bound on fragments (lean) or on
    the bytes one message may take (trio-websocket, via its guard stream) stops them."""
    sent = [0]

    async def script(peer):
        await peer.handshake(then=server_frame(OP_TEXT, b"{", fin=False))
        burst = server_frame(OP_CONTINUATION, b"", fin=False) * 1000
        try:
            while sent[0] < 3_000_000:  # then it stops, and a client still waiting fails the test
                await peer.stream.send_all(burst)
                sent[0] += 1000
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await trio.sleep_forever()

    with trio.fail_after(60):
        async with raw_server(script) as url:
            lost, received = await read_until_lost(opener, url, max_message_size=1024)
    assert (lost.code, received) == (1009, [])
    assert sent[0] < 1_000_000  # stopped early, not after the peer gave up


@pytest.mark.parametrize("where", ["inside a frame header", "inside a payload", "between fragments"])
async def test_a_tcp_end_mid_message_is_1006(loopback_clock, opener, where):
    wire = {"inside a frame header": server_frame(OP_TEXT, b"x" * 300)[:3],
            "inside a payload": server_frame(OP_TEXT, b"x" * 300)[:100],
            "between fragments": server_frame(OP_TEXT, b"part", fin=False)}[where]

    async def script(peer):
        await peer.handshake(then=text("fine") + wire)
        await trio.testing.wait_all_tasks_blocked()
        await peer.stream.aclose()

    with trio.fail_after(10):
        async with raw_server(script) as url:
            lost, received = await read_until_lost(opener, url)
    assert (lost.code, received) == (1006, ["fine"])


async def test_a_server_that_never_answers_our_close_costs_close_timeout(loopback_clock, opener):
    closes: list = []

    async def deaf(peer):
        await peer.handshake(then=text("hello"))
        closes.append(await peer.close_code())
        await trio.sleep_forever()  # reads nothing more, answers nothing, keeps TCP open

    with trio.fail_after(30):
        async with raw_server(deaf) as url:
            started = None
            with pytest.raises(ConnectionLost, match="timed out"):
                async with opener(url, close_timeout=2.0) as transport:
                    assert await transport.receive_batch() == ["hello"]
                    started = trio.current_time()
            assert 2.0 <= trio.current_time() - started < 3.0
    assert closes == [1000]


async def test_a_ping_flood_is_answered_without_growing_the_batch(loopback_clock, opener):
    async def script(peer):
        await peer.handshake()
        async with trio.open_nursery() as inner:  # flood and read the pongs at once, as a server must
            inner.start_soon(peer.stream.send_all, server_frame(OP_PING, b"x" * 125) * 2000
                             + text("after the flood"))
            pongs = 0
            while pongs < 2000:
                frame = await peer.read_frame()
                assert frame is not None and frame[0] == OP_PONG
                pongs += 1
        await peer.stream.send_all(text("pongs counted"))
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with raw_server(script) as url:
            async with opener(url) as transport:
                received: list = []
                while "pongs counted" not in received:
                    received += await transport.receive_batch()
                assert received == ["after the flood", "pongs counted"]
                transport.abandon()


async def test_a_close_frame_from_the_server_is_echoed_and_ends_the_stream(loopback_clock, opener):
    echoed: list = []

    async def script(peer):
        await peer.handshake(then=text("bye soon") + close_frame(4001, "maintenance") + text("never"))
        echoed.append(await peer.read_frame())
        await peer.stream.aclose()

    with trio.fail_after(10):
        async with raw_server(script) as url:
            lost, received = await read_until_lost(opener, url)
            while not echoed:
                await trio.sleep(0.01)
    assert (lost.code, lost.reason, received) == (4001, "maintenance", ["bye soon"])
    assert echoed == [(OP_CLOSE, (4001).to_bytes(2, "big") + b"maintenance")]


# --- at actor level: a hostile public endpoint costs a restart, never the stream -------------------

async def test_a_hostile_public_server_restarts_the_public_socket_and_the_stream_lives_on(loopback_clock):
    import random

    from hybrid_actors import StreamConfig
    from hybrid_actors.config import Endpoints
    from hybrid_actors.supervisor import open_hybrid_stream
    from hybrid_actors.testing.simulator import SimulatorConfig, open_simulator, trio_wall_clock

    connections = [0]

    async def hostile(peer):  # every connection: a valid upgrade, then a masked frame
        connections[0] += 1
        await peer.handshake(then=server_frame(OP_TEXT, b'{"op":"pong"}', mask_key=b"\x01\x02\x03\x04"))
        await peer.close_code()

    wall = trio_wall_clock()
    with trio.fail_after(120):
        async with raw_server(hostile) as url:
            base = url.removesuffix("/raw")
            config = SimulatorConfig(symbols=5, positions=0, rate=0.0, seed=3, wall_clock=wall)
            async with open_simulator(config) as sim:
                endpoints = Endpoints(base, sim.endpoints.ws_private_url, sim.endpoints.rest_url)
                stream_config = StreamConfig(credentials=sim.credentials, endpoints=endpoints,
                                             categories=("linear",), heartbeat_interval=20.0)
                async with open_hybrid_stream(stream_config, wall_clock=wall, rng=random.Random(5)) as stream:
                    sim.control.open_position("BTCUSDT", "Buy", "1")  # the private socket still delivers
                    seen = []
                    while not any(e.symbol == "BTCUSDT" for e in seen):
                        seen += [e for e in await stream.batches() if hasattr(e, "symbol")]
                    while connections[0] < 3:  # refused twice more, after backoff
                        await trio.sleep(0.5)
                    actors = stream.health().actors
                    public = actors["public:linear"]
                    assert public["restarts"] >= 2 and public["crashes"] == 0  # outages, not bugs
                    assert public["outages"] >= 3
                    assert "1002 PROTOCOL_ERROR (incorrect masking)" in public["last_error"]
                    assert actors["private"]["restarts"] == 0


# --- the lean transport's own checks (found by a mutation sweep) -------------------------------------

def fragmented(count: int) -> bytes:
    """One text message ``{}`` in ``count`` fragments (the middle ones empty)."""
    return (server_frame(OP_TEXT, b"{", fin=False) + server_frame(OP_CONTINUATION, b"", fin=False) * (count - 2)
            + server_frame(OP_CONTINUATION, b"}"))


LEAN_VIOLATIONS = {
    "one fragment more than MAX_FRAGMENTS": (fragmented(MAX_FRAGMENTS + 1), 1009),
    "invalid UTF-8": (server_frame(OP_TEXT, b"\xc3\x28 not utf-8"), 1007),
    "invalid UTF-8 across fragments": (server_frame(OP_TEXT, b"\xe2\x82", fin=False)
                                       + server_frame(OP_CONTINUATION, b"\x28"), 1007),
}


@pytest.mark.parametrize("case", sorted(LEAN_VIOLATIONS))
async def test_lean_answers_a_violation_it_detects_itself_with_a_close_frame_of_its_code(loopback_clock, case):
    """The checks the sans-IO core leaves to the lean transport (fragment count, UTF-8) fail
    the connection like the core's own: the peer gets a close frame with the code, not just
    a hang-up. A message of exactly ``MAX_FRAGMENTS`` fragments is fine."""
    wire, code = LEAN_VIOLATIONS[case]
    answered: list = []

    async def script(peer):
        await peer.handshake(then=fragmented(MAX_FRAGMENTS) + wire + text("never read"))
        answered.append(await peer.close_code())

    with trio.fail_after(20):
        async with raw_server(script) as url:
            lost, received = await read_until_lost(OPENERS["lean"], url)
            while not answered:
                await trio.sleep(0.01)
    assert (received, lost.code, answered) == (["{}"], code, [code])


async def test_lean_writes_nothing_more_after_a_send_cancelled_mid_frame(loopback_clock):
    """A send cancelled while its frame was half written leaves the stream mid-frame: any
    later frame would be read by the peer as the rest of that one. The transport refuses to
    write again (a ConnectionLost, so the owner reconnects) instead of corrupting the stream."""
    loopback_clock.autojump_threshold = CUSHION_AUTOJUMP  # a full socket buffer: see conftest

    async def script(peer):
        await peer.handshake()
        await trio.sleep_forever()  # reads nothing: a big frame stops half-way

    with trio.fail_after(60):
        async with raw_server(script) as url:
            async with OPENERS["lean"](url) as transport:
                with trio.move_on_after(1) as scope:
                    await transport.send("x" * (32 << 20))  # more than loopback's buffers hold
                assert scope.cancelled_caught
                with pytest.raises(ConnectionLost, match="broke off"):
                    await transport.send("next")
                transport.abandon()


class _WritesFail(trio.abc.Stream):
    """A stream whose reads give ``wire`` (then EOF) and whose every write fails: a peer that
    reset the connection right after sending."""

    def __init__(self, wire: bytes) -> None:
        self.wire = wire

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        data, self.wire = self.wire, b""
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("connection reset by peer")

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_lean_hands_over_a_read_s_messages_before_the_failure_of_its_pong():
    """A read that brought messages and a ping whose pong cannot be written: the messages
    first, the loss on the next call (the owner stops reading at the loss, so raising first
    would drop the last prices the connection delivered)."""
    protocol = ClientProtocol(parse_uri("ws://test.invalid/"), state=State.OPEN)
    stream = _WritesFail(text("a") + text("b") + server_frame(OP_PING, b"p"))
    transport = _LeanTransport(stream, protocol, "ws://test.invalid/", "test", close_timeout=1.0)
    assert await transport.receive_batch() == ["a", "b"]
    with pytest.raises(ConnectionLost, match="send failed") as lost:
        await transport.receive_batch()
    assert lost.value.code == 1006
