"""The source switch: the one writer of position events into the consumer's queue.

Two producers offer events: the hybrid combiner (every event it makes, as it makes them)
and the REST poller (the REST view of every position, after each poll). The switch owns
which source feeds the consumer for each position (:meth:`SourceSwitch.route`: the mode,
the cutover hash, a rollback) and what the consumer has already been given
(:attr:`SourceSwitch.seen`, the last view per open position). Both producers call it
synchronously from trio tasks of one thread, so its state has one writer at a time.

Lifecycle across a switch is deduplicated against what the consumer has seen, never
replayed from the other source's history: the book is the truth. When a position moves
to a source (a rollback, a return), that source's current view is compared with the
consumer's and only the differences go out (an open it missed, a resize, a close), so
nothing is lost and nothing is doubled.

The REST side is always synchronised this way (:meth:`sync`), and only from a REST
snapshot taken after the last routing change (:meth:`rest_snapshot_taken`): an old REST
book must not close positions the hybrid stream opened meanwhile. The hybrid side passes
events straight through (the production hot path: one dict lookup per event).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

import attrs
import trio

from ..rollout import Mode, RolloutPolicy, Source, routes_hybrid
from ..state import Event, Key, PositionClosed, PositionUpdate, Source as EventSource, ZERO, closed_from, \
    reversed_side
from .mailboxes import EventQueue

__all__ = ["SourceSwitch"]

log = logging.getLogger(__name__)


def _lifecycle(view: PositionUpdate) -> tuple[Any, ...]:
    """Everything but the mark: a change here is lifecycle, not a price move."""
    return (view.side, view.size, view.entry_price, view.leverage, view.liq_price, view.take_profit,
            view.stop_loss, view.trailing_stop)


@attrs.define(eq=False)
class SourceSwitch:
    mode: Mode
    policy: RolloutPolicy
    queue: EventQueue
    #: called with each batch of events handed to the consumer (the hub: records when, and
    #: wakes the alert actor)
    on_delivered: Callable[[Sequence[Event]], None] = lambda events: None
    rolled_back: bool = False
    #: bumped on every routing change
    epoch: int = 0
    #: the epoch in which the REST book was last refreshed from a snapshot
    rest_epoch: int = -1
    #: what the consumer has been given: the last view of each open position
    seen: dict[Key, PositionUpdate] = attrs.Factory(dict)
    #: which source gave the consumer its last event of each open position
    delivered_by: dict[Key, Source] = attrs.Factory(dict)
    #: position events handed to the consumer per source: the consumer-facing event counts
    #: (``health()['events']['emitted']``, events/s), whichever source fed it
    delivered: dict[str, int] = attrs.Factory(lambda: {"hybrid": 0, "rest": 0})
    #: (event name, event source) -> events handed to the consumer, from either path:
    #: ``health()['events']['by_event']`` and ``hybrid_events_total`` (the combiner's own
    #: counts, which in canary and parallel never reach the consumer, are ``hybrid_by_event``)
    by_kind: dict[tuple[str, str], int] = attrs.Factory(dict)
    rollbacks: int = 0
    returns: int = 0
    last_rollback_reason: str | None = None
    last_return_reason: str | None = None
    #: trio time of the last rollback / return
    rolled_back_at: float | None = None
    returned_at: float | None = None
    #: set (and replaced) on every routing change: wakes the REST poller
    changed: trio.Event = attrs.Factory(trio.Event)
    _routes: dict[Key, bool] = attrs.Factory(dict)

    # --- routing ----------------------------------------------------------------------------
    @property
    def active(self) -> Source:
        """The source feeding the consumer (``hybrid`` in production even when a partial
        cutover routes some positions through REST)."""
        return "hybrid" if self.mode == "production" and not self.rolled_back else "rest"

    @property
    def all_hybrid(self) -> bool:
        return self.active == "hybrid" and self.policy.cutover_percent >= 100

    @property
    def needs_rest_positions(self) -> bool:
        """Whether any position may be routed through REST now (the poller's cue)."""
        return not self.all_hybrid

    def route(self, key: Key) -> Source:
        if self.active == "rest":
            return "rest"
        hybrid = self._routes.get(key)
        if hybrid is None:
            hybrid = self._routes[key] = routes_hybrid(key, self.policy.cutover_percent)
            if len(self._routes) > 100_000:  # bounded: keys of long-closed positions go
                self._routes.clear()
        return "hybrid" if hybrid else "rest"

    # --- the hybrid producer ------------------------------------------------------------------
    def offer_hybrid(self, events: Sequence[Event]) -> None:
        """Events from the hybrid combiner, in order; those of hybrid-routed positions go out."""
        if not events:
            return
        if self.all_hybrid:
            # the production hot path: _admit inlined for updates (closes take the general path)
            out: list[Event] = []
            seen, delivered_by, admit = self.seen, self.delivered_by, self._admit
            for event in events:
                if type(event) is not PositionUpdate:
                    if admit(event, "hybrid"):
                        out.append(event)
                    continue
                key = event.key
                prev = seen.get(key)
                if prev is not None and delivered_by.get(key) != "hybrid" and _same(prev, event):
                    delivered_by[key] = "hybrid"  # the new source says what the consumer has
                    continue
                seen[key] = event
                delivered_by[key] = "hybrid"
                out.append(event)
        else:
            out = [e for e in events if self.route(e.key) == "hybrid" and self._admit(e, "hybrid")]
        self._put(out, "hybrid")

    def _admit(self, event: Event, source: Source) -> bool:
        """Update :attr:`seen` for ``event``; False if the consumer must not get it."""
        key = event.key
        prev = self.seen.get(key)
        if isinstance(event, PositionClosed):
            if prev is None:
                return False  # closed already (or never shown)
            del self.seen[key]
            self.delivered_by.pop(key, None)
            return True
        if prev is not None and self.delivered_by.get(key) != source and _same(prev, event):
            self.delivered_by[key] = source  # the new source says what the consumer has
            return False
        self.seen[key] = event
        self.delivered_by[key] = source
        return True

    # --- synchronising a source's book with the consumer -------------------------------------
    def rest_snapshot_taken(self, epoch: int) -> None:
        """The REST book now holds a snapshot fetched in ``epoch`` (read at its start)."""
        self.rest_epoch = max(self.rest_epoch, epoch)

    @property
    def rest_fresh(self) -> bool:
        return self.rest_epoch == self.epoch

    def sync(self, source: Source, views: Iterable[PositionUpdate], open_keys: Iterable[Key], received_ts: int) -> int:
        """Give the consumer what it has not seen of ``source``'s book for the positions
        routed to ``source``: opens, changes, new marks, and closes of positions the book no
        longer holds. The number of events sent. REST is synchronised only from a snapshot
        fresher than the last routing change."""
        if source == "rest" and not self.rest_fresh:
            return 0
        keys = set(open_keys)
        out: list[Event] = []
        for key, prev in list(self.seen.items()):
            if key not in keys and self.route(key) == source:
                del self.seen[key]
                self.delivered_by.pop(key, None)
                out.append(PositionClosed(
                    symbol=prev.symbol, category=prev.category, side=prev.side, size=ZERO,
                    entry_price=prev.entry_price, mark_price=prev.mark_price, unrealized_pnl=ZERO,
                    position_idx=prev.position_idx, source="rest" if source == "rest" else "position",
                    exchange_ts=prev.exchange_ts, received_ts=received_ts))
        for view in views:
            key = view.key
            if key not in keys or self.route(key) != source:
                continue
            shown = self.seen.get(key)
            if shown is not None and _same(shown, view):
                self.delivered_by[key] = source
                continue
            if shown is not None and reversed_side(shown, view.side):
                # reversed through zero: the consumer's position closed, a new one opened
                out.append(closed_from(shown, source="rest" if source == "rest" else "position",
                                       exchange_ts=view.updated_time, received_ts=received_ts))
                shown = None
            label: EventSource
            if source == "rest":
                label = "rest"
            else:
                label = "ticker" if shown is not None and _lifecycle(shown) == _lifecycle(view) else "position"
            event = attrs.evolve(view, source=label, received_ts=received_ts)
            self.seen[key] = event
            self.delivered_by[key] = source
            out.append(event)
        self._put(out, source)
        return len(out)

    def _put(self, events: list[Event], source: Source) -> None:
        if not events:
            return
        self.queue.put_many(events)
        self.delivered[source] += len(events)
        by_kind = self.by_kind
        for event in events:
            kind = (event.name, event.source)
            by_kind[kind] = by_kind.get(kind, 0) + 1
        self.on_delivered(events)

    # --- rollback and return ---------------------------------------------------------------------
    def roll_back(self, reason: str, now: float) -> bool:
        """Feed the consumer from REST from now on; False if already rolled back."""
        if self.rolled_back:
            return False
        self.rolled_back = True
        self.rollbacks += 1
        self.last_rollback_reason = reason
        self.rolled_back_at = now
        self._routing_changed()
        log.critical("rollout: rolled back to REST polling: %s", reason)
        return True

    def return_to_hybrid(self, reason: str, now: float) -> bool:
        """Feed the consumer from the hybrid stream again; False if not rolled back. The
        caller synchronises the hybrid book with :meth:`sync` right after."""
        if not self.rolled_back:
            return False
        self.rolled_back = False
        self.returns += 1
        self.last_return_reason = reason
        self.returned_at = now
        self._routing_changed()
        log.warning("rollout: returned to the hybrid stream: %s", reason)
        return True

    def _routing_changed(self) -> None:
        self.epoch += 1
        self.changed.set()
        self.changed = trio.Event()

    def health_section(self) -> dict[str, Any]:
        return {"mode": self.mode, "active": self.active, "cutover_percent": self.policy.cutover_percent,
                "rollbacks": self.rollbacks, "returns": self.returns,
                "last_rollback_reason": self.last_rollback_reason, "last_return_reason": self.last_return_reason,
                "delivered": dict(self.delivered)}


def _observable(view: PositionUpdate) -> tuple[Any, ...]:
    return (view.side, view.size, view.entry_price, view.mark_price, view.leverage, view.liq_price,
            view.take_profit, view.stop_loss, view.trailing_stop)


def _same(a: PositionUpdate, b: PositionUpdate) -> bool:
    """The consumer could not tell these apart (side, size, entry, mark and the record's settings)."""
    return _observable(a) == _observable(b)
