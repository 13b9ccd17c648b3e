"""Each actor's ``reset_after_crash``: the hub state it owns goes back to a known-good value
(issue 8, defect 9). End to end against the simulator: tests/integration/test_stream_resilience.py."""

from __future__ import annotations

import random

import pytest
import trio

from hybrid_actors.actors.clock import ClockActor
from hybrid_actors.actors.emitter import CombinerActor
from hybrid_actors.actors.heartbeat import HeartbeatActor
from hybrid_actors.actors.hub import Hub
from hybrid_actors.actors.private_ws import PrivateStreamActor
from hybrid_actors.actors.public_ws import PublicStreamActor
from hybrid_actors.actors.reconciler import ReconcilerActor
from hybrid_actors.actors.subscriptions import SubscriptionManager
from hybrid_actors.config import Credentials, StreamConfig
from hybrid_actors.messages import LinkUp
from hybrid_actors.protocol.frames import Position
from hybrid_actors.supervisor import default_children

pytestmark = pytest.mark.unit


def make_hub() -> Hub:
    config = StreamConfig(credentials=Credentials("k", "s"), categories=("linear", "inverse"))
    return Hub(config, rest=None, rng=random.Random(0))  # type: ignore[arg-type]


def test_every_default_child_has_a_reset_but_the_alerts_whose_state_is_meant_to_survive():
    hub = make_hub()
    # the rollout's REST poller and rollback monitor keep their state in hub.rollout on purpose
    # (the consumer's view, the REST book, the return gate): a restart must not forget it
    assert {spec.name for spec in default_children(hub) if spec.reset is None} == {"alerts", "rest", "rollback"}


async def test_private_forgets_a_counted_refusal_and_clock_and_reconciler_request_fresh_work():
    hub = make_hub()
    hub.auth_refusals = 1
    PrivateStreamActor.reset_after_crash(hub)
    assert hub.auth_refusals == 0
    ClockActor.reset_after_crash(hub)
    assert hub.clock_sync_requested.is_set()
    ReconcilerActor.reset_after_crash(hub)
    assert hub.reconcile_now.is_set()


async def test_public_forgets_its_categorys_activity_only():
    hub = make_hub()
    hub.activity["linear"]["BTCUSDT"] = 5.0
    hub.activity["inverse"]["BTCUSD"] = 5.0
    PublicStreamActor.reset_after_crash(hub, "linear")
    assert hub.activity == {"linear": {}, "inverse": {"BTCUSD": 5.0}}


async def test_heartbeat_drops_an_outstanding_ping_and_pings_at_once(autojump_clock):
    hub = make_hub()
    send, _recv = trio.open_memory_channel[str](10)
    with hub.links.register("private", send) as link:
        link.ping_sent("hb7", 1.0)
        link.next_ping_at = 500.0
        HeartbeatActor.reset_after_crash(hub)
        assert (link.ping_req_id, link.ping_sent_at, link.next_ping_at) == (None, None, trio.current_time())


async def test_combiner_drops_changes_not_handed_over_and_asks_for_rest_truth():
    hub = make_hub()
    record = {"symbol": "BTCUSDT", "side": "Buy", "size": "1", "positionIdx": 0, "avgPrice": "100",
              "markPrice": "101", "updatedTime": "1", "seq": 1}
    events = hub.combiner.apply_push([Position.from_wire(record, category="linear", entry_key="avgPrice")],
                                     received_ts=1, commit=False)
    assert events
    CombinerActor.reset_after_crash(hub)
    assert hub.reconcile_now.is_set()
    # the uncommitted view is gone: the restarted combiner's resync shows the position again
    assert hub.combiner.resync(2, commit=False)


async def test_subscriptions_forget_requests_in_flight_and_reverify_every_wanted_symbol():
    hub = make_hub()
    manager = SubscriptionManager(hub)
    send, recv = trio.open_memory_channel[str](100)
    with hub.links.register("public:linear", send) as link:
        manager.handle(LinkUp("linear", link), 0.0)
        hub.desired.set({"linear": frozenset({"AUSDT", "BUSDT"}), "inverse": frozenset()})
        subs = hub.subscriptions["linear"]
        manager.reconcile(0.0)
        # the bad state a crash between a request and its bookkeeping leaves: a symbol "in
        # flight" whose ack was already consumed (never retried), one "confirmed" that was
        # closed meanwhile, a retry timer hours away
        subs.session._pending.clear()
        subs.confirmed.add("CUSDT")
        subs.retry_at["BUSDT"] = 10_000.0
        old_session = subs.session
        SubscriptionManager.reset_after_crash(hub)
        assert subs.session is not old_session and subs.link is link
        assert not subs.inflight and not subs.retry_at and not subs.attempts
        assert subs.confirmed == {"CUSDT"}  # possibly subscribed, not wanted: unsubscribed after the grace
        while True:
            try:
                recv.receive_nowait()
            except trio.WouldBlock:
                break
        manager.reconcile(trio.current_time())
        sent = []
        while True:
            try:
                sent.append(recv.receive_nowait())
            except trio.WouldBlock:
                break
        assert any('"subscribe"' in f and "tickers.AUSDT" in f and "tickers.BUSDT" in f for f in sent), sent
