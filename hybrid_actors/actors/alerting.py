"""Alert actor: evaluates the alert rules (``alerts.py``) once a second and sends each
transition as a ``stream.alert`` notice on the event stream and as a structured log line.

The evaluator lives in the hub (``hub.alerts``), so a restarted actor neither fires an
alert twice nor forgets one that is firing; this actor is its only writer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import attrs
import trio

from ..alerts import log_alert
from ..health import HealthReport
from .hub import Hub

__all__ = ["AlertActor", "alert_view"]


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
        next_at = trio.current_time()
        while True:
            next_at += interval
            await trio.sleep_until(next_at)
            self.evaluate()
            next_at = max(next_at, trio.current_time() - interval)  # after a long stall, no catch-up burst

    def evaluate(self) -> None:
        hub = self.hub
        for alert in hub.alerts.evaluate(alert_view(self.health()), trio.current_time(), hub.wall_ms()):
            log_alert(alert)
            hub.emit_notice(alert)
