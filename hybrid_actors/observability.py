"""The stream's observability endpoint: Prometheus text at ``/metrics``, JSON at ``/health``.

A task in the stream's own nursery (``metrics_port=`` / ``--metrics-port``): every answer
is computed in the trio thread from the state the actors write, so it is consistent and
needs no lock (see ``http_endpoint.py`` for why not a thread). ``/health`` is exactly
``stream.health().as_dict()``; ``/metrics`` is the same report seen through
:class:`~hybrid_actors.metrics.StreamCollector`, plus the latency histograms and the
process collector. Neither ever contains the API key or secret: the report holds none.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any, NoReturn

import orjson
import trio

from .actors.hub import Hub
from .health import HealthReport
from .http_endpoint import Response, serve_http
from .metrics import CONTENT_TYPE, StreamSample, make_registry, render

__all__ = ["serve_observability", "health_json", "stream_sample"]

log = logging.getLogger(__name__)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def health_json(report: HealthReport) -> bytes:
    return orjson.dumps(report.as_dict(), default=_default, option=orjson.OPT_NON_STR_KEYS)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def stream_sample(hub: Hub, health: Callable[[], HealthReport], alert_names: tuple[str, ...] = ()) -> StreamSample:
    latency = hub.latency
    return StreamSample(health().as_dict(), latency.exchange_to_event.exported(), latency.frame_to_event.exported(),
                        alert_names)


async def serve_observability(hub: Hub, health: Callable[[], HealthReport], *,
                              alert_names: Callable[[], tuple[str, ...]] = tuple,
                              task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> NoReturn:
    """Serve ``/metrics`` and ``/health`` on ``hub.config.metrics_host:metrics_port`` until
    cancelled; reports the base URL (``http://host:port``) once listening."""
    config = hub.config
    registry = make_registry(lambda: stream_sample(hub, health, alert_names()))

    def metrics() -> Response:
        return Response(200, CONTENT_TYPE, render(registry))

    def health_route() -> Response:
        return Response(200, "application/json", health_json(health()))

    async with trio.open_nursery() as nursery:
        routes = {"/metrics": metrics, "/health": health_route}
        host, port = await nursery.start(partial(serve_http, routes, host=config.metrics_host,
                                                 port=config.metrics_port or 0, name="metrics"))
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}"
        log.info("metrics at %s/metrics, health at %s/health", url, url)
        if not _is_loopback(host):
            log.warning("the metrics server listens on %s: other machines can read it (no authentication; "
                        "it shows positions, never keys)", url)
        task_status.started(url)
    raise AssertionError("unreachable")  # pragma: no cover
