"""What every socket-owning actor does the same way: open the transport, register a
:class:`~.links.Link`, drain its outbox onto the socket, die when the heartbeat says so,
and report odd frames without flooding the log.

Which transport a connection uses is :func:`choose_transport`'s answer for its name; the
actors see only :class:`~hybrid_actors.transport.Transport` either way.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import attrs
import trio

from ..errors import HeartbeatTimeout, TlsVerificationError, TransportError
from ..protocol.frames import MalformedFrame, UnknownFrame
from ..lean_transport import open_lean_transport
from ..transport import Transport, open_transport
from .hub import Hub
from .links import OUTBOX_SIZE, Link

__all__ = ["open_link", "FrameReporter", "choose_transport"]

log = logging.getLogger("hybrid_actors.frames")

#: ``open_transport`` or ``open_lean_transport`` (same keyword arguments, same Transport)
TransportOpener = Callable[..., AbstractAsyncContextManager[Transport]]


def choose_transport(name: str) -> TransportOpener:
    """The transport for connection ``name``: the lean one (``lean_transport.py``: websockets'
    sans-IO core driven by the reader's own 64 KiB reads, one batch per read) for the busy
    public sockets, trio-websocket (``transport.py``) for the private one. Both keep the
    contract in ``transport.py``'s docstring; ``scripts/bench_stream.py`` compares them.
    """
    return open_lean_transport if name.startswith("public:") else open_transport


@attrs.define(eq=False)
class Connection:
    transport: Transport
    link: Link
    nursery: trio.Nursery


async def _pump_outbox(transport: Transport, outbox: trio.MemoryReceiveChannel[str]) -> None:
    with outbox:  # closed synchronously: see CombinerActor.run
        async for text in outbox:
            await transport.send(text)


async def _die_with(link: Link, transport: Transport) -> None:
    await link.dead.wait()
    transport.abandon()
    raise HeartbeatTimeout(f"{link.name}: {link.death_reason}; treating the socket as dead")


@asynccontextmanager
async def open_link(hub: Hub, name: str, url: str) -> AsyncIterator[Connection]:
    """Connect ``url`` as connection ``name`` (generation counted by the registry). Why the
    last attempt failed is kept in the link's stats (``last_error``; ``tls_error`` for a
    rejected certificate, which ``health()`` names as a TLS problem)."""
    config = hub.config
    stats = hub.health.link(name)
    send, recv = trio.open_memory_channel[str](OUTBOX_SIZE)
    opener = choose_transport(name)
    # the busy public sockets' read coalescing (an opener chosen otherwise carries its own settings)
    options = {"coalesce": config.read_coalesce} if opener is open_lean_transport else {}
    try:
        async with opener(url, label=name, max_message_size=config.max_message_size,
                          connect_timeout=config.connect_timeout, verify_tls=config.endpoints.verify_tls,
                          **options) as transport:
            with hub.links.register(name, send) as link:
                stats.connects += 1
                stats.connected = True
                stats.connected_at = trio.current_time()
                stats.tls_error = None
                log.getChild(name).info("%s connected (generation %d)", name, link.generation)
                try:
                    async with send, trio.open_nursery() as nursery:
                        nursery.start_soon(_pump_outbox, transport, recv)
                        nursery.start_soon(_die_with, link, transport)
                        yield Connection(transport, link, nursery)
                        nursery.cancel_scope.cancel()
                finally:
                    stats.connected = False
                    stats.disconnected_at = trio.current_time()
    except TransportError as exc:
        stats.last_error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, TlsVerificationError):
            stats.tls_error = str(exc)
            log.getChild(name).error("%s: TLS verification failed, not an exchange outage: %s. Check the "
                                     "CA bundle (a TLS-intercepting proxy?), the host name in the URL and "
                                     "this machine's clock; retrying with backoff", name, exc)
        raise


@attrs.define(eq=False)
class FrameReporter:
    """Logs malformed/unknown frames with context, at most once per second per kind."""

    name: str
    _last: dict[str, float] = attrs.Factory(dict)
    _suppressed: dict[str, int] = attrs.Factory(dict)

    def report(self, frame: MalformedFrame | UnknownFrame, hub: Hub) -> None:
        stats = hub.health.link(self.name)
        if isinstance(frame, MalformedFrame):
            stats.malformed += 1
            kind, detail = "malformed", f"{frame.reason}; frame: {frame.excerpt}"
        else:
            stats.unknown += 1
            kind, detail = "unknown", frame.reason
        now = trio.current_time()
        if now - self._last.get(kind, -1e18) < 1.0:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        more = self._suppressed.pop(kind, 0)
        suffix = f" ({more} more since the last report)" if more else ""
        log.warning("%s: ignored a %s frame: %s%s", self.name, kind, detail, suffix)
