"""The one module that imports trio-websocket: a batch-shaped WebSocket transport.

Actors see only :class:`Transport`: ``receive_batch()`` returns every message that
has arrived (one read's worth, at least one), so the actor handles a batch per wakeup
instead of paying a task hop per message; ``send()`` writes one text frame. For that,
trio-websocket's reader task queues the messages of one read without a scheduler
round-trip each (:class:`_QueueWithoutHop`); it still yields once per read.

This transport carries the private socket. The busy public sockets use the leaner one in
``lean_transport.py`` (the reader parses its own 64 KiB reads: no reader task, no queue),
chosen per connection by ``actors.connection.choose_transport``; both implement
:class:`Transport` and translate errors the same way, and ``lean_transport`` reuses this
module's constants.

Foreign errors are translated here: a failed handshake becomes
:class:`~hybrid_actors.errors.HandshakeError`, a closed/reset socket or an oversized
frame (close 1009) :class:`~hybrid_actors.errors.ConnectionLost` with the close code.
TLS is verified (``ssl.create_default_context``). trio-websocket has no keepalive of
its own: the heartbeat actor sends Bybit's JSON ping.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Final, Protocol
from urllib.parse import urlsplit

import trio
import trio_websocket as tw

from .config import CLOSE_TIMEOUT, MAX_MESSAGE_SIZE
from .errors import ConnectionLost, HandshakeError, HybridActorsError

__all__ = ["Transport", "open_transport", "MAX_BATCH",
           "WebSocketServer", "WebSocketRequest", "WebSocketConnection", "ConnectionClosed"]

# The server side of trio-websocket, for the simulator (hybrid_actors/testing): named here so
# that this module stays the one place the library is imported.
WebSocketServer = tw.WebSocketServer
WebSocketRequest = tw.WebSocketRequest
WebSocketConnection = tw.WebSocketConnection
ConnectionClosed = tw.ConnectionClosed

#: messages handed over per wakeup at most (keeps one batch's latency bounded)
MAX_BATCH: Final = 512
#: trio-websocket's internal queue; deep enough that its reader runs ahead of us
QUEUE_SIZE: Final = 1024
RECEIVE_BYTES: Final = 64 * 1024
#: refusals that mean "stop connecting for a while": 403 is an IP ban (Bybit: wait >= 10 min),
#: 429 the 500-connections-per-5-minutes limit
HANDSHAKE_COOLDOWN: Final = {403: 600.0, 429: 300.0}
#: on cancellation, time to get the close frame out (nobody is left to read the reply)
CANCELLED_CLOSE_WAIT: Final = 0.05


class Transport(Protocol):
    """A connected WebSocket carrying text frames."""

    url: str

    async def receive_batch(self) -> list[str | bytes]:
        """Every message available now (at least one); raises ConnectionLost when closed."""

    async def send(self, text: str) -> None:
        """Send one text frame; raises ConnectionLost when closed."""

    def abandon(self) -> None:
        """The peer is known dead (no pong): on exit, drop the TCP connection at once
        instead of waiting for a close handshake that cannot come."""


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_cancellation(inner) for inner in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


class _QueueWithoutHop:
    """trio-websocket's reader hands each message to its queue with ``await send()``: a
    scheduler round-trip per message, and the consumer woken for one message at a time
    (measured at 500 tickers x 10 Hz: 1.5 messages per batch; without the hop the whole
    stream's CPU per message halves, see ``scripts/bench_stream.py``).

    This stands in for the reader's send end: ``send_nowait`` while the queue has room,
    the ordinary blocking ``send`` once it is full (same backpressure). The reader then
    queues a whole read's messages and yields once per read, at ``receive_some``. Used
    only through ``send``; everything else goes to the real channel.
    """

    __slots__ = ("_channel",)

    def __init__(self, channel: trio.MemorySendChannel[str | bytes]):
        self._channel = channel

    async def send(self, message: str | bytes) -> None:
        try:
            self._channel.send_nowait(message)
        except trio.WouldBlock:
            await self._channel.send(message)

    def __getattr__(self, name: str) -> object:
        return getattr(self._channel, name)


class _WsTransport:
    __slots__ = ("url", "_ws", "_label", "abandoned")

    def __init__(self, ws: tw.WebSocketConnection, url: str, label: str):
        self.url = url
        self._ws = ws
        self._label = label
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True

    def _lost(self, exc: tw.ConnectionClosed | None = None) -> ConnectionLost:
        reason = exc.reason if exc is not None else self._ws.closed
        if reason is None:
            return ConnectionLost(f"{self._label}: connection lost")
        detail = f" ({reason.reason})" if reason.reason else ""
        return ConnectionLost(f"{self._label}: closed with code {reason.code} {reason.name}{detail}",
                              code=reason.code, reason=reason.reason)

    async def receive_batch(self) -> list[str | bytes]:
        try:
            first = await self._ws.get_message()
        except tw.ConnectionClosed as exc:
            raise self._lost(exc) from None
        batch = [first]
        # Drain what the reader task already queued, without a task switch per message.
        # ``_recv_channel`` is trio-websocket's queue (pinned <0.13; see pyproject).
        channel = self._ws._recv_channel
        with suppress(trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            while len(batch) < MAX_BATCH:
                batch.append(channel.receive_nowait())
        return batch

    async def send(self, text: str) -> None:
        try:
            await self._ws.send_message(text)
        except tw.ConnectionClosed as exc:
            raise self._lost(exc) from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLost(f"{self._label}: send failed: {exc!r}") from exc


def _ssl_context(url: str, verify: bool) -> ssl.SSLContext | None:
    if urlsplit(url).scheme != "wss":
        return None
    context = ssl.create_default_context()
    if not verify:  # only for a local relay with a self-signed certificate, never the exchange
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@asynccontextmanager
async def open_transport(url: str, *, label: str = "ws", max_message_size: int = MAX_MESSAGE_SIZE,
                         connect_timeout: float = 10.0, close_timeout: float = CLOSE_TIMEOUT,
                         verify_tls: bool = True) -> AsyncIterator[Transport]:
    """Connect to ``url``; close (bounded by ``close_timeout``) on exit."""
    try:
        async with tw.open_websocket_url(
            url, ssl_context=_ssl_context(url, verify_tls), message_queue_size=QUEUE_SIZE,
            max_message_size=max_message_size, receive_buffer_size=RECEIVE_BYTES,
            connect_timeout=connect_timeout, disconnect_timeout=close_timeout,
        ) as ws:
            # ``_send_channel`` is trio-websocket's (pinned <0.13; see pyproject): no hop per message
            ws._send_channel = _QueueWithoutHop(ws._send_channel)  # type: ignore[assignment]
            transport = _WsTransport(ws, url, label)
            cancelled = False
            try:
                yield transport
            except BaseException as exc:
                cancelled = _is_cancellation(exc)
                raise
            finally:
                # Close politely: a close frame (1000), then wait for the peer's, bounded. When we
                # are being cancelled (stop), trio-websocket's reader is cancelled too and nobody
                # would read the reply: send the frame and go. A peer known dead gets no wait.
                wait = 0.0 if transport.abandoned else CANCELLED_CLOSE_WAIT if cancelled else close_timeout
                with trio.move_on_after(wait, shield=True):
                    await ws.aclose()
                # trio-websocket leaves the TCP socket open when the peer closed first (until
                # garbage collection: CLOSE_WAIT); close it now. Idempotent.
                with trio.move_on_after(0, shield=True):
                    await ws._stream.aclose()
    except tw.DisconnectionTimeout as exc:
        # The close handshake timed out (a half-open peer). Keep the real reason, if any.
        if isinstance(exc.__context__, HybridActorsError):
            raise exc.__context__ from None
        raise ConnectionLost(f"{label}: close handshake with {url} timed out") from None
    except tw.ConnectionRejected as exc:
        wait = HANDSHAKE_COOLDOWN.get(exc.status_code)
        advice = f"; backing off {wait:g}s as the exchange asks" if wait else ""
        raise HandshakeError(f"{label}: {url} refused the WebSocket upgrade with HTTP "
                             f"{exc.status_code}{advice}", status=exc.status_code, retry_after=wait) from None
    except tw.ConnectionTimeout:
        raise HandshakeError(f"{label}: no WebSocket handshake from {url} within "
                             f"{connect_timeout:g}s") from None
    except tw.HandshakeError as exc:
        cause = exc.__cause__ or exc.__context__
        raise HandshakeError(f"{label}: cannot connect to {url}: {cause!r}") from None
    except tw.ConnectionClosed as exc:
        raise ConnectionLost(f"{label}: {url} closed with code {exc.reason.code}",
                             code=exc.reason.code, reason=exc.reason.reason) from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise ConnectionLost(f"{label}: {url}: {exc!r}") from None
