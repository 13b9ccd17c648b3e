"""A :class:`Link` is one live WebSocket as the other actors see it.

The connection actor that owns the socket creates the link, owns its outbox (a bounded
channel its writer task drains onto the socket) and closes it when the connection ends.
Other actors reach the socket only through :meth:`Link.offer`, which never blocks: a
full outbox means the writer is stuck, which the heartbeat will notice.

The :class:`LinkRegistry` outlives every actor (the supervisor owns it), so a restarted
heartbeat actor picks up the live links and their ping deadlines where they were.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Final, TypeVar

import attrs
import trio

__all__ = ["Link", "LinkRegistry", "OUTBOX_SIZE"]

log = logging.getLogger(__name__)

OUTBOX_SIZE: Final = 256
T = TypeVar("T")


@attrs.define(eq=False)
class Link:
    name: str
    generation: int
    outbox: trio.MemorySendChannel[str] = attrs.field(repr=False)
    opened_at: float
    #: set by the heartbeat when the socket is declared dead; the owner then raises
    dead: trio.Event = attrs.field(factory=trio.Event, repr=False)
    death_reason: str | None = None
    conn_id: str | None = None
    next_ping_at: float = 0.0
    ping_req_id: str | None = None
    ping_sent_at: float | None = None
    last_pong_at: float | None = None
    rtt: float | None = None
    pings_sent: int = 0
    pongs: int = 0
    #: trio time of the last frame of any kind (the heartbeat's evidence of life)
    last_frame_at: float = 0.0
    #: the owner's reader is waiting on our own backpressure: pongs go unread, not unanswered
    paused: bool = False
    #: wakes the heartbeat (the registry's change signal): a resumed link's ping is due now
    _on_resume: Callable[[], None] = attrs.field(default=lambda: None, repr=False)
    #: a mailbox: the subscription manager puts the symbols whose unsubscribe the exchange
    #: confirmed on this connection; the socket's owner takes them and forgets their state
    _retired: set[str] = attrs.field(factory=set, repr=False)

    def retire(self, symbol: str) -> None:
        """The exchange confirmed unsubscribing ``symbol`` here: no more frames for it."""
        self._retired.add(symbol)

    @property
    def has_retired(self) -> bool:
        return bool(self._retired)

    def take_retired(self) -> set[str]:
        """The symbols retired since the last call (the owner's; one taker)."""
        retired, self._retired = self._retired, set()
        return retired

    def offer(self, text: str) -> bool:
        """Queue a frame for the socket; False if the link is gone or its outbox is full."""
        try:
            self.outbox.send_nowait(text)
        except trio.WouldBlock:
            log.warning("%s: outbox full (%d frames); the socket writer is stuck", self.name, OUTBOX_SIZE)
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def ping_sent(self, req_id: str, now: float) -> None:
        self.ping_req_id = req_id
        self.ping_sent_at = now
        self.pings_sent += 1

    def pong_received(self, req_id: str | None, now: float) -> None:
        """Any pong answers the outstanding ping: spot and option pongs echo no req_id."""
        if self.ping_sent_at is None:
            return
        if req_id is not None and self.ping_req_id is not None and req_id != self.ping_req_id:
            return  # a late answer to an earlier ping
        self.rtt = now - self.ping_sent_at
        self.last_pong_at = now
        self.pongs += 1
        self.ping_req_id = None
        self.ping_sent_at = None

    async def deliver(self, channel: trio.MemorySendChannel[T], message: T) -> None:
        """Send on one of our own bounded channels from the socket's reader. If it is full
        (a slow consumer downstream), the heartbeat is paused while we wait: the reader is
        not reading pongs, but the peer is not dead. Pinging resumes right after."""
        with suppress(trio.WouldBlock):
            channel.send_nowait(message)
            return
        self.paused = True
        try:
            await channel.send(message)
        finally:
            self.paused = False
            self.ping_req_id = None
            self.ping_sent_at = None
            self.next_ping_at = trio.current_time()
            self._on_resume()  # else the heartbeat, which skipped us, may sleep a whole interval

    def kill(self, reason: str) -> None:
        if not self.dead.is_set():
            self.death_reason = reason
            self.dead.set()


@attrs.define(eq=False)
class LinkRegistry:
    interval: float
    _links: dict[str, Link] = attrs.Factory(dict)
    _generations: dict[str, int] = attrs.Factory(dict)
    changed: trio.Event = attrs.Factory(trio.Event)

    def links(self) -> tuple[Link, ...]:
        return tuple(self._links.values())

    def get(self, name: str) -> Link | None:
        return self._links.get(name)

    def generation(self, name: str) -> int:
        return self._generations.get(name, 0)

    @contextmanager
    def register(self, name: str, outbox: trio.MemorySendChannel[str]) -> Iterator[Link]:
        """A new link for connection ``name``; unregistered (if still current) on exit."""
        generation = self._generations.get(name, 0) + 1
        self._generations[name] = generation
        now = trio.current_time()
        link = Link(name, generation, outbox, opened_at=now, next_ping_at=now + self.interval,
                    last_frame_at=now, on_resume=self._notify)
        self._links[name] = link
        self._notify()
        try:
            yield link
        finally:
            if self._links.get(name) is link:
                del self._links[name]
                self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()
