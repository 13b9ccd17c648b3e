"""Alerts of the rollout modes on the real stream (simulator on loopback, virtual time): the
divergence alert of a parallel run fires as soon as the comparator counts a divergence, and
in rest mode the consumer-facing event figures and ``no_events`` follow the REST deliveries."""

from __future__ import annotations

from decimal import Decimal

import pytest
import trio

from hybrid_actors.notices import StreamAlert
from stack import eventually, running, sim_config

pytestmark = pytest.mark.integration


def fired(s, name: str) -> list[StreamAlert]:  # type: ignore[no-untyped-def]
    return [n for n in s.log.notices if isinstance(n, StreamAlert) and n.name == name and n.state == "firing"]


async def test_parallel_divergence_alert_fires_as_soon_as_the_comparator_counts_one(loopback_clock):
    with trio.fail_after(600):
        async with running(sim_config(), mode="parallel") as s:
            ctl = s.sim.control
            ctl.open_position("BTCUSDT", "Buy", "1")
            await s.wait_subscriptions_match_positions()
            await eventually(lambda: s.stream.health().rollout["comparisons"] >= 3)
            await trio.sleep(30)
            assert not fired(s, "divergence_consider_rollback")
            ctl.stop_ticker("BTCUSDT")  # the hybrid mark freezes while the market moves 5%
            price = s.sim.observe.mark_price("linear", "BTCUSDT")
            ctl.set_mark_price("BTCUSDT", (price * Decimal("1.05")).quantize(Decimal("0.1")))
            await eventually(lambda: s.hub.rollout.comparator.divergences >= 1, max_step=0.05)
            counted = trio.current_time()
            with trio.move_on_after(3.0):
                await s.log.wait_until(lambda: fired(s, "divergence_consider_rollback"))
            assert fired(s, "divergence_consider_rollback"), (
                f"no alert {trio.current_time() - counted:.1f}s after the divergence was counted")
            alert = fired(s, "divergence_consider_rollback")[0]
            assert alert.level == "critical" and "linear/BTCUSDT" in alert.message


async def test_rest_mode_event_figures_and_no_events_follow_what_the_consumer_gets(loopback_clock):
    loopback_clock.autojump_threshold = 0.002  # ~17 virtual minutes of 5 s polls: short jumps
    with trio.fail_after(1200):
        async with running(sim_config(positions=2), mode="rest") as s:
            await s.log.wait_until(lambda: len({e.symbol for e in s.log.events}) == 2)
            symbol = s.log.events[0].symbol
            for _ in range(36):  # 6 minutes, a new REST mark every 10 s
                s.sim.control.set_mark_price(symbol, s.sim.observe.mark_price("linear", symbol) + 1)
                await trio.sleep(10)
            health = s.stream.health()
            events = health.events
            assert events["emitted"] == len(s.log.events) >= 36  # what the consumer was handed
            assert events["last_event_ms"] == s.log.events[-1].received_ts
            assert events["last_event_age_s"] is not None and events["last_event_age_s"] <= 10.0
            assert events["hybrid_emitted"] == 0  # no hybrid stream runs in rest mode
            assert not fired(s, "no_events") and not health.alerts
            # a quiet market (no mark moves, REST answering) is not silence: 6 minutes of it
            await trio.sleep(360)
            assert trio.current_time() - s.hub.delivered_at > 300.0 and not fired(s, "no_events")
            # REST down too: nothing delivered and no list read for longer than the limit fires it
            s.sim.control.rest_http_error(503, count=None)
            down_at = trio.current_time()
            await s.log.wait_until(lambda: fired(s, "no_events"))
            assert trio.current_time() - down_at > 300.0 - 5.0  # the last list read up to a poll before
