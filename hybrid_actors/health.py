"""Counters the actors update and the :class:`HealthReport` that ``stream.health()`` returns.

Pure: no trio. Times are passed in (trio time for ages, epoch ms for event stamps).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

__all__ = ["ActorStats", "LinkStats", "Health", "HealthReport"]

ActorState = Literal["starting", "running", "backoff", "stopped", "failed"]


@attrs.define
class ActorStats:
    name: str
    state: ActorState = "starting"
    starts: int = 0
    crashes: int = 0
    outages: int = 0
    last_error: str | None = None
    last_change: float = 0.0
    #: while starting: what the actor, connected, still waits for (the private socket's REST
    #: snapshot); written by the supervisor on the actor's report, cleared at each start
    waiting_for: str | None = None

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)


@attrs.define
class LinkStats:
    """Per connection name (``private``, ``public:linear``...), across generations."""

    frames: int = 0
    batches: int = 0
    malformed: int = 0
    unknown: int = 0
    connects: int = 0
    connected: bool = False
    connected_at: float | None = None
    disconnected_at: float | None = None
    #: why the last attempt failed or the connection ended (written by the socket's owner)
    last_error: str | None = None
    #: the certificate rejection of the last attempt, until a connect succeeds
    tls_error: str | None = None
    #: public sockets: symbols whose ticker state the current connection holds (its owner's)
    tickers: int = 0


@attrs.frozen
class HealthReport:
    status: Literal["ok", "degraded", "down"]
    actors: dict[str, dict[str, Any]]
    connections: dict[str, dict[str, Any]]
    subscriptions: dict[str, dict[str, Any]]
    events: dict[str, Any]
    positions: int
    problems: tuple[str, ...]
    #: REST snapshot state: calls, failures, scopes the account lacks (skipped), paging trouble
    rest: dict[str, Any] = attrs.Factory(dict)
    #: h11-observe: p50/p95/p99 ms of exchange->event and frame->event over a recent window,
    #: with a p99 history for sparklines (see :meth:`hybrid_actors.latency.Latency.report`)
    latency: dict[str, Any] = attrs.Factory(dict)
    #: every open position as the consumer last saw it: decimals as strings, ``mark_age_s``
    #: is the time since its mark last changed (what ``/health`` and the dashboard show)
    open_positions: tuple[dict[str, Any], ...] = ()
    #: h11-observe: the firing alerts (name, level, message, value, threshold, firing_for_s)
    alerts: tuple[dict[str, Any], ...] = ()
    #: the last ``stream.state`` notice (``state``, ``reason``, ``sockets``, ``ts``) and
    #: ``since_s``; empty before the stream started
    stream_state: dict[str, Any] = attrs.Factory(dict)
    #: mode, active source, cutover, comparator figures, rollbacks (see supervisor.rollout_section)
    rollout: dict[str, Any] = attrs.field(factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define(eq=False)
class Health:
    actors: dict[str, ActorStats] = attrs.Factory(dict)
    links: dict[str, LinkStats] = attrs.Factory(dict)
    #: events the hybrid combiner made (the combiner writes it; in canary and parallel they
    #: are monitored, not handed to the consumer: the switch counts what it hands over)
    events_emitted: int = 0
    #: (event name, source) -> events the hybrid combiner made (the combiner writes it;
    #: ``hybrid_by_event``): what the consumer was handed is the switch's ``by_kind``
    events_by_kind: dict[tuple[str, str], int] = attrs.Factory(dict)
    notices_emitted: int = 0
    #: the hybrid combiner's last event of any kind: epoch ms stamp and trio time (the combiner's)
    last_event_ms: int | None = None
    last_event_at: float | None = None
    #: trio time of the hybrid combiner's last *live* event: not a REST fallback mark, which
    #: stands in for a live feed that went stale (the combiner's); the silence trigger reads it
    last_live_event_at: float | None = None
    #: (trio time, category, symbol, reason) of recent subscription failures
    subscription_failures: deque[tuple[float, str, str, str]] = attrs.Factory(lambda: deque(maxlen=1000))
    subscription_failures_total: int = 0
    #: called after each subscription failure is recorded (the hub wakes the rollback monitor)
    on_subscription_failure: Callable[[], None] | None = attrs.field(default=None, repr=False)
    reconciliations: int = 0
    reconcile_corrections: int = 0

    #: the consumer's handler error count, if it has one (the bridge sets this; None: no handler)
    handler_errors_source: Callable[[], int] | None = None
    #: the host loop's stall counters (the asyncio bridge's ``LoopWatch.summary``, safe from
    #: any thread; None: no host loop), merged into the report's events for the alert rules
    loop_stalls_source: Callable[[], Mapping[str, Any]] | None = None

    def handler_errors(self) -> int:
        source = self.handler_errors_source
        return source() if source is not None else 0

    def loop_stalls(self) -> Mapping[str, Any]:
        source = self.loop_stalls_source
        return source() if source is not None else {}

    def actor(self, name: str) -> ActorStats:
        stats = self.actors.get(name)
        if stats is None:
            stats = self.actors[name] = ActorStats(name)
        return stats

    def link(self, name: str) -> LinkStats:
        stats = self.links.get(name)
        if stats is None:
            stats = self.links[name] = LinkStats()
        return stats

    def subscription_failed(self, now: float, category: str, symbol: str, reason: str) -> None:
        self.subscription_failures.append((now, category, symbol, reason))
        self.subscription_failures_total += 1
        if self.on_subscription_failure is not None:
            self.on_subscription_failure()  # the rollback monitor counts them

    def failures_within(self, now: float, window: float) -> int:
        return sum(1 for at, *_ in list(self.subscription_failures) if now - at <= window)  # copy: any thread
