"""The WebSocket side: the one simulator module that imports trio-websocket.

``TrackingListener`` wraps a ``trio.SocketListener``; every accepted connection becomes a
:class:`SimStream` that the listener remembers by its ``repr`` (which is what
``WebSocketRequest.remote`` reports for a stream that is not a bare ``trio.SocketStream``).
That gives each handler its own TCP socket, without trio-websocket internals, for the
faults that live below WebSocket: a TCP reset, a FIN without a close frame, and a
half-open socket that swallows everything in both directions while TCP stays up.
Each accepted socket runs a reader and a writer task around its :class:`Connection`.
"""

from __future__ import annotations

import itertools
import logging
import socket
import struct
import time
import traceback
from typing import Final
from urllib.parse import parse_qs

import trio
from ...transport import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

from ...config import parse_duration
from ...errors import ConfigError
from . import wire
from .connection import Connection
from .exchange import Exchange
from .faults import DropMode

log = logging.getLogger(__name__)

ROUTES: Final = {**{f"/v5/public/{c}": c for c in wire.PUBLIC_KINDS}, "/v5/private": wire.PRIVATE}
#: how long a polite close may take before the socket is simply reset
CLOSE_TIMEOUT: Final = 2.0
_PRUNE_EVERY: Final = 64


class SimStream(trio.abc.HalfCloseableStream):
    """A ``trio.SocketStream`` that can be frozen (half-open), reset or cut with a bare FIN."""

    def __init__(self, inner: trio.SocketStream, token: str, peer: tuple[str, int]) -> None:
        self.inner = inner
        self.token = token
        self.peer = peer
        self._frozen = False
        self._closed = trio.Event()
        #: (log, connection kind, frame, its UTF-8): the frame to stamp as its write starts (see
        #: ``Observer.stamp_sends``); set by the writer, taken by the write that carries it (a
        #: pong written first, while the writer waits for the send lock, leaves it)
        self.stamp_next: tuple[list[tuple[str, str, int]], str, str, bytes] | None = None

    def __repr__(self) -> str:
        return self.token

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._frozen:  # into the void: the peer is "gone" without a word
            await trio.lowlevel.checkpoint()
            return
        stamp = self.stamp_next
        # here, not when the writer took the frame: the WebSocket's send lock yields first, and
        # the market task may run for milliseconds then
        if stamp is not None and bytes(data[-len(stamp[3]):]) == stamp[3]:
            self.stamp_next = None
            stamp[0].append((stamp[1], stamp[2], time.time_ns()))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._frozen:
            data = await self.inner.receive_some(max_bytes)
            if not self._frozen:
                return data
        await self._closed.wait()  # frozen: whatever arrives is never read
        raise trio.ClosedResourceError("half-open stream was closed")

    async def aclose(self) -> None:
        self._closed.set()
        await self.inner.aclose()

    def freeze(self) -> None:
        self._frozen = True

    def reset(self) -> None:
        """Abortive close: SO_LINGER 0 makes the kernel send RST instead of FIN."""
        self._closed.set()
        try:
            self.inner.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            log.debug("SO_LINGER failed; socket already closed")
        self.inner.socket.close()

    @property
    def is_closed(self) -> bool:
        return self.inner.socket.fileno() == -1


class TrackingListener(trio.abc.Listener[SimStream]):
    """Accepts like the wrapped listener; ``take(remote)`` hands out the stream a handshake came on."""

    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner = inner
        self._streams: dict[str, SimStream] = {}
        self._ids = itertools.count(1)

    @property
    def port(self) -> int:
        return int(self.inner.socket.getsockname()[1])

    async def accept(self) -> SimStream:
        stream = await self.inner.accept()
        try:
            host, port = stream.socket.getpeername()[:2]
        except OSError:  # the peer is already gone; trio-websocket will notice
            host, port = "?", 0
        n = next(self._ids)
        if n % _PRUNE_EVERY == 0:  # forget streams whose handshake never completed
            self._streams = {k: s for k, s in self._streams.items() if not s.is_closed}
        sim_stream = SimStream(stream, f"<SimStream #{n} from {host}:{port}>", (str(host), int(port)))
        self._streams[sim_stream.token] = sim_stream
        return sim_stream

    def take(self, remote: object) -> SimStream | None:
        return self._streams.pop(str(remote), None)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _max_active_time(query: str, default: float) -> float:
    """``max_active_time`` of a private URL: "30s".."600s" or "1m".."10m"; ConfigError otherwise."""
    values = parse_qs(query).get("max_active_time")
    if not values:
        return default
    seconds = parse_duration(values[-1])
    if not 30 <= seconds <= 600:
        raise ConfigError(f"max_active_time {values[-1]!r} is outside 30s..600s")
    return seconds


class WsServer:
    def __init__(self, exchange: Exchange, listener: TrackingListener) -> None:
        self.exchange = exchange
        self.listener = listener

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # trio-websocket annotates SocketListener | SSLListener, yet any trio Listener serves
        server = WebSocketServer(self._handle, [self.listener],  # type: ignore[list-item]
                                 max_message_size=self.exchange.config.max_message_size)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            task_status.started()

    async def _handle(self, request: WebSocketRequest) -> None:
        ex = self.exchange
        stream = self.listener.take(request.remote)
        peer = stream.peer if stream is not None else (str(request.remote), 0)
        path, _, query = request.path.partition("?")
        kind = ROUTES.get(path)
        status, body, max_active = 101, b"", None
        if kind is None:
            status, body = 404, b"404 page not found"
        elif (forced := ex.faults.take_handshake_rejection(kind)) is not None:
            status, body = forced, b"handshake refused by the simulator's fault injection"
        elif not ex.faults.admit_connection(peer[0], trio.current_time()):
            status, body = ex.faults.connection_limit_status, b"access too frequent"
        elif kind == wire.PRIVATE:
            try:
                max_active = _max_active_time(query, ex.config.default_max_active_time)
            except ConfigError as exc:
                status, body = 400, str(exc).encode()
        ex.observer.handshake(path, peer, status)
        try:
            if status != 101:
                await request.reject(status, body=body)
                return
            ws = await request.accept()
        except ConnectionClosed:
            return
        assert kind is not None  # no route was answered 404 above
        conn = ex.open_connection(kind, path, query, peer, max_active)
        conn.transport = stream
        try:
            await self._serve(conn, ws, stream)
        finally:
            ex.close_connection(conn, "peer")

    async def _serve(self, conn: Connection, ws: WebSocketConnection, stream: SimStream | None) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader, conn, ws, nursery.cancel_scope)
            nursery.start_soon(self._writer, conn, ws, nursery.cancel_scope)
            await conn.wait_drop()
            nursery.cancel_scope.cancel()
        mode = conn.drop_mode
        if mode is DropMode.HALF_OPEN:
            # the stream is frozen: nothing is read or sent any more, not even protocol-level
            # pongs; TCP stays open until another drop request or the timeout
            conn.rearm_drop()
            self.exchange.changed()
            with trio.move_on_after(self.exchange.config.half_open_timeout):
                await conn.wait_drop()
            mode = conn.drop_mode if conn.drop_mode is not DropMode.HALF_OPEN else DropMode.RESET
        if mode is not None:
            await self._finish(conn, ws, stream, mode)

    async def _finish(self, conn: Connection, ws: WebSocketConnection, stream: SimStream | None,
                      mode: DropMode) -> None:
        if mode is DropMode.CLOSE:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await ws.aclose(conn.drop_code, conn.drop_reason)
                return
            mode = DropMode.RESET
        if stream is None:
            await ws.aclose(1011, "stream unavailable")
        elif mode is DropMode.RESET:
            stream.reset()
        else:
            await stream.aclose()

    async def _reader(self, conn: Connection, ws: WebSocketConnection, scope: trio.CancelScope) -> None:
        ex = self.exchange
        try:
            while True:
                message = await ws.get_message()
                try:
                    ex.on_message(conn, message)
                except Exception:  # a simulator bug must not take the server down; tests check the list
                    log.exception("simulator failed on a %s frame", conn.kind)
                    ex.observer.internal_error(traceback.format_exc())
        except ConnectionClosed:
            scope.cancel()

    async def _writer(self, conn: Connection, ws: WebSocketConnection, scope: trio.CancelScope) -> None:
        observer = self.exchange.observer
        try:
            while True:
                frame = await conn.next_frame()
                if observer.recording_frames and isinstance(frame, str):
                    observer.frame_sent(conn, frame)
                stamps = observer.send_stamps
                if stamps is not None and isinstance(frame, str) and len(stamps) < observer.send_stamp_limit:
                    if isinstance(conn.transport, SimStream):  # stamped by the write itself
                        conn.transport.stamp_next = (stamps, conn.kind, frame, frame.encode())
                    else:
                        stamps.append((conn.kind, frame, time.time_ns()))
                await ws.send_message(frame)
        except ConnectionClosed:
            scope.cancel()


async def open_ws_listener(host: str, port: int) -> TrackingListener:
    listeners = await trio.open_tcp_listeners(port, host=host)
    for extra in listeners[1:]:  # a name like "localhost" may bind v4 and v6: keep one
        await extra.aclose()
    return TrackingListener(listeners[0])
