"""What counts as a subscription failure, end to end: the rollback trigger (production
mode: more than 10 an hour hand the stream to REST) must see incidents, not the healthy
topics that shared a frame with a refused one, nor a refused symbol's periodic retries.
And a ticker whose subscribe had no clear answer is unsubscribed when nobody wants it.

Against the simulator on loopback, on virtual time."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio

from hybrid_actors import StreamConfig, SubscriptionPolicy
from hybrid_actors.rollout import RolloutPolicy
from hybrid_actors.supervisor import HybridStream, open_hybrid_stream
from hybrid_actors.testing.simulator import Simulator, open_simulator, trio_wall_clock
from stack import eventually, running, sim_config

pytestmark = [pytest.mark.integration, pytest.mark.failover]

HANDLER_NOT_FOUND = "error:handler not found,topic:{topic}"
#: production's subscription-failure trigger alone (prices do not move in these tests, which
#: the silence trigger would take for a dead stream)
ONLY_SUBSCRIPTION_FAILURES = RolloutPolicy(rollback_after_silence=None, rollback_sub_failures=10)


@pytest.fixture
def fast_clock() -> trio.testing.MockClock:
    """Virtual time that jumps as soon as every task is blocked (the simulator runs in this
    trio thread, so that means waiting for a timer): an hour of retries costs seconds."""
    return trio.testing.MockClock(autojump_threshold=0)


#: ``stream_holding(refuse=ALL)``: every held symbol refused
ALL = "*"


@asynccontextmanager
async def stream_holding(count: int, *, refuse: str | None = None, retry: float = 300.0,
                         rollout: RolloutPolicy = ONLY_SUBSCRIPTION_FAILURES) -> AsyncIterator[tuple[Simulator, HybridStream]]:
    """``count`` linear positions open before the stream starts (so their tickers go out
    together, in one subscribe frame), ``refuse`` refused with ``handler not found`` for
    good; production mode, whose rollback trigger counts subscription failures."""
    wall = trio_wall_clock()
    async with open_simulator(attrs.evolve(sim_config(symbols=20), wall_clock=wall)) as sim:
        symbols = sim.symbols("linear")[:count]
        for symbol in symbols:
            sim.control.open_position(symbol, "Buy", "1")
        for refused in (symbols if refuse == ALL else [refuse] if refuse is not None else []):
            sim.control.reject_subscribes(refused, None, ret_msg=HANDLER_NOT_FOUND)
        config = StreamConfig(credentials=sim.credentials, endpoints=sim.endpoints, heartbeat_interval=20.0,
                              mode="production", rollout=rollout,
                              subscriptions=SubscriptionPolicy(unknown_symbol_retry=retry))
        async with open_hybrid_stream(config, wall_clock=wall, rng=random.Random(5)) as stream:
            yield sim, stream


def failures_1h(stream: HybridStream) -> int:
    return int(stream.health().events["subscription_failures_1h"])


async def test_one_refused_ticker_among_twelve_is_one_failure_for_good(fast_clock):
    with trio.fail_after(3600):
        async with stream_holding(12, refuse="XRPUSDT", retry=120.0) as (sim, stream):
            hub = stream.hub
            subs = hub.subscriptions["linear"]
            first = (await eventually(lambda: sim.observe.requests("linear", op="subscribe")))[0]
            assert len(first.args) == 12  # one frame: the exchange answered it for XRPUSDT alone
            await eventually(lambda: len(subs.confirmed) == 11 and "XRPUSDT" in subs.failed)
            assert failures_1h(stream) == 1
            # 40 minutes of its periodic retries, each refused again: counted once, no rollback
            await trio.sleep(40 * 60)
            assert subs.failed["XRPUSDT"].attempts >= 20
            assert stream.health().events["subscription_failures_total"] == 1
            assert not hub.switch.rolled_back and hub.switch.active == "hybrid"
            assert "XRPUSDT" in stream.health().subscriptions["linear"]["failed"]  # still reported


async def test_a_crash_of_the_subscription_manager_counts_no_failure(loopback_clock, crash_once):
    # its restart asks the exchange for every wanted ticker again; each frame is answered
    # "already subscribed" naming one topic, and the one-topic retries confirm the others
    with trio.fail_after(600):
        async with stream_holding(12) as (sim, stream):
            hub = stream.hub
            subs = hub.subscriptions["linear"]
            await eventually(lambda: len(subs.confirmed) == 12)
            armed = crash_once("subscriptions")
            armed[0] = True
            hub.desired.set({**hub.desired.value, "spot": frozenset({"X"})})  # a pass, which crashes
            await eventually(lambda: not armed[0])
            await eventually(lambda: hub.health.actors["subscriptions"].crashes == 1)
            await trio.sleep(60)
            again = [r for r in sim.observe.requests("linear", op="subscribe") if len(r.args) > 1][1:]
            assert again and "already subscribed" in again[0].ret_msg  # the restart asked for all of them
            assert len(subs.confirmed) == 12 and not subs.retry_at
            assert failures_1h(stream) == 0 and not hub.switch.rolled_back


async def test_a_crash_of_the_subscription_manager_counts_no_failure_on_the_option_socket(loopback_clock, crash_once):
    # the option socket lists every requested topic under successTopics, those it holds too
    # (BYBIT_V5 section 12): the restart's re-subscribes confirm them
    with trio.fail_after(600):
        async with running(categories=("option",)) as s:
            symbols = s.sim.symbols("option")[:4]
            for symbol in symbols[:3]:
                s.sim.control.open_position(symbol, "Buy", "1", category="option")
            await s.wait_subscriptions_match_positions("option")
            subs = s.hub.subscriptions["option"]
            await eventually(lambda: set(symbols[:3]) <= subs.confirmed)
            armed = crash_once("subscriptions")
            armed[0] = True
            s.sim.control.open_position(symbols[3], "Buy", "1", category="option")  # a pass, which crashes
            await eventually(lambda: s.hub.health.actors["subscriptions"].crashes == 1)
            await s.wait_subscriptions_match_positions("option")
            await trio.sleep(15)
            again = [r for r in s.sim.observe.requests("option", op="subscribe")
                     if set(r.args) & {f"tickers.{x}" for x in symbols[:3]}][1:]
            assert again and all(r.success for r in again)  # the restart asked again: held, confirmed
            assert subs.confirmed == set(symbols) and not subs.failed
            assert s.hub.health.subscription_failures_total == 0


async def test_a_ticker_whose_subscribe_had_no_clear_answer_is_unsubscribed_when_unwanted(loopback_clock):
    with trio.fail_after(600):
        async with stream_holding(2, refuse="ETHUSDT") as (sim, stream):
            subs = stream.hub.subscriptions["linear"]
            # the frame's ack named ETHUSDT: BTCUSDT's outcome is unknown (the exchange holds
            # it) until its one-topic retry
            await eventually(lambda: "BTCUSDT" in subs.retry_at or "BTCUSDT" in subs.confirmed, first_step=0.001)
            assert "BTCUSDT" in subs.retry_at and "BTCUSDT" in sim.observe.subscribed_symbols("linear")
            sim.control.close_position("BTCUSDT")  # closed before the retry went out
            policy = stream.hub.config.subscriptions
            await sim.observe.wait_unsubscribed("linear", ["BTCUSDT"])
            await eventually(lambda: "BTCUSDT" not in subs.confirmed and "BTCUSDT" not in subs.retry_at)
            await trio.sleep(policy.unsubscribe_grace * 5)
            assert "BTCUSDT" not in sim.observe.subscribed_symbols("linear")


async def test_a_ticker_with_no_clear_answer_is_unsubscribed_after_a_crash_too(loopback_clock, crash_once):
    with trio.fail_after(600):
        async with stream_holding(2, refuse="ETHUSDT") as (sim, stream):
            hub = stream.hub
            subs = hub.subscriptions["linear"]
            await eventually(lambda: "BTCUSDT" in subs.retry_at or "BTCUSDT" in subs.confirmed, first_step=0.001)
            assert "BTCUSDT" in subs.retry_at and "BTCUSDT" in sim.observe.subscribed_symbols("linear")
            armed = crash_once("subscriptions")
            armed[0] = True
            sim.control.close_position("BTCUSDT")  # the pass that sees it unwanted crashes first
            await eventually(lambda: hub.health.actors["subscriptions"].crashes == 1)
            await sim.observe.wait_unsubscribed("linear", ["BTCUSDT"])
            await eventually(lambda: "BTCUSDT" not in subs.confirmed and "BTCUSDT" not in subs.retry_at)


async def test_a_small_account_whose_every_ticker_is_refused_rolls_back(fast_clock):
    """Four held symbols, each refused for good: 4 failures, counted once each while wanted,
    can never be more than 10 an hour, so the count alone never rolled a small account back
    however useless its hybrid stream was. More than half of the held symbols refused now
    rolls back as well (one refused of twelve does not: the test above)."""
    with trio.fail_after(2 * 3600):  # before the share, two hours passed without a rollback
        policy = attrs.evolve(ONLY_SUBSCRIPTION_FAILURES, auto_return=60.0)
        async with stream_holding(4, refuse=ALL, retry=120.0, rollout=policy) as (sim, stream):
            hub = stream.hub
            subs = hub.subscriptions["linear"]
            await eventually(lambda: len(subs.failed) == 4)
            assert not subs.confirmed
            await eventually(lambda: hub.switch.rolled_back, max_step=60.0)
            assert failures_1h(stream) == 4  # never more than 10: the count alone could not fire
            reason = stream.health().rollout["last_rollback_reason"]
            assert reason == "3 of 4 held symbols refused a ticker subscription (limit: half)"  # the third did
            # still refused: no return however healthy the sockets (it would roll back at once)
            await trio.sleep(600)
            assert hub.switch.rolled_back and hub.switch.returns == 0
            sim.control.clear_faults()  # served again: the periodic retries confirm them
            await eventually(lambda: len(subs.confirmed) == 4, max_step=10.0)
            await eventually(lambda: not hub.switch.rolled_back, max_step=10.0)
            assert (hub.switch.returns, hub.switch.rollbacks) == (1, 1)
