"""The system under test on loopback: the simulator plus a supervised stream against it.

Both share one wall clock that follows trio's (virtual) time, so auth expiry and REST
recv_window checks hold while MockClock jumps. Every helper waits on events, never sleeps.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from hybrid_actors import StreamConfig
from hybrid_actors.actors.mailboxes import StreamClosed
from hybrid_actors.notices import Notice, StreamState
from hybrid_actors.state import Event, PositionClosed, PositionUpdate
from hybrid_actors.supervisor import HybridStream, open_hybrid_stream
from hybrid_actors.testing.simulator import Simulator, SimulatorConfig, open_simulator, trio_wall_clock

TEST_TIMEOUT = 60  # virtual seconds under loopback_clock


@attrs.define(eq=False)
class EventLog:
    """Everything the stream emitted, in order; lets a test wait for a matching event.

    ``events``: the position events; ``notices``: the ``stream.*`` notices; ``everything``: both."""

    stream: HybridStream
    events: list[Event] = attrs.Factory(list)
    notices: list[Notice] = attrs.Factory(list)
    everything: list[Event | Notice] = attrs.Factory(list)
    _changed: trio.Event = attrs.Factory(trio.Event)

    async def run(self) -> None:
        try:
            while True:
                self.take(await self.stream.batches())
        except StreamClosed:
            return

    def take(self, batch: list[Event | Notice]) -> None:
        for item in batch:
            self.everything.append(item)
            if isinstance(item, (PositionUpdate, PositionClosed)):
                self.events.append(item)
            else:
                self.notices.append(item)
        self._changed.set()
        self._changed = trio.Event()

    def states(self) -> list[str]:
        return [n.state for n in self.notices if isinstance(n, StreamState)]

    async def wait_for_state(self, state: str, *, after: int = 0) -> StreamState:
        """The first ``stream.state`` notice at index >= ``after`` of ``notices`` in ``state``."""
        index = after
        while True:
            changed = self._changed
            for notice in self.notices[index:]:
                if isinstance(notice, StreamState) and notice.state == state:
                    return notice
            index = len(self.notices)
            await changed.wait()

    async def wait_until(self, predicate: Callable[[], Any]) -> Any:
        """``predicate()``'s first truthy value, re-checked whenever the log takes a batch."""
        while not (value := predicate()):
            await self._changed.wait()
        return value

    async def wait_for(self, predicate: Callable[[Event], bool], *, after: int = 0) -> Event:
        """The first event at index >= ``after`` matching ``predicate``."""
        index = after
        while True:
            changed = self._changed
            for event in self.events[index:]:
                if predicate(event):
                    return event
            index = len(self.events)
            await changed.wait()

    def mark(self) -> int:
        return len(self.events)

    def of(self, symbol: str) -> list[Event]:
        return [e for e in self.events if e.symbol == symbol]


@attrs.define(eq=False)
class Stack:
    sim: Simulator
    stream: HybridStream
    log: EventLog

    @property
    def hub(self):  # type: ignore[no-untyped-def]
        return self.stream.hub

    def restarts(self) -> dict[str, int]:
        return {name: stats.restarts for name, stats in self.hub.health.actors.items()}

    def open_symbols(self, category: str = "linear") -> frozenset[str]:
        return frozenset(p.symbol for p in self.sim.observe.positions(category, open_only=True))

    async def wait_subscriptions_match_positions(self, category: str = "linear") -> None:
        """Until the exchange-side ticker subscriptions equal the open positions' symbols."""
        observe = self.sim.observe
        await observe.wait_until(lambda: observe.subscribed_symbols(category) == self.open_symbols(category))


async def eventually(predicate: Callable[[], Any], first_step: float = 0.01, max_step: float = 1.0) -> Any:
    """For state of ours that has no change event: re-check after growing virtual delays.

    Under MockClock each idle step costs up to the autojump threshold of real time, so the
    steps double (up to ``max_step``) to keep long waits cheap and short ones quick."""
    step = first_step
    while True:
        value = predicate()
        if value:
            return value
        await trio.sleep(step)
        step = min(max_step, step * 2)


def sim_config(**overrides: Any) -> SimulatorConfig:
    """Quiet by default: no random positions, prices move only on command (rate 0)."""
    values: dict[str, Any] = {"symbols": 20, "positions": 0, "rate": 0.0, "seed": 11}
    values.update(overrides)
    return SimulatorConfig(**values)


@asynccontextmanager
async def running(sim: SimulatorConfig | None = None, **stream: Any) -> AsyncIterator[Stack]:
    """Simulator + stream + an event log; ``stream`` overrides StreamConfig fields."""
    wall = trio_wall_clock()
    config = attrs.evolve(sim or sim_config(), wall_clock=wall)
    async with open_simulator(config) as simulator:
        settings: dict[str, Any] = {"heartbeat_interval": 20.0}
        settings.update(stream)
        stream_config = StreamConfig(credentials=simulator.credentials, endpoints=simulator.endpoints, **settings)
        async with open_hybrid_stream(stream_config, wall_clock=wall, rng=random.Random(5)) as hybrid:
            log = EventLog(hybrid)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(log.run)
                yield Stack(simulator, hybrid, log)
                nursery.cancel_scope.cancel()
