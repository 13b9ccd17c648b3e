"""Issue 11 alerts on the real stream: a refused public socket fires the warning and then the
critical alert, each once, on the event stream, in health(), in /metrics and in the log;
both resolve once when it is back. (Short thresholds keep the test quick; the default ones,
30 s and 2 min, are tested at and just before the threshold in tests/unit/test_observe_alerts.py.)"""

from __future__ import annotations

import logging

import pytest
import trio

from hybrid_actors.config import AlertPolicy
from hybrid_actors.notices import StreamAlert
from stack import running
from test_observe_endpoint import families, http_get, sample

pytestmark = [pytest.mark.integration, pytest.mark.failover]

POLICY = AlertPolicy(disconnected_warning=5.0, disconnected_critical=12.0, resolve_after=3.0)


def alerts_in(log) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(e.name, e.state) for e in log.notices if isinstance(e, StreamAlert)]


async def wait_alert(log, predicate) -> StreamAlert:  # type: ignore[no-untyped-def]
    """The first ``stream.alert`` notice matching ``predicate`` (woken by each new batch)."""
    while True:
        changed = log._changed
        for notice in log.notices:
            if isinstance(notice, StreamAlert) and predicate(notice):
                return notice
        await changed.wait()


async def test_a_refused_public_socket_warns_after_30s_then_goes_critical_and_both_resolve(loopback_clock, caplog):
    caplog.set_level(logging.INFO, logger="hybrid_actors.alerts")
    with trio.fail_after(120):
        async with running(metrics_port=0, alerts=POLICY) as s:
            sim = s.sim
            sim.control.open_position("BTCUSDT", "Buy", "1", entry_price="60000.0")
            await sim.observe.wait_subscribed("linear", ["BTCUSDT"])
            sim.control.reject_connections(None, status=502, target="public")
            sim.control.drop_public("linear")
            dropped_at = trio.current_time()
            warning = await wait_alert(s.log, lambda e: e.state == "firing")
            fired_after = trio.current_time() - dropped_at
            assert 5.0 < fired_after <= 6.5, fired_after  # evaluated once a second
            assert (warning.name, warning.level) == ("disconnected:public:linear", "warning")
            assert warning.threshold == 5.0 and warning.value > 5.0
            # health() and /metrics show it while it fires
            [listed] = s.stream.health().alerts
            assert listed["name"] == "disconnected:public:linear" and listed["level"] == "warning"
            _, _, body = await http_get(s.stream.metrics_url, "/metrics")
            fams = families(body.decode())
            assert sample(fams, "hybrid_alerts_firing", name="disconnected:public:linear") == 1
            assert sample(fams, "hybrid_alerts_firing", name="disconnected_long:public:linear") == 0
            assert sample(fams, "hybrid_alerts_firing", name="latency_high") == 0

            critical = await wait_alert(s.log, lambda e: e.level == "critical")
            assert 12.0 < trio.current_time() - dropped_at <= 13.5
            assert (critical.name, critical.state) == ("disconnected_long:public:linear", "firing")

            sim.control.clear_faults()
            await sim.observe.wait_subscribed("linear", ["BTCUSDT"])
            back_at = trio.current_time()
            await wait_alert(s.log, lambda e: e.state == "resolved"
                                 and e.name == "disconnected_long:public:linear")
            assert 3.0 <= trio.current_time() - back_at <= 5.0  # resolve_after of health, no flapping
            await trio.sleep(10)
            assert alerts_in(s.log) == [("disconnected:public:linear", "firing"),
                                        ("disconnected_long:public:linear", "firing"),
                                        ("disconnected:public:linear", "resolved"),
                                        ("disconnected_long:public:linear", "resolved")] \
                or alerts_in(s.log) == [("disconnected:public:linear", "firing"),
                                        ("disconnected_long:public:linear", "firing"),
                                        ("disconnected_long:public:linear", "resolved"),
                                        ("disconnected:public:linear", "resolved")]
            assert s.stream.health().alerts == ()
    logged = [r.getMessage() for r in caplog.records if r.name == "hybrid_actors.alerts"]
    assert any("alert=disconnected:public:linear level=warning state=firing" in m for m in logged)
    assert any("alert=disconnected_long:public:linear level=critical state=resolved" in m for m in logged)
