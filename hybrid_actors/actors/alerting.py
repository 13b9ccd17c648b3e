"""Alert actor: evaluates the alert rules (``alerts.py``) and sends each transition as a
``stream.alert`` notice on the event stream and as a structured log line.

It evaluates when the stream's state changes (events made by the combiner or handed to the
consumer by the switch from either source, notices, a divergence the comparator counted,
the stale-fallback set changing, sockets coming and going: ``hub.alert_watch`` and the link
registry) but at most once per ``AlertPolicy.interval``, and otherwise sleeps until the
evaluator's ``next_check`` (the moment a threshold could be crossed with no new input) —
never longer than ``IDLE_WITH_POSITIONS`` while positions are open, so a figure that
changes without a wake-up is seen within that. A busy stream is checked once a second; an
idle one without positions costs no periodic wakeups.

The evaluator lives in the hub (``hub.alerts``), so a restarted actor neither fires an
alert twice nor forgets one that is firing; this actor is its only writer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final, NoReturn

import attrs
import trio

from ..alerts import log_alert
from ..health import HealthReport
from .hub import Hub

__all__ = ["AlertActor", "alert_view", "IDLE_WITH_POSITIONS"]

#: the longest the actor sleeps while positions are open (seconds)
IDLE_WITH_POSITIONS: Final = 30.0


async def _first_of(*events: trio.Event) -> None:
    """Return when any of ``events`` is set."""
    async with trio.open_nursery() as nursery:
        for event in events:
            nursery.start_soon(_set_then_cancel, event, nursery.cancel_scope)


async def _set_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def alert_view(report: HealthReport) -> dict[str, Any]:
    """The parts of a health report the rules read (no deep copy of the rest)."""
    return {"connections": report.connections, "events": report.events, "positions": report.positions,
            "latency": report.latency, "rollout": getattr(report, "rollout", None) or {}}


@attrs.define(eq=False)
class AlertActor:
    hub: Hub
    #: builds the stream's health report (the supervisor's ``build_health_report``)
    health: Callable[[], HealthReport]
    name: str = "alerts"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        hub = self.hub
        interval = hub.config.alerts.interval
        task_status.started()
        while True:
            evaluated_at = trio.current_time()
            hub.alert_watch = trio.Event()  # changes from now on wake us
            links_changed = hub.links.changed
            self.evaluate()
            with trio.move_on_at(min(hub.alerts.next_check, evaluated_at + self.idle())):
                await _first_of(hub.alert_watch, links_changed)
            await trio.sleep_until(evaluated_at + interval)  # at most once per interval

    def idle(self) -> float:
        """How long to sleep at most without a wake-up: bounded while positions are open."""
        hub = self.hub
        return IDLE_WITH_POSITIONS if len(hub.combiner.book) or hub.switch.seen else math.inf

    def evaluate(self) -> None:
        hub = self.hub
        for alert in hub.alerts.evaluate(alert_view(self.health()), trio.current_time(), hub.wall_ms()):
            log_alert(alert)
            hub.emit_notice(alert)
