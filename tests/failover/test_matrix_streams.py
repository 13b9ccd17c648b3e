"""Fault matrix, what arrives on a live socket: subscribe errors, garbage frames, frames
nobody asked for, and topics that go silent.

None of these may cost a socket (except an oversized frame, which costs only its own), a
position or another symbol's prices; each is reported, and the stream converges again
within the row's bound.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
import trio

from conftest import CUSHION_AUTOJUMP
from hybrid_actors import SubscriptionPolicy
from hybrid_actors.testing.simulator.wire import dumps
from rig import KINDS, RECOVERY, rig, sim_config  # noqa: F401 (rig: the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.failover]

TIMEOUT = 120


SUBSCRIBE_ERRORS = {
    "handler_not_found": "error:handler not found,topic:{topic}",
    "already_subscribed_with_topic": "error:already subscribed,topic:{topic}",
    "already_subscribed_without_topic": "error:already subscribed",
    "args_too_long": "Length of 'args' array over 21,000 characters",
}


@pytest.mark.parametrize("error", list(SUBSCRIBE_ERRORS))
async def test_a_refused_subscribe_costs_only_its_symbol_and_heals(rig, loopback_clock, error):
    """The exchange refuses (or wrongly claims to hold) SOLUSDT's ticker once. Handler not
    found is retried rarely (``unknown_symbol_retry``); a wrong "already subscribed" is a
    confirmation the silence check then corrects; anything else is retried with backoff."""
    policy = SubscriptionPolicy(unknown_symbol_retry=20.0, silence_timeout=10.0)
    bound = policy.unknown_symbol_retry + policy.silence_timeout + RECOVERY
    with trio.fail_after(TIMEOUT):
        async with rig(sim=sim_config(rate=1.0), subscriptions=policy) as r:
            await r.open_two(age=False)
            before = r.sockets()
            r.sim.control.reject_subscribes("SOLUSDT", 1, ret_msg=SUBSCRIBE_ERRORS[error])
            refused_at = trio.current_time()
            r.open("SOLUSDT", "Buy", "3")
            await r.sim.observe.wait_until(
                lambda: r.sim.observe.requests("linear", op="subscribe", topic="tickers.SOLUSDT"))
            await r.prices_flow()  # other symbols never waited
            await r.recovered(bound, since=refused_at)
            r.assert_kept(before, r.link_names)
            attempts = r.sim.observe.requests("linear", op="subscribe", topic="tickers.SOLUSDT")
            assert 2 <= len(attempts) <= 4, [(a.success, a.ret_msg, a.at) for a in attempts]  # healed, no storm
            mark = r.mark()
            r.price("SOLUSDT", "150.5")
            await r.wait_event(lambda e: e.symbol == "SOLUSDT" and e.mark_price == Decimal("150.5"), after=mark)
            r.assert_nothing_lost()


@pytest.mark.parametrize("kind", ["malformed", "non_json", "binary", "unknown_topic"])
@pytest.mark.parametrize("socket", ["private", "public:linear"])
async def test_a_bad_frame_is_reported_and_costs_nothing(rig, loopback_clock, socket, kind):
    with trio.fail_after(TIMEOUT):
        async with rig() as r:
            await r.open_two(age=False)
            before = r.sockets()
            r.sim.control.inject(kind, KINDS[socket])
            r.change_positions()
            await r.prices_flow()
            await r.recovered(RECOVERY)
            r.assert_kept(before, r.link_names)
            assert all(n == 0 for n in r.restarts().values()), r.restarts()
            conn = r.stream.health().connections[socket]
            assert conn["malformed"] + conn["unknown"] == 1
            r.assert_nothing_lost()


@pytest.mark.parametrize("socket", ["private", "public:linear"])
async def test_an_oversized_frame_costs_only_its_own_socket(rig, loopback_clock, socket):
    loopback_clock.autojump_threshold = CUSHION_AUTOJUMP  # megabytes through loopback: see conftest
    with trio.fail_after(TIMEOUT):
        async with rig() as r:
            await r.open_two(age=False)
            before = r.sockets()
            r.sim.control.inject("oversized", KINDS[socket])
            injected_at = trio.current_time()
            r.open("SOLUSDT", "Buy", "7")
            await r.came_back_alone(before, socket, since=injected_at)
            assert "1009" in (r.hub.health.actors[socket].last_error or "")


async def test_a_ticker_for_an_unsubscribed_symbol_changes_nothing(rig, loopback_clock):
    with trio.fail_after(TIMEOUT):
        async with rig() as r:
            await r.open_two(age=False)
            before = r.sockets()
            mark = r.mark()
            stray = {"topic": "tickers.XRPUSDT", "type": "snapshot", "cs": 1, "ts": r.sim.exchange.now_ms(),
                     "data": {"symbol": "XRPUSDT", "markPrice": "0.6123", "lastPrice": "0.6120"}}
            r.sim.control.inject("raw", "linear", text=dumps(stray))
            await r.prices_flow()  # sent after the stray frame: it has been read
            assert not [e for e in r.positions_events(mark) if e.symbol == "XRPUSDT"]
            r.open("XRPUSDT", "Buy", "100")  # a real position later gets its real price
            event = await r.wait_event(lambda e: e.symbol == "XRPUSDT" and e.source == "ticker", after=mark)
            assert event.mark_price == r.sim.observe.mark_price("linear", "XRPUSDT")
            await r.recovered(RECOVERY)
            r.assert_kept(before, r.link_names)
            r.assert_nothing_lost()


@pytest.mark.parametrize("when", ["after_start", "after_reconnect"])
async def test_a_silent_topic_is_resubscribed_until_it_speaks(rig, loopback_clock, when):
    """BTCUSDT stops ticking (after the stream started, or just before its socket is
    replaced, so the new subscription gets no snapshot). The silence check resubscribes it
    without touching the socket or the other symbols; once the exchange ticks again, its
    price is back within ``silence_timeout`` + ``RECOVERY``."""
    policy = SubscriptionPolicy(silence_timeout=5.0)
    with trio.fail_after(TIMEOUT):
        async with rig(sim=sim_config(rate=2.0), subscriptions=policy) as r:
            await r.open_two(age=False)
            before = r.sockets()
            r.sim.control.stop_ticker("BTCUSDT")
            if when == "after_reconnect":
                r.sim.control.drop("linear", "reset")
                await r.wait_until(lambda: r.hub.links.generation("public:linear") > before.generations["public:linear"])
            resubscribed = r.hub.subscriptions["linear"].resubscribes
            await r.wait_until(lambda: r.hub.subscriptions["linear"].resubscribes > resubscribed)
            await r.prices_flow()  # ETHUSDT kept its price stream meanwhile
            mark = r.mark()
            r.sim.control.start_ticker("BTCUSDT")
            spoke_at = trio.current_time()
            await r.wait_event(lambda e: e.symbol == "BTCUSDT" and e.source == "ticker", after=mark)
            assert trio.current_time() - spoke_at <= policy.silence_timeout + RECOVERY
            await r.recovered(RECOVERY)
            kept = r.link_names if when == "after_start" else r.others("public:linear")
            r.assert_kept(before, kept)
            r.assert_nothing_lost()
