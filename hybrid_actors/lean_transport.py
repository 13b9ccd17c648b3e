"""A lean WebSocket client for the busy public sockets: one task, one read, one batch.

The same :class:`~hybrid_actors.transport.Transport` as ``transport.py`` (trio-websocket),
without its reader task and message queue: the caller's ``receive_batch()`` reads the
socket itself, 64 KiB at a time, and :class:`FrameParser` turns every frame completed by
that read into a message. A burst of 500 tickers costs a few reads and a tight loop, with
no scheduler hop and no per-event object per message. Sends come from another task (the
outbox writer) while the reader answers pings and closes, so every write takes one lock.

- Handshake: h11 writes the HTTP upgrade and parses the answer; we require ``101``,
  ``Upgrade: websocket``, ``Connection: upgrade`` and the right ``Sec-WebSocket-Accept``
  (RFC 6455 §4.1). We offer no extension and no subprotocol, so an answer naming one is
  refused. ``wss://`` runs over ``trio.SSLStream`` with ``ssl.create_default_context()``.
- Frames: server frames are unmasked; a ping is answered with a pong at once, a pong is
  ignored, fragments are reassembled, a close frame is answered and ends the connection.
  A masked server frame, RSV bits (no extension was agreed), an unknown opcode, a
  fragmented or over-125-byte control frame or a broken fragment sequence → close 1002;
  invalid UTF-8 in a text message → 1007; a message over ``max_message_size`` → 1009,
  refused from its header before its payload is buffered. Our frames are masked with a
  fresh random key (:func:`mask`: one big-integer XOR).
- Errors as in ``transport.py``: :class:`~hybrid_actors.errors.HandshakeError` for a
  refused, unreachable, timed-out or non-101 upgrade (with ``status``, and ``retry_after``
  for a ban or rate limit, ``HANDSHAKE_COOLDOWN``); :class:`~hybrid_actors.errors.ConnectionLost`
  with ``.code``: the peer's close code, ours after a violation, 1006 when the TCP
  connection ended (EOF, reset) without a close frame.
- Exit: a close frame (1000), then the peer's close awaited for at most ``close_timeout``;
  when cancelled, the frame is sent and nobody waits; an abandoned (dead) peer gets no
  frame at all. The socket is always released.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final
from urllib.parse import urlsplit

import h11
import trio

from .config import CLOSE_TIMEOUT, MAX_MESSAGE_SIZE
from .errors import ConnectionLost, HandshakeError
from .transport import (
    CANCELLED_CLOSE_WAIT, HANDSHAKE_COOLDOWN, RECEIVE_BYTES, Transport, _is_cancellation, _ssl_context,
)

__all__ = ["open_lean_transport", "FrameParser", "client_frame", "mask"]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
#: RFC 6455 §1.3: appended to Sec-WebSocket-Key before hashing it into Sec-WebSocket-Accept
ACCEPT_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_NAMES: Final = {
    1000: "NORMAL_CLOSURE", 1001: "GOING_AWAY", 1002: "PROTOCOL_ERROR", 1003: "UNSUPPORTED_DATA",
    1005: "NO_STATUS_RCVD", 1006: "ABNORMAL_CLOSURE", 1007: "INVALID_FRAME_PAYLOAD_DATA",
    1008: "POLICY_VIOLATION", 1009: "MESSAGE_TOO_BIG", 1010: "MANDATORY_EXT", 1011: "INTERNAL_ERROR",
    1012: "SERVICE_RESTART", 1013: "TRY_AGAIN_LATER", 1014: "BAD_GATEWAY",
}
#: close codes a peer may put on the wire (RFC 6455 §7.4.1; 3000-4999 are registered/private)
WIRE_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def mask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the 4-byte ``key`` repeated (RFC 6455 §5.3), as one big-integer XOR."""
    size = len(payload)
    if not size:
        return b""
    keys = (key * ((size >> 2) + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(size, "big")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame: masked with a fresh random key, as a client's must be."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    key = os.urandom(4)
    return header + key + mask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload; 1005 ("no code") sends none. The reason fits in 123 bytes."""
    if code == 1005:
        return b""
    return code.to_bytes(2, "big") + reason.encode()[:123].decode(errors="ignore").encode()


def _frame_length(data: bytes) -> int:
    """Bytes the frame at the start of ``data`` needs: its whole length once its header is
    complete, else the length of its header so far known."""
    if len(data) < 2:
        return 2
    size = data[1] & 0x7F
    if size < 126:
        return 2 + size
    header = 4 if size == 126 else 10
    if len(data) < header:
        return header
    return header + int.from_bytes(data[2:header], "big")


class FrameParser:
    """Server-to-client WebSocket frames (RFC 6455 §5), sans-IO.

    ``feed(data)`` returns the messages that ``data`` completes, in order (text as ``str``,
    binary as ``bytes``); the bytes of an unfinished frame wait for the next call, which does
    not parse them again until enough have arrived. For the caller to act on: ``pings``
    (payloads to answer with a pong), ``close`` (the peer's close code and reason; 1005 when
    it gave none) and ``failure`` (the close code we must send, and why). After a close or a
    failure, nothing more is parsed.
    """

    __slots__ = ("max_message_size", "pings", "close", "failure",
                 "_tail", "_tail_size", "_need", "_opcode", "_parts", "_size")

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self.pings: list[bytes] = []
        self.close: tuple[int, str] | None = None
        self.failure: tuple[int, str] | None = None
        self._tail: list[bytes] = []  # an unfinished frame, as received
        self._tail_size = 0
        self._need = 0  # bytes the unfinished frame needs before parsing can go on
        self._opcode = 0  # of the fragmented message in progress (0: none)
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def ended(self) -> bool:
        return self.close is not None or self.failure is not None

    def feed(self, data: bytes) -> list[str | bytes]:
        if self.close is not None or self.failure is not None:
            return []
        if self._tail:
            self._tail.append(data)
            self._tail_size += len(data)
            if self._tail_size < self._need:
                return []
            data = b"".join(self._tail)
            self._tail.clear()
        messages: list[str | bytes] = []
        append = messages.append
        limit = self.max_message_size
        continuing = self._opcode
        end = len(data)
        pos = 0
        while True:
            start = pos + 2
            if start > end:
                break
            first = data[pos]
            size = data[pos + 1]  # >= 128: the mask bit is set
            if size >= 126:
                if size == 126:
                    start = pos + 4
                    if start > end:
                        break
                    size = data[pos + 2] << 8 | data[pos + 3]
                elif size == 127:
                    start = pos + 10
                    if start > end:
                        break
                    size = int.from_bytes(data[pos + 2:start], "big")
                else:
                    self._fail(1002, "the server masked a frame")
                    return messages
            stop = start + size
            if first == 0x81 and size <= limit and not continuing:  # the hot path: one whole text message
                if stop > end:
                    break
                try:
                    append(data[start:stop].decode())
                except UnicodeDecodeError:
                    self._fail(1007, "invalid UTF-8 in a text message")
                    return messages
            else:
                refusal = self._refusal(first, size)
                if refusal is not None:
                    self._fail(*refusal)
                    return messages
                if stop > end:
                    break
                self._frame(first, data[start:stop], append)
                if self.close is not None or self.failure is not None:
                    return messages
                continuing = self._opcode
            pos = stop
        if pos < end:
            rest = data[pos:] if pos else data
            self._tail.append(rest)
            self._tail_size = end - pos
            self._need = _frame_length(rest)
        return messages

    def _refusal(self, first: int, size: int) -> tuple[int, str] | None:
        """Why a frame with this first byte and payload size is refused, if it is (from the header alone)."""
        if first & 0x70:
            return 1002, "RSV bits set, but no extension was agreed"
        opcode = first & 0x0F
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                return 1002, f"unknown opcode {opcode:#x}"
            if not first & 0x80:
                return 1002, "a fragmented control frame"
            if size > 125:
                return 1002, f"a control frame of {size} bytes (at most 125)"
            return None
        if opcode == OP_CONTINUATION:
            if not self._opcode:
                return 1002, "a continuation frame outside a fragmented message"
            size += self._size
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._opcode:
                return 1002, "a new message inside a fragmented one"
        else:
            return 1002, f"unknown opcode {opcode:#x}"
        if size > self.max_message_size:
            return 1009, f"a message of at least {size} bytes, over the limit of {self.max_message_size}"
        return None

    def _frame(self, first: int, payload: bytes, append: Callable[[str | bytes], None]) -> None:
        """A frame that passed :meth:`_refusal`, payload complete."""
        opcode = first & 0x0F
        if opcode == OP_PING:
            self.pings.append(payload)
        elif opcode == OP_CLOSE:
            self._closed(payload)
        elif opcode != OP_PONG:  # a data frame: the start of a message or a continuation
            if opcode:
                self._opcode = opcode
            self._parts.append(payload)
            self._size += len(payload)
            if first & 0x80:
                parts, kind = self._parts, self._opcode
                body = parts[0] if len(parts) == 1 else b"".join(parts)
                self._parts, self._opcode, self._size = [], 0, 0
                if kind == OP_BINARY:
                    append(body)
                    return
                try:
                    append(body.decode())
                except UnicodeDecodeError:
                    self._fail(1007, "invalid UTF-8 in a text message")

    def _closed(self, payload: bytes) -> None:
        if not payload:
            self.close = (1005, "")
            return
        if len(payload) == 1:
            self._fail(1002, "a close frame with a one-byte payload")
            return
        code = int.from_bytes(payload[:2], "big")
        if code not in WIRE_CLOSE_CODES and not 3000 <= code <= 4999:
            self._fail(1002, f"close code {code} may not be sent")
            return
        try:
            self.close = (code, payload[2:].decode())
        except UnicodeDecodeError:
            self._fail(1007, "invalid UTF-8 in a close reason")

    def _fail(self, code: int, detail: str) -> None:
        self.failure = (code, detail)
        self._tail.clear()
        self._parts = []


class _LeanTransport:
    """One connected WebSocket; the reader is whoever calls ``receive_batch()``."""

    __slots__ = ("url", "abandoned", "_label", "_stream", "_parser", "_send_lock", "_close_timeout",
                 "_pending", "_lost", "_close_sent", "_send_broken")

    def __init__(self, stream: trio.abc.Stream, url: str, label: str, max_message_size: int,
                 close_timeout: float, pending: bytes) -> None:
        self.url = url
        self.abandoned = False
        self._label = label
        self._stream = stream
        self._parser = FrameParser(max_message_size)
        self._send_lock = trio.StrictFIFOLock()
        self._close_timeout = close_timeout
        self._pending = pending  # frame bytes that came with the handshake's answer
        #: how the connection ended (message, code, reason); from then on, send/receive raise
        self._lost: tuple[str, int, str | None] | None = None
        self._close_sent = False
        #: a write was interrupted: the stream may hold half a frame, so nothing more is written
        self._send_broken = False

    def abandon(self) -> None:
        self.abandoned = True

    # --- receiving ------------------------------------------------------------------------

    async def receive_batch(self) -> list[str | bytes]:
        parser = self._parser
        data, self._pending = self._pending, b""
        while True:
            if self._lost is not None:
                raise self._error()
            if not data:
                data = await self._read()
            messages = parser.feed(data)
            data = b""
            if parser.pings or parser.close is not None or parser.failure is not None:
                await self._answer(parser)
            if messages:
                return messages

    async def _read(self) -> bytes:
        try:
            data = await self._stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._end(1006, f"connection lost: {exc!r}")
            raise self._error() from exc
        if not data:
            self._end(1006, "the peer ended the TCP connection without a close frame")
            raise self._error()
        return data

    async def _answer(self, parser: FrameParser) -> None:
        """Pong every ping; answer a close frame or a violation with our close frame."""
        pings, parser.pings = parser.pings, []
        for payload in pings:
            if self._lost is None:
                try:
                    await self._write(client_frame(OP_PONG, payload))
                except ConnectionLost as exc:
                    self._end(1006, str(exc))
        if parser.failure is not None:
            code, detail = parser.failure
            self._end(code, detail)
            await self._send_close(code, CLOSE_NAMES[code].lower().replace("_", " "))
        elif parser.close is not None:
            code, reason = parser.close
            self._end(code, reason, reason)
            await self._send_close(code)  # echo it (the parser let only sendable codes and 1005 through)

    # --- sending --------------------------------------------------------------------------

    async def send(self, text: str) -> None:
        if self._lost is not None:
            raise self._error()
        await self._write(client_frame(OP_TEXT, text.encode()))

    async def _write(self, frame: bytes) -> None:
        async with self._send_lock:
            if self._send_broken:
                raise ConnectionLost(f"{self._label}: an earlier send broke off; the socket is unusable",
                                     code=1006)
            try:
                await self._stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._send_broken = True
                raise ConnectionLost(f"{self._label}: send failed: {exc!r}", code=1006) from exc
            except BaseException:  # cancelled: part of the frame may be on the wire
                self._send_broken = True
                raise

    async def _send_close(self, code: int, reason: str = "") -> bool:
        """Our close frame, once, within ``close_timeout``; True when it went out."""
        if self._close_sent or self._send_broken:
            return False
        self._close_sent = True
        with trio.move_on_after(self._close_timeout):
            try:
                await self._write(client_frame(OP_CLOSE, close_payload(code, reason)))
            except ConnectionLost:
                return False
            return True
        return False

    # --- the end --------------------------------------------------------------------------

    def _end(self, code: int, detail: str, reason: str | None = None) -> None:
        """Record how the connection ended; the first cause wins."""
        if self._lost is None:
            name = CLOSE_NAMES.get(code)
            text = f"{self._label}: closed with code {code}" + (f" {name}" if name else "")
            self._lost = (text + (f" ({detail})" if detail else ""), code, reason)

    def _error(self) -> ConnectionLost:
        assert self._lost is not None
        text, code, reason = self._lost
        return ConnectionLost(text, code=code, reason=reason)

    async def _shut(self, close_timeout: float, *, cancelled: bool) -> bool:
        """Close politely unless the connection already ended or the peer is known dead, then
        release the socket. True when the peer's close frame did not come in time."""
        try:
            if self.abandoned or self._lost is not None:
                return False
            self._end(1000, "closed by this side")  # send() refuses from here on
            with trio.move_on_after(CANCELLED_CLOSE_WAIT if cancelled else close_timeout, shield=True) as scope:
                if await self._send_close(1000) and not cancelled:
                    await self._await_peer_close()
            return scope.cancelled_caught and not cancelled
        finally:
            await trio.aclose_forcefully(self._stream)

    async def _await_peer_close(self) -> None:
        """Read (and drop) whatever still comes until the peer's close frame or EOF."""
        parser = self._parser
        data, self._pending = self._pending, b""
        while not parser.ended:
            if data:
                parser.feed(data)
                data = b""
                continue
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not data:
                return


def _accept_token(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest())


def _upgrade_problem(response: h11.InformationalResponse, key: bytes) -> str | None:
    """What is wrong with a ``101`` answer to our upgrade request, if anything."""
    connection: list[bytes] = []
    upgrade = accept = None
    for name, value in response.headers:  # h11 gives lower-case names
        if name == b"connection":
            connection += (token.strip().lower() for token in value.split(b","))
        elif name == b"upgrade":
            upgrade = value.strip().lower()
        elif name == b"sec-websocket-accept":
            accept = value.strip()
        elif name in (b"sec-websocket-extensions", b"sec-websocket-protocol"):
            return f"it chose {name.decode()} {value.decode(errors='replace')!r}, which we did not offer"
    if b"upgrade" not in connection:
        return "no 'Connection: upgrade' header"
    if upgrade != b"websocket":
        return "no 'Upgrade: websocket' header"
    if accept != _accept_token(key):
        return "a wrong Sec-WebSocket-Accept"
    return None


async def _upgrade(stream: trio.abc.Stream, host: str, target: str, label: str, url: str) -> bytes:
    """The HTTP upgrade; returns the bytes that followed the ``101`` answer (frames already)."""
    key = base64.b64encode(os.urandom(16))
    http = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=target, headers=[
        ("Host", host), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13"),
    ])
    await stream.send_all(http.send(request) + (http.send(h11.EndOfMessage()) or b""))
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as exc:
            raise HandshakeError(f"{label}: {url} answered the WebSocket upgrade with broken HTTP: {exc}") from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise HandshakeError(f"{label}: {url} closed the connection during the WebSocket handshake")
            http.receive_data(data)
        elif isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            problem = _upgrade_problem(event, key)
            if problem is not None:
                raise HandshakeError(f"{label}: {url} accepted the WebSocket upgrade with {problem}")
            return bytes(http.trailing_data[0])
        elif isinstance(event, h11.Response):
            status = event.status_code
            wait = HANDSHAKE_COOLDOWN.get(status)
            advice = f"; backing off {wait:g}s as the exchange asks" if wait else ""
            raise HandshakeError(f"{label}: {url} refused the WebSocket upgrade with HTTP {status}{advice}",
                                 status=status, retry_after=wait)
        # any other 1xx answer: wait for the real one


async def _connect(url: str, label: str, connect_timeout: float, verify_tls: bool) -> tuple[trio.abc.Stream, bytes]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("ws", "wss") or not parts.hostname or port == -1:
        raise HandshakeError(f"{label}: {url} is not a ws:// or wss:// URL")
    host = parts.hostname
    secure = parts.scheme == "wss"
    default_port = 443 if secure else 80
    port = port or default_port
    name = f"[{host}]" if ":" in host else host
    host_header = name if port == default_port else f"{name}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    context = _ssl_context(url, verify_tls)
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(host, port)
            if context is not None:
                stream = trio.SSLStream(stream, context, server_hostname=host, https_compatible=True)
                await stream.do_handshake()
            return stream, await _upgrade(stream, host_header, target, label, url)
    except BaseException as exc:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        if isinstance(exc, trio.TooSlowError):
            raise HandshakeError(f"{label}: no WebSocket handshake from {url} within {connect_timeout:g}s") from None
        if isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
            raise HandshakeError(f"{label}: cannot connect to {url}: {exc!r}") from None
        raise


@asynccontextmanager
async def open_lean_transport(url: str, *, label: str = "ws", max_message_size: int = MAX_MESSAGE_SIZE,
                              connect_timeout: float = 10.0, close_timeout: float = CLOSE_TIMEOUT,
                              verify_tls: bool = True) -> AsyncIterator[Transport]:
    """Connect to ``url``; close (bounded by ``close_timeout``) on exit. As ``open_transport``."""
    stream, pending = await _connect(url, label, connect_timeout, verify_tls)
    transport = _LeanTransport(stream, url, label, max_message_size, close_timeout, pending)
    try:
        yield transport
    except BaseException as exc:
        await transport._shut(close_timeout, cancelled=_is_cancellation(exc))
        raise
    if await transport._shut(close_timeout, cancelled=False):
        raise ConnectionLost(f"{label}: close handshake with {url} timed out")
