"""Alert rules on explicit times: each fires at its threshold and not before, once, and
resolves once (after ``resolve_after``)."""

from __future__ import annotations

from typing import Any

import pytest

from hybrid_actors.alerts import STATIC_ALERTS, AlertEvaluator
from hybrid_actors.config import AlertPolicy
from hybrid_actors.errors import ConfigError

pytestmark = pytest.mark.unit


def report(*, down: dict[str, float | None] | None = None, p95: float | None = None, positions: int = 1,
           last_event_age: float | None = 0.5, rollout: dict[str, Any] | None = None) -> dict[str, Any]:
    connections = {"private": {"connected": True, "down_s": None},
                   "public:linear": {"connected": True, "down_s": None}}
    for socket, down_s in (down or {}).items():
        connections[socket] = {"connected": False, "down_s": down_s}
    return {"connections": connections, "positions": positions,
            "events": {"last_event_age_s": last_event_age},
            "latency": {"exchange_to_event_ms": {"p95": p95}}, "rollout": rollout or {}}


def names(alerts) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    return [(a.name, a.level, a.state) for a in alerts]


def test_a_socket_down_warns_after_30s_and_is_critical_after_2min_not_before():
    ev = AlertEvaluator()
    assert ev.evaluate(report(down={"public:linear": 30.0}), now=100.0, ts=1) == []
    fired = ev.evaluate(report(down={"public:linear": 30.001}), now=100.001, ts=2)
    assert names(fired) == [("disconnected:public:linear", "warning", "firing")]
    alert = fired[0]
    assert alert.value == 30.001 and alert.threshold == 30.0 and alert.ts == 2
    assert "public:linear disconnected for 30s" in alert.message
    assert ev.evaluate(report(down={"public:linear": 119.0}), now=189.0, ts=3) == []  # fires once
    assert ev.evaluate(report(down={"public:linear": 120.0}), now=190.0, ts=4) == []
    assert names(ev.evaluate(report(down={"public:linear": 120.5}), now=190.5, ts=5)) == [
        ("disconnected_long:public:linear", "critical", "firing")]
    assert [a["name"] for a in ev.report(now=191.0)] == ["disconnected_long:public:linear",
                                                         "disconnected:public:linear"]  # critical first
    # back: resolved once each, after resolve_after (10 s) of health, not before
    assert ev.evaluate(report(), now=200.0, ts=6) == []
    assert ev.evaluate(report(), now=209.9, ts=7) == []
    resolved = ev.evaluate(report(), now=210.0, ts=8)
    assert sorted(names(resolved)) == [("disconnected:public:linear", "warning", "resolved"),
                                       ("disconnected_long:public:linear", "critical", "resolved")]
    assert all(a.message.startswith("resolved: ") for a in resolved)
    assert ev.evaluate(report(), now=300.0, ts=9) == [] and ev.report(now=300.0) == []


def test_a_socket_that_never_connected_counts_from_when_it_was_first_seen_down():
    ev = AlertEvaluator()
    assert ev.evaluate(report(down={"private": None}), now=10.0, ts=1) == []
    assert ev.evaluate(report(down={"private": None}), now=40.0, ts=2) == []
    assert names(ev.evaluate(report(down={"private": None}), now=40.5, ts=3)) == [
        ("disconnected:private", "warning", "firing")]


def test_latency_warning_critical_and_consider_rollback_after_five_minutes():
    ev = AlertEvaluator()
    assert ev.evaluate(report(p95=500.0), now=0.0, ts=1) == []
    assert names(ev.evaluate(report(p95=500.5), now=1.0, ts=2)) == [("latency_high", "warning", "firing")]
    assert ev.evaluate(report(p95=1000.0), now=2.0, ts=3) == []
    assert names(ev.evaluate(report(p95=1000.5), now=10.0, ts=4)) == [("latency_critical", "critical", "firing")]
    assert ev.evaluate(report(p95=1500.0), now=309.9, ts=5) == []  # 299.9 s over 1000 ms
    rollback = ev.evaluate(report(p95=1500.0), now=310.0, ts=6)
    assert names(rollback) == [("latency_consider_rollback", "critical", "firing")]
    assert "consider rollback" in rollback[0].message and rollback[0].value == 1500.0


def test_the_five_minutes_of_slowness_start_over_when_latency_recovers():
    ev = AlertEvaluator()
    ev.evaluate(report(p95=1500.0), now=0.0, ts=1)
    ev.evaluate(report(p95=20.0), now=200.0, ts=2)
    ev.evaluate(report(p95=1500.0), now=201.0, ts=3)
    assert "latency_consider_rollback" not in {a.name for a in ev.evaluate(report(p95=1500.0), now=500.0, ts=4)}
    assert "latency_consider_rollback" in {a.name for a in ev.evaluate(report(p95=1500.0), now=501.0, ts=5)}


def test_a_figure_hovering_at_its_threshold_does_not_flap():
    ev = AlertEvaluator()
    transitions = []
    for second in range(0, 60):
        p95 = 520.0 if second % 6 < 3 else 480.0  # above for 3 s, below for 3 s
        transitions += ev.evaluate(report(p95=p95), now=float(second), ts=second)
    assert names(transitions) == [("latency_high", "warning", "firing")]
    for second in range(60, 71):
        transitions += ev.evaluate(report(p95=100.0), now=float(second), ts=second)
    assert names(transitions) == [("latency_high", "warning", "firing"), ("latency_high", "warning", "resolved")]


def test_no_events_for_five_minutes_is_critical_only_with_open_positions():
    ev = AlertEvaluator()
    assert ev.evaluate(report(positions=0, last_event_age=3600.0), now=0.0, ts=1) == []
    assert ev.evaluate(report(positions=3, last_event_age=300.0), now=1.0, ts=2) == []
    fired = ev.evaluate(report(positions=3, last_event_age=300.5), now=2.0, ts=3)
    assert names(fired) == [("no_events", "critical", "firing")] and "3 position(s) open" in fired[0].message
    # the positions closed: nothing is expected any more
    assert ev.evaluate(report(positions=0, last_event_age=400.0), now=5.0, ts=4) == []
    assert ev.evaluate(report(positions=0, last_event_age=409.9), now=14.9, ts=5) == []
    assert names(ev.evaluate(report(positions=0, last_event_age=410.0), now=15.0, ts=6)) == [
        ("no_events", "critical", "resolved")]


def test_a_counted_divergence_says_consider_rollback_and_resolves_after_the_hold():
    ev = AlertEvaluator()
    rollout = {"mode": "parallel", "active": "rest", "divergences": 0, "divergence_max_ratio": "0",
               "divergence_threshold": "0.01"}
    assert ev.evaluate(report(rollout=rollout), now=0.0, ts=1) == []
    diverged = {**rollout, "divergences": 1, "divergence_max_ratio": "0.02",
                "last_divergence": {"category": "linear", "symbol": "BTCUSDT", "rest": "61200", "hybrid": "60000",
                                    "ratio": "0.02"}}
    fired = ev.evaluate(report(rollout=diverged), now=1.0, ts=2)
    assert names(fired) == [("divergence_consider_rollback", "critical", "firing")]
    assert "consider rollback" in fired[0].message and "linear/BTCUSDT" in fired[0].message
    assert "2.00%" in fired[0].message and str(fired[0].value) == "0.02"
    assert ev.evaluate(report(rollout=diverged), now=300.0, ts=3) == []  # held 5 min
    assert ev.evaluate(report(rollout=diverged), now=301.0, ts=4) == []  # the hold's last moment
    assert ev.evaluate(report(rollout=diverged), now=302.0, ts=5) == []  # false from here: resolves at 312
    assert ev.evaluate(report(rollout=diverged), now=311.9, ts=6) == []
    assert names(ev.evaluate(report(rollout=diverged), now=312.0, ts=7)) == [
        ("divergence_consider_rollback", "critical", "resolved")]


def test_a_rollback_in_production_is_critical_until_the_return():
    ev = AlertEvaluator(AlertPolicy(resolve_after=0.0))
    hybrid = {"mode": "production", "active": "hybrid", "rollbacks": 0}
    assert ev.evaluate(report(rollout=hybrid), now=0.0, ts=1) == []
    rolled = {"mode": "production", "active": "rest", "rollbacks": 1,
              "last_rollback_reason": "both sockets disconnected for 300s"}
    fired = ev.evaluate(report(rollout=rolled), now=1.0, ts=2)
    assert names(fired) == [("rolled_back", "critical", "firing")]
    assert fired[0].message == "rolled back to REST: both sockets disconnected for 300s"
    assert names(ev.evaluate(report(rollout={**hybrid, "rollbacks": 1}), now=2.0, ts=3)) == [
        ("rolled_back", "critical", "resolved")]
    # canary runs on REST by design: no alert
    assert ev.evaluate(report(rollout={"mode": "canary", "active": "rest"}), now=3.0, ts=4) == []


def test_every_rule_name_is_known_for_the_metrics():
    ev = AlertEvaluator()
    ev.evaluate(report(down={"public:inverse": 1.0}), now=0.0, ts=1)
    assert set(STATIC_ALERTS) | {"disconnected:private", "disconnected_long:private",
                                 "disconnected:public:inverse"} <= ev.known


def test_an_absent_rollout_or_latency_never_fires():
    ev = AlertEvaluator()
    bare = {"connections": {}, "events": {}, "positions": 0}
    assert ev.evaluate(bare, now=0.0, ts=1) == [] and ev.evaluate(bare, now=1000.0, ts=2) == []


@pytest.mark.parametrize("field", ["disconnected_warning", "latency_critical_ms", "interval"])
def test_the_policy_refuses_nonsense(field):
    with pytest.raises(ConfigError):
        AlertPolicy(**{field: 0})


def test_next_check_is_when_a_threshold_could_be_crossed_with_no_new_input():
    ev = AlertEvaluator()
    ev.evaluate(report(), now=0.0, ts=1)
    assert ev.next_check == pytest.approx(299.501)  # last event 0.5 s ago: 300 s without one, a position open
    ev.evaluate(report(positions=0), now=0.0, ts=1)
    assert ev.next_check == float("inf")  # nothing can happen without new input
    ev.evaluate(report(positions=0, down={"private": 10.0}), now=100.0, ts=2)
    assert ev.next_check == pytest.approx(120.001)  # the warning at 30 s down
    ev.evaluate(report(positions=0, down={"private": 30.5}), now=120.5, ts=3)
    assert ev.next_check == pytest.approx(210.001)  # the critical at 120 s
    ev.evaluate(report(positions=0), now=130.0, ts=4)  # back: the warning resolves 10 s later
    assert ev.next_check == pytest.approx(140.001)
    slow = AlertEvaluator()
    slow.evaluate(report(positions=0, p95=1200.0), now=0.0, ts=1)
    assert slow.next_check == pytest.approx(5.001)  # the window may forget the slow samples


def stalls(count: int, last_ms: float | None, age: float | None) -> dict[str, Any]:
    """The bridge's LoopWatch.summary() as the report's events carry it."""
    return {"loop_stalls": count, "loop_stall_threshold_ms": 250.0, "loop_stall_max_ms": last_ms,
            "loop_stall_last_ms": last_ms, "loop_stall_last_age_s": age, "loop_blocked_ms": 0.0}


def test_a_stall_of_the_host_loop_warns_for_a_minute_then_resolves():
    ev = AlertEvaluator()
    with_loop = report(positions=0)
    with_loop["events"].update(stalls(0, None, None))
    assert ev.evaluate(with_loop, now=0.0, ts=1) == []
    assert "loop_stalled" in ev.known  # a bridged stream exports it (0 while quiet)

    stalled = report(positions=0)
    stalled["events"].update(stalls(1, 412.0, 0.2))
    fired = ev.evaluate(stalled, now=10.0, ts=2)
    assert names(fired) == [("loop_stalled", "warning", "firing")]
    assert fired[0].value == 412.0 and fired[0].threshold == 250.0
    assert "blocked for 412 ms" in fired[0].message
    assert ev.next_check == pytest.approx(10.0 + 59.8 + 0.001)  # when the stall leaves the window

    later = report(positions=0)
    later["events"].update(stalls(1, 412.0, 60.0))
    assert ev.evaluate(later, now=69.8, ts=3) == []  # still within the minute: still firing, once
    gone = report(positions=0)
    gone["events"].update(stalls(1, 412.0, 60.5))
    assert ev.evaluate(gone, now=70.3, ts=4) == []  # out of the window: resolves after resolve_after
    gone["events"].update(stalls(1, 412.0, 70.5))
    assert names(ev.evaluate(gone, now=80.3, ts=5)) == [("loop_stalled", "warning", "resolved")]


def test_a_stream_without_a_host_loop_has_no_loop_alert():
    ev = AlertEvaluator()
    ev.evaluate(report(), now=0.0, ts=1)
    assert "loop_stalled" not in ev.known and "loop_stalled" not in STATIC_ALERTS


def test_no_events_reads_the_hybrid_liveness_and_in_rest_mode_the_consumer_s_events():
    ev = AlertEvaluator()
    # the last event is old but ticker frames keep coming: not silent
    live = report(last_event_age=900.0)
    live["events"]["hybrid_quiet_s"] = 4.0
    assert ev.evaluate(live, now=0.0, ts=1) == []
    frozen = report(last_event_age=2.0)  # REST fallback marks keep the event age low
    frozen["events"]["hybrid_quiet_s"] = 300.5
    fired = ev.evaluate(frozen, now=1.0, ts=2)
    assert names(fired) == [("no_events", "critical", "firing")]
    assert "no live event or ticker frame for 300s" in fired[0].message
    # rest mode: what the consumer was handed; the hybrid stream's sockets and latency are not judged
    rest = AlertEvaluator()
    health = report(down={"private": 500.0, "public:linear": 500.0}, p95=5000.0, last_event_age=299.0,
                    rollout={"mode": "rest", "active": "rest"})
    health["events"]["hybrid_quiet_s"] = 10_000.0
    assert rest.evaluate(health, now=0.0, ts=1) == []
    health["events"]["last_event_age_s"] = 300.5
    assert names(rest.evaluate(health, now=1.5, ts=2)) == [("no_events", "critical", "firing")]


def test_stale_fallback_warns_past_its_threshold_and_resolves():
    ev = AlertEvaluator(AlertPolicy(resolve_after=10.0))
    stale = {"mode": "production", "active": "hybrid", "stale_fallback_s": {"linear:BTCUSDT": 59.0}}
    assert ev.evaluate(report(rollout=stale), now=100.0, ts=1) == []
    assert ev.next_check == pytest.approx(101.001)  # wakes just past the threshold
    stale["stale_fallback_s"] = {"linear:BTCUSDT": 60.001, "linear:ETHUSDT": 3.0}
    fired = ev.evaluate(report(rollout=stale), now=101.001, ts=2)
    assert names(fired) == [("stale_fallback", "warning", "firing")]
    assert "linear:BTCUSDT" in fired[0].message and "ETHUSDT" not in fired[0].message
    assert fired[0].value == 60.001 and fired[0].threshold == 60.0
    assert "stale_fallback" in STATIC_ALERTS
    stale["stale_fallback_s"] = {}
    assert ev.evaluate(report(rollout=stale), now=105.0, ts=3) == []
    assert names(ev.evaluate(report(rollout=stale), now=115.0, ts=4)) == [("stale_fallback", "warning", "resolved")]
