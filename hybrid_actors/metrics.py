"""Prometheus metrics: one custom collector that reads the stream's state at scrape time.

No global, mutable metric objects: the actors keep their own counters (``health.py``,
``latency.py``) and :class:`StreamCollector` turns one :class:`StreamSample` of them into
metric families when Prometheus asks. The registry is our own ``CollectorRegistry`` (not
prometheus-client's process-wide default), holding this collector and the process
collector (RSS, CPU, open fds), so two streams in one process never mix their figures.

Families (all ``hybrid_``; counters get ``_total`` in the exposition):
``connected{socket}``, ``reconnects_total{socket}``, ``events_total{event,source}``,
``last_event_timestamp_seconds``, ``open_positions{category}``, ``subscriptions{category}``,
``subscription_failures_total``, histograms ``event_latency_seconds`` (exchange timestamp ->
event) and ``frame_to_event_seconds`` (frame read -> event), ``ping_rtt_seconds{socket}``,
``divergence_max_ratio``, ``divergences_total``, ``mode{mode}``, ``rollbacks_total``,
``conflated_updates_total``, ``handler_errors_total``, ``alerts_firing{name}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import attrs
from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["StreamSample", "StreamCollector", "make_registry", "render", "FAMILIES", "MODES", "CONTENT_TYPE"]

MODES: Final = ("rest", "canary", "parallel", "production")
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

#: every family the collector exports, as a scrape shows it (name, type)
FAMILIES: Final[tuple[tuple[str, str], ...]] = (
    ("hybrid_connected", "gauge"), ("hybrid_reconnects", "counter"), ("hybrid_events", "counter"),
    ("hybrid_last_event_timestamp_seconds", "gauge"), ("hybrid_open_positions", "gauge"),
    ("hybrid_subscriptions", "gauge"), ("hybrid_subscription_failures", "counter"),
    ("hybrid_event_latency_seconds", "histogram"), ("hybrid_frame_to_event_seconds", "histogram"),
    ("hybrid_ping_rtt_seconds", "gauge"), ("hybrid_divergence_max_ratio", "gauge"),
    ("hybrid_divergences", "counter"), ("hybrid_mode", "gauge"), ("hybrid_rollbacks", "counter"),
    ("hybrid_conflated_updates", "counter"), ("hybrid_handler_errors", "counter"),
    ("hybrid_alerts_firing", "gauge"),
)

Buckets = tuple[Sequence[tuple[str, int]], float]


@attrs.frozen
class StreamSample:
    """What one scrape reads: the health report (as JSON-ready dict) and the histograms."""

    health: dict[str, Any]
    exchange_to_event: Buckets
    frame_to_event: Buckets
    #: every alert name the evaluator knows: exported as 0 while not firing
    alert_names: tuple[str, ...] = ()


class StreamCollector(Collector):
    """Reads a fresh :class:`StreamSample` per scrape; holds no metric state of its own."""

    def __init__(self, sample: Callable[[], StreamSample]):
        self._sample = sample

    def collect(self) -> Iterator[Metric]:
        sample = self._sample()
        health = sample.health
        connections: dict[str, dict[str, Any]] = health.get("connections", {})
        events: dict[str, Any] = health.get("events", {})
        rollout: dict[str, Any] = health.get("rollout") or {}

        connected = GaugeMetricFamily("hybrid_connected", "1 if the socket is connected", labels=["socket"])
        reconnects = CounterMetricFamily("hybrid_reconnects", "connections after the first, per socket",
                                         labels=["socket"])
        rtt = GaugeMetricFamily("hybrid_ping_rtt_seconds", "last ping round trip per socket", labels=["socket"])
        for socket, conn in sorted(connections.items()):
            connected.add_metric([socket], 1 if conn.get("connected") else 0)
            reconnects.add_metric([socket], max(0, conn.get("connects", 0) - 1))
            if conn.get("rtt_ms") is not None:
                rtt.add_metric([socket], conn["rtt_ms"] / 1000.0)
        yield from (connected, reconnects, rtt)

        by_event = CounterMetricFamily("hybrid_events", "events handed to the consumer", labels=["event", "source"])
        for event, sources in sorted(events.get("by_event", {}).items()):
            for source, count in sorted(sources.items()):
                by_event.add_metric([event, source], count)
        yield by_event
        last = GaugeMetricFamily("hybrid_last_event_timestamp_seconds",
                                 "wall-clock time (epoch seconds) the last event was received")
        if events.get("last_event_ms") is not None:
            last.add_metric([], events["last_event_ms"] / 1000.0)
        yield last
        yield CounterMetricFamily("hybrid_conflated_updates",
                                  "price updates replaced by a newer one before the consumer took them",
                                  value=events.get("conflated", 0))
        yield CounterMetricFamily("hybrid_handler_errors", "exceptions raised by the event handler",
                                  value=events.get("handler_errors", 0))

        positions = GaugeMetricFamily("hybrid_open_positions", "open positions per category", labels=["category"])
        per_category = {category: 0 for category in health.get("subscriptions", {})}
        for row in health.get("open_positions", ()):
            per_category[row["category"]] = per_category.get(row["category"], 0) + 1
        for category, count in sorted(per_category.items()):
            positions.add_metric([category], count)
        yield positions
        subscriptions = GaugeMetricFamily("hybrid_subscriptions", "confirmed ticker subscriptions per category",
                                          labels=["category"])
        for category, subs in sorted(health.get("subscriptions", {}).items()):
            subscriptions.add_metric([category], subs.get("confirmed", 0))
        yield subscriptions
        yield CounterMetricFamily("hybrid_subscription_failures", "ticker subscriptions the exchange refused",
                                  value=events.get("subscription_failures_total", 0))

        yield _histogram("hybrid_event_latency_seconds",
                         "exchange timestamp to event hand-over (wall clock; includes Bybit's push delay)",
                         sample.exchange_to_event)
        yield _histogram("hybrid_frame_to_event_seconds", "frame read to event hand-over", sample.frame_to_event)

        yield GaugeMetricFamily("hybrid_divergence_max_ratio", "largest REST/hybrid mark divergence seen (ratio)",
                                value=_number(rollout.get("divergence_max_ratio")))
        yield CounterMetricFamily("hybrid_divergences", "REST/hybrid mark comparisons over the threshold",
                                  value=_number(rollout.get("divergences")))
        mode = GaugeMetricFamily("hybrid_mode", "1 for the stream's rollout mode", labels=["mode"])
        current = rollout.get("mode", "production")
        for name in sorted({*MODES, current}):
            mode.add_metric([name], 1 if name == current else 0)
        yield mode
        yield CounterMetricFamily("hybrid_rollbacks", "automatic rollbacks to the REST stream",
                                  value=_number(rollout.get("rollbacks")))

        firing = GaugeMetricFamily("hybrid_alerts_firing", "1 while the alert fires", labels=["name"])
        active = {alert["name"] for alert in health.get("alerts", ())}
        for name in sorted({*sample.alert_names, *active}):
            firing.add_metric([name], 1 if name in active else 0)
        yield firing


def _number(value: Any) -> float:
    """A report figure (int, float, Decimal or decimal string such as the rollout's ratios) as
    the float Prometheus wants; 0 when absent or unreadable (this module is the one place
    floats are allowed: exposition values are floats by definition)."""
    if value is None or isinstance(value, bool):
        return 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _histogram(name: str, documentation: str, data: Buckets) -> HistogramMetricFamily:
    buckets, total = data
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], list(buckets), total)
    return family


def make_registry(sample: Callable[[], StreamSample], *, process: bool = True) -> CollectorRegistry:
    """A registry of our own: the stream collector and (by default) the process collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StreamCollector(sample))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
