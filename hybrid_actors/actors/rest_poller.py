"""REST poller actor: the REST stream of the rollout, and the hybrid stream's stale-price fallback.

Two loops, both on the shared :class:`~hybrid_actors.rest.RestClient`:

- **positions**: while any position is routed through REST (modes rest / canary / parallel,
  a partial cutover, a rollback), ``GET /v5/position/list`` every ``rest_interval`` seconds
  (at once after a routing change) into the REST book, then the switch gives the consumer
  what it has not seen of it. Otherwise it sleeps until the routing changes.
- **tickers**: every ``ticker_interval`` seconds, one public ``GET /v5/market/tickers`` per
  category that needs marks (options: one per base coin), and only if one does:

  * the REST book's positions (their marks, ``source: "rest"``);
  * production: hybrid positions whose live mark is older than ``stale_after`` (socket
    down or refused, topic silent) get the REST mark through the hybrid combiner until
    live ticks return;
  * parallel: the comparator checks the REST ``markPrice`` against each hybrid mark.

Within Bybit's limits: at most one tickers call per category per second (public, 600
requests per 5 s per IP) and a few position/list pages per ``rest_interval`` (the account's
10 per second). An outage (:class:`~hybrid_actors.errors.RestUnavailable`, after the REST
client's own retries) ends this incarnation; the supervisor restarts it with the stream's
one backoff policy, and the book, comparator and switch state live in the hub.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from decimal import Decimal
from typing import Final, NoReturn

import attrs
import trio

from ..protocol.rest import TickerRow
from ..rollout import divergence_ratio, stale_symbols
from ..state import Mark
from .hub import Hub

__all__ = ["RestPollerActor"]

log = logging.getLogger(__name__)

PERCENT_PLACES: Final = Decimal("0.001")
#: wake this long after a mark would turn stale (staleness is "older than", not "as old as")
STALE_MARGIN: Final = 0.001
_NO_ACTIVITY: Final[dict[str, float]] = {}


@attrs.define(eq=False)
class RestPollerActor:
    hub: Hub
    name: str = "rest"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._positions)
            nursery.start_soon(self._tickers)
            task_status.started()
        raise AssertionError("unreachable")  # pragma: no cover

    # --- positions --------------------------------------------------------------------------
    async def _positions(self) -> NoReturn:
        hub = self.hub
        switch = hub.switch
        policy = hub.config.rollout
        while True:
            if not switch.needs_rest_positions:
                await switch.changed.wait()
                continue
            epoch = switch.epoch
            changed = switch.changed
            snapshot = await hub.rest.positions(hub.config.categories)
            await hub.room_for_events()
            runtime = hub.rollout
            # authoritative only for the (category, settle coin) scopes it read completely:
            # without coverage a page cut short or a skipped coin would "close" positions
            runtime.combiner.apply_snapshot(snapshot.positions, categories=snapshot.categories,
                                            as_of_ms=snapshot.as_of_ms, received_ts=hub.wall_ms(),
                                            coverage=snapshot.coverage, uncertain=snapshot.uncertain)
            runtime.position_polls += 1
            runtime.positions_at = trio.current_time()
            switch.rest_snapshot_taken(epoch)
            self._sync()
            if switch.active == "rest" and switch.rest_fresh:
                hub.first_snapshot.set()
            with trio.move_on_after(policy.rest_interval):
                await changed.wait()

    def _sync(self) -> None:
        hub = self.hub
        book = hub.rollout.combiner
        hub.switch.sync("rest", book.current(), (p.key for p in book.book.open_positions()), hub.wall_ms())

    # --- tickers -------------------------------------------------------------------------------
    async def _tickers(self) -> NoReturn:
        """Poll every ``ticker_interval`` while some marks are wanted; otherwise sleep until
        a tracked mark could go stale, the positions change or the routing does."""
        hub = self.hub
        interval = hub.config.rollout.ticker_interval
        next_at = trio.current_time()
        while True:
            now = trio.current_time()
            next_at = max(next_at + interval, now)
            rest, stale, compare = self._wanted(now)
            if rest or stale or compare or hub.switch.needs_rest_positions:
                await self._poll_tickers(rest, stale, compare)
                await trio.sleep_until(next_at)
            else:
                await self._idle(now)

    async def _idle(self, now: float) -> None:
        """Until the earliest tracked mark could go stale, or the hybrid book's symbols or the
        routing change (no REST call meanwhile)."""
        hub = self.hub
        stale_after = hub.config.rollout.stale_after
        wake_at = math.inf
        if stale_after is not None and hub.switch.mode == "production":
            # the earliest moment a tracked symbol's mark could go stale: its last tick, or
            # when it was first tracked if it never ticked since (one pass, no call per symbol)
            activity = hub.activity
            last = [tick if tick is not None and tick > since else since
                    for (category, symbol), since in hub.rollout.tracked_since.items()
                    for tick in (activity.get(category, _NO_ACTIVITY).get(symbol),)]
            if last:
                wake_at = min(last) + stale_after + STALE_MARGIN
        version = hub.desired.version
        changed = hub.switch.changed
        with trio.move_on_at(wake_at):
            async with trio.open_nursery() as nursery:
                async def positions_changed() -> None:
                    await hub.desired.wait_newer(version)
                    nursery.cancel_scope.cancel()

                async def routing_changed() -> None:
                    await changed.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(positions_changed)
                nursery.start_soon(routing_changed)

    def _wanted(self, now: float) -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, set[str]]]:
        """Per category: symbols of REST-routed positions, stale hybrid symbols, and hybrid
        symbols to compare."""
        hub = self.hub
        switch = hub.switch
        policy = hub.config.rollout
        runtime = hub.rollout
        rest: dict[str, set[str]] = {}
        if switch.needs_rest_positions and switch.rest_fresh:
            for position in runtime.combiner.book.open_positions():
                if switch.route(position.key) == "rest":
                    rest.setdefault(position.category, set()).add(position.symbol)
        stale: dict[str, set[str]] = {}
        compare: dict[str, set[str]] = {}
        hybrid_symbols: dict[str, set[str]] = {}
        # This runs on the stream's one thread, between two reads of the busy public socket,
        # about every ``stale_after`` in production: it must stay far under a millisecond at
        # hundreds of positions (it took 1.1 ms at 500, with one route() call and a few tuples
        # per position, and the reader waited). Hence set operations, and the per-symbol
        # check only for symbols without a recent tick.
        every = switch.mode == "parallel" or (switch.mode == "production" and switch.all_hybrid)
        if every or switch.mode == "production":
            for position in hub.combiner.book.open_positions():
                if every or switch.route(position.key) == "hybrid":
                    held = hybrid_symbols.get(position.category)
                    if held is None:
                        held = hybrid_symbols[position.category] = set()
                    held.add(position.symbol)
        tracked = runtime.tracked_since
        watching = {(c, s) for c, symbols in hybrid_symbols.items() for s in symbols}
        for pair in tracked.keys() - watching:
            del tracked[pair]
        for pair in watching - tracked.keys():
            tracked[pair] = now
        if switch.mode == "parallel":
            compare = hybrid_symbols
        elif switch.mode == "production" and not switch.rolled_back and policy.stale_after is not None:
            cutoff = now - policy.stale_after
            for category, symbols in hybrid_symbols.items():
                activity = hub.activity.get(category, {})
                quiet = [s for s in symbols if not activity.get(s, -math.inf) >= cutoff]  # no tick since the cutoff
                if not quiet:
                    continue
                since = {s: tracked[(category, s)] for s in quiet}
                found = stale_symbols(quiet, activity, since, now, policy.stale_after)
                if found:
                    stale[category] = set(found)
        self._set_stale(frozenset((c, s) for c, symbols in stale.items() for s in symbols), now)
        return rest, stale, compare

    def _set_stale(self, stale: frozenset[tuple[str, str]], now: float) -> None:
        """Record which symbols are priced from the REST fallback, and since when (the
        ``stale_fallback`` alert's figure); a change wakes the alert actor."""
        runtime = self.hub.rollout
        if stale == runtime.stale:
            return
        since = runtime.stale_since
        for pair in [p for p in since if p not in stale]:
            del since[pair]
        for pair in stale:
            since.setdefault(pair, now)
        runtime.stale = stale
        self.hub.alert_watch.set()

    async def _poll_tickers(self, rest: dict[str, set[str]], stale: dict[str, set[str]],
                            compare: dict[str, set[str]]) -> None:
        hub = self.hub
        categories = [c for c in hub.config.categories if c in rest or c in stale or c in compare]
        runtime = hub.rollout
        for category in categories:
            symbols = rest.get(category, set()) | stale.get(category, set()) | compare.get(category, set())
            asked_at = trio.current_time()
            rows = await self._fetch(category, symbols)
            runtime.ticker_polls += 1
            now_ms = hub.rest.now_ms()  # the exchange's clock: comparable with ticker frames' ts
            marks = {row.symbol: Mark(row.mark_price, now_ms, hub.wall_ms())
                     for row in rows if row.mark_price is not None and row.symbol in symbols}
            if category in compare and runtime.comparator is not None:
                self._compare(category, marks)
            wanted_rest = {s: m for s, m in marks.items() if s in rest.get(category, ())}
            if wanted_rest:
                await hub.room_for_events()
                runtime.combiner.apply_fallback_marks(category, wanted_rest)
                self._sync()
            activity = hub.activity.get(category, {})
            for symbol in stale.get(category, ()):
                mark = marks.get(symbol)
                # a live tick that came in while we asked wins: its socket is back, and a REST
                # answer (which may have taken long, e.g. on a slow exchange) must not overtake it
                if mark is not None and activity.get(symbol, -math.inf) < asked_at:
                    runtime.fallback_marks.put((category, symbol), mark)
                    runtime.fallback_marks_sent += 1
            runtime.fallback_marks.commit()

    async def _fetch(self, category: str, symbols: Iterable[str]) -> tuple[TickerRow, ...]:
        rest = self.hub.rest
        if category != "option":
            return await rest.tickers(category)
        rows: list[TickerRow] = []
        for base in sorted({s.split("-", 1)[0] for s in symbols}):  # BTC-27DEC24-100000-C → BTC
            rows.extend(await rest.tickers(category, base_coin=base))
        return tuple(rows)

    def _compare(self, category: str, marks: dict[str, Mark]) -> None:
        """Each held symbol's hybrid mark at this moment against the REST sample: once per
        symbol, as marks are per symbol (the two legs of a hedge-mode symbol carry the same
        mark; comparing each leg counted its divergences twice)."""
        hub = self.hub
        comparator = hub.rollout.comparator
        assert comparator is not None
        compared: set[str] = set()
        for view in hub.combiner.current():
            if view.category != category or view.mark_price is None or view.symbol in compared:
                continue
            compared.add(view.symbol)
            sample = marks.get(view.symbol)
            if sample is None:
                continue
            if comparator.compare(category, view.symbol, sample.price, view.mark_price):
                hub.alert_watch.set()  # the divergence alert reads the count: evaluate now
                ratio = divergence_ratio(sample.price, view.mark_price)
                log.warning("parallel run: %s %s REST markPrice %s vs hybrid %s: %s%% apart (threshold %s%%)",
                            category, view.symbol, sample.price, view.mark_price,
                            (ratio * 100).quantize(PERCENT_PLACES), comparator.threshold * 100)
