"""Alert rules: the rollout plan's thresholds over the stream's health report. Pure: no trio,
no clock; every call gets ``now`` (monotonic seconds) and ``ts`` (epoch ms for the notice).

:meth:`AlertEvaluator.evaluate` looks at one health report (``HealthReport.as_dict()``) and
returns the :class:`~hybrid_actors.notices.StreamAlert` transitions: an alert fires once
when its condition starts to hold and resolves once when it has stopped holding for
``AlertPolicy.resolve_after`` seconds (so a figure hovering at its threshold does not
flap). Rules (thresholds from :class:`~hybrid_actors.config.AlertPolicy`):

======================================  ========  ==============================================
name                                    level     fires when
======================================  ========  ==============================================
``disconnected:<socket>``               warning   the socket has been down > 30 s
``disconnected_long:<socket>``          critical  ... > 2 min
``latency_high``                        warning   exchange->event p95 over the last minute > 500 ms
``latency_critical``                    critical  ... > 1000 ms
``latency_consider_rollback``           critical  ... > 1000 ms continuously for 5 min
``no_events``                           critical  positions are open and the stream has been
                                                  silent for > 5 min: no live hybrid event and no
                                                  ticker frame of an open position's symbol (rest
                                                  mode: no event handed to the consumer)
``divergence_consider_rollback``        critical  the comparator counted a REST/hybrid divergence
                                                  over its threshold (1%) in the last 5 min
``rolled_back``                         critical  production runs on REST after a rollback
``stale_fallback``                      warning   production: a symbol has been priced from the
                                                  REST fallback (its live mark stale) > 60 s
``loop_stalled``                        warning   embedded in an asyncio bot (the bridge): the
                                                  loop's thread was blocked past the stall
                                                  threshold within the last minute (the sockets
                                                  were not read meanwhile)
======================================  ========  ==============================================

The divergence, rollback and stale-fallback rules read ``health['rollout']`` (absent: never
firing). In rest mode (``rollout.mode == "rest"``) the rules about the hybrid stream (its
sockets, its latency) are not checked: it does not run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs

from .config import AlertPolicy
from .notices import AlertLevel, StreamAlert

__all__ = ["Check", "FiringAlert", "AlertEvaluator", "STATIC_ALERTS", "log_alert"]

log = logging.getLogger("hybrid_actors.alerts")

#: how far past a threshold the next check is scheduled (conditions are strict: ``>``)
DEADLINE_MARGIN = 0.001
#: the alerts that exist whatever the sockets are called (``disconnected*`` add one per socket)
STATIC_ALERTS = ("latency_high", "latency_critical", "latency_consider_rollback", "no_events",
                 "divergence_consider_rollback", "rolled_back", "stale_fallback")


@attrs.frozen
class Check:
    """One rule's verdict at one moment."""

    name: str
    level: AlertLevel
    active: bool
    message: str
    value: float | int | None
    threshold: float | int | None


@attrs.frozen
class FiringAlert:
    name: str
    level: AlertLevel
    message: str
    value: float | int | None
    threshold: float | int | None
    since: float
    since_ts: int

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"name": self.name, "level": self.level, "message": self.message, "value": self.value,
                "threshold": self.threshold, "firing_for_s": round(now - self.since, 3), "since_ts": self.since_ts}


@attrs.define(eq=False)
class AlertEvaluator:
    policy: AlertPolicy = attrs.Factory(AlertPolicy)
    firing: dict[str, FiringAlert] = attrs.Factory(dict)
    #: when each socket was first seen down (for sockets whose report gives no ``down_s``)
    _down_seen: dict[str, float] = attrs.Factory(dict)
    _slow_since: float | None = None
    _quiet_seen: float | None = None
    _divergences: int | None = None
    _divergence_at: float | None = None
    #: name -> since when its condition has been false while still firing
    _clearing: dict[str, float] = attrs.Factory(dict)
    #: every name ever checked (for the metrics: 0 while not firing)
    known: set[str] = attrs.Factory(lambda: set(STATIC_ALERTS))
    #: the earliest time an alert could fire or resolve with no new input (set by evaluate):
    #: the actor sleeps until then unless the stream's state changes first
    next_check: float = math.inf
    _deadlines: list[float] = attrs.Factory(list)

    def _at(self, when: float) -> None:
        """A condition may change at ``when`` (just past a strict ``>`` threshold)."""
        self._deadlines.append(when + DEADLINE_MARGIN)

    def evaluate(self, health: Mapping[str, Any], now: float, ts: int) -> list[StreamAlert]:
        """The alerts that fire or resolve at ``now`` given ``health``."""
        out: list[StreamAlert] = []
        self._deadlines.clear()
        for check in self.checks(health, now):
            self.known.add(check.name)
            current = self.firing.get(check.name)
            if check.active:
                self._clearing.pop(check.name, None)
                if current is None:
                    self.firing[check.name] = FiringAlert(check.name, check.level, check.message, check.value,
                                                          check.threshold, now, ts)
                    out.append(StreamAlert(check.level, check.name, check.message, check.value, check.threshold,
                                           "firing", ts))
                else:  # still firing: keep its start, show the latest figure
                    self.firing[check.name] = attrs.evolve(current, message=check.message, value=check.value)
            elif current is not None:
                since = self._clearing.setdefault(check.name, now)
                if now - since >= self.policy.resolve_after:
                    del self.firing[check.name]
                    del self._clearing[check.name]
                    out.append(StreamAlert(check.level, check.name, f"resolved: {check.message}", check.value,
                                           check.threshold, "resolved", ts))
                else:
                    self._at(since + self.policy.resolve_after)
        self.next_check = min(self._deadlines, default=math.inf)
        return out

    def report(self, now: float) -> list[dict[str, Any]]:
        """``health()['alerts']``: the firing alerts, most severe first, then oldest first."""
        ordered = sorted(list(self.firing.values()), key=lambda a: (a.level != "critical", a.since, a.name))  # copy: any thread
        return [alert.as_dict(now) for alert in ordered]

    # --- the rules ------------------------------------------------------------------------
    def checks(self, health: Mapping[str, Any], now: float) -> Iterator[Check]:
        rollout = health.get("rollout") or {}
        rest_only = rollout.get("mode") == "rest"
        if not rest_only:  # rest mode runs no hybrid stream: no sockets, no latency to judge
            yield from self._socket_checks(health.get("connections") or {}, now)
            yield from self._latency_checks(health, now)
        yield self._no_events_check(health, now, rest_only)
        yield from self._loop_checks(health.get("events") or {}, now)
        yield from self._rollout_checks(rollout, now)

    def _latency_checks(self, health: Mapping[str, Any], now: float) -> Iterator[Check]:
        policy = self.policy
        latency = ((health.get("latency") or {}).get("exchange_to_event_ms") or {}).get("p95")
        p95 = number(latency)
        shown = f"{p95:.0f} ms" if p95 is not None else "no data"
        slow = p95 is not None and p95 > policy.latency_critical_ms
        if slow and self._slow_since is None:
            self._slow_since = now
        elif not slow:
            self._slow_since = None
        yield Check("latency_high", "warning", p95 is not None and p95 > policy.latency_warning_ms,
                    f"exchange->event latency p95 {shown} (over {policy.latency_warning_ms:g} ms)",
                    p95, policy.latency_warning_ms)
        yield Check("latency_critical", "critical", slow,
                    f"exchange->event latency p95 {shown} (over {policy.latency_critical_ms:g} ms)",
                    p95, policy.latency_critical_ms)
        slow_for = now - self._slow_since if self._slow_since is not None else 0.0
        if p95 is not None and p95 > policy.latency_warning_ms:  # the window may forget the slow samples
            slot = number(((health.get("latency") or {}).get("history") or {}).get("slot_s")) or 5.0
            self._at(now + slot)
        if slow and slow_for < policy.latency_rollback_after and self._slow_since is not None:
            self._at(self._slow_since + policy.latency_rollback_after)
        yield Check("latency_consider_rollback", "critical", slow and slow_for >= policy.latency_rollback_after,
                    f"exchange->event latency p95 {shown} over {policy.latency_critical_ms:g} ms for "
                    f"{slow_for:.0f}s: consider rollback", p95, policy.latency_critical_ms)

    def _no_events_check(self, health: Mapping[str, Any], now: float, rest_only: bool) -> Check:
        """Silence with positions open. The hybrid stream is silent when it made no live event
        and no ticker frame of an open position's symbol came (``hybrid_quiet_s``): a quiet
        market still sends frames, a frozen feed does not, and a REST fallback mark is no sign
        of life. In rest mode: no event handed to the consumer (``last_event_age_s``) and no
        position list read from REST (``rollout.rest_positions_age_s``)."""
        policy = self.policy
        events = health.get("events") or {}
        positions = health.get("positions") or 0
        key = "last_event_age_s" if rest_only or "hybrid_quiet_s" not in events else "hybrid_quiet_s"
        quiet = number(events.get(key))
        what = "no event" if key == "last_event_age_s" else "no live event or ticker frame"
        if rest_only:
            # REST delivers nothing while no mark moves: a position list read is the sign of
            # life there (a quiet market is not a dead source; a REST outage is)
            polled = number((health.get("rollout") or {}).get("rest_positions_age_s"))
            if polled is not None and (quiet is None or polled < quiet):
                quiet = polled
            what = "no event and no REST position list read"
        if quiet is None and positions:
            if self._quiet_seen is None:
                self._quiet_seen = now
            quiet = now - self._quiet_seen
        elif quiet is not None:
            self._quiet_seen = None
        silent = bool(positions) and quiet is not None and quiet > policy.no_events_critical
        if positions and quiet is not None and not silent:
            self._at(now + (policy.no_events_critical - quiet))
        return Check("no_events", "critical", silent,
                     f"{what} for {quiet or 0:.0f}s with {positions} position(s) open "
                     f"(limit {policy.no_events_critical:g}s)", round(quiet or 0.0, 3), policy.no_events_critical)

    def _loop_checks(self, events: Mapping[str, Any], now: float) -> Iterator[Check]:
        """Only for a stream with a host loop (its events carry the bridge's stall counters).
        It is judged after the block, when the stream runs again: while the loop's thread is
        blocked, nothing of the stream runs (``health()`` from another thread says so)."""
        if "loop_stalls" not in events:
            return
        window = self.policy.loop_stall_window
        age = number(events.get("loop_stall_last_age_s"))
        last_ms = number(events.get("loop_stall_last_ms"))
        threshold_ms = number(events.get("loop_stall_threshold_ms"))
        recent = age is not None and age <= window
        if recent and age is not None:
            self._at(now + (window - age))
        text = (f"the asyncio loop's thread was blocked for {last_ms or 0:.0f} ms {age:.0f}s ago (stall threshold "
                f"{threshold_ms or 0:.0f} ms; {events.get('loop_stalls')} stall(s) so far): the stream's sockets were "
                "not read meanwhile; move slow synchronous work off the loop" if age is not None
                else "no stall of the asyncio loop")
        yield Check("loop_stalled", "warning", recent, text, last_ms, threshold_ms)

    def _socket_checks(self, connections: Mapping[str, Mapping[str, Any]], now: float) -> Iterator[Check]:
        policy = self.policy
        for socket, conn in sorted(connections.items()):
            if conn.get("connected"):
                self._down_seen.pop(socket, None)
                down = 0.0
            else:
                down = number(conn.get("down_s"))
                if down is None:
                    down = now - self._down_seen.setdefault(socket, now)
            for threshold in (policy.disconnected_warning, policy.disconnected_critical):
                if 0 < down <= threshold or (down == 0 and not conn.get("connected")):
                    self._at(now + (threshold - down))
            text = f"{socket} disconnected for {down:.0f}s" if down else f"{socket} connected"
            yield Check(f"disconnected:{socket}", "warning", down > policy.disconnected_warning,
                        text, round(down, 3), policy.disconnected_warning)
            yield Check(f"disconnected_long:{socket}", "critical", down > policy.disconnected_critical,
                        text, round(down, 3), policy.disconnected_critical)

    def _rollout_checks(self, rollout: Mapping[str, Any], now: float) -> Iterator[Check]:
        policy = self.policy
        divergences = rollout.get("divergences")
        if isinstance(divergences, int):
            if self._divergences is not None and divergences > self._divergences:
                self._divergence_at = now
            self._divergences = divergences
        last = rollout.get("last_divergence") or {}
        ratio = number(last.get("ratio")) if isinstance(last, Mapping) else None
        if ratio is None:
            ratio = number(rollout.get("divergence_max_ratio"))
        threshold = number(rollout.get("divergence_threshold")) or policy.divergence_ratio
        recent = self._divergence_at is not None and now - self._divergence_at <= policy.divergence_hold
        if recent and self._divergence_at is not None:
            self._at(self._divergence_at + policy.divergence_hold)
        where = ""
        if isinstance(last, Mapping) and last.get("symbol"):
            where = f" on {last.get('category')}/{last['symbol']} (REST {last.get('rest')}, hybrid {last.get('hybrid')})"
        yield Check("divergence_consider_rollback", "critical", recent,
                    f"REST and hybrid marks diverged by {(ratio or 0) * 100:.2f}%{where}, over "
                    f"{threshold * 100:g}%: consider rollback", ratio, threshold)
        stale = rollout.get("stale_fallback_s") or {}
        limit = policy.stale_fallback_warning
        ages: dict[str, float] = {name: age for name, age in stale.items()  # seconds, as the report has them
                                  if isinstance(age, (int, float)) and not isinstance(age, bool)} \
            if isinstance(stale, Mapping) else {}
        over = sorted(name for name, age in ages.items() if age > limit)
        for age in ages.values():
            if age <= limit:
                self._at(now + (limit - age))
        longest = max(ages.values(), default=None)
        shown = ", ".join(over[:5]) + (f" and {len(over) - 5} more" if len(over) > 5 else "")
        yield Check("stale_fallback", "warning", bool(over),
                    f"priced from the REST fallback for {longest:.0f}s (over {limit:g}s), no live tick: {shown}"
                    if over else "no symbol priced from the REST fallback for long", longest, limit)
        rolled_back = rollout.get("mode") == "production" and rollout.get("active") == "rest"
        reason = rollout.get("last_rollback_reason") or "unknown reason"
        yield Check("rolled_back", "critical", rolled_back,
                    f"rolled back to REST: {reason}" if rolled_back else "running on the hybrid stream",
                    rollout.get("rollbacks", 0) if isinstance(rollout.get("rollbacks"), int) else None, None)


def number(value: Any) -> Any:
    """A report figure as a number to compare with a threshold: ints and floats as they are,
    decimal strings (ratios in ``rollout``) as Decimal; None if absent or not a number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):
        return value
    try:
        parsed = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return parsed if parsed.is_finite() else None


def log_alert(alert: StreamAlert) -> None:
    """The structured log line of a transition (``key=value`` pairs after a readable text)."""
    level = logging.INFO if alert.state == "resolved" else (
        logging.CRITICAL if alert.level == "critical" else logging.WARNING)
    log.log(level, "alert %s %s (%s): %s | alert=%s level=%s state=%s value=%s threshold=%s",
            alert.name, alert.state, alert.level, alert.message, alert.name, alert.level, alert.state,
            alert.value, alert.threshold)
