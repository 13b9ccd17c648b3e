"""The fault matrix's rig: simulator + stream + event recorder + invariants, on loopback.

Every row does the same three things, so they live here:

- **nothing lost** (:meth:`Rig.assert_nothing_lost`): the client's open positions equal the
  simulator's, and every open and close the rig made on the exchange (its journal) was seen
  by the client, in order, per position. Rows change positions only through the rig
  (:meth:`Rig.open`, :meth:`Rig.close`, :meth:`Rig.resize`), so the journal is complete;
- **isolation** (:meth:`Rig.sockets` then :meth:`Rig.assert_kept`): the sockets a fault did
  not touch keep their connection (same link generation, same exchange-side conn_id);
- **recovery within a bound** (:meth:`Rig.recovered`): from the moment the exchange is
  healthy again until every socket is up, every open position's ticker is subscribed and
  the client's positions equal the exchange's, in (virtual) seconds, asserted against the
  row's bound.

Time is trio's MockClock (``loopback_clock``); waits wake on any change of the simulator,
the event log or the link registry, and re-check at least every ``POLL`` virtual seconds.
"""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, Final

import attrs
import pytest
import trio
import trio.testing

from hybrid_actors import StreamConfig
from hybrid_actors.actors.mailboxes import StreamClosed
from hybrid_actors.state import PositionClosed, PositionUpdate
from hybrid_actors.supervisor import HybridStream, open_hybrid_stream
from hybrid_actors.testing.invariants import (Key, LifecycleTracker, lifecycle_anomalies, lifecycle_mismatches,
                                              position_mismatches)
from hybrid_actors.testing.simulator import Simulator, SimulatorConfig, open_simulator, trio_wall_clock

#: Issue 8's target: every socket back within 5 s of the exchange accepting again
RECOVERY: Final = 5.0
#: how often a wait re-checks when nothing it can see has changed (virtual seconds)
POLL: Final = 0.25
#: how long after its last change a position is safe from a REST snapshot's read skew
#: (the stream's SNAPSHOT_SKEW_MS is 1 s; twice that)
SNAPSHOT_SKEW: Final = 2.0
#: socket kinds on the simulator by link name
KINDS: Final = {"private": "private", "public:linear": "linear", "public:inverse": "inverse",
                "public:option": "option", "public:spot": "spot"}


def sim_config(**overrides: Any) -> SimulatorConfig:
    """Quiet: no random positions, prices move only on command."""
    values: dict[str, Any] = {"symbols": 20, "positions": 0, "rate": 0.0, "seed": 11}
    values.update(overrides)
    return SimulatorConfig(**values)


@attrs.frozen
class Sockets:
    """Which connection each socket is on: link generation and exchange-side conn_id."""

    generations: dict[str, int]
    conn_ids: dict[str, tuple[str, ...]]


@attrs.define(eq=False)
class Rig:
    sim: Simulator
    stream: HybridStream
    clock: trio.testing.MockClock | None
    events: list[Any] = attrs.Factory(list)
    journal: dict[Key, list[str]] = attrs.Factory(dict)
    _changed: trio.Event = attrs.Factory(trio.Event)
    _reading: trio.Event = attrs.Factory(trio.Event)
    #: every open and close seen, folded as events arrive
    seen: LifecycleTracker = attrs.Factory(LifecycleTracker)
    #: False: events are only folded into ``seen``, not kept (long runs measuring memory)
    keep_events: bool = True

    def __attrs_post_init__(self) -> None:
        self._reading.set()

    # --- the recorder ---------------------------------------------------------------------
    async def record(self) -> None:
        try:
            while True:
                await self._reading.wait()
                batch = await self.stream.batches()
                self.seen.feed(batch)
                if self.keep_events:
                    self.events.extend(batch)
                self._poke()
        except StreamClosed:
            return

    def stop_reading(self) -> None:
        """A slow consumer: the recorder takes nothing more until :meth:`read_again`."""
        self._reading = trio.Event()

    def read_again(self) -> None:
        self._reading.set()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def mark(self) -> int:
        return len(self.events)

    def positions_events(self, after: int = 0) -> list[PositionUpdate | PositionClosed]:
        return [e for e in self.events[after:] if isinstance(e, (PositionUpdate, PositionClosed))]

    async def wait_event(self, predicate: Callable[[Any], bool], *, after: int = 0) -> Any:
        index = after
        while True:
            changed = self._changed
            for event in self.events[index:]:
                if isinstance(event, (PositionUpdate, PositionClosed)) and predicate(event):
                    return event
            index = len(self.events)
            await changed.wait()

    # --- acting on the exchange (journalled) ------------------------------------------------
    def open(self, symbol: str, side: str = "Buy", size: str = "1", *, category: str = "linear") -> None:
        self.sim.control.open_position(symbol, side, size, category=category)
        self.journal.setdefault((category, symbol, 0), []).append("open")

    def close(self, symbol: str, *, category: str = "linear") -> None:
        self.sim.control.close_position(symbol, category=category)
        self.journal.setdefault((category, symbol, 0), []).append("close")

    def resize(self, symbol: str, size: str, *, category: str = "linear") -> None:
        self.sim.control.modify_position(symbol, size=size, category=category)

    def price(self, symbol: str, price: str, *, category: str = "linear") -> None:
        self.sim.control.set_mark_price(symbol, price, category=category)

    async def open_two(self, *, age: bool = True) -> None:
        """Most rows' starting point: BTCUSDT long 1 and ETHUSDT short 2, open and settled.
        ``age``: then let them age past ``SNAPSHOT_SKEW``, because a REST snapshot does not
        close a position updated within that window of its read (it may have opened after
        the read); rows whose fault makes the stream read a snapshot need it."""
        self.open("BTCUSDT")
        self.open("ETHUSDT", "Sell", "2")
        await self.settled()
        if age:
            await trio.sleep(SNAPSHOT_SKEW)

    def change_positions(self) -> None:
        """What changes while a fault lasts: SOLUSDT opens (long 7) and BTCUSDT closes."""
        self.open("SOLUSDT", "Buy", "7")
        self.close("BTCUSDT")

    async def prices_flow(self, symbol: str = "ETHUSDT", price: str = "3333.3") -> None:
        """A price set on the exchange now reaches the consumer."""
        mark = self.mark()
        self.price(symbol, price)
        await self.wait_event(lambda e: e.symbol == symbol and e.mark_price == Decimal(price), after=mark)

    # --- observing ----------------------------------------------------------------------------
    @property
    def hub(self) -> Any:
        return self.stream.hub

    @property
    def link_names(self) -> tuple[str, ...]:
        return ("private", *(f"public:{c}" for c in self.hub.config.categories))

    def exchange_positions(self) -> dict[Key, tuple[str, Decimal]]:
        categories = self.hub.config.categories
        return {(p.category, p.symbol, p.position_idx): (p.side, p.size)
                for p in self.sim.observe.positions(open_only=True) if p.category in categories}

    def client_positions(self) -> dict[Key, tuple[str, Decimal]]:
        return {p.key: (p.side, p.size) for p in self.stream.positions()}

    def exchange_tickers(self, category: str) -> frozenset[str]:
        """The tickers subscribed on the newest open ``category`` socket: the one the client
        uses (a half-open one it gave up on stays open on the exchange for a while)."""
        conns = self.sim.observe.open_connections(category)
        if not conns:
            return frozenset()
        return frozenset(t[len("tickers."):] for t in conns[-1].topics if t.startswith("tickers."))

    def sockets(self) -> Sockets:
        observe = self.sim.observe
        return Sockets({name: self.hub.links.generation(name) for name in self.link_names},
                       {name: tuple(c.conn_id for c in observe.open_connections(KINDS[name]))
                        for name in self.link_names})

    def restarts(self) -> dict[str, int]:
        return {name: stats.restarts for name, stats in self.hub.health.actors.items()}

    def converged(self) -> bool:
        """Every socket up, the books equal, and the exchange-side tickers = open positions."""
        links = self.hub.health.links
        if not all(links.get(name) is not None and links[name].connected for name in self.link_names):
            return False
        exchange = self.exchange_positions()
        if exchange != self.client_positions():
            return False
        for category in self.hub.config.categories:
            wanted = frozenset(symbol for (cat, symbol, _idx) in exchange if cat == category)
            if self.exchange_tickers(category) != wanted:
                return False
            if self.hub.subscriptions[category].confirmed != set(wanted):
                return False
        return True

    async def wait_until(self, predicate: Callable[[], Any], poll: float = POLL) -> Any:
        """``predicate()``'s first truthy value; re-checked on every visible change."""
        while True:
            value = predicate()
            if value:
                return value
            async with trio.open_nursery() as nursery:
                async def wake(wait: Callable[[], Any]) -> None:
                    await wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(wake, self.sim.observe.wait_changed)
                nursery.start_soon(wake, self._changed.wait)
                nursery.start_soon(wake, self.hub.links.changed.wait)
                nursery.start_soon(wake, lambda: trio.sleep(poll))

    async def settled(self) -> None:
        await self.wait_until(self.converged)

    async def recovered(self, bound: float, *, since: float | None = None, replaced: Sockets | None = None,
                        names: tuple[str, ...] | list[str] = ()) -> float:
        """Wait for convergence; assert it took at most ``bound`` seconds from ``since``
        (default: now), and return how long it took. With ``replaced``, the sockets
        ``names`` must also be on a newer connection than they were then."""
        start = trio.current_time() if since is None else since

        def done() -> bool:
            if replaced is not None and any(self.hub.links.generation(n) <= replaced.generations[n] for n in names):
                return False
            return self.converged()

        with trio.move_on_at(start + bound + 1):
            await self.wait_until(done)
        took = trio.current_time() - start
        assert done(), self.describe(f"not recovered {took:.1f}s after the fault ended (bound {bound}s)")
        assert took <= bound + POLL, self.describe(f"recovered after {took:.2f}s, bound {bound}s")
        return took

    def describe(self, headline: str) -> str:
        links = {name: (stats.connected, stats.connects) for name, stats in self.hub.health.links.items()}
        subs = {c: sorted(self.exchange_tickers(c)) for c in self.hub.config.categories}
        actors = {n: (s.state, s.restarts, s.last_error) for n, s in self.hub.health.actors.items()}
        return (f"{headline}\n  links (connected, connects): {links}\n  exchange tickers: {subs}\n"
                f"  exchange positions: {self.exchange_positions()}\n  client positions: {self.client_positions()}"
                f"\n  actors: {actors}")

    # --- the invariants -----------------------------------------------------------------------
    def assert_nothing_lost(self) -> None:
        problems = position_mismatches(self.exchange_positions(), self.client_positions())
        problems += lifecycle_mismatches(self.journal, self.seen.steps)
        problems += lifecycle_anomalies(self.seen.steps)
        problems += [f"simulator bug: {e}" for e in self.sim.observe.internal_errors()]
        assert not problems, "\n".join(problems)

    def assert_kept(self, before: Sockets, names: tuple[str, ...] | list[str]) -> None:
        """The sockets ``names`` are still on the connection they were on in ``before``."""
        now = self.sockets()
        for name in names:
            assert now.generations[name] == before.generations[name], (
                f"{name} reconnected: generation {before.generations[name]} -> {now.generations[name]}")
            assert now.conn_ids[name] == before.conn_ids[name], (
                f"{name} changed connection on the exchange: {before.conn_ids[name]} -> {now.conn_ids[name]}")

    def others(self, *touched: str) -> list[str]:
        return [name for name in self.link_names if name not in touched]

    async def came_back_alone(self, before: Sockets, socket: str, *, since: float | None = None,
                              bound: float = RECOVERY, replaced: bool = True, priced: str = "ETHUSDT") -> None:
        """How a row whose fault hit one socket ends: everything is back within ``bound`` of
        ``since`` (with ``replaced``, ``socket`` on a newer connection than in ``before``), the
        other sockets kept their connections, the open position ``priced`` gets its new price,
        and nothing was lost."""
        await self.recovered(bound, since=since, replaced=before if replaced else None, names=[socket])
        self.assert_kept(before, self.others(socket))
        await self.prices_flow(priced)
        self.assert_nothing_lost()


@asynccontextmanager
async def open_rig(clock: trio.testing.MockClock | None = None, sim: SimulatorConfig | None = None,
                   *, seed: int = 5, positions: tuple[tuple[str, str, str], ...] = (),
                   arm: Callable[[Simulator], Any] | None = None, **stream: Any) -> AsyncIterator[Rig]:
    """A started stream against a fresh simulator; ``stream`` overrides StreamConfig fields.
    ``positions`` (symbol, side, size) are open before the stream starts (journalled), and
    ``arm`` is called with the simulator before the stream starts (faults from the start)."""
    wall = trio_wall_clock()
    config = attrs.evolve(sim or sim_config(), wall_clock=wall)
    async with open_simulator(config) as simulator:
        journal: dict[Key, list[str]] = {}
        for symbol, side, size in positions:
            simulator.control.open_position(symbol, side, size)
            journal[("linear", symbol, 0)] = ["open"]
        if arm is not None:
            arm(simulator)
        settings: dict[str, Any] = {"heartbeat_interval": 20.0}
        settings.update(stream)
        stream_config = StreamConfig(credentials=simulator.credentials, endpoints=simulator.endpoints, **settings)
        async with open_hybrid_stream(stream_config, wall_clock=wall, rng=random.Random(seed)) as hybrid:
            rig = Rig(simulator, hybrid, clock, journal=journal)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rig.record)
                yield rig
                nursery.cancel_scope.cancel()


@pytest.fixture
def rig(loopback_clock: trio.testing.MockClock) -> Callable[..., Any]:
    """``async with rig(heartbeat_interval=5.0) as r:`` on virtual time. Import it into the
    test module (``from rig import rig``; no conftest here: it would shadow tests/conftest.py
    for ``from conftest import ...``). A row must ask for ``loopback_clock`` itself too:
    pytest-trio runs a test on a clock only when it is one of the test's own arguments."""
    return functools.partial(open_rig, loopback_clock)
