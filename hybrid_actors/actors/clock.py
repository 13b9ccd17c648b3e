"""Clock actor: keeps the exchange-clock offset fresh, in the background.

Auth ``expires`` and REST signatures are stamped with exchange time (local time plus the
offset :meth:`~hybrid_actors.rest.RestClient.sync_time` measures with ``/v5/market/time``).
The private socket signs with the last known offset and never waits for a measurement
(a REST outage or ban must not keep a socket down that could connect); this actor
measures at start, every ``clock_resync_interval``, and at once when asked
(:meth:`~.hub.Hub.request_clock_sync`). A failed measurement is retried through the one
backoff policy with its own, gentle bounds (:data:`CLOCK_RETRY`: nothing waits for it, so
a REST outage costs at most one measurement every few minutes); the old offset stays in
use meanwhile.

The one exception is an auth refused with ``Params Error`` (bad keys, or an ``expires``
off because our clock was stepped): the private actor then measures before its single
retry itself, since signing with the same offset again would prove nothing.
"""

from __future__ import annotations

import logging
from typing import Final, NoReturn

import attrs
import trio

from ..backoff import Backoff
from ..errors import RestUnavailable
from .hub import Hub

__all__ = ["ClockActor", "CLOCK_RETRY"]

log = logging.getLogger(__name__)

#: retries of a failed measurement: 1 s, 2 s, 4 s... up to 5 minutes (a cool-down the
#: exchange names is a floor, as everywhere)
CLOCK_RETRY: Final = Backoff(initial=1.0, maximum=300.0)


@attrs.define(eq=False)
class ClockActor:
    hub: Hub
    name: str = "clock"

    @staticmethod
    def reset_after_crash(hub: Hub) -> None:
        """Takes ``clock_sync_requested``. Known-good after a crash: a measurement requested."""
        hub.request_clock_sync()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        hub = self.hub
        backoff = CLOCK_RETRY
        attempt = 0
        task_status.started()
        while True:
            # Take the request before measuring: one raised meanwhile asks for a newer one.
            hub.clock_sync_requested = trio.Event()
            try:
                await hub.rest.sync_time()
            except RestUnavailable as exc:
                delay = backoff.delay(attempt, hub.rng, exc.retry_after)
                attempt = backoff.next_attempt(attempt)
                log.warning("clock: cannot measure the exchange's clock (%s); signing with the last "
                            "known offset (%+d ms), measuring again in %.1fs", exc, hub.rest.offset_ms, delay)
                await trio.sleep(delay)
                continue
            attempt = 0
            with trio.move_on_after(hub.config.clock_resync_interval):
                await hub.clock_sync_requested.wait()
