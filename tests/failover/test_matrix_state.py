"""Fault matrix, the account and the actors: a Classic account's ``"None"`` sides, a
position in a settle coin the stream was not configured for, a bug injected into each
actor in turn, a consumer that stops reading, and churn of 1,000 open/close cycles over
200 symbols (no growth in tasks or memory)."""

from __future__ import annotations

import gc
import tracemalloc
from decimal import Decimal

import pytest
import trio

from conftest import CRASHABLE_ACTORS
from hybrid_actors.state import PositionClosed
from hybrid_actors.testing.invariants import task_count
from rig import RECOVERY, rig, sim_config  # noqa: F401 (rig: the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.failover]

TIMEOUT = 120


async def test_a_classic_account_with_None_sides_loses_nothing(rig, loopback_clock):
    """Flat records carry ``side: "None"`` in pushes and REST; USDC and option are 10001."""
    with trio.fail_after(TIMEOUT):
        async with rig(arm=lambda sim: sim.control.set_account(classic=True)) as r:
            await r.open_two()
            before = r.sockets()
            mark = r.mark()
            r.close("BTCUSDT")  # pushed with side "None"
            await r.wait_event(lambda e: isinstance(e, PositionClosed) and e.symbol == "BTCUSDT", after=mark)
            r.sim.control.drop("private", "reset")
            cut_at = trio.current_time()
            r.open("SOLUSDT", "Buy", "7")
            r.close("ETHUSDT")  # only REST (with its "None" flat records) can tell
            await r.came_back_alone(before, "private", since=cut_at, priced="SOLUSDT")
            assert r.stream.health().connections["private"]["malformed"] == 0
            assert r.hub.health.actors["private"].crashes == 0


async def test_a_position_settled_in_a_coin_outside_the_configured_ones_is_never_closed_by_mistake(
        rig, loopback_clock):
    with trio.fail_after(TIMEOUT):
        async with rig(linear_settle_coins=("USDT",), reconcile_interval=20.0) as r:
            r.open("BTCPERP")  # USDC-settled: no snapshot of this stream covers it
            await r.open_two()
            before = r.sockets()
            mark = r.mark()
            r.sim.control.drop("private", "reset")
            cut_at = trio.current_time()
            r.open("SOLUSDT", "Buy", "7")
            await r.recovered(RECOVERY, since=cut_at, replaced=before, names=["private"])
            done = r.hub.health.reconciliations
            # two reconciliations more (every 20 s; when exactly does not matter: re-checked every 5 s,
            # not every POLL, which would cost 160 clock jumps)
            await r.wait_until(lambda: r.hub.health.reconciliations >= done + 2, poll=5.0)
            assert not [e for e in r.positions_events(mark) if e.symbol == "BTCPERP"], "BTCPERP closed by mistake"
            r.assert_kept(before, ["public:linear"])
            r.assert_nothing_lost()


@pytest.mark.parametrize("actor", CRASHABLE_ACTORS)
async def test_a_bug_in_one_actor_restarts_it_alone_and_loses_nothing(rig, loopback_clock, crash_once, actor):
    armed = crash_once(actor)
    with trio.fail_after(TIMEOUT):
        async with rig(heartbeat_interval=5.0, reconcile_interval=10.0) as r:
            await r.open_two()
            before = r.sockets()
            armed[0] = True
            r.open("SOLUSDT", "Buy", "3")  # trips the combiner, private and subscriptions
            r.close("BTCUSDT")
            r.price("ETHUSDT", "3100.5")  # trips the public actor; heartbeat and reconciler trip on timers
            await r.wait_until(lambda: not armed[0])
            crashed_at = trio.current_time()
            await r.wait_until(lambda: r.hub.health.actors[actor].crashes == 1
                               and r.hub.health.actors[actor].state == "running")
            await r.recovered(RECOVERY, since=crashed_at)
            stats = r.hub.health.actors[actor]
            assert stats.crashes == 1 and stats.restarts == 1, (stats.crashes, stats.restarts, stats.last_error)
            assert all(n == 0 for name, n in r.restarts().items() if name != actor), r.restarts()
            r.assert_kept(before, r.others(actor))
            mark = r.mark()
            r.price("SOLUSDT", "151.25")
            await r.wait_event(lambda e: e.symbol == "SOLUSDT" and e.mark_price == Decimal("151.25"), after=mark)
            r.assert_nothing_lost()


async def test_a_slow_consumer_is_backpressure_and_gets_every_lifecycle_event(rig, loopback_clock):
    """Nobody reads for a minute while 300 pushes arrive: the private reader waits on our
    full queues, which must not look like a dead socket; then every change comes, in order."""
    with trio.fail_after(TIMEOUT * 2):
        async with rig(event_buffer=2, heartbeat_interval=5.0) as r:
            await r.open_two()
            before = r.sockets()
            mark = r.mark()
            r.stop_reading()
            r.open("SOLUSDT", "Buy", "1")
            for size in range(2, 302):
                r.resize("SOLUSDT", str(size))
            r.close("BTCUSDT")
            await trio.sleep(60)
            r.assert_kept(before, r.link_names)
            assert r.hub.health.actors["private"].outages == 0
            r.read_again()
            await r.recovered(RECOVERY)
            sizes = [e.size for e in r.positions_events(mark) if e.symbol == "SOLUSDT" and e.source == "position"]
            assert sizes == [Decimal(n) for n in range(1, 302)]
            r.assert_kept(before, r.link_names)
            r.assert_nothing_lost()


def library_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """Memory still held that the stream's own code allocated (not the simulator's, not the tests')."""
    kept = snapshot.filter_traces([tracemalloc.Filter(True, "*/hybrid_actors/*"),
                                   tracemalloc.Filter(False, "*/hybrid_actors/testing/*")])
    return sum(stat.size for stat in kept.statistics("filename"))


async def test_churn_of_1000_open_close_cycles_over_200_symbols_leaves_nothing_behind(rig, loopback_clock):
    """1,000 opens and as many closes over 200 symbols, 40 open at most, with prices
    moving. At the end the exchange-side ticker subscriptions, and the ticker state the
    public socket holds, equal the open positions;
    trio tasks and the memory the stream's code still holds (tracemalloc, allocations made
    under hybrid_actors/ outside testing/) are measured after 400 cycles and after 1,000, at
    the same number of open positions, after ``gc.collect()``; the first 200 opens visit every
    symbol once. The recorder folds events as they come instead of
    keeping them, so the test holds no event objects the library allocated."""
    import random

    rng = random.Random(1000)
    with trio.fail_after(1800):
        async with rig(sim=sim_config(symbols=200), event_buffer=8192) as r:
            r.keep_events = False
            symbols = sorted(r.sim.exchange.market.instruments["linear"])[:200]
            first_pass = rng.sample(symbols, len(symbols))
            open_now: list[str] = []
            measured: dict[int, tuple[int, int]] = {}
            # traced from the first cycle: everything kept per symbol or position is
            # allocated after this (a later start would count only the objects replaced
            # since, which grows while the total does not)
            tracemalloc.start()
            for cycle in range(1, 1001):
                if len(open_now) >= 40:
                    r.close(open_now.pop(rng.randrange(len(open_now))))
                # the first 200 opens visit every symbol once: what the stream keeps per symbol
                # ever seen (bounded by the exchange's list) is all there before the first sample
                symbol = first_pass[cycle - 1] if cycle <= len(first_pass) else rng.choice(
                    [s for s in symbols if s not in open_now])
                r.open(symbol, rng.choice(["Buy", "Sell"]), "1")
                open_now.append(symbol)
                if cycle % 20 == 0:
                    r.price(open_now[0], str(r.sim.observe.mark_price("linear", open_now[0])))
                    await trio.sleep(0.5)
                if cycle in (400, 1000):
                    await r.settled()
                    await trio.sleep(10)  # unsubscribe grace periods and in-flight acks end
                    await r.settled()
                    gc.collect()  # garbage in reference cycles is not growth
                    measured[cycle] = (task_count(), library_bytes(tracemalloc.take_snapshot()))
            tracemalloc.stop()
            assert r.exchange_tickers("linear") == frozenset(open_now)  # subscriptions = open positions
            assert r.hub.subscriptions["linear"].confirmed == set(open_now)
            r.price(open_now[0], "1.5")  # a frame after the last unsubscribe ack: ticker state is forgotten by then
            await r.wait_until(lambda: r.stream.health().connections["public:linear"]["tickers"] == len(open_now))
            assert set(r.hub.activity["linear"]) == set(open_now)  # ticker state = subscriptions = open positions
            tasks_400, bytes_400 = measured[400]
            tasks_1000, bytes_1000 = measured[1000]
            assert tasks_1000 == tasks_400, measured
            # no per-cycle growth: 600 cycles apart, under 80 bytes a cycle (one event kept per
            # cycle would be ~120 KiB; measured: +16 KiB of ~840 KiB, histogram slots and the like)
            assert bytes_1000 - bytes_400 < 48 * 1024, measured
            assert sum(r.restarts().values()) == 0
            r.assert_nothing_lost()
