"""Heartbeat actor: Bybit's JSON ping on every live socket, and death for silent ones.

Every ``interval`` seconds each link gets ``{"op":"ping","req_id":...}``. A ping not
answered within ``pong_timeout`` marks the link dead; its owning actor then raises
:class:`~hybrid_actors.errors.HeartbeatTimeout` and the supervisor restarts that actor
alone. This is how half-open sockets are caught (trio-websocket has no keepalive, and
Bybit does not count WebSocket protocol pings). RTT is kept on each link.

Deadlines live on the links (owned by the registry), so a restarted heartbeat resumes
them instead of starting over.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import NoReturn

import attrs
import trio

from ..protocol.client import ping_frame
from .hub import Hub

__all__ = ["HeartbeatActor"]

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class HeartbeatActor:
    hub: Hub
    name: str = "heartbeat"
    _ids: itertools.count[int] = attrs.field(init=False, factory=lambda: itertools.count(1))

    @staticmethod
    def reset_after_crash(hub: Hub) -> None:
        """Owns the ping fields of every link. Known-good after a crash: no ping
        outstanding, the next one due now (a dead socket is still caught one timeout later)."""
        now = trio.current_time()
        for link in hub.links.links():
            link.ping_req_id = None
            link.ping_sent_at = None
            link.next_ping_at = now

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        registry = self.hub.links
        task_status.started()
        while True:
            changed = registry.changed
            wake = self.tick(trio.current_time())
            with trio.move_on_at(wake):
                await changed.wait()

    def tick(self, now: float) -> float:
        """Send due pings, kill overdue links; return when to look again."""
        config = self.hub.config
        interval = config.heartbeat_interval
        timeout = config.effective_pong_timeout
        wake = math.inf
        for link in self.hub.links.links():
            if link.dead.is_set() or link.paused:
                continue
            if link.ping_sent_at is not None:
                deadline = link.ping_sent_at + timeout
                if now >= deadline:
                    log.warning("%s: no pong within %gs (ping %s); declaring the socket dead",
                                link.name, timeout, link.ping_req_id)
                    link.kill(f"no pong within {timeout:g}s")
                    continue
                wake = min(wake, deadline)
            if now >= link.next_ping_at:
                req_id = f"hb{next(self._ids)}"
                link.offer(ping_frame(req_id))  # a full outbox (stuck writer) must time out too
                if link.ping_sent_at is None:
                    link.ping_sent(req_id, now)
                    wake = min(wake, now + timeout)
                link.next_ping_at = now + interval
            wake = min(wake, link.next_ping_at)
        return wake if wake != math.inf else now + interval
