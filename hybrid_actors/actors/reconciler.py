"""Reconciler actor: a REST ``position/list`` snapshot every ``reconcile_interval``
(default 5 min), or at once when asked (after a combiner crash), even while every
socket is up. Anything the streams missed is healed by the combiner's snapshot rule,
and counted in health as a correction.

While the private socket is down (longer than the rollout's ``rest_interval``, 5 s: a
quick reconnect brings its own snapshot), nothing else tells opens and closes: the
snapshot is then taken every ``rest_interval``, as in rest mode, so a position opened
during a private outage of hours gets its live marks within seconds, not minutes."""

from __future__ import annotations

import logging
from typing import NoReturn

import attrs
import trio

from ..messages import PositionsSnapshot
from .hub import Hub

__all__ = ["ReconcilerActor"]

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class ReconcilerActor:
    hub: Hub
    name: str = "reconciler"

    @staticmethod
    def reset_after_crash(hub: Hub) -> None:
        """Takes ``reconcile_now``. Known-good after a crash: a snapshot requested, since
        the one the crash interrupted may never have been applied."""
        hub.request_reconcile()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        hub = self.hub
        config = hub.config
        with hub.lifecycle_send.clone() as lifecycle:  # closed synchronously: see CombinerActor.run
            task_status.started()
            last = trio.current_time()
            while True:
                with trio.move_on_at(self._next_at(last)) as waited:
                    await hub.reconcile_now.wait()
                if waited.cancelled_caught and trio.current_time() < self._next_at(last):
                    continue  # woke to look at the private socket: not due yet
                last = trio.current_time()
                # Take the request before fetching: one raised during the fetch asks for a
                # snapshot newer than this one, so it must stay pending.
                requested, hub.reconcile_now = hub.reconcile_now.is_set(), trio.Event()
                try:
                    snapshot = await hub.rest.positions(config.categories)
                    await lifecycle.send(PositionsSnapshot(snapshot.categories, snapshot.positions,
                                                           snapshot.as_of_ms, hub.wall_ms(), reason="reconcile",
                                                           coverage=snapshot.coverage,
                                                           uncertain=snapshot.uncertain))
                except BaseException:
                    if requested:  # not served: the next incarnation (or loop) serves it
                        hub.reconcile_now.set()
                    raise

    def _next_at(self, last: float) -> float:
        """When the next snapshot is due: ``reconcile_interval`` after the last one, or
        ``rest_interval`` after it while the private socket has been down that long (its
        reconnect's own snapshot covers a shorter gap). Looked at again every
        ``rest_interval`` at most, since the private socket may go down meanwhile."""
        hub = self.hub
        fast = hub.config.rollout.rest_interval
        now = trio.current_time()
        # in rest mode the REST poller lists positions every rest_interval already
        down_since = self._private_down_since() if hub.switch.active != "rest" else None
        if down_since is not None and now - down_since >= fast:
            return max(last + fast, now)
        due = last + hub.config.reconcile_interval
        if down_since is not None:  # not down long enough yet: look again when it will be
            return min(due, down_since + fast)
        return min(due, now + fast)

    def _private_down_since(self) -> float | None:
        """Since when (trio time) the private socket has been down, None when it is up.
        Up means connected; a socket waiting only for its REST snapshot is up (and is
        asking REST itself)."""
        link = self.hub.health.links.get("private")
        if link is not None and link.connected:
            return None
        if link is None or link.disconnected_at is None:
            started = self.hub.rollout.started_at  # never connected: down since the start
            return started if started is not None else 0.0
        return link.disconnected_at
