"""Reconciler actor: a REST ``position/list`` snapshot every ``reconcile_interval``
(default 5 min), or at once when asked (after a combiner crash), even while every
socket is up. Anything the streams missed is healed by the combiner's snapshot rule,
and counted in health as a correction."""

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
        async with hub.lifecycle_send.clone() as lifecycle:
            task_status.started()
            while True:
                with trio.move_on_after(config.reconcile_interval):
                    await hub.reconcile_now.wait()
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
