"""A tiny HTTP/1.1 endpoint on trio (h11 parses, we route) and the client the dashboard uses.

Why not prometheus-client's own ``start_http_server``: it serves from a thread, and every
scrape would read the actors' state from that thread. Here the server is a task in the
stream's nursery: a request is answered in the trio thread between two actor steps, from
the same state the actors write (one writer, no locks, no torn reads), and it stops with
the stream. It cannot stall the actors: each connection is its own task, reading and
writing never block the loop, a slow or silent client hits a deadline, requests are
capped in size and connections in number (when full, the connection that has waited
longest for a request is closed to make room, so idle or dribbling clients cannot lock
the scraper out), and a render is a few milliseconds of work
(``scripts/bench_observe.py``).

Only ``GET`` and ``HEAD`` of the routes given; keep-alive as HTTP/1.1 says (Prometheus
reuses its connection). No TLS and no authentication: it binds 127.0.0.1 unless told
otherwise, and what it serves never contains a secret.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

import attrs
import h11
import orjson
import trio

from .errors import ConfigError, HybridActorsError

__all__ = ["Response", "serve_http", "fetch_json", "HttpFetchError", "MAX_CONNECTIONS"]

log = logging.getLogger(__name__)

MAX_REQUEST: Final = 16 * 1024
MAX_CONNECTIONS: Final = 32
#: a request must arrive whole within this (from connect, or from the previous response)
REQUEST_TIMEOUT: Final = 10.0
SEND_TIMEOUT: Final = 10.0
READ_SIZE: Final = 16 * 1024
#: what a client that went away, stalled or spoke nonsense raises in its connection's task
_PEER_GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError,
                     h11.ProtocolError)


@attrs.frozen
class Response:
    status: int
    content_type: str
    body: bytes

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, "text/plain; charset=utf-8", text.encode())


Route = Callable[[], Response]


class HttpFetchError(HybridActorsError):
    """The endpoint could not be reached or did not answer 200 with JSON."""


@attrs.define(eq=False)
class _Slot:
    """One admitted connection: its eviction scope while it waits for a request."""

    waiting: trio.CancelScope | None = None
    held: bool = True


@attrs.define(eq=False)
class _Slots:
    """At most ``limit`` connections; when full, a newcomer takes the slot of the connection
    that has waited longest for its next request (idle, or sending one slowly), so one
    client holding every slot cannot lock the scraper out. Only connections busy answering
    (a render is instant; only a send can take long, within ``SEND_TIMEOUT``) are never
    evicted: with all of them busy, the newcomer is refused."""

    limit: int
    open: int = 0
    #: the connections waiting for a request, longest first (a dict keeps insertion order)
    waiting: dict[_Slot, None] = attrs.Factory(dict)

    def take(self) -> _Slot | None:
        if self.open < self.limit:
            self.open += 1
            return _Slot()
        if not self.waiting:
            return None
        oldest = next(iter(self.waiting))
        del self.waiting[oldest]
        oldest.held = False  # its slot passes to the newcomer
        if oldest.waiting is not None:
            oldest.waiting.cancel()
        return _Slot()

    def release(self, slot: _Slot) -> None:
        self.waiting.pop(slot, None)
        if slot.held:
            slot.held = False
            self.open -= 1


async def serve_http(routes: Mapping[str, Route], *, host: str = "127.0.0.1", port: int = 0,
                     name: str = "http", max_connections: int = MAX_CONNECTIONS,
                     task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                     ) -> NoReturn:
    """Serve ``routes`` (path -> handler, called in this thread) until cancelled. Reports the
    bound ``(host, port)`` through ``task_status``; a port that cannot be bound is a
    :class:`~hybrid_actors.errors.ConfigError`. At most ``max_connections`` at once; when
    full, the connection idle longest makes room (:class:`_Slots`)."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    slots = _Slots(max_connections)
    bound = listeners[0].socket.getsockname()
    task_status.started((bound[0], bound[1]))

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            slot = slots.take()
            if slot is None:
                await _refuse_busy(stream)
                return
            try:
                await _serve_connection(stream, routes, name, slots, slot)
            except _PEER_GONE:
                return  # the client's problem (went away, too slow, spoke nonsense), not ours
            except Exception as exc:  # noqa: BLE001 - one connection's bug must not end the stream
                log.error("%s: a connection failed", name, exc_info=exc)
            finally:
                slots.release(slot)

    await trio.serve_listeners(handle, listeners)
    raise AssertionError("unreachable")  # pragma: no cover


async def _refuse_busy(stream: trio.SocketStream) -> None:
    body = b"too many connections\n"
    head = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n")
    with trio.move_on_after(SEND_TIMEOUT), suppress(*_PEER_GONE):
        await stream.send_all(head + body)
        # Closing with the request unread would reset the connection and could destroy the
        # answer before the client reads it: say we are done, then read until it is too.
        await stream.send_eof()
        with trio.move_on_after(1.0):
            dropped = await _discard_until_eof(stream)
            log.debug("refused a connection (%d open): dropped %d bytes of its request", MAX_CONNECTIONS, dropped)


async def _discard_until_eof(stream: trio.SocketStream) -> int:
    """Read and drop what the peer still sends until it closes its side; the byte count."""
    discarded = 0
    async for chunk in stream:
        discarded += len(chunk)
    return discarded


async def _serve_connection(stream: trio.SocketStream, routes: Mapping[str, Route], name: str,
                            slots: _Slots, slot: _Slot) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    while True:
        with trio.move_on_after(REQUEST_TIMEOUT) as scope:
            with trio.CancelScope() as evicted:
                slot.waiting = evicted
                slots.waiting[slot] = None  # evictable until the request is whole
                try:
                    request = await _next_request(conn, stream)
                except h11.RemoteProtocolError as exc:
                    slots.waiting.pop(slot, None)
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        await _send(conn, stream, Response.text(exc.error_status_hint, f"bad request: {exc}\n"))
                    return
                finally:
                    slots.waiting.pop(slot, None)
                    slot.waiting = None
        if evicted.cancelled_caught:
            log.debug("%s: closed a connection waiting for a request to make room for a new one", name)
            return
        if scope.cancelled_caught or request is None:
            return  # idle too long, or the client closed
        response = _answer(request, routes, name)
        await _send(conn, stream, response, head_only=request.method == b"HEAD")
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()


async def _next_request(conn: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
    """The next request with its (ignored) body read; None when the peer closed."""
    request = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(READ_SIZE)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None
        # h11.Data: a request body, which no route uses: dropped (the request deadline bounds it)


def _answer(request: h11.Request, routes: Mapping[str, Route], name: str) -> Response:
    path = urlsplit(request.target.decode("ascii", "replace")).path
    route = routes.get(path)
    if route is None:
        return Response.text(404, f"not found; try {', '.join(sorted(routes))}\n")
    if request.method not in (b"GET", b"HEAD"):
        return Response.text(405, "only GET and HEAD\n")
    try:
        return route()
    except Exception as exc:  # noqa: BLE001 - a bug in a render must not take the server (or stream) down
        log.error("%s: %s failed", name, path, exc_info=exc)
        return Response.text(500, f"internal error: {type(exc).__name__}\n")


async def _send(conn: h11.Connection, stream: trio.SocketStream, response: Response, *,
                head_only: bool = False) -> None:
    headers = [("content-type", response.content_type), ("content-length", str(len(response.body))),
               ("cache-control", "no-store")]
    data = conn.send(h11.Response(status_code=response.status, headers=headers))
    if not head_only:
        data += conn.send(h11.Data(data=response.body))
    data += conn.send(h11.EndOfMessage())
    with trio.fail_after(SEND_TIMEOUT):
        await stream.send_all(data)


# --- client -----------------------------------------------------------------------------

async def fetch_json(url: str, *, timeout: float = 5.0, max_size: int = 64 << 20) -> Any:
    """GET ``url`` (``http://host:port/path``) and parse its JSON body (decimals stay strings,
    as we send them). Any failure is an :class:`HttpFetchError` saying what and where."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"{url!r} is not an http://HOST:PORT/ URL")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(parts.hostname, parts.port or 80)
            async with stream:
                return _parse_json(url, await _get(stream, host_header, target, max_size))
    except trio.TooSlowError:
        raise HttpFetchError(f"{url}: no answer within {timeout:g}s") from None
    except OSError as exc:
        raise HttpFetchError(f"{url}: {exc.strerror or exc}") from None
    except (h11.ProtocolError, trio.BrokenResourceError) as exc:
        raise HttpFetchError(f"{url}: broken HTTP answer: {exc}") from None


async def _get(stream: trio.SocketStream, host: str, target: str, max_size: int) -> tuple[int, bytes]:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=target, headers=[("host", host), ("accept", "application/json"),
                                                               ("connection", "close")])
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    status = 0
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(READ_SIZE))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_size:
                raise h11.RemoteProtocolError(f"body larger than {max_size} bytes")
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return status, bytes(body)


def _parse_json(url: str, answer: tuple[int, bytes]) -> Any:
    status, body = answer
    if status != 200:
        raise HttpFetchError(f"{url}: HTTP {status}: {body[:200].decode('utf-8', 'replace').strip()}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HttpFetchError(f"{url}: not JSON ({exc})") from None
