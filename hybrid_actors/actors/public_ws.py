"""Public stream actor: one per category; owns that category's public socket.

Ready when connected and announced to the subscription manager (which then subscribes
the desired set on this new connection). Merged ticker state is per connection: a
new :class:`~hybrid_actors.state.TickerBook` on every connect, so a delta from a new
connection never patches a stale snapshot.

Hot path, per read: decode each message once (``decode_hot``: a ticker frame comes back
as a plain tuple of its fields, no object per frame), merge it, and record changed marks
in the conflating mailbox; wake the combiner once per batch. No channel send and no task
hop per ticker.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from contextlib import suppress
from typing import Final, NoReturn

import attrs
import trio

from ..health import LinkStats
from ..messages import AckReceived, LinkDown, LinkUp, SubscriptionMessage
from ..protocol.frames import Frame, MalformedFrame, Pong, SubscribeResult, UnknownFrame, decode_hot
from ..state import Mark, TickerBook
from ..transport import Transport
from .connection import FrameReporter, open_link
from .hub import Hub
from .links import Link

__all__ = ["PublicStreamActor"]

log = logging.getLogger(__name__)

#: frames handled between two checkpoints in one read (a burst of 500 tickers is ~5 ms of
#: work). 32 and 64 were tried (fewer hand-overs to the combiner for a coalesced read of ~20
#: frames): in interleaved bench_stream rounds frames per CPU-second did not move (36.9k,
#: 36.8k, 36.6k means at 16, 32, 64) and frame -> event p99 did not improve reliably (64
#: was worse: the first frames of a long read wait for the rest of its decode)
STEP: Final = 16


@attrs.define(eq=False)
class PublicStreamActor:
    hub: Hub
    category: str

    @property
    def name(self) -> str:
        return f"public:{self.category}"

    @staticmethod
    def reset_after_crash(hub: Hub, category: str) -> None:
        """Owns ``activity[category]`` (and its link, gone with the crash). Known-good: no
        ticker seen yet (the new connection starts its own merged ticker state too); the
        latest frame of a held symbol is kept in ``held_frames`` (see :func:`forget_activity`)."""
        forget_activity(hub, category)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        hub = self.hub
        url = hub.config.endpoints.public_url(self.category)
        # the channel closes synchronously (``with``): see CombinerActor.run
        async with open_link(hub, self.name, url) as conn:
            with hub.subs_send.clone() as manager:
                link = conn.link
                book = TickerBook(self.category, fields=False)  # only the marks are read
                forget_activity(hub, self.category)
                await manager.send(LinkUp(self.category, link))
                try:
                    task_status.started()
                    await self._read(conn.transport, link, book, manager)
                finally:
                    hub.health.link(self.name).tickers = 0  # the merged state goes with the connection
                    # best effort: the manager also notices the new generation on the next LinkUp
                    with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                        manager.send_nowait(LinkDown(self.category, link.generation))

    async def _read(self, transport: Transport, link: Link, book: TickerBook,
                    manager: trio.MemorySendChannel[SubscriptionMessage]) -> NoReturn:
        hub = self.hub
        category = self.category
        stats = hub.health.link(self.name)
        activity = hub.activity[category]
        marks = hub.marks
        wall = hub.wall_clock
        reporter = FrameReporter(self.name)
        apply = book.apply_fields
        clock = trio.lowlevel.current_clock()  # what trio.current_time() reads, without its two calls
        while True:
            batch = await transport.receive_batch()
            if link.has_retired:  # unsubscribed symbols: no frame for them follows (see _retire)
                self._retire(hub, link, book, stats)
            now = clock.current_time()
            read_at = wall()
            received_ms = int(read_at * 1000)
            link.last_frame_at = now
            stats.frames += len(batch)
            stats.batches += 1
            snapshots = False  # only a snapshot adds a symbol to the book
            size = len(batch)
            for index, raw in enumerate(batch, 1):
                frame = decode_hot(raw, category=category)
                if isinstance(frame, tuple):  # a ticker: (symbol, snapshot, data, mark, ts, cs)
                    symbol = frame[0]
                    activity[symbol] = now
                    if frame[1]:
                        snapshots = True
                    mark = apply(*frame)
                    if mark is not None:
                        marks.put((category, symbol), Mark(mark, frame[4], received_ms, read_at))
                else:
                    await self._control(frame, link, now, reporter, manager)
                if index % STEP == 0 and index < size:  # a long read must not starve the combiner or heartbeat
                    marks.commit()
                    await trio.lowlevel.checkpoint()
            marks.commit()
            if snapshots:
                stats.tickers = len(book)

    def _retire(self, hub: Hub, link: Link, book: TickerBook, stats: LinkStats) -> None:
        """Forget the merged state and the activity of the symbols whose unsubscribe the
        exchange confirmed on this connection, so churn through many symbols costs nothing.
        Done before reading a batch received after the manager learnt it: a new subscribe to
        such a symbol (sent only after that) is answered by a fresh snapshot, never a delta
        that needs the forgotten state."""
        retired = link.take_retired()
        for symbol in retired:
            book.forget(symbol)
        forget_activity(hub, self.category, retired)
        stats.tickers = len(book)

    async def _control(self, frame: Frame, link: Link, now: float, reporter: FrameReporter,
                       manager: trio.MemorySendChannel[SubscriptionMessage]) -> None:
        if isinstance(frame, Pong):
            link.pong_received(frame.req_id, now)
        elif isinstance(frame, SubscribeResult):
            if frame.conn_id and link.conn_id is None:
                link.conn_id = frame.conn_id
            await link.deliver(manager, AckReceived(self.category, link.generation, frame))
        elif isinstance(frame, (MalformedFrame, UnknownFrame)):
            reporter.report(frame, self.hub)
        else:
            reporter.report(UnknownFrame(f"{type(frame).__name__} on a public socket", {}), self.hub)


def forget_activity(hub: Hub, category: str, symbols: Iterable[str] | None = None) -> None:
    """Drop ``symbols`` (None: all) from ``hub.activity[category]``, first folding the latest
    frame among those of symbols still held into ``hub.held_frames[category]``: a resubscribe
    of a silent topic or a reconnect must not make the stream look silent for longer than it
    was (the silence trigger's and ``no_events``' liveness, :meth:`Hub.held_frame_at`)."""
    activity = hub.activity[category]
    held = hub.desired.value.get(category, frozenset())
    dropped = list(activity) if symbols is None else [s for s in symbols if s in activity]
    latest = max((activity[s] for s in dropped if s in held), default=None)
    if latest is not None and latest > hub.held_frames.get(category, -math.inf):
        hub.held_frames[category] = latest
    if symbols is None:
        activity.clear()
    else:
        for symbol in dropped:
            del activity[symbol]
