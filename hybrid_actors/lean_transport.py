"""The busy public sockets' WebSocket client: one task, one read, one batch.

The same :class:`~hybrid_actors.transport.Transport` contract as ``transport.py`` (see its
docstring), without a reader task or a message queue: the caller's ``receive_batch()``
reads the socket itself, 64 KiB at a time, and hands down every message that read
completed as one batch. A burst of 500 tickers costs a few reads and a tight loop, with
no scheduler hop per message. With ``coalesce`` (the stream's ``read_coalesce``, 1 ms by
default), a busy socket's reader sleeps in the kernel until about three quarters of the
window's bytes are queued (``SO_RCVLOWAT``), so a read carries ~15-20 frames, not one or two:
each read is ~30 us of CPU whatever it carries (see ``_LeanTransport._wait_for_more``).

The WebSocket protocol is websockets' sans-IO client (:class:`websockets.client.ClientProtocol`,
public API only): the upgrade request and the check of its answer (101, ``Upgrade``,
``Connection``, ``Sec-WebSocket-Accept``, no extension or subprotocol we did not offer),
frame parsing, the pong to every ping, the close handshake, ``max_size`` (checked from a
frame's header, before its payload is buffered, and over a fragmented message's total).
What the core leaves to its caller is here:

- assembling fragmented messages, with a bound on the number of fragments
  (:data:`MAX_FRAGMENTS`; endless empty continuation frames cost no memory past it) and
  UTF-8 decoding of text messages (invalid: close 1007);
- writing ``data_to_send()`` (pongs, close frames, our messages) under one lock, because the
  reader answers pings while the outbox writer sends;
- translating its errors: a refused or broken upgrade → :class:`~hybrid_actors.errors.HandshakeError`
  (``status``, and ``retry_after`` for a ban or rate limit: ``HANDSHAKE_COOLDOWN``); the end
  of the connection → :class:`~hybrid_actors.errors.ConnectionLost` with ``.code``: the peer's
  close code, ours after a violation (1002 protocol error, 1007 bad UTF-8, 1009 too big or too
  many fragments), 1006 when TCP ended without a close frame.

``wss://`` runs over :class:`~hybrid_actors.tls.TlsStream` (the standard library's sans-IO
TLS, which hands over every record a read brought: ``trio.SSLStream`` returns one record, so
one frame, per read) with ``ssl.create_default_context()`` (certificate and hostname
verified) unless the caller passes its own context.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Final

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI, InvalidState
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from .config import CLOSE_TIMEOUT, MAX_MESSAGE_SIZE
from .errors import ConnectionLost, HandshakeError
from .tls import TlsStream
from .transport import CANCELLED_CLOSE_WAIT, HANDSHAKE_COOLDOWN, RECEIVE_BYTES, Transport, _is_cancellation, \
    _ssl_context, connect_error, refusal

__all__ = ["open_lean_transport", "MAX_FRAGMENTS"]

#: fragments of one message at most (websockets' own connections use the same bound)
MAX_FRAGMENTS: Final = 4096
_TEXT: Final = Opcode.TEXT
_BINARY: Final = Opcode.BINARY
_CONT: Final = Opcode.CONT
_CLOSE: Final = Opcode.CLOSE
_OPEN: Final = State.OPEN
_IO_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
#: a coalescing read waits for the bytes that arrive in this share of the window, at the
#: rate the last read measured (the window itself only bounds the wait)
GATHER_SHARE: Final = 0.75
#: the most a coalescing read asks the kernel to gather before it wakes the reader (~64 frames)
MAX_LOW_WATER: Final = 16 * 1024
#: below this, a low-water mark is not worth a system call (about two ticker frames)
MIN_LOW_WATER: Final = 512


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The TCP socket under a plain or TLS stream (None for anything else)."""
    if isinstance(stream, TlsStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


def _code_name(code: int) -> str:
    try:
        return f" {CloseCode(code).name}"
    except ValueError:
        return ""


class _LeanTransport:
    """One connected WebSocket; the reader is whoever calls ``receive_batch()``."""

    __slots__ = ("url", "abandoned", "_label", "_stream", "_protocol", "_send_lock", "_close_timeout",
                 "_ready", "_unflushed", "_lost", "_send_broken", "_parts", "_kind", "_coalesce", "_last_read", "_outgoing",
                 "_socket", "_rate")

    def __init__(self, stream: trio.abc.Stream, protocol: ClientProtocol, url: str, label: str,
                 close_timeout: float, coalesce: float = 0.0) -> None:
        self.url = url
        self.abandoned = False
        self._label = label
        self._stream = stream
        self._protocol = protocol
        self._send_lock = trio.StrictFIFOLock()
        self._close_timeout = close_timeout
        #: messages parsed and not yet handed over: a cancelled receive_batch() leaves them here
        self._ready: list[str | bytes] = []
        self._unflushed = False  # frames the core queued while receiving may still wait to be written
        #: how the connection ended (message, code, reason); from then on, send/receive raise
        self._lost: tuple[str, int, str | None] | None = None
        #: a write was interrupted: the stream may hold half a frame, so nothing more is written
        self._send_broken = False
        self._parts: list[bytes | bytearray | memoryview] = []  # fragments of the message in progress
        self._kind: Opcode | None = None  # its opcode (None: no fragmented message in progress)
        self._outgoing: list[bytes] = []  # frames taken from the core, waiting for the send lock
        #: the TCP socket whose low-water mark a coalescing read sets (None: coalescing off)
        self._socket = _socket_of(stream) if coalesce > 0 else None
        #: adaptive coalescing window in seconds (0: off); see _wait_for_more
        self._coalesce = coalesce if self._socket is not None else 0.0
        self._last_read = trio.current_time()  # when the previous read returned (the handshake's)
        self._rate = 0.0  # bytes per second the last read measured

    def abandon(self) -> None:
        self.abandoned = True

    # --- receiving ------------------------------------------------------------------------

    async def receive_batch(self) -> list[str | bytes]:
        if self._ready and self._unflushed:  # an earlier call was cancelled while writing
            await self._flush_before_handing_over()
        while not self._ready:
            if self._lost is not None:
                raise self._error()
            if self._coalesce:
                await self._wait_for_more()
            data = await self._read()  # cancel-safe: nothing was taken from the socket yet
            protocol = self._protocol
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            # once open, the client core yields only Frames (its type says Request | Response | Frame)
            self._take(protocol.events_received())  # type: ignore[arg-type]  # no await from the read to here
            if protocol.state is not _OPEN:
                self._ended()
            await self._flush_before_handing_over()
        batch, self._ready = self._ready, []
        return batch

    async def _flush_before_handing_over(self) -> None:
        """Pongs and a close echo go out before the messages are handed over; a cancel here
        keeps the messages in ``self._ready`` (and the frames queued) for the next call."""
        self._unflushed = True
        try:
            await self._flush()
        except ConnectionLost:
            if not self._ready:
                raise  # else: these messages first, the loss on the next call
        self._unflushed = False

    async def _wait_for_more(self) -> None:
        """Adaptive coalescing, for a socket busy enough that a read would carry one or two
        frames. Reads are ~30 us of CPU each (a wakeup and a system call), parsing a ticker
        frame a few: waiting until a few more frames are there divides the first cost.

        A socket quiet for longer than the window, or one whose last read measured a rate
        under two frames per gathering time, reads at once. A busy one asks the kernel
        (``SO_RCVLOWAT``) to wake the reader once the bytes that arrive in
        ``GATHER_SHARE`` of the window, at the last read's rate (rounded down to a power of
        two), are queued; the mark is set for that wait only: during a burst
        each frame waits about that long (0.75 ms for the 1 ms default),
        not the whole window. The window bounds the wait when fewer bytes come (the end of a
        burst); epoll's timeout is in whole milliseconds, so in practice that bound is at least
        1 ms."""
        sock = self._socket
        if sock is None:
            return
        deadline = self._last_read + self._coalesce
        want = min(MAX_LOW_WATER, int(self._rate * self._coalesce * GATHER_SHARE))
        if want < MIN_LOW_WATER or trio.current_time() >= deadline:
            return
        # a power of two: the mark moves in steps, not with every read's jitter
        if not self._set_low_water(sock, 1 << (want.bit_length() - 1)):
            return
        try:
            with trio.move_on_at(deadline), suppress(*_IO_ERRORS):  # the read that follows reports one
                await trio.lowlevel.wait_readable(sock)
        finally:
            # in force only while we wait: every other read (the TLS layer's own, the close
            # handshake's) wakes on any byte
            self._set_low_water(sock, 1)

    def _set_low_water(self, sock: trio.socket.SocketType, size: int) -> bool:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
        except OSError:  # a closed socket (the read reports it) or one that refuses: coalescing off
            self._socket = None
            self._coalesce = 0.0
            return False
        return True

    async def _read(self) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(RECEIVE_BYTES)
        except _IO_ERRORS as exc:
            self._end(1006, f"connection lost: {exc!r}")
            raise self._error() from exc
        if self._coalesce:
            now = trio.current_time()
            self._rate = len(data) / max(now - self._last_read, 1e-6)
            self._last_read = now
        return data

    def _take(self, frames: list[Frame]) -> None:
        """The messages these frames complete, onto ``self._ready`` (fragments assembled)."""
        ready = self._ready
        for frame in frames:
            opcode = frame.opcode
            if opcode is _TEXT and frame.fin:  # the hot path: a whole text message in one frame
                try:
                    ready.append(frame.data.decode())  # type: ignore[union-attr]  # parsed payloads are bytes
                except UnicodeDecodeError:
                    self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
                    return
            elif opcode is _TEXT or opcode is _BINARY or opcode is _CONT:
                if opcode is not _CONT:
                    self._kind = opcode  # the core refuses a new message inside a fragmented one
                elif len(self._parts) >= MAX_FRAGMENTS:
                    self._fail(CloseCode.MESSAGE_TOO_BIG, f"more than {MAX_FRAGMENTS} fragments in one message")
                    return
                self._parts.append(frame.data)
                if frame.fin:
                    body = b"".join(self._parts)
                    kind, self._kind, self._parts = self._kind, None, []
                    if kind is _BINARY:
                        ready.append(body)
                        continue
                    try:
                        ready.append(body.decode())
                    except UnicodeDecodeError:
                        self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
                        return
            # ping (the core queued its pong), pong, close (handled from the core's state)

    def _fail(self, code: int, detail: str) -> None:
        """A violation the core leaves to us: fail the connection with ``code``."""
        self._parts, self._kind = [], None
        self._end(code, detail)
        if self._protocol.state is _OPEN:
            self._protocol.fail(code, detail)

    def _ended(self) -> None:
        """The core left OPEN while receiving: the peer closed, or broke the protocol, or TCP ended."""
        protocol = self._protocol
        if protocol.parser_exc is not None:  # a violation (close frame sent) or EOF (1006)
            sent = protocol.close_sent
            self._end(int(sent.code) if sent is not None else 1006, str(protocol.parser_exc))
        elif protocol.close_rcvd is not None:
            code, reason = int(protocol.close_rcvd.code), protocol.close_rcvd.reason
            self._end(code, reason, reason or None)
        else:
            self._end(1006, "the connection ended")

    # --- sending --------------------------------------------------------------------------

    async def send(self, text: str) -> None:
        if self._lost is not None:
            raise self._error()
        try:
            self._protocol.send_text(text.encode())
        except InvalidState:
            raise ConnectionLost(f"{self._label}: the connection is closing", code=1006) from None
        await self._flush()

    async def _flush(self) -> None:
        """Write what the core has queued: our frames and those of the other task, in order.
        Nothing queued (the common case after a read) costs no lock and no checkpoint. What
        is queued moves to ``self._outgoing`` first, so a flush cancelled while it waits for
        the lock leaves it for the next flush, in order."""
        outgoing = self._outgoing
        outgoing += self._protocol.data_to_send()
        if not outgoing:
            return
        async with self._send_lock:
            outgoing += self._protocol.data_to_send()
            payload = b"".join(outgoing)  # SEND_EOF (b"") adds nothing: we close the socket ourselves
            outgoing.clear()
            if not payload:
                return
            if self._send_broken:
                self._end(1006, "an earlier send broke off; the socket is unusable")
                raise self._error()
            try:
                await self._stream.send_all(payload)
            except _IO_ERRORS as exc:
                self._send_broken = True
                self._end(1006, f"send failed: {exc!r}")
                raise self._error() from exc
            except BaseException:  # cancelled: part of the frame may be on the wire
                self._send_broken = True
                raise

    # --- the end --------------------------------------------------------------------------

    def _end(self, code: int, detail: str, reason: str | None = None) -> None:
        """Record how the connection ended; the first cause wins."""
        if self._lost is None:
            text = f"{self._label}: closed with code {code}{_code_name(code)}"
            self._lost = (text + (f" ({detail})" if detail else ""), code, reason)

    def _error(self) -> ConnectionLost:
        assert self._lost is not None
        text, code, reason = self._lost
        return ConnectionLost(text, code=code, reason=reason)

    async def _shut(self, *, cancelled: bool) -> bool:
        """Close politely unless the connection already ended or the peer is known dead, then
        release the socket. True when the peer's close frame did not come in time."""
        try:
            if self.abandoned or self._lost is not None or self._send_broken:
                if self._lost is not None and not self._send_broken and not self.abandoned:
                    with trio.move_on_after(CANCELLED_CLOSE_WAIT, shield=True):
                        await self._flush()  # a close frame still queued (a violation we answer)
                return False
            self._end(1000, "closed by this side")  # send() refuses from here on
            with trio.move_on_after(CANCELLED_CLOSE_WAIT if cancelled else self._close_timeout,
                                    shield=True) as scope:
                self._protocol.send_close(CloseCode.NORMAL_CLOSURE)
                try:
                    await self._flush()
                except ConnectionLost:
                    return False
                if not cancelled:
                    await self._await_peer_close()
            return scope.cancelled_caught and not cancelled
        finally:
            await trio.aclose_forcefully(self._stream)

    async def _await_peer_close(self) -> None:
        """Read (and drop) whatever still comes until the peer's close frame or EOF."""
        protocol = self._protocol
        while protocol.close_rcvd is None and protocol.state is not State.CLOSED:
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except _IO_ERRORS:
                return
            if not data:
                return
            protocol.receive_data(data)
            protocol.events_received()
            protocol.data_to_send()  # nothing is due once our close went out


async def _upgrade(stream: trio.abc.Stream, protocol: ClientProtocol, label: str, url: str) -> None:
    """The HTTP upgrade; frames that came right after the ``101`` stay in the core."""
    protocol.send_request(protocol.connect())
    await stream.send_all(b"".join(protocol.data_to_send()))
    while protocol.state is State.CONNECTING and protocol.handshake_exc is None:
        data = await stream.receive_some(RECEIVE_BYTES)
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
            if protocol.state is State.CONNECTING and protocol.handshake_exc is None:
                break
    exc = protocol.handshake_exc
    if isinstance(exc, InvalidStatus):
        raise refusal(label, url, exc.response.status_code)
    if exc is not None:
        cause = exc.__cause__
        detail = f"{exc}" + (f": {cause}" if cause is not None and str(cause) else "")
        if isinstance(cause, EOFError):
            detail = "it closed the connection during the WebSocket handshake"
        raise HandshakeError(f"{label}: {url} answered the WebSocket upgrade badly: {detail}")
    if protocol.state is State.CONNECTING:
        raise HandshakeError(f"{label}: {url} closed the connection during the WebSocket handshake")


async def _connect(url: str, label: str, connect_timeout: float, max_message_size: int,
                   context: ssl.SSLContext | None) -> tuple[trio.abc.Stream, ClientProtocol]:
    try:
        uri = parse_uri(url)
    except InvalidURI:
        raise HandshakeError(f"{label}: {url} is not a ws:// or wss:// URL") from None
    protocol = ClientProtocol(uri, max_size=max_message_size)
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(uri.host, uri.port)
            if context is not None:
                stream = TlsStream(stream, context, uri.host)  # every record of a read at once
                await stream.do_handshake()
            await _upgrade(stream, protocol, label, url)
            return stream, protocol
    except BaseException as exc:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        if isinstance(exc, trio.TooSlowError):
            raise HandshakeError(f"{label}: no WebSocket handshake from {url} within {connect_timeout:g}s") from None
        if isinstance(exc, _IO_ERRORS):
            raise connect_error(label, url, exc) from None
        if isinstance(exc, InvalidHandshake):  # not expected from the sans-IO core; named anyway
            raise HandshakeError(f"{label}: {url}: {exc}") from None
        raise


@asynccontextmanager
async def open_lean_transport(url: str, *, label: str = "ws", max_message_size: int = MAX_MESSAGE_SIZE,
                              connect_timeout: float = 10.0, close_timeout: float = CLOSE_TIMEOUT,
                              verify_tls: bool = True, ssl_context: ssl.SSLContext | None = None,
                              coalesce: float = 0.0) -> AsyncIterator[Transport]:
    """Connect to ``url``; close (bounded by ``close_timeout``) on exit. As ``open_transport``.

    ``coalesce`` (seconds, 0: off): the adaptive coalescing window of a busy socket (see
    ``_LeanTransport._wait_for_more``): one read carries many frames, each waiting about a
    three quarters of the window, at most the window (in practice at least 1 ms)."""
    context = _ssl_context(url, verify_tls, ssl_context)
    stream, protocol = await _connect(url, label, connect_timeout, max_message_size, context)
    transport = _LeanTransport(stream, protocol, url, label, close_timeout, coalesce)
    # frames that came with the 101 answer: the first batch
    transport._take(protocol.events_received()[1:])  # type: ignore[arg-type]  # the Response, then Frames
    if protocol.state is not _OPEN:
        transport._ended()
    try:
        yield transport
    except BaseException as exc:
        await transport._shut(cancelled=_is_cancellation(exc))
        raise
    if await transport._shut(cancelled=False):
        raise ConnectionLost(f"{label}: close handshake with {url} timed out")
