"""Stream notices (``hybrid_actors.notices``): pure records with the shared JSON contract."""

from __future__ import annotations

from decimal import Decimal

import attrs
import orjson
import pytest

from hybrid_actors.notices import (NOTICE_KEY, STATE_NAMES, StreamAlert, StreamReturn, StreamRollback, StreamState)
from hybrid_actors.state import PositionUpdate

pytestmark = pytest.mark.unit


def test_stream_state_carries_event_state_reason_sockets_and_ts():
    notice = StreamState("degraded", "public:linear disconnected", {"private": True, "public:linear": False}, 1700)
    assert notice.event == "stream.state"
    expected = {"event": "stream.state", "state": "degraded", "reason": "public:linear disconnected",
                "sockets": {"private": True, "public:linear": False}, "ts": 1700}
    assert notice.to_json() == expected == notice.as_dict()
    assert orjson.loads(orjson.dumps(notice.to_json())) == expected
    assert notice.is_lifecycle and notice.key == NOTICE_KEY
    assert STATE_NAMES == ("starting", "live", "degraded", "recovered", "failed")


def test_records_are_frozen_hashable_and_their_sockets_cannot_be_changed_behind_them():
    sockets = {"private": True}
    notice = StreamState("live", "every socket is up", sockets, 1)
    sockets["private"] = False
    assert notice.sockets == {"private": True}
    with pytest.raises(TypeError):
        notice.sockets["private"] = False  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        notice.state = "failed"  # type: ignore[misc]
    assert hash(notice) == hash(StreamState("live", "every socket is up", {"private": True}, 1))
    assert attrs.evolve(notice, state="degraded").state == "degraded"


def test_bad_values_are_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match="state must be one of starting, live, degraded, recovered, failed"):
        StreamState("up", "", {}, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="level must be one of warning, critical"):
        StreamAlert("info", "lag", "", None, None, "firing", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="state must be one of firing, resolved"):
        StreamAlert("warning", "lag", "", None, None, "on", 0)  # type: ignore[arg-type]


def test_alert_keeps_its_own_name_and_decimal_figures_become_strings_in_json():
    alert = StreamAlert("critical", "frame_to_event_p99_ms", "p99 above 50 ms", Decimal("72.5"), 50, "firing", 9)
    assert alert.event == "stream.alert" and alert.name == "frame_to_event_p99_ms"
    assert alert.as_dict() == {"event": "stream.alert", "level": "critical", "name": "frame_to_event_p99_ms",
                               "message": "p99 above 50 ms", "value": Decimal("72.5"), "threshold": 50,
                               "state": "firing", "ts": 9}
    line = orjson.loads(orjson.dumps(alert.to_json()))
    assert line["value"] == "72.5" and line["threshold"] == 50 and line["event"] == "stream.alert"


@pytest.mark.parametrize(("cls", "event"), [(StreamRollback, "stream.rollback"), (StreamReturn, "stream.return")])
def test_rollout_notices(cls, event):
    notice = cls("divergence 3% > 1%", 5)
    assert notice.to_json() == {"event": event, "reason": "divergence 3% > 1%", "ts": 5} == notice.as_dict()
    assert notice.is_lifecycle


def test_position_events_carry_their_event_name_in_both_dicts_too():
    update = PositionUpdate(symbol="BTCUSDT", category="linear", side="Buy", size=Decimal(1),
                            entry_price=Decimal(100), mark_price=Decimal(101), unrealized_pnl=Decimal(1),
                            position_idx=0, source="ticker", exchange_ts=1, received_ts=2)
    assert update.event == "position.update"
    assert update.as_dict()["event"] == "position.update" == update.to_json()["event"]


def test_tracker_starting_live_degraded_recovered_then_failed_is_final():
    from hybrid_actors.notices import StateTracker

    t = StateTracker.for_sockets(["private", "public:linear"])
    assert t.start(1).state == "starting" and t.start(2) is None
    assert t.socket("public:linear", True, 3) is None  # still starting: no notice per socket
    assert t.socket("private", True, 4) is None
    live = t.ready(5)
    assert (live.state, dict(live.sockets)) == ("live", {"private": True, "public:linear": True})
    assert t.socket("private", True, 6) is None  # no change, no notice
    down = t.socket("public:linear", False, 7, "ConnectionLost: reset")
    assert (down.state, down.reason) == ("degraded", "public:linear is down: ConnectionLost: reset")
    worse = t.socket("private", False, 8, "HeartbeatTimeout: no pong")
    assert worse.state == "degraded" and "private is down: HeartbeatTimeout" in worse.reason
    assert t.socket("private", True, 9).reason == "public:linear is down: ConnectionLost: reset"
    back = t.socket("public:linear", True, 10)
    assert back.state == "recovered" and all(back.sockets.values())
    failed = t.fail("AuthRejected: bad key", 11)
    assert failed.state == "failed" and t.fail("again", 12) is None
    assert t.socket("public:linear", False, 13, "x") is None and t.current is failed


def test_tracker_ready_with_a_socket_down_is_degraded_not_live():
    from hybrid_actors.notices import StateTracker

    t = StateTracker.for_sockets(["private", "public:linear"])
    t.start(0)
    t.socket("private", True, 1)
    assert t.ready(2).state == "degraded"
    assert t.socket("public:linear", True, 3).state == "recovered"
