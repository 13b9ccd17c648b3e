"""A small HTTP/1.1 server on trio around h11 (keep-alive, one request at a time per connection)."""

from __future__ import annotations

import logging
from functools import partial
from typing import Awaitable, Callable, Final

import attrs
import h11
import trio

log = logging.getLogger(__name__)

MAX_BODY: Final = 1 << 20
_REASONS: Final = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
                   413: b"Payload Too Large", 429: b"Too Many Requests", 500: b"Internal Server Error",
                   502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout"}


@attrs.frozen
class HttpRequest:
    method: str
    #: the raw request target, e.g. ``/v5/position/list?category=linear&symbol=BTCUSDT``
    target: str
    path: str
    #: the raw query string without ``?``, byte-for-byte as sent (what REST signatures cover)
    query: str
    #: lower-case header names
    headers: dict[str, str]
    body: bytes
    peer: str


@attrs.frozen
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


App = Callable[[HttpRequest], Awaitable[HttpResponse]]


class _TooLarge(Exception):
    """The request body is over ``MAX_BODY``."""


async def _receive(conn: h11.Connection, stream: trio.SocketStream, peer: str) -> HttpRequest | None:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise _TooLarge
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            target = request.target.decode("ascii", "replace")
            path, _, query = target.partition("?")
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
            return HttpRequest(request.method.decode("ascii", "replace"), target, path, query, headers,
                               bytes(body), peer)
        else:  # ConnectionClosed or PAUSED: nothing more to read on this connection
            return None


async def _send(conn: h11.Connection, stream: trio.SocketStream, response: HttpResponse) -> None:
    headers = [("content-type", response.content_type), ("content-length", str(len(response.body))),
               *response.headers]
    data = conn.send(h11.Response(status_code=response.status, headers=headers,
                                  reason=_REASONS.get(response.status, b"")))
    data += conn.send(h11.Data(data=response.body)) + conn.send(h11.EndOfMessage())
    await stream.send_all(data)


async def _serve_connection(stream: trio.SocketStream, app: App) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        peer = str(stream.socket.getpeername()[0])
    except OSError:
        peer = "?"
    async with stream:
        try:
            while True:
                request = await _receive(conn, stream, peer)
                if request is None:
                    return
                await _send(conn, stream, await app(request))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        except (h11.RemoteProtocolError, _TooLarge) as exc:
            status = 413 if isinstance(exc, _TooLarge) else 400
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                try:
                    await _send(conn, stream, HttpResponse(status, b"bad request", "text/plain"))
                except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
                    log.debug("client gone before the %d answer", status)


async def serve_http(listener: trio.SocketListener, app: App, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio.serve_listeners, partial(_serve_connection, app=app), [listener]))
        task_status.started()
