"""The transport contract, and the private socket's transport (the one trio-websocket importer).

Actors see only :class:`Transport`. Two implementations keep one contract, tested by one
parametrized suite (``tests/actors/test_transport_contract.py``) and one hostile-server
suite (``tests/actors/test_transport_hostile.py``) against both:

- ``open_transport`` (here): trio-websocket, through its public API only
  (``wrap_client_stream``, ``get_message``, ``send_message``, ``aclose``, ``closed``). It
  carries the private socket (a few frames a second).
- ``lean_transport.open_lean_transport``: websockets' sans-IO client core driven by the
  caller's own 64 KiB reads, one batch per read, no reader task. It carries the busy public
  sockets. ``actors.connection.choose_transport`` picks one per connection.

**The contract** (``async with open_*(url, label=, max_message_size=, connect_timeout=,
close_timeout=, verify_tls=, ssl_context=) as transport``):

1. ``receive_batch()`` returns at least one message (``str`` for text, ``bytes`` for binary),
   in arrival order. The lean transport returns every message one read completed; this one
   one message per call (trio-websocket's public API hands them over one at a time).
2. ``receive_batch()`` is cancel-safe: a cancelled call loses no message; the next call
   returns what had arrived (also when the cancel came while a pong or close echo was being
   written).
3. ``send(text)`` writes one text frame; one task may send while another receives.
4. The end of the connection raises :class:`~hybrid_actors.errors.ConnectionLost` from
   ``receive_batch()`` and ``send()``, with ``.code``: the peer's close code (and ``.reason``),
   ours after a violation we detected (1002 protocol error, 1007 invalid UTF-8, 1009 message
   too big), 1006 when TCP ended without a close frame. Messages that arrived before the
   end are returned first.
5. A refused, broken, unreachable or timed-out upgrade raises
   :class:`~hybrid_actors.errors.HandshakeError`; an HTTP refusal carries ``.status``, and 403
   (Bybit's IP ban) and 429 (connection-rate limit) carry the exchange's cool-down as
   ``.retry_after`` (:data:`HANDSHAKE_COOLDOWN`).
6. Memory stays bounded whatever the server sends: a message over ``max_message_size`` is
   refused (1009) from its frame header, before its payload is buffered.
7. Leaving the block sends a close frame (1000) and waits at most ``close_timeout`` for the
   peer's; a peer that never answers costs ``close_timeout`` and raises ``ConnectionLost``
   ("timed out") unless another exception is already on its way out. When the block is left
   by cancellation, the frame goes out and nobody waits (``CANCELLED_CLOSE_WAIT``); a peer
   ``abandon()``-ed as dead gets no frame and no wait. The TCP socket is always released.
8. ``wss://`` verifies the server's certificate and hostname (``ssl.create_default_context()``,
   or the caller's ``ssl_context``); ``verify_tls=False`` is for a local relay only.

trio-websocket has no keepalive of its own: the heartbeat actor sends Bybit's JSON ping.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, Protocol, TypeVar
from urllib.parse import urlsplit

import trio
import trio_websocket as tw

from .config import CLOSE_TIMEOUT, MAX_MESSAGE_SIZE
from .errors import ConnectionLost, HandshakeError, TlsVerificationError

__all__ = ["Transport", "open_transport", "refusal", "connect_failure", "connect_error", "HANDSHAKE_COOLDOWN",
           "WebSocketServer", "WebSocketRequest", "WebSocketConnection", "ConnectionClosed"]

# The server side of trio-websocket, for the simulator (hybrid_actors/testing): named here so
# that this module stays the one place the library is imported.
WebSocketServer = tw.WebSocketServer
WebSocketRequest = tw.WebSocketRequest
WebSocketConnection = tw.WebSocketConnection
ConnectionClosed = tw.ConnectionClosed

#: trio-websocket's message queue: its reader task runs this far ahead of ours
QUEUE_SIZE: Final = 64
RECEIVE_BYTES: Final = 64 * 1024
#: refusals that mean "stop connecting for a while": 403 is an IP ban (Bybit: wait >= 10 min),
#: 429 the 500-connections-per-5-minutes limit
HANDSHAKE_COOLDOWN: Final = {403: 600.0, 429: 300.0}
#: on cancellation, time to get the close frame out (nobody is left to read the reply)
CANCELLED_CLOSE_WAIT: Final = 0.05
_IO_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class Transport(Protocol):
    """A connected WebSocket carrying text frames (the contract: this module's docstring)."""

    url: str

    async def receive_batch(self) -> list[str | bytes]:
        """One or more messages, in order; cancel-safe; raises ConnectionLost when closed."""

    async def send(self, text: str) -> None:
        """Send one text frame; raises ConnectionLost when closed."""

    def abandon(self) -> None:
        """The peer is known dead (no pong): on exit, drop the TCP connection at once
        instead of waiting for a close handshake that cannot come."""


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_cancellation(inner) for inner in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def refusal(label: str, url: str, status: int) -> HandshakeError:
    """The error for an HTTP answer other than 101 to our upgrade: 403/429 carry the cool-down."""
    wait = HANDSHAKE_COOLDOWN.get(status)
    advice = f"; backing off {wait:g}s as the exchange asks" if wait else ""
    return HandshakeError(f"{label}: {url} refused the WebSocket upgrade with HTTP {status}{advice}",
                          status=status, retry_after=wait)


def connect_failure(exc: BaseException) -> str:
    """What went wrong opening the TCP or TLS connection: the TLS verification error itself
    (an unknown issuer, a hostname mismatch), not trio's wrapper around it."""
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {cause.verify_message or cause.reason} ({cause!r})"
    return repr(cause)


def connect_error(label: str, url: str, exc: BaseException) -> HandshakeError:
    """The error for a TCP or TLS connection that could not be opened: a rejected certificate
    is a :class:`~hybrid_actors.errors.TlsVerificationError`, so it is reported as what it is."""
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None else exc
    kind = TlsVerificationError if isinstance(cause, ssl.SSLCertVerificationError) else HandshakeError
    return kind(f"{label}: cannot connect to {url}: {connect_failure(exc)}")


def _ssl_context(url: str, verify: bool, context: ssl.SSLContext | None = None) -> ssl.SSLContext | None:
    """The TLS context for ``url``: None for ws://; the caller's, else one that verifies the
    certificate chain and the hostname."""
    if urlsplit(url).scheme != "wss":
        return None
    if context is not None:
        return context
    context = ssl.create_default_context()
    if not verify:  # only for a local relay with a self-signed certificate, never the exchange
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _GuardedStream(trio.abc.Stream):
    """The byte stream under trio-websocket, with one bound it lacks: it keeps every fragment
    of a message (empty ones too) in a list, so endless empty continuation frames would grow
    memory without end. Bytes read since a message was last handed over are counted; past
    ``budget`` the connection is cut (a 1009 for the caller)."""

    def __init__(self, inner: trio.abc.Stream, budget: int) -> None:
        self.inner = inner
        self.budget = budget
        self.unconsumed = 0
        self.tripped = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.unconsumed > self.budget:
            self.tripped = True
            await trio.aclose_forcefully(self.inner)
            raise trio.BrokenResourceError("a message took more bytes than the size limit allows")
        data = await self.inner.receive_some(max_bytes)
        self.unconsumed += len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


class _WsTransport:
    __slots__ = ("url", "_ws", "_label", "_guard", "abandoned")

    def __init__(self, ws: tw.WebSocketConnection, url: str, label: str, guard: _GuardedStream):
        self.url = url
        self._ws = ws
        self._label = label
        self._guard = guard
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True

    def _lost(self, exc: tw.ConnectionClosed | None = None) -> ConnectionLost:
        if self._guard.tripped:
            return ConnectionLost(f"{self._label}: closed with code 1009 MESSAGE_TOO_BIG (a message took "
                                  f"more than {self._guard.budget} bytes of frames)", code=1009)
        reason = exc.reason if exc is not None else self._ws.closed
        if reason is None:
            return ConnectionLost(f"{self._label}: connection lost", code=1006)
        detail = f" ({reason.reason})" if reason.reason else ""
        return ConnectionLost(f"{self._label}: closed with code {reason.code} {reason.name}{detail}",
                              code=reason.code, reason=reason.reason)

    async def receive_batch(self) -> list[str | bytes]:
        try:
            message = await self._ws.get_message()  # cancel-safe: a channel receive
        except tw.ConnectionClosed as exc:
            raise self._lost(exc) from None
        self._guard.unconsumed = 0
        return [message]

    async def send(self, text: str) -> None:
        try:
            await self._ws.send_message(text)
        except tw.ConnectionClosed as exc:
            raise self._lost(exc) from None
        except _IO_ERRORS as exc:
            raise ConnectionLost(f"{self._label}: send failed: {exc!r}", code=1006) from exc


async def _open_stream(url: str, label: str, context: ssl.SSLContext | None) -> tuple[trio.abc.Stream, str, str]:
    """TCP (and TLS) to ``url``'s host; returns the stream, the Host header and the resource."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("ws", "wss") or not parts.hostname or port == -1:
        raise HandshakeError(f"{label}: {url} is not a ws:// or wss:// URL")
    host = parts.hostname
    default_port = 443 if parts.scheme == "wss" else 80
    port = port or default_port
    name = f"[{host}]" if ":" in host else host
    host_header = name if port == default_port else f"{name}:{port}"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if context is not None:
        stream = trio.SSLStream(stream, context, server_hostname=host, https_compatible=True)
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    return stream, host_header, resource


_E = TypeVar("_E", bound=BaseException)


def _first(group: BaseExceptionGroup[BaseException], kind: type[_E]) -> _E | None:
    for inner in group.exceptions:
        if isinstance(inner, BaseExceptionGroup):
            found = _first(inner, kind)
            if found is not None:
                return found
        elif isinstance(inner, kind):
            return inner
    return None


@asynccontextmanager
async def open_transport(url: str, *, label: str = "ws", max_message_size: int = MAX_MESSAGE_SIZE,
                         connect_timeout: float = 10.0, close_timeout: float = CLOSE_TIMEOUT,
                         verify_tls: bool = True,
                         ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Transport]:
    """Connect to ``url``; close (bounded by ``close_timeout``) on exit. See the contract above."""
    context = _ssl_context(url, verify_tls, ssl_context)
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(connect_timeout):
            stream, host_header, resource = await _open_stream(url, label, context)
    except trio.TooSlowError:
        raise HandshakeError(f"{label}: no WebSocket handshake from {url} within {connect_timeout:g}s") from None
    except _IO_ERRORS as exc:
        raise connect_error(label, url, exc) from None
    guard = _GuardedStream(stream, (QUEUE_SIZE + 2) * max_message_size)
    outcome: BaseException | None = None  # the body's exception, re-raised outside the nursery
    timed_out = connected = False
    try:
        async with trio.open_nursery() as nursery:  # trio-websocket's reader task runs here
            with trio.fail_after(connect_timeout):
                # trio-websocket annotates SocketStream | SSLStream here, yet uses only the
                # trio.abc.Stream interface (its WebSocketConnection takes any Stream)
                ws = await tw.wrap_client_stream(
                    nursery, guard, host_header, resource, message_queue_size=QUEUE_SIZE,  # type: ignore[arg-type]
                    max_message_size=max_message_size, receive_buffer_size=RECEIVE_BYTES)
            connected = True
            transport = _WsTransport(ws, url, label, guard)
            try:
                yield transport
            except BaseException as exc:
                outcome = exc
            # Close politely: a close frame (1000), then wait for the peer's, bounded. When we
            # are being cancelled (stop), nobody waits for the reply. A peer known dead gets no wait.
            if transport.abandoned:
                wait = 0.0
            elif outcome is not None and _is_cancellation(outcome):
                wait = CANCELLED_CLOSE_WAIT
            else:
                wait = close_timeout
            with trio.move_on_after(wait, shield=True) as scope:
                await ws.aclose()
            timed_out = scope.cancelled_caught and wait == close_timeout
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if outcome is not None:
            raise outcome
        if _first(group, trio.Cancelled) is not None or _first(group, Exception) is None:
            raise
        if connected:  # trio-websocket's reader failed after the handshake
            raise ConnectionLost(f"{label}: {url}: the WebSocket reader failed: "
                                 f"{_first(group, Exception)!r}", code=1006) from None
        if _first(group, trio.TooSlowError) is not None:
            raise HandshakeError(f"{label}: no WebSocket handshake from {url} within {connect_timeout:g}s") from None
        rejected = _first(group, tw.ConnectionRejected)
        if rejected is not None:
            raise refusal(label, url, rejected.status_code) from None
        raise HandshakeError(f"{label}: {url} answered the WebSocket upgrade badly: "
                             f"{_first(group, Exception)!r}") from None
    except trio.TooSlowError:
        raise HandshakeError(f"{label}: no WebSocket handshake from {url} within {connect_timeout:g}s") from None
    finally:
        # trio-websocket leaves the TCP socket open when the peer closed first; ours to close
        await trio.aclose_forcefully(stream)
    if outcome is not None:
        raise outcome
    if timed_out:
        raise ConnectionLost(f"{label}: close handshake with {url} timed out")
