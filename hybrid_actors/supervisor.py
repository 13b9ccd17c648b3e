"""The supervisor: one nursery, one supervised loop per actor, one-for-one restarts.

Children: combiner, heartbeat, subscription manager, one public stream per category,
clock, private stream, reconciler. All start at once, each in its own loop (none waits for
another to succeed):

- it is (re)started with a fresh instance; the shared :class:`~.actors.hub.Hub` keeps
  the books, desired topics, subscription state and queued messages, so nothing is lost;
- ``TransportError`` (an outage: refused, reset, timed out, half-open, REST down) is
  retried forever through the restart policy's :class:`~.backoff.Backoff` (capped,
  jittered, overflow-free; a cool-down the exchange names is a floor), first retry fast,
  and the delay starts over once an incarnation has been stable for ``stable_after``;
- any other exception is a crash (a bug): logged with its traceback, the hub state the
  child owns is reset to a known-good value (its :attr:`ChildSpec.reset`), and it is
  retried the same way, but counted; ``max_restarts`` crashes within ``window`` seconds end the
  stream with :class:`~.errors.RestartIntensityExceeded`;
- :class:`~.errors.AuthRejected` (bad credentials) ends the stream at once.

The supervisor is also the one writer of the stream's ``stream.state``
(:class:`~.notices.StateTracker`): ``starting`` when it starts; once the private socket's
first snapshot is applied ``live`` if every socket is up, else ``degraded`` naming those
still down (a refused public endpoint does not hold the start back); ``degraded`` when a socket actor (the
private one, a public one) fails, ``recovered`` when all run again; ``failed`` (the last
event of all: the event queue closes behind it) when an error ends the stream.

A failing child never tears down its siblings: only the supervisor's own errors
(escalations) cancel the nursery.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Literal, NoReturn, Protocol

import attrs
import trio

from .actors.clock import ClockActor
from .actors.alerting import AlertActor
from .actors.emitter import CombinerActor
from .actors.heartbeat import HeartbeatActor
from .actors.hub import Hub
from .actors.mailboxes import StreamClosed
from .actors.private_ws import PrivateStreamActor
from .actors.public_ws import PublicStreamActor
from .actors.reconciler import ReconcilerActor
from .actors.rest_poller import RestPollerActor
from .actors.rollback import RollbackMonitor
from .actors.subscriptions import SubscriptionManager
from .config import StreamConfig
from .errors import (AuthRejected, ConfigError, HybridActorsError, RestartIntensityExceeded, StartTimeout,
                     SupervisorError, TransportError)
from .health import HealthReport
from .observability import serve_observability
from .rest import open_rest_client
from .notices import StateTracker, StreamEvent, StreamState
from .rollout import latest, resolve_mode
from .state import PositionUpdate, plain_decimal

__all__ = ["Supervisor", "HybridStream", "open_hybrid_stream", "ChildSpec"]

log = logging.getLogger(__name__)


class Actor(Protocol):
    @property
    def name(self) -> str: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> NoReturn: ...


@attrs.frozen
class ChildSpec:
    name: str
    make: Callable[[], Actor]
    #: after a crash, before the restart: put the hub state this child owns back to a
    #: known-good value, so the state that caused the crash is not inherited
    reset: Callable[[], None] | None = None
    #: a crash loop of a critical child ends the stream; of another, it is reported to the
    #: hub (the rollout decides: a rollback in production, nothing in canary/parallel) and the
    #: child keeps being restarted with backoff
    critical: bool = True


def exception_leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from exception_leaves(inner)
    else:
        yield exc


def classify(exc: BaseException) -> tuple[Literal["fatal", "outage", "crash"], BaseException]:
    """What a failure means, and the leaf exception that best describes it."""
    leaves = [e for e in exception_leaves(exc) if not isinstance(e, trio.Cancelled)] or [exc]
    for leaf in leaves:
        if isinstance(leaf, AuthRejected):
            return "fatal", leaf
    for leaf in leaves:
        if not isinstance(leaf, TransportError):
            return "crash", leaf
    return "outage", leaves[0]


def is_socket(name: str) -> bool:
    """Does the child called ``name`` own one of the stream's sockets?"""
    return name == "private" or name.startswith("public:")


def _public(hub: Hub, category: str) -> Callable[[], Actor]:
    return lambda: PublicStreamActor(hub, category)


def hybrid_children(hub: Hub, *, critical: bool = True) -> tuple[ChildSpec, ...]:
    """The hybrid stream's actors."""
    specs = [ChildSpec("combiner", lambda: CombinerActor(hub), partial(CombinerActor.reset_after_crash, hub),
                       critical=critical),
             ChildSpec("heartbeat", lambda: HeartbeatActor(hub), partial(HeartbeatActor.reset_after_crash, hub),
                       critical=critical),
             ChildSpec("subscriptions", lambda: SubscriptionManager(hub),
                       partial(SubscriptionManager.reset_after_crash, hub), critical=critical)]
    for category in hub.config.categories:
        specs.append(ChildSpec(f"public:{category}", _public(hub, category),
                               partial(PublicStreamActor.reset_after_crash, hub, category), critical=critical))
    specs.append(ChildSpec("clock", lambda: ClockActor(hub), partial(ClockActor.reset_after_crash, hub),
                           critical=critical))
    specs.append(ChildSpec("private", lambda: PrivateStreamActor(hub), partial(PrivateStreamActor.reset_after_crash, hub),
                           critical=critical))
    specs.append(ChildSpec("reconciler", lambda: ReconcilerActor(hub), partial(ReconcilerActor.reset_after_crash, hub),
                           critical=critical))
    return tuple(specs)


def default_children(hub: Hub) -> tuple[ChildSpec, ...]:
    """The actors of ``hub.mode``. The REST poller (and in production the rollback monitor)
    start first: they must run even while the hybrid actors cannot come up."""
    rest = ChildSpec("rest", lambda: RestPollerActor(hub))
    # no reset: the alert state is meant to survive a restart (no alert fires twice or is forgotten)
    # the rules read counters, not rows: no JSON row per open position every second
    alerts = ChildSpec("alerts", lambda: AlertActor(hub, partial(build_health_report, hub, rows=False)))
    if hub.mode == "rest":
        return (rest, alerts)
    if hub.mode in ("canary", "parallel"):  # monitor-only: a hybrid crash loop must not end the bot's stream
        return (rest, *hybrid_children(hub, critical=False), alerts)
    monitor = ChildSpec("rollback", lambda: RollbackMonitor(hub))
    return (rest, monitor, *hybrid_children(hub, critical=not hub.config.rollout.rollback_on_crash_loop), alerts)


@attrs.define(eq=False)
class Supervisor:
    hub: Hub
    children: tuple[ChildSpec, ...] | None = None
    #: set whenever a child starts or fails (the ready notice waits for the sockets to settle)
    _socket_changed: trio.Event = attrs.field(init=False, factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        if self.children is None:
            self.children = default_children(self.hub)
        self.hub.stream_state = StateTracker.for_sockets([s.name for s in self.children if is_socket(s.name)])
        self.hub._on_socket_waiting = self._waiting

    def _waiting(self, name: str, why: str) -> None:
        stats = self.hub.health.actor(name)
        if stats.state != "starting" or stats.waiting_for == why:
            return
        stats.waiting_for = why
        if is_socket(name):
            self._notify(self.hub.stream_state.waiting(name, f"connected, waiting for {why}", self.hub.wall_ms()))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Start every child at once, each in its own supervised loop, and supervise forever.

        Ready as soon as every loop is running: no child waits for another to succeed, so a
        refused public endpoint (403 ban, maintenance) cannot keep the private stream from
        starting. The stream is ``live`` (or ``degraded``, naming the sockets still down)
        once the private socket's first snapshot is applied; :func:`open_hybrid_stream`
        waits for that too."""
        hub = self.hub
        self._notify(hub.stream_state.start(hub.wall_ms()))
        try:
            async with trio.open_nursery() as nursery:
                for spec in self.children or ():
                    hub.health.actor(spec.name)  # every child shows in health() from the start
                    nursery.start_soon(self._supervise, spec, name=f"supervise:{spec.name}")
                task_status.started()
                await hub.first_snapshot.wait()
                # A socket still in its first handshake is "connecting", not down: call the
                # stream live or degraded once each socket has connected or failed once.
                while not self._sockets_settled():
                    self._socket_changed = trio.Event()
                    await self._socket_changed.wait()
                self._notify(hub.stream_state.ready(hub.wall_ms()))
        except BaseException as exc:
            self._ended(exc)
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _notify(self, notice: StreamState | None) -> None:
        if notice is not None:
            self.hub.emit_notice(notice)
            log.log(logging.WARNING if notice.state in ("degraded", "failed") else logging.INFO,
                    "stream %s: %s", notice.state, notice.reason)

    def _sockets_settled(self) -> bool:
        actors = self.hub.health.actors
        return all(actors[spec.name].state == "running" or actors[spec.name].starts > 1
                   or actors[spec.name].state in ("backoff", "failed")
                   for spec in self.children or () if is_socket(spec.name))

    def _socket(self, name: str, up: bool, why: str = "") -> None:
        self._socket_changed.set()
        if is_socket(name):
            self._notify(self.hub.stream_state.socket(name, up, self.hub.wall_ms(), why))

    def _ended(self, exc: BaseException) -> None:
        """An error ended the stream: say so as its last event, then close the queue."""
        leaves = [e for e in exception_leaves(exc) if isinstance(e, Exception)]
        if not leaves:
            return  # cancelled (the stream was stopped), or the process is being interrupted
        leaf = next((e for kind in (AuthRejected, RestartIntensityExceeded) for e in leaves if isinstance(e, kind)),
                    leaves[0])
        reason = f"{type(leaf).__name__}: {leaf}"
        self._notify(self.hub.stream_state.fail(reason, self.hub.wall_ms()))
        self.hub.events.close(StreamClosed(f"the stream failed: {reason}"))

    async def _supervise(self, spec: ChildSpec) -> NoReturn:
        policy = self.hub.config.restart
        backoff = policy.backoff
        stats = self.hub.health.actor(spec.name)
        crashes: deque[float] = deque(maxlen=policy.max_restarts)
        attempt = 0
        while True:
            started_at = trio.current_time()
            stats.starts += 1
            stats.state = "starting"
            stats.last_change = started_at
            stats.waiting_for = None
            try:
                async with trio.open_nursery() as incarnation:
                    await incarnation.start(spec.make().run)
                    stats.state = "running"
                    stats.last_change = trio.current_time()
                    stats.waiting_for = None
                    self._socket(spec.name, True)
                # run() never returns normally; if it does, that is a bug worth restarting for
                raise SupervisorError(f"actor {spec.name!r} returned instead of running forever")
            except Exception as exc:  # noqa: BLE001 - classified below; Cancelled is a BaseException
                kind, leaf = classify(exc)
                now = trio.current_time()
                stats.last_error = f"{type(leaf).__name__}: {leaf}"
                stats.last_change = now
                if kind == "fatal":
                    stats.state = "failed"
                    log.error("%s: %s", spec.name, stats.last_error)
                    raise leaf from None
                self._socket(spec.name, False, stats.last_error)
                if now - started_at >= policy.stable_after:
                    attempt = 0
                if kind == "crash":
                    stats.crashes += 1
                    crashes.append(now)
                    log.error("%s crashed (%d in the last %gs); restarting it alone", spec.name,
                              sum(1 for t in crashes if now - t < policy.window), policy.window,
                              exc_info=leaf)
                    if len(crashes) == policy.max_restarts and now - crashes[0] < policy.window:
                        # before the stream has started there is nothing to roll back to
                        if spec.critical or not self.hub.first_snapshot.is_set():
                            stats.state = "failed"
                            raise RestartIntensityExceeded(spec.name, policy.max_restarts, policy.window,
                                                           leaf) from exc
                        log.critical("%s is crash-looping (%d crashes within %gs); the rollout takes over",
                                     spec.name, policy.max_restarts, policy.window)
                        crashes.clear()
                        self.hub.report_crash_loop(spec.name)
                    if spec.reset is not None:
                        spec.reset()  # the restart must not inherit the state that caused the crash
                        log.warning("%s: the hub state it owns is reset to a known-good value", spec.name)
                else:
                    stats.outages += 1
                    log.warning("%s: %s", spec.name, stats.last_error)
            # the exchange may have said how long to stay away (IP ban, rate limit): a floor
            retry_after = getattr(leaf, "retry_after", None) if kind == "outage" else None
            delay = backoff.delay(attempt, self.hub.rng, retry_after)
            attempt = backoff.next_attempt(attempt)  # bounded: an outage of days is no overflow
            stats.state = "backoff"
            self._socket_changed.set()
            log.info("%s: restarting in %.2fs (failure %d)", spec.name, delay, stats.crashes + stats.outages)
            await trio.sleep(delay)


@attrs.define(eq=False)
class HybridStream:
    """The running stream. Iterate it for events (``position.update``, ``position.closed`` and
    the ``stream.*`` notices of :mod:`~hybrid_actors.notices`, in order); ask it for
    positions and health."""

    hub: Hub
    supervisor: Supervisor
    #: ``http://host:port`` of the ``/metrics`` and ``/health`` server (None without ``metrics_port``)
    metrics_url: str | None = None
    #: the run's clock, read by :meth:`health` so that it works from any thread (and on a MockClock)
    clock: trio.abc.Clock = attrs.field(factory=trio.lowlevel.current_clock)

    def __aiter__(self) -> HybridStream:
        return self

    async def __anext__(self) -> StreamEvent:
        try:
            return await self.hub.events.get()
        except StreamClosed:
            raise StopAsyncIteration from None

    async def batches(self, max_items: int | None = None) -> list[StreamEvent]:
        """Every queued event (at least one), in order: the efficient way to consume.
        Raises :class:`~.actors.mailboxes.StreamClosed` when the stream has ended."""
        return await self.hub.events.get_batch(max_items)

    @property
    def ended(self) -> bool:
        """The stream ended by itself (an error; see :meth:`unread`) or was closed."""
        return self.hub.events.closed

    def unread(self) -> list[StreamEvent]:
        """Take the events queued but not read yet, without waiting. After an error ended the
        stream (which cancels the reader's block), these are its last events, ending with the
        ``stream.state`` notice ``failed`` that says why."""
        return self.hub.events.drain()

    def positions(self) -> tuple[PositionUpdate, ...]:
        """The current view of every open position (latest mark and PnL), from the source
        that feeds the consumer. Safe from any thread."""
        switch = self.hub.switch
        if switch.all_hybrid:
            return self.hub.combiner.current()
        return tuple(switch.seen.values())

    def health(self) -> HealthReport:
        """The stream's :class:`HealthReport`. Safe from any thread (e.g. a metrics exporter's):
        it reads the run's clock object, not ``trio.current_time()``, and copies every
        collection it walks in one C-level step, so the actors' writes cannot break it."""
        return build_health_report(self.hub, now=self.clock.current_time())


def build_health_report(hub: Hub, *, now: float | None = None, rows: bool = True) -> HealthReport:
    """The report at trio time ``now`` (default ``trio.current_time()``: on the run's thread).
    ``rows=False`` leaves ``open_positions`` empty (the alert rules' report: they read counts).

    Every dict/deque/set is first copied whole (``list(d.items())``, ``set(s)``: one C call,
    atomic under the GIL), so a report built on another thread never iterates a collection
    the trio thread is changing."""
    if now is None:
        now = trio.current_time()
    health = hub.health
    problems: list[str] = []
    actors = {}
    for name, stats in list(health.actors.items()):
        actors[name] = {"state": stats.state, "restarts": stats.restarts, "crashes": stats.crashes,
                        "outages": stats.outages, "last_error": stats.last_error,
                        "waiting_for": stats.waiting_for, "since_s": round(now - stats.last_change, 3)}
        if stats.state != "running":
            detail = (f": connected, waiting for {stats.waiting_for}" if stats.waiting_for
                      else f": {stats.last_error}" if stats.last_error else "")
            problems.append(f"actor {name} is {stats.state}{detail}")
    connections: dict[str, dict[str, Any]] = {}
    for name, link_stats in list(health.links.items()):
        link = hub.links.get(name)
        connections[name] = {
            "connected": link_stats.connected, "connects": link_stats.connects,
            "generation": link.generation if link else hub.links.generation(name),
            "conn_id": link.conn_id if link else None,
            "rtt_ms": round(link.rtt * 1000, 3) if link and link.rtt is not None else None,
            "last_frame_age_s": round(now - link.last_frame_at, 3) if link else None,
            "frames": link_stats.frames, "malformed": link_stats.malformed, "unknown": link_stats.unknown,
            "last_error": link_stats.last_error, "tls_error": link_stats.tls_error,
            **({"tickers": link_stats.tickers, "batches": link_stats.batches,
                "read_coalesce_ms": hub.config.read_coalesce * 1000} if name.startswith("public:") else {}),
            "down_s": round(now - link_stats.disconnected_at, 3)
            if not link_stats.connected and link_stats.disconnected_at is not None else None,
        }
        if not link_stats.connected:
            problems.append(f"{name} is disconnected")
            if link_stats.tls_error:
                problems.append(f"{name}: TLS certificate verification failed ({link_stats.tls_error}); "
                                "check the CA bundle, the host name and the clock")
    subscriptions: dict[str, dict[str, Any]] = {}
    for category, subs in list(hub.subscriptions.items()):
        desired = hub.desired.value.get(category, frozenset())
        missing = sorted(desired - set(subs.confirmed))
        subscriptions[category] = {
            "desired": len(desired), "confirmed": len(subs.confirmed), "pending": len(subs.inflight),
            "missing": missing[:50], "failed": {s: f.ret_msg for s, f in sorted(list(subs.failed.items()))},
            "requests_sent": subs.requests_sent, "resubscribes": subs.resubscribes,
        }
        if subs.failed:
            problems.append(f"{category}: no ticker for {', '.join(sorted(subs.failed))}")
    # consumer-facing: the position events handed to the consumer, whichever source fed it;
    # the hybrid combiner's own figures beside them (in canary and parallel it only monitors)
    delivered_at = hub.delivered_at
    hybrid_quiet_since = None if hub.mode == "rest" else latest(health.last_live_event_at, hub.held_frame_at())
    events = {"emitted": sum(list(hub.switch.delivered.values())), "notices": health.notices_emitted,
              "delivered": hub.events.delivered, "queued": len(hub.events), "conflated": hub.events.conflated,
              "last_event_age_s": _age(now, delivered_at),
              "hybrid_emitted": health.events_emitted,
              "hybrid_last_event_age_s": _age(now, health.last_event_at),
              "hybrid_quiet_s": _age(now, hybrid_quiet_since),
              "subscription_failures_1h": health.failures_within(now, 3600.0),
              "reconciliations": health.reconciliations, "reconcile_corrections": health.reconcile_corrections,
              "by_event": _by_event(hub.switch.by_kind), "hybrid_by_event": _by_event(health.events_by_kind),
              "last_event_ms": hub.delivered_ms,
              "subscription_failures_total": health.subscription_failures_total,
              "handler_errors": health.handler_errors(), **health.loop_stalls()}
    rest = hub.rest
    rest_section: dict[str, Any] = {
        "calls": rest.calls, "failures": rest.failures,
        "banned_for_s": round(max(0.0, rest.banned_until - now), 3),
        "skipped": {_scope_name(scope): why for scope, why in sorted(rest.unsupported.items(), key=str)},
        "paging_problems": {_scope_name(scope): why for scope, why in sorted(rest.paging_problems.items(), key=str)},
    }
    for name, why in rest_section["paging_problems"].items():
        problems.append(f"REST position/list {name}: {why}")
    rest_section["tls_error"] = rest.tls_error
    if rest.tls_error:
        problems.append(f"REST: TLS certificate verification failed ({rest.tls_error}); "
                        "check the CA bundle, the host name and the clock")
    if any(a["state"] == "failed" for a in actors.values()):
        status: Literal["ok", "degraded", "down"] = "down"
    elif problems:
        status = "degraded"
    else:
        status = "ok"
    current = hub.stream_state.current
    stream_state = {} if current is None else {**current.as_dict(),
                                               "since_s": round(max(0, hub.wall_ms() - current.ts) / 1000, 3)}
    stream_state.pop("event", None)
    rollout = rollout_section(hub, now)
    if rollout["active"] == "rest" and hub.mode == "production":
        problems.append(f"rolled back to REST: {hub.switch.last_rollback_reason}")
    positions = len(hub.combiner.book) if hub.switch.all_hybrid else len(hub.switch.seen)
    return HealthReport(status, actors, connections, subscriptions, events, positions, tuple(problems),
                        latency=hub.latency.report(now), open_positions=position_rows(hub) if rows else (),
                        alerts=tuple(hub.alerts.report(now)),
                        rest=rest_section, stream_state=stream_state, rollout=rollout)


def rollout_section(hub: Hub, now: float) -> dict[str, Any]:
    """``health()['rollout']``: mode, active source, cutover, comparator, rollbacks, fallback."""
    runtime = hub.rollout
    section = hub.switch.health_section()
    comparator = runtime.comparator
    section.update({
        "comparisons": comparator.comparisons if comparator else 0,
        "divergences": comparator.divergences if comparator else 0,
        "divergence_max_ratio": format(comparator.max_ratio, "f") if comparator else "0",
        "divergence_threshold": format(hub.config.rollout.divergence_threshold, "f"),
        "last_divergence": None if comparator is None or comparator.last_divergence is None else {
            "category": comparator.last_divergence[0], "symbol": comparator.last_divergence[1],
            "rest": format(comparator.last_divergence[2], "f"), "hybrid": format(comparator.last_divergence[3], "f"),
            "ratio": format(comparator.last_divergence[4], "f")},
        "stale_fallback": sorted(f"{c}:{s}" for c, s in runtime.stale),
        "stale_fallback_s": {f"{c}:{s}": round(now - since, 3)
                             for (c, s), since in sorted(list(runtime.stale_since.items()))},
        "fallback_marks": runtime.fallback_marks_sent,
        "rest_position_polls": runtime.position_polls,
        "rest_ticker_polls": runtime.ticker_polls,
        "rest_positions_age_s": round(now - runtime.positions_at, 3) if runtime.positions_at is not None else None,
    })
    return section



def _age(now: float, at: float | None) -> float | None:
    return round(now - at, 3) if at is not None else None


def _by_event(counts: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    """Event counts by name and source, from one table (one writer each: the switch's, of
    what the consumer was handed, or the hybrid combiner's own)."""
    out: dict[str, dict[str, int]] = {}
    for (name, source), count in tuple(counts.items()):
        out.setdefault(name, {})[source] = count
    return out


def position_rows(hub: Hub) -> tuple[dict[str, Any], ...]:
    """Every open position as the consumer last saw it, JSON-ready (decimals as strings).
    O(positions) and called from any thread (a bot's, an exporter's), where it keeps the
    stream's thread waiting for the GIL for up to CPython's switch interval (5 ms) at a time,
    so for the whole of a 2-3 ms call: kept lean (``scripts/bench_health.py``). Safe all the
    same: views and marks are frozen, and each dict read is one C call."""
    wall_ms = hub.wall_ms()
    mark_of = hub.combiner.marks.get
    views = hub.combiner.current() if hub.switch.all_hybrid else tuple(hub.switch.seen.values())
    rows: list[dict[str, Any]] = []
    append = rows.append
    for view in views:
        mark = mark_of((view.category, view.symbol))
        mark_price = view.mark_price
        seen_ms = (mark.received_ts if mark is not None and (mark.price is mark_price or mark.price == mark_price)
                   else view.received_ts)
        append({"symbol": view.symbol, "category": view.category, "position_idx": view.position_idx,
                "side": view.side, "size": plain_decimal(view.size), "entry_price": plain_decimal(view.entry_price),
                "mark_price": plain_decimal(mark_price), "unrealized_pnl": plain_decimal(view.unrealized_pnl),
                "mark_age_s": round(max(0, wall_ms - seen_ms) / 1000, 3), "source": view.source})
    return tuple(rows)


def _scope_name(scope: tuple[str, str | None]) -> str:
    category, coin = scope
    return f"{category}/{coin}" if coin else category


@asynccontextmanager
async def open_hybrid_stream(config: StreamConfig, *, wall_clock: Callable[[], float] = time.time,
                             rng: random.Random | None = None,
                             start_timeout: float | None = None) -> AsyncIterator[HybridStream]:
    """Run the supervised actors; yield once the private socket is authenticated and its
    REST snapshot applied: the open positions are then already queued as events (source
    ``"rest"``, REST ``markPrice``). Public sockets start at the same time and each one's
    live prices follow as soon as it can connect; a refused public endpoint delays nothing.

    Raises :class:`~.errors.AuthRejected` for bad credentials and
    :class:`~.errors.RestartIntensityExceeded` for a crash loop, from the ``async with``
    (a failure while you iterate cancels your block first). Outages never end it, except
    before the first start: with ``start_timeout`` (seconds), a stream that is not up by
    then raises :class:`~.errors.StartTimeout` naming what failed.
    """
    if start_timeout is not None and (isinstance(start_timeout, bool) or not isinstance(start_timeout, (int, float))
                                      or not math.isfinite(start_timeout) or start_timeout <= 0):
        # not trio's ValueError from move_on_after (or a start-up that can never succeed)
        raise ConfigError(f"start_timeout must be a positive number of seconds or None, got {start_timeout!r}")
    random_source = rng or random.Random()
    mode = resolve_mode(config.mode, os.environ)
    try:
        async with open_rest_client(config.endpoints.rest_url, config.credentials,
                                    recv_window_ms=config.recv_window_ms, timeout=config.rest_timeout,
                                    attempts=config.rest_attempts, verify_tls=config.endpoints.verify_tls,
                                    wall_clock=wall_clock, linear_settle_coins=config.linear_settle_coins,
                                    rng=random_source) as rest:
            hub = Hub(config, rest, wall_clock=wall_clock, rng=random_source, mode=mode)
            supervisor = Supervisor(hub)
            async with trio.open_nursery() as nursery:
                metrics_url = None
                with trio.move_on_after(math.inf if start_timeout is None else start_timeout) as starting:
                    await nursery.start(supervisor.run)
                    if config.metrics_port is not None:  # up before the first snapshot: a slow start shows
                        metrics_url = await nursery.start(partial(
                            serve_observability, hub, partial(build_health_report, hub),
                            alert_names=lambda: tuple(sorted(hub.alerts.known))))
                    await hub.first_snapshot.wait()
                if starting.cancelled_caught:
                    raise StartTimeout(_why_not_started(hub, start_timeout))
                try:
                    yield HybridStream(hub, supervisor, metrics_url)
                finally:
                    hub.events.close()
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        _raise_meaningful(group)
        raise


def _why_not_started(hub: Hub, timeout: float | None) -> str:
    endpoints = hub.config.endpoints
    failing = [f"{name}: connected, waiting for {stats.waiting_for}" if stats.waiting_for
               else f"{name}: {stats.last_error}" for name, stats in hub.health.actors.items()
               if stats.state != "running" and (stats.last_error or stats.waiting_for)]
    waiting = [name for name, stats in hub.health.actors.items()
               if stats.state != "running" and not stats.last_error and not stats.waiting_for]
    detail = "; ".join(failing) if failing else f"still waiting for {', '.join(waiting) or 'the first snapshot'}"
    return (f"the stream did not start within {timeout:g}s ({detail}); check the network and the URLs: "
            f"{endpoints.ws_private_url}, {', '.join(endpoints.public_url(c) for c in hub.config.categories)}, "
            f"{endpoints.rest_url}")


def _raise_meaningful(group: BaseExceptionGroup) -> None:
    """Unwrap the one error that ended the stream, so callers can ``except AuthRejected``."""
    leaves = [e for e in exception_leaves(group) if not isinstance(e, trio.Cancelled)]
    for kind in (AuthRejected, RestartIntensityExceeded, HybridActorsError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                raise leaf from group if len(leaves) > 1 else None
    if len(leaves) == 1 and isinstance(leaves[0], Exception) and not isinstance(leaves[0], StreamClosed):
        raise leaves[0]

