"""Rollback monitor actor (production): watches the hybrid stream, rolls the consumer back to
REST on a trigger, and (with ``auto_return``) brings it back once hybrid has been healthy.

Every second (or at once when a crash loop is reported) it gathers the inputs of
:func:`~hybrid_actors.rollout.rollback_reason` from the hub (socket states, the hybrid
combiner's last live event and the last ticker frame of an open position's symbol, open
positions, subscription failures) and applies the answer:
the switch routes everything through REST, a ``stream.rollback`` notice goes out, and the
REST poller fetches a fresh snapshot at once. After a rollback the
:class:`~hybrid_actors.rollout.ReturnGate` decides when to return; the return synchronises
the hybrid book with what the consumer has and sends ``stream.return``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Final, NoReturn

import attrs
import trio

from ..notices import StreamReturn, StreamRollback
from ..rollout import ReturnGate, TriggerInputs, next_check, refused_share_beyond, rollback_reason, silent_for
from .hub import Hub

__all__ = ["RollbackMonitor", "CHECK_INTERVAL"]

log = logging.getLogger(__name__)

#: how often health is sampled while waiting to return to hybrid (seconds)
CHECK_INTERVAL: Final = 1.0
#: the longest the monitor sleeps without a reason: new figures (a first open position,
#: subscription failures) are seen within this (or half the shortest trigger limit)
IDLE_CHECK: Final = 30.0


@attrs.define(eq=False)
class RollbackMonitor:
    hub: Hub
    name: str = "rollback"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        runtime = self.hub.rollout
        if runtime.started_at is None:
            runtime.started_at = trio.current_time()
        task_status.started()
        while True:
            wake_at = self.check(trio.current_time())
            with trio.move_on_at(wake_at):
                await runtime.wake_monitor.wait()
            runtime.wake_monitor = trio.Event()

    # --- the decision ------------------------------------------------------------------------
    def socket_names(self) -> tuple[str, ...]:
        return ("private", *(f"public:{c}" for c in self.hub.config.categories))

    def sockets_down_since(self) -> Mapping[str, float | None]:
        hub = self.hub
        out: dict[str, float | None] = {}
        for name in self.socket_names():
            stats = hub.health.links.get(name)
            if stats is not None and stats.connected:
                out[name] = None
            elif stats is not None and stats.disconnected_at is not None:
                out[name] = stats.disconnected_at
            else:
                started = hub.rollout.started_at
                out[name] = started if started is not None else 0.0  # never connected: down since the start
        return out

    def inputs(self, now: float) -> TriggerInputs:
        hub = self.hub
        state = hub.rollout
        open_positions = len(hub.combiner.book)
        if open_positions == 0:
            state.open_since = None
        elif state.open_since is None:
            state.open_since = now
        crash = state.crash_loop
        state.crash_loop = None
        held = refused = 0
        for category, symbols in list(hub.desired.value.items()):
            held += len(symbols)
            subs = hub.subscriptions.get(category)
            if subs is not None:
                refused += sum(1 for symbol in list(subs.failed) if symbol in symbols)
        return TriggerInputs(now=now, sockets_down_since=self.sockets_down_since(),
                             last_event_at=hub.health.last_live_event_at, open_positions=open_positions,
                             positions_open_since=state.open_since,
                             subscription_failures=tuple(at for at, *_ in hub.health.subscription_failures),
                             crash_loop=crash, last_frame_at=hub.held_frame_at(),
                             held_symbols=held, refused_symbols=refused)

    _last_check: float = attrs.field(default=-math.inf, init=False)

    def idle(self) -> float:
        policy = self.hub.config.rollout
        limits = [x for x in (policy.rollback_after_disconnect, policy.rollback_after_silence) if x is not None]
        return min([IDLE_CHECK, *(limit / 2 for limit in limits)])

    def check(self, now: float) -> float:
        """Evaluate once; the trio time of the next check."""
        hub = self.hub
        switch = hub.switch
        gate = self.gate
        inputs = self.inputs(now)
        since = self._last_check
        self._last_check = now
        if not switch.rolled_back:
            reason = rollback_reason(hub.config.rollout, inputs,
                                     counting_since=switch.returned_at if switch.returned_at is not None else -math.inf)
            if reason is not None and switch.roll_back(reason, now):
                gate.rolled_back(now)
                hub.emit_notice(StreamRollback(reason, hub.wall_ms()))
            else:
                return next_check(hub.config.rollout, inputs, idle=self.idle())
        if hub.config.rollout.auto_return is None:
            return now + IDLE_CHECK  # nothing to decide until a restart of the stream
        if inputs.crash_loop is not None:
            gate.observe(now, healthy=False)
            return now + CHECK_INTERVAL
        healthy = self.hybrid_healthy(inputs, since)
        if gate.observe(now, healthy):
            required = gate.required(now)
            reason = f"the hybrid stream has been healthy for {required:g}s"
            if switch.return_to_hybrid(reason, now):
                hub.emit_notice(StreamReturn(reason, hub.wall_ms()))
                book = hub.combiner
                switch.sync("hybrid", book.current(), (p.key for p in book.book.open_positions()), hub.wall_ms())
                return next_check(hub.config.rollout, self.inputs(now), idle=self.idle())
        return now + CHECK_INTERVAL

    @property
    def gate(self) -> ReturnGate:
        gate = self.hub.rollout.gate
        assert gate is not None
        return gate

    def hybrid_healthy(self, inputs: TriggerInputs, since: float) -> bool:
        """Every socket up, every hybrid actor running, no subscription failure since the last
        check, not more than half of the held symbols refused, and not silent: with positions
        open, a live event or ticker frame within the silence limit (so a return after a
        silence or refusal rollback waits for the feed to come back instead of rolling back
        again at once)."""
        hub = self.hub
        if any(v is not None for v in inputs.sockets_down_since.values()):
            return False
        if silent_for(hub.config.rollout, inputs) is not None:
            return False
        if hub.config.rollout.rollback_sub_failures is not None and refused_share_beyond(inputs):
            return False
        for name, stats in hub.health.actors.items():
            if name in ("rest", "alerts", self.name):  # not part of the hybrid stream
                continue
            if stats.state != "running":
                return False
        return not any(at > since for at in inputs.subscription_failures)
