"""Combiner / emitter actor: position lifecycle + mark prices → ordered, deduplicated events.

Two inputs, one state: lifecycle messages (bounded channel, never dropped) and mark
prices (conflating mailbox). Each input is applied to the combiner and its events are
enqueued in the same synchronous step, so a price update can never overtake the
lifecycle event of the position it belongs to. Before taking the next lifecycle
message the actor waits for room in the output queue: a slow consumer slows the
private stream's intake (backpressure), while price updates keep conflating. Before the
first snapshot nobody reads the queue: pushes are held (the latest per position) and
applied right after it, and nothing waits.

After each lifecycle message the desired ticker set per category is published to the
subscription manager.

A snapshot that could not confirm some open positions (absent from the list, but updated
within its skew: a close while the private socket was down looks like that) is followed
by another one read after their update, so such a close comes within ~2 s, not at the
next 5-minute reconciliation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Final, NoReturn

import attrs
import trio

from ..messages import Lifecycle, PositionsPushed, PositionsSnapshot, PushUnreadable
from ..protocol.frames import Position
from ..state import Event, Mark
from .hub import Hub

__all__ = ["CombinerActor"]

log = logging.getLogger(__name__)

#: marks applied between two checkpoints
STEP: Final = 16
#: what every event made from marks is (counted once per chunk)
TICKER_KIND: Final = ("position.update", "ticker")
#: a follow-up snapshot is asked for this long after the skew of the one it follows
#: (``PositionBook.snapshot_skew_ms``), so its list was read after the unconfirmed updates
FOLLOW_UP_MARGIN: Final = 0.5
#: follow-up snapshots in a row at most: a position REST keeps leaving out while pushes keep
#: updating it is the periodic reconciliation's to settle, not a REST request every 1.5 s
MAX_FOLLOW_UPS: Final = 3


@attrs.define(eq=False)
class CombinerActor:
    hub: Hub
    name: str = "combiner"
    #: set when a follow-up snapshot is wanted: ``_follow_ups`` asks for one at ``_follow_up_at``
    _follow_up: trio.Event = attrs.field(factory=trio.Event, init=False)
    _follow_up_at: float = attrs.field(default=-math.inf, init=False)
    _follow_ups_in_a_row: int = attrs.field(default=0, init=False)
    #: when an unreadable push last asked for a snapshot at once (trio time)
    _unreadable_asked_at: float = attrs.field(default=-math.inf, init=False)
    #: pushes before the first snapshot, the latest record per position (see ``_hold``)
    _held: dict[tuple[str, str, int], tuple[Position, int]] = attrs.field(factory=dict, init=False)

    @staticmethod
    def reset_after_crash(hub: Hub) -> None:
        """Owns ``combiner``, ``desired``, ``latency``, ``first_snapshot``. Known-good after a
        crash: the last committed book (changes not handed over are dropped) and a REST
        snapshot at once, since the crash may have come mid-apply."""
        hub.combiner.rollback()
        hub.request_reconcile()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        hub = self.hub
        if hub.health.actor(self.name).starts > 1:
            # A crash may have come between a state change and the hand-over of its events:
            # give the consumer whatever it has not seen of the book, then heal the message
            # that was being applied from REST at once.
            self._emit(hub.combiner.resync(hub.wall_ms(), commit=False))
            hub.request_reconcile()
        # a memory channel closes synchronously (``with``): ``async with`` would await a
        # checkpoint on the way out, whose Cancelled, during a stop, masks the block's error
        with hub.lifecycle_recv.clone() as inbox:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._lifecycle, inbox)
                nursery.start_soon(self._prices)
                nursery.start_soon(self._fallback_prices)
                nursery.start_soon(self._follow_ups)
                task_status.started()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _lifecycle(self, inbox: trio.MemoryReceiveChannel[Lifecycle]) -> NoReturn:
        hub = self.hub
        while True:
            await hub.room_for_events()
            message = await inbox.receive()
            if isinstance(message, PositionsPushed) and not hub.first_snapshot.is_set():
                self._hold(message)
                continue
            if self._held and not isinstance(message, PositionsSnapshot):
                self._release_held()  # started by another source's snapshot (rest mode): these first
            self.apply(message)
            if self._held:
                self._release_held()

    def _release_held(self) -> None:
        held, self._held = self._held, {}
        for position, received_ts in held.values():
            self.apply(PositionsPushed((position,), received_ts))

    def _hold(self, message: PositionsPushed) -> None:
        """A push before the first snapshot: kept (the latest record of each position) and
        applied right after the next snapshot, where the book's version rule keeps whichever
        is newer. Until the stream has started nobody reads its events, so queuing one per
        push would fill the queue during a long REST outage at start and keep that snapshot
        out for good; this costs one record per position, however long the start takes."""
        held = self._held
        for position in message.positions:
            held.pop(position.key, None)  # re-inserted last: applied in the order last pushed
            held[position.key] = (position, message.received_ts)

    def apply(self, message: Lifecycle) -> list[Event]:
        hub = self.hub
        combiner = hub.combiner
        if isinstance(message, PushUnreadable):
            self._push_unreadable()
            return []
        if isinstance(message, PositionsPushed):
            events = combiner.apply_push(message.positions, received_ts=message.received_ts, commit=False)
        else:
            events = combiner.apply_snapshot(message.positions, categories=message.categories,
                                             as_of_ms=message.as_of_ms, received_ts=message.received_ts,
                                             commit=False, coverage=message.coverage,
                                             uncertain=message.uncertain)
            self._snapshot_applied(message, events)
        self._emit(events)
        hub.desired.set({c: combiner.desired_symbols(c) for c in hub.config.categories})
        return events

    def _snapshot_applied(self, message: PositionsSnapshot, events: Sequence[Event]) -> None:
        hub = self.hub
        if message.reason == "reconcile":
            hub.health.reconciliations += 1
            if events:
                hub.health.reconcile_corrections += len(events)
                log.warning("REST reconciliation corrected %d position(s) the streams had missed: %s",
                            len(events), ", ".join(f"{e.name} {e.symbol}/{e.position_idx}" for e in events[:10]))
        if message.reason == "connect":  # the private socket's: authenticated, and this applied
            hub.first_snapshot.set()
        unconfirmed = hub.combiner.unconfirmed
        if not unconfirmed:
            self._follow_ups_in_a_row = 0
        elif self._follow_ups_in_a_row < MAX_FOLLOW_UPS:
            self._follow_ups_in_a_row += 1
            log.info("REST snapshot could not confirm %d position(s) updated within its skew (%s); "
                     "asking for another in %.1fs", len(unconfirmed),
                     ", ".join(f"{cat}/{sym}/{idx}" for cat, sym, idx in unconfirmed[:10]), self._follow_up_delay())
            self._want_follow_up()
        else:
            log.warning("%d follow-up REST snapshots in a row could not confirm %s; leaving them to the "
                        "periodic reconciliation", MAX_FOLLOW_UPS,
                        ", ".join(f"{cat}/{sym}/{idx}" for cat, sym, idx in unconfirmed[:10]))

    def _push_unreadable(self) -> None:
        """A push we could not read: a snapshot at once (at most one per follow-up delay, so a
        flood of bad frames does not spend the position/list quota), and one read after the
        skew, since the first may have been read before that push's change."""
        now = trio.current_time()
        if now - self._unreadable_asked_at >= self._follow_up_delay():
            self._unreadable_asked_at = now
            self.hub.request_reconcile()
        self._want_follow_up()

    def _follow_up_delay(self) -> float:
        return self.hub.combiner.book.snapshot_skew_ms / 1000 + FOLLOW_UP_MARGIN

    def _want_follow_up(self) -> None:
        """A snapshot read at least the follow-up delay from now (a later wish moves it)."""
        self._follow_up_at = trio.current_time() + self._follow_up_delay()
        self._follow_up.set()

    async def _follow_ups(self) -> NoReturn:
        """Ask the reconciler for the snapshots wanted by ``_want_follow_up``: one when the
        latest wish's delay has passed."""
        while True:
            await self._follow_up.wait()
            while (wait := self._follow_up_at - trio.current_time()) > 0:
                await trio.sleep(wait)
            self._follow_up = trio.Event()
            self.hub.request_reconcile()

    async def _prices(self) -> NoReturn:
        hub = self.hub
        combiner = hub.combiner
        apply, emit = combiner.apply_marks, self._emit
        while True:
            batch = await hub.marks.take()  # looked up each time: bench_stream stamps it on the class
            by_category: dict[str, dict[str, Mark]] = {}
            for (category, symbol), mark in batch.items():
                marks = by_category.get(category)
                if marks is None:
                    marks = by_category[category] = {}
                marks[symbol] = mark
            for category, marks in by_category.items():
                if len(marks) <= STEP:  # the common case: one read's marks, one chunk
                    emit(apply(category, marks, commit=False), marks)
                    continue
                items = list(marks.items())
                for start in range(0, len(items), STEP):
                    if start:  # a burst of marks must not hold the loop for milliseconds
                        await trio.lowlevel.checkpoint()
                    chunk = dict(items[start:start + STEP])
                    emit(apply(category, chunk, commit=False), chunk)

    async def _fallback_prices(self) -> NoReturn:
        """REST ticker marks for positions whose live mark went stale (the REST poller's)."""
        hub = self.hub
        while True:
            batch = await hub.rollout.fallback_marks.take()
            by_category: dict[str, dict[str, Mark]] = {}
            for (category, symbol), mark in batch.items():
                by_category.setdefault(category, {})[symbol] = mark
            for category, marks in by_category.items():
                # not live: they stand in for a stale feed, so they must not hide its silence
                self._emit(hub.combiner.apply_fallback_marks(category, marks, commit=False), live=False)

    def _emit(self, events: Sequence[Event], marks: Mapping[str, Mark] | None = None, *, live: bool = True) -> None:
        """Hand events over, then commit them as shown: a crash in between is healed by
        :meth:`Combiner.resync` when this actor restarts. ``marks``: the ticker marks the
        events came from (their read stamps give the frame-to-event latency). ``live``: False
        for REST fallback marks (they do not count as the hybrid stream's liveness)."""
        hub = self.hub
        try:
            hub.switch.offer_hybrid(events)
        except BaseException:
            hub.combiner.rollback()  # not handed over: a sibling's later commit must not claim them
            raise
        hub.combiner.commit()
        if not events:
            return
        now = trio.current_time()
        watch = hub.alert_watch
        if not watch.is_set():
            watch.set()
        health = hub.health
        health.events_emitted += len(events)
        health.last_event_ms = events[-1].received_ts
        health.last_event_at = now
        if live:
            health.last_live_event_at = now
        self._measure(events, marks, now)

    def _measure(self, events: Sequence[Event], marks: Mapping[str, Mark] | None, now: float) -> None:
        """Count the events by name and source, and record both latencies of the live ones
        (ticker and private push; a REST record's ``updatedTime`` may be hours old).
        ``scripts/bench_observe.py``: about 1 µs per event on the ticker path."""
        hub = self.hub
        by_kind = hub.health.events_by_kind
        wall = hub.wall_clock()
        latency = hub.latency
        if marks is not None:  # a chunk of marks: every event is a ticker position.update
            by_kind[TICKER_KIND] = by_kind.get(TICKER_KIND, 0) + len(events)
            if len(events) == 1:  # the common case (one read's mark): no lists
                event = events[0]
                mark = marks.get(event.symbol)
                read_at = mark.read_at if mark is not None else None
                latency.frame_to_event.observe(wall - (read_at if read_at is not None
                                                       else event.received_ts / 1000.0), now)
                exchange_ts = event.exchange_ts
                if exchange_ts is not None:
                    latency.exchange_to_event.observe(wall - exchange_ts / 1000.0, now)
                return
            mark_of = marks.get
            frames: list[float] = []
            exchanges: list[float] = []
            for event in events:
                mark = mark_of(event.symbol)
                read_at = mark.read_at if mark is not None else None
                frames.append(wall - (read_at if read_at is not None else event.received_ts / 1000.0))
                exchange_ts = event.exchange_ts
                if exchange_ts is not None:
                    exchanges.append(wall - exchange_ts / 1000.0)
            latency.frame_to_event.observe_many(frames, now)  # one slot check per chunk
            latency.exchange_to_event.observe_many(exchanges, now)
            return
        exchange = latency.exchange_to_event.observe
        frame = latency.frame_to_event.observe
        for event in events:
            source = event.source
            kind = (event.name, source)
            by_kind[kind] = by_kind.get(kind, 0) + 1
            if source == "rest":
                continue
            frame(wall - event.received_ts / 1000.0, now)
            if event.exchange_ts is not None:
                exchange(wall - event.exchange_ts / 1000.0, now)
