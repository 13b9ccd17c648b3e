"""The WebSocket side: the one simulator module that imports trio-websocket.

``TrackingListener`` wraps a ``trio.SocketListener`` and remembers each accepted
``trio.SocketStream`` by peer address, so a handler can reach its own TCP socket
(for a TCP reset or a bare FIN) without touching trio-websocket internals.
Each accepted socket runs a reader and a writer task around its :class:`Connection`.
"""

from __future__ import annotations

import logging
import socket
import struct
import traceback
from typing import Final
from urllib.parse import parse_qs

import trio
from trio_websocket import ConnectionClosed, Endpoint, WebSocketConnection, WebSocketRequest, WebSocketServer

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


class TrackingListener(trio.abc.Listener[trio.SocketStream]):
    """Accepts like the wrapped listener; ``take(peer)`` hands out the stream of that peer."""

    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner = inner
        self._streams: dict[tuple[str, int], trio.SocketStream] = {}
        self._accepted = 0

    @property
    def port(self) -> int:
        return int(self.inner.socket.getsockname()[1])

    async def accept(self) -> trio.SocketStream:
        stream = await self.inner.accept()
        try:
            host, port = stream.socket.getpeername()[:2]
        except OSError:  # the peer is already gone; trio-websocket will notice
            return stream
        self._accepted += 1
        if self._accepted % _PRUNE_EVERY == 0:  # forget streams whose handshake never completed
            self._streams = {k: s for k, s in self._streams.items() if s.socket.fileno() != -1}
        self._streams[(host, port)] = stream
        return stream

    def take(self, peer: tuple[str, int]) -> trio.SocketStream | None:
        return self._streams.pop(peer, None)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _peer(request: WebSocketRequest) -> tuple[str, int]:
    remote = request.remote
    if isinstance(remote, Endpoint):
        return (str(remote.address), remote.port)
    return (str(remote), 0)


def _max_active_time(query: str, default: float) -> float:
    """``max_active_time`` of a private URL: "30s".."600s" or "1m".."10m"; ConfigError otherwise."""
    values = parse_qs(query).get("max_active_time")
    if not values:
        return default
    seconds = parse_duration(values[-1])
    if not 30 <= seconds <= 600:
        raise ConfigError(f"max_active_time {values[-1]!r} is outside 30s..600s")
    return seconds


def reset(stream: trio.SocketStream) -> None:
    """Abortive close: SO_LINGER 0 makes the kernel send RST instead of FIN."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        log.debug("SO_LINGER failed; socket already closed")
    stream.socket.close()


class WsServer:
    def __init__(self, exchange: Exchange, listener: TrackingListener) -> None:
        self.exchange = exchange
        self.listener = listener

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        server = WebSocketServer(self._handle, [self.listener],  # type: ignore[list-item]
                                 max_message_size=self.exchange.config.max_message_size)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            task_status.started()

    async def _handle(self, request: WebSocketRequest) -> None:
        ex = self.exchange
        path, _, query = request.path.partition("?")
        peer = _peer(request)
        kind = ROUTES.get(path)
        status, body, max_active = 101, b"", None
        if kind is None:
            status, body = 404, b"404 page not found"
        elif (forced := ex.faults.take_handshake_rejection(kind)) is not None:
            status, body = forced, b"handshake refused by the simulator's fault injection"
        elif not ex.faults.admit_connection(peer[0], trio.current_time()):
            status, body = ex.config.connection_limit_status, b"access too frequent"
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
        stream = self.listener.take(peer)
        conn = ex.open_connection(kind, path, query, peer, max_active)  # type: ignore[arg-type]
        try:
            await self._serve(conn, ws, stream)
        finally:
            ex.close_connection(conn, "peer")

    async def _serve(self, conn: Connection, ws: WebSocketConnection, stream: trio.SocketStream | None) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader, conn, ws, nursery.cancel_scope)
            nursery.start_soon(self._writer, conn, ws, nursery.cancel_scope)
            await conn.wait_drop()
            nursery.cancel_scope.cancel()
        mode = conn.drop_mode
        if mode is DropMode.HALF_OPEN:
            # nobody reads: trio-websocket's one-message queue fills and it stops reading too,
            # so even protocol-level pings go unanswered; TCP stays open
            conn.rearm_drop()
            self.exchange.changed()
            with trio.move_on_after(self.exchange.config.half_open_timeout):
                await conn.wait_drop()
            mode = conn.drop_mode if conn.drop_mode is not DropMode.HALF_OPEN else DropMode.RESET
        if mode is not None:
            await self._finish(conn, ws, stream, mode)

    async def _finish(self, conn: Connection, ws: WebSocketConnection, stream: trio.SocketStream | None,
                      mode: DropMode) -> None:
        if mode is DropMode.CLOSE:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await ws.aclose(conn.drop_code, conn.drop_reason)
                return
            mode = DropMode.RESET
        if stream is None:
            await ws.aclose(1011, "stream unavailable")
        elif mode is DropMode.RESET:
            reset(stream)
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
                await ws.send_message(frame)
        except ConnectionClosed:
            scope.cancel()


async def open_ws_listener(host: str, port: int) -> TrackingListener:
    listeners = await trio.open_tcp_listeners(port, host=host)
    for extra in listeners[1:]:  # a name like "localhost" may bind v4 and v6: keep one
        await extra.aclose()
    return TrackingListener(listeners[0])
