"""What the transport suites share: both transports by name, a trio-websocket server, and a
raw TCP peer that writes WebSocket frames byte by byte (the frames a hostile or broken server
could send, which no well-behaved library would)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial

import pytest
import trio

from hybrid_actors.errors import ConnectionLost
from hybrid_actors.lean_transport import open_lean_transport
from hybrid_actors.transport import open_transport

#: both implementations of the transport contract (``hybrid_actors/transport.py``'s docstring)
OPENERS = {"trio-websocket": open_transport, "lean": open_lean_transport}
#: RFC 6455 §1.3: appended to Sec-WebSocket-Key before hashing it into Sec-WebSocket-Accept
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def xor(payload: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def server_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
                 mask_key: bytes | None = None, length: int | None = None) -> bytes:
    """One frame as a server writes it (unmasked), or deliberately wrong: RSV bits, a mask, or
    a header announcing ``length`` bytes whatever the payload."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    size = len(payload) if length is None else length
    masked = 0x80 if mask_key is not None else 0
    if size < 126:
        header = bytes((first, masked | size))
    elif size < 1 << 16:
        header = bytes((first, masked | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((first, masked | 127)) + size.to_bytes(8, "big")
    if mask_key is not None:
        return header + mask_key + xor(payload, mask_key)
    return header + payload


def text(message: str) -> bytes:
    return server_frame(OP_TEXT, message.encode())


def close_frame(code: int, reason: str = "") -> bytes:
    return server_frame(OP_CLOSE, code.to_bytes(2, "big") + reason.encode())


def parse_client_frame(data: bytes | bytearray) -> tuple[int, bytes, int] | None:
    """(opcode, unmasked payload, frame length) of the client frame at the start of ``data``,
    None while it is incomplete. Client frames must be masked."""
    if len(data) < 2:
        return None
    assert data[1] & 0x80, "client frames must be masked"
    size, at = data[1] & 0x7F, 2
    if size == 126:
        if len(data) < 4:
            return None
        size, at = int.from_bytes(data[2:4], "big"), 4
    elif size == 127:
        if len(data) < 10:
            return None
        size, at = int.from_bytes(data[2:10], "big"), 10
    if len(data) < at + 4 + size:
        return None
    key = data[at:at + 4]
    return data[0] & 0x0F, xor(bytes(data[at + 4:at + 4 + size]), key), at + 4 + size


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

    async def read_request(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            if not await self._fill(len(self.buffer) + 1):
                raise EOFError("the client hung up during its request")
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        self.key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", head).group(1)
        return head

    def answer(self, accept: bytes | None = None, extra_headers: bytes = b"") -> bytes:
        token = accept if accept is not None else base64.b64encode(hashlib.sha1(self.key + ACCEPT_GUID).digest())
        return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + token + b"\r\n" + extra_headers + b"\r\n")

    async def handshake(self, then: bytes = b"") -> None:
        await self.read_request()
        await self.stream.send_all(self.answer() + then)

    async def read_frame(self) -> tuple[int, bytes] | None:
        """The next client frame, unmasked; None at EOF."""
        while (parsed := parse_client_frame(self.buffer)) is None:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buffer += chunk
        opcode, payload, length = parsed
        del self.buffer[:length]
        return opcode, payload

    async def close_code(self) -> int | None:
        """Read until the client's close frame: its code (1005: none given; None: EOF first)."""
        while (frame := await self.read_frame()) is not None:
            opcode, payload = frame
            if opcode == OP_CLOSE:
                return int.from_bytes(payload[:2], "big") if payload else 1005
        return None


async def start_raw_server(nursery: trio.Nursery, script) -> str:
    async def serve(stream):
        await script(RawPeer(stream))

    [listener] = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    return f"ws://127.0.0.1:{listener.socket.getsockname()[1]}/raw"


async def read_until_lost(opener, url: str, **options) -> tuple[ConnectionLost, list[str | bytes]]:
    """Open ``opener(url, **options)`` and read until the connection is lost: that error and
    every message that arrived before it, in order."""
    received: list[str | bytes] = []
    with pytest.raises(ConnectionLost) as caught:
        async with opener(url, **options) as transport:
            while True:
                received += await transport.receive_batch()
    return caught.value, received


async def seconds_to_fail(transport, error: type[BaseException], match: str) -> float:
    """Open and leave ``transport`` (an ``opener(...)`` call) without using it: it must raise
    ``error`` matching ``match``. The (virtual) seconds that took."""
    started = trio.current_time()
    with pytest.raises(error, match=match):
        async with transport:
            pass
    return trio.current_time() - started


@asynccontextmanager
async def raw_server(script) -> AsyncIterator[str]:
    """``script(peer)`` serves each connection (a :class:`RawPeer`) until the block ends; yields the URL."""
    async with trio.open_nursery() as nursery:
        yield await start_raw_server(nursery, script)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def ws_server(handler, ssl_context=None) -> AsyncIterator[str]:
    """:func:`start_ws_server` until the block ends; yields its base URL."""
    async with trio.open_nursery() as nursery:
        yield await start_ws_server(nursery, handler, ssl_context)
        nursery.cancel_scope.cancel()


async def start_ws_server(nursery: trio.Nursery, handler, ssl_context=None) -> str:
    """A trio-websocket server: ``/ok`` is accepted and handed to ``handler``, anything else 404."""
    from trio_websocket import ConnectionClosed, serve_websocket

    async def accept(request):
        if request.path != "/ok":
            await request.reject(404)
            return
        ws = await request.accept()
        with suppress(ConnectionClosed):  # the client left: the handler's job is over
            await handler(ws)

    server = await nursery.start(serve_websocket, accept, "127.0.0.1", 0, ssl_context)
    return f"{'wss' if ssl_context else 'ws'}://127.0.0.1:{server.port}"
