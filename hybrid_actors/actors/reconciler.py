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

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        hub = self.hub
        config = hub.config
        task_status.started()
        while True:
            with trio.move_on_after(config.reconcile_interval):
                await hub.reconcile_now.wait()
            snapshot = await hub.rest.positions(config.categories)
            await hub.lifecycle_send.send(PositionsSnapshot(
                snapshot.categories, snapshot.positions, snapshot.as_of_ms, hub.wall_ms(), reason="reconcile"))
            if hub.reconcile_now.is_set():  # served; a failed call above keeps the request
                hub.reconcile_now = trio.Event()
