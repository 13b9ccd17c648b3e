"""'Exchange outages are retried forever', proven over a virtual day for the behaviours
added last: the reconciler's fast listing while the private socket is down, auth retried
while REST is banned (signing with the last known clock offset), and a REST outage at start
while pushes arrive (held, the latest per position, until the first snapshot).

Each test runs 24 virtual hours against the simulator on loopback, on virtual time that
jumps as soon as every task waits for a timer, and asserts what "forever" needs: nothing
ends the stream; requests per hour stay at the policy's pace hour after hour (no storm, no
growth); counters, held records and trio tasks stay bounded; logged lines per hour stay
bounded; and once the fault clears the stream is whole again within the policy's bound.

The intervals are the policy's, scaled up so that a day costs a few thousand real
loopback operations (a few seconds): every REST call and every refused handshake is real
I/O, and at the defaults (5 s listing, retries every 2-4 s) two days are ~70,000 list calls
and ~58,000 handshakes per loop, minutes of real time. What each figure would be at the
defaults follows from the same formulas (e.g. 3600 / rest_interval list rounds per hour:
720 at 5 s); the defaults' short-term pace is proven in test_stream_resilience.py and
test_stream_failover.py.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from hybrid_actors import RestartPolicy, StreamConfig, SubscriptionPolicy
from hybrid_actors.rest import IP_BAN_COOLDOWN
from hybrid_actors.rollout import RolloutPolicy
from hybrid_actors.supervisor import open_hybrid_stream
from hybrid_actors.testing.simulator import Simulator, open_simulator, trio_wall_clock
from stack import EventLog, eventually, sim_config

pytestmark = [pytest.mark.integration, pytest.mark.failover]

HOURS = 24
LIST = "/v5/position/list"
#: socket restarts every 60-120 s once saturated (the default is 2-4 s)
POLICY = RestartPolicy(backoff_max=120.0)
#: pings every 5 minutes: the private idle cut is 10 minutes; a default 20 s heartbeat would
#: be 17,000 pings over two days
HEARTBEAT = 300.0


@pytest.fixture
def fast_clock() -> trio.testing.MockClock:
    """Virtual time that jumps as soon as every task is blocked (see test_stream_resilience)."""
    return trio.testing.MockClock(autojump_threshold=0)


def per_hour(times: Iterable[float], start: float, hours: int = HOURS) -> list[int]:
    counts = [0] * hours
    for at in times:
        hour = int((at - start) // 3600)
        if 0 <= hour < hours:
            counts[hour] += 1
    return counts


def task_count() -> int:
    def walk(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
        yield task
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                yield from walk(child)
    return sum(1 for _ in walk(trio.lowlevel.current_root_task()))


@attrs.define(eq=False)
class LogClock(logging.Handler):
    """The trio time of every WARNING-or-worse line the stream logs."""

    times: list[float] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        logging.Handler.__init__(self, logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        self.times.append(trio.current_time())


@contextmanager
def logged_lines() -> Iterator[LogClock]:
    handler = LogClock()
    logger = logging.getLogger("hybrid_actors")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def day_config(sim: Simulator, **overrides: Any) -> StreamConfig:
    """The simulator's market is still (rate 0): no ticker frames, so the stale-mark
    fallback would poll tickers every second, the silence trigger would roll back and silent
    topics would be resubscribed every minute; all three are other features, proven elsewhere."""
    rest_interval = overrides.pop("rest_interval", 5.0)
    settings: dict[str, Any] = {
        "linear_settle_coins": ("USDT",), "heartbeat_interval": HEARTBEAT, "restart": POLICY,
        "subscriptions": SubscriptionPolicy(silence_timeout=HOURS * 3600.0),
        "rollout": RolloutPolicy(rest_interval=rest_interval, stale_after=None, rollback_after_silence=None)}
    settings.update(overrides)
    return StreamConfig(credentials=sim.credentials, endpoints=sim.endpoints, **settings)


async def test_a_day_of_private_outage_lists_positions_at_the_fast_pace_and_no_faster(fast_clock):
    rest_interval = 120.0
    with trio.fail_after(HOURS * 3600 + 3600):
        wall = trio_wall_clock()
        async with open_simulator(sim_config(wall_clock=wall, history_limit=100_000)) as sim:
            sim.control.open_position("BTCUSDT", "Buy", "1")
            config = day_config(sim, rest_interval=rest_interval)
            async with open_hybrid_stream(config, wall_clock=wall, rng=random.Random(18)) as stream, \
                    trio.open_nursery() as nursery:
                log = EventLog(stream)
                nursery.start_soon(log.run)
                await sim.observe.wait_until(lambda: sim.observe.subscribed_symbols("linear") == {"BTCUSDT"})
                sim.control.reject_connections(None, status=503, target="private")
                with logged_lines() as lines:
                    sim.control.drop_private("reset")
                    down = trio.current_time()
                    await trio.sleep(3600)
                    tasks_early = task_count()
                    await trio.sleep(11 * 3600)
                    # a position opened and another closed during the outage: nothing pushes them
                    mark = log.mark()
                    sim.control.open_position("ETHUSDT", "Sell", "2")
                    opened_at = trio.current_time()
                    opened = await log.wait_for(lambda e: e.symbol == "ETHUSDT", after=mark)
                    assert opened.source == "rest" and trio.current_time() - opened_at <= rest_interval + 1.0
                    await trio.sleep(6 * 3600)
                    mark = log.mark()
                    sim.control.close_position("BTCUSDT")
                    closed_at = trio.current_time()
                    closed = await log.wait_for(lambda e: e.symbol == "BTCUSDT", after=mark)
                    assert closed.name == "position.closed" and trio.current_time() - closed_at <= rest_interval + 1.0
                    await trio.sleep(down + HOURS * 3600 - trio.current_time())
                    tasks_late = task_count()
                assert not stream.ended
                health = stream.health()
                assert all(a["crashes"] == 0 and a["state"] != "failed" for a in health.actors.values())
                assert health.rollout["active"] == "hybrid"  # no rollback: the public socket stayed up
                lists = per_hour((c.at for c in sim.observe.rest_calls(LIST)), down)
                pace = 3600 / rest_interval  # one settle coin: one page a round
                assert all(pace - 1 <= n <= pace + 1 for n in lists), lists
                handshakes = per_hour((h.at for h in sim.observe.handshakes() if h.path == "/v5/private"), down)
                slowest, fastest = 3600 / POLICY.backoff_max, 3600 / POLICY.backoff.shortest_saturated
                assert all(slowest - 2 <= n <= fastest + 1 for n in handshakes[1:]), handshakes
                logged = per_hour(lines.times, down)
                assert max(logged[1:]) <= 2 * max(handshakes) + 5, logged  # ~a line per refusal, no growth
                assert abs(tasks_late - tasks_early) <= 4, (tasks_early, tasks_late)  # a restart in flight, not a leak
                assert stream.hub.rest.unsupported == {} and stream.hub.rest.paging_problems == {}
                # the fault clears: the private socket is back within one capped restart delay
                sim.control.clear_faults()
                cleared = trio.current_time()
                await eventually(lambda: stream.health().actors["private"]["state"] == "running", max_step=1.0)
                assert trio.current_time() - cleared <= POLICY.backoff_max + 5.0
                back = trio.current_time()
                before = len(sim.observe.rest_calls(LIST))
                await trio.sleep(3 * rest_interval)
                # listing falls back to every reconcile_interval (300 s): at most one round in 360 s
                assert len(sim.observe.rest_calls(LIST)) - before <= 1, trio.current_time() - back
                assert {(p.symbol, p.side, p.size) for p in stream.positions()} == {("ETHUSDT", "Sell", Decimal("2"))}
                print(f"\nprivate outage {HOURS} h: list calls/h {min(lists)}-{max(lists)}, private handshakes/h "
                      f"{min(handshakes[1:])}-{max(handshakes[1:])}, warnings/h {max(logged[1:])}, "
                      f"tasks {tasks_early}->{tasks_late}, back after {back - cleared:.1f}s")
                nursery.cancel_scope.cancel()


async def test_a_day_of_refused_auth_while_rest_is_banned_is_retried_at_the_restart_pace(fast_clock):
    """Auth refused (``Params Error``) and REST banned (HTTP 403) for a day: the clock cannot
    be measured, so no refusal counts as a verdict on the keys; the socket is retried with
    the last known offset at the restart pace, REST is touched about once per ban, and once
    both clear the socket is back within one restart delay and the snapshot within the ban."""
    with trio.fail_after(HOURS * 3600 + 3600):
        wall = trio_wall_clock()
        async with open_simulator(sim_config(wall_clock=wall, history_limit=100_000)) as sim:
            sim.control.open_position("BTCUSDT", "Buy", "1")
            config = day_config(sim, rest_interval=120.0)
            async with open_hybrid_stream(config, wall_clock=wall, rng=random.Random(19)) as stream:
                hub = stream.hub
                offset = hub.rest.offset_ms
                sim.control.rest_http_error(403, count=None)  # every path: the IP is banned
                sim.control.fail_auth(None)
                with logged_lines() as lines:
                    sim.control.drop_private("reset")
                    down = trio.current_time()
                    await trio.sleep(3600)
                    tasks_early = task_count()
                    await trio.sleep(HOURS * 3600 - 3600)
                    tasks_late = task_count()
                assert not stream.ended
                health = stream.health()
                assert all(a["crashes"] == 0 and a["state"] != "failed" for a in health.actors.values())
                assert hub.rest.offset_ms == offset  # signed with the last known offset all along
                auths = per_hour((a.at for a in sim.observe.auth_attempts()), down)
                slowest, fastest = 3600 / POLICY.backoff_max, 3600 / POLICY.backoff.shortest_saturated
                assert all(slowest - 2 <= n <= fastest + 1 for n in auths[1:]), auths
                assert len(sim.observe.auth_attempts(ok=True)) == 1  # the one before the outage
                rest = per_hour((c.at for c in sim.observe.rest_calls()), down)
                bans = 3600 / IP_BAN_COOLDOWN  # each 403 keeps every REST call off for 10 minutes
                assert max(rest) <= 3 * bans, rest  # the clock, the reconciler, the private check
                logged = per_hour(lines.times, down)
                assert max(logged[1:]) <= 4 * max(auths) + 10, logged
                assert abs(tasks_late - tasks_early) <= 4, (tasks_early, tasks_late)
                # both clear: the socket is back within a restart delay; the snapshot after the ban
                sim.control.clear_faults()
                cleared = trio.current_time()
                await sim.observe.wait_auth(2, ok=True)
                authed = trio.current_time() - cleared
                assert authed <= POLICY.backoff_max + 5.0
                await eventually(lambda: stream.health().actors["private"]["state"] == "running", max_step=5.0)
                running_after = trio.current_time() - cleared
                assert running_after <= IP_BAN_COOLDOWN + POLICY.backoff_max + 5.0
                assert hub.auth_refusals == 0 and hub.auth_unanswered == 0
                print(f"\nauth refused + REST banned {HOURS} h: auths/h {min(auths[1:])}-{max(auths)}, REST requests/h "
                      f"{min(rest)}-{max(rest)}, warnings/h {max(logged[1:])}, tasks {tasks_early}->{tasks_late}, "
                      f"auth ok {authed:.1f}s and snapshot {running_after:.1f}s after the faults cleared")


async def test_a_day_of_rest_outage_at_start_holds_one_push_per_position(fast_clock, monkeypatch):
    """REST down (503) from the start for a day while the account trades: the private socket
    connects once and stays up, pushes are held (the latest per position, never more), REST
    is asked at the restart pace, and once it answers the stream starts within one restart
    delay with every position at its latest state."""
    from hybrid_actors.actors.emitter import CombinerActor

    held_max = [0]
    hold = CombinerActor._hold

    def counting_hold(self: CombinerActor, message: Any) -> None:
        hold(self, message)
        held_max[0] = max(held_max[0], len(self._held))

    monkeypatch.setattr(CombinerActor, "_hold", counting_hold)
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    with trio.fail_after(HOURS * 3600 + 3600):
        wall = trio_wall_clock()
        async with open_simulator(sim_config(wall_clock=wall, history_limit=100_000)) as sim:
            for symbol in symbols:
                sim.control.open_position(symbol, "Buy", "1")
            sim.control.rest_http_error(503, count=None)
            config = day_config(sim, rest_attempts=2)
            pushes = [0]
            cleared = [0.0]

            async def trade_then_heal() -> None:
                await sim.observe.wait_until(lambda: any(
                    "position" in sim.observe.subscriptions(c.conn_id) for c in sim.observe.open_connections("private")))
                step = 0
                while trio.current_time() < HOURS * 3600:
                    await trio.sleep(600)
                    step += 1
                    sim.control.modify_position(symbols[step % 3], size=str(1 + step))
                    pushes[0] += 1
                sim.control.clear_faults()
                cleared[0] = trio.current_time()

            with logged_lines() as lines:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trade_then_heal)
                    async with open_hybrid_stream(config, wall_clock=wall, rng=random.Random(20)) as stream:
                        started = trio.current_time() - cleared[0]
                        first = await stream.batches()
            assert cleared[0] >= HOURS * 3600 and started <= POLICY.backoff_max + 10.0, started
            assert pushes[0] >= HOURS * 6 - 1 and held_max[0] == len(symbols)  # 143 pushes, 3 held
            assert sim.observe.opened_count("private") == 1  # the socket stayed up all day
            truth = {(p.symbol, p.size) for p in sim.observe.positions("linear", open_only=True)}
            seen = {(e.symbol, e.size) for e in first if hasattr(e, "size")}
            assert seen == truth and len(truth) == 3
            rest = per_hour((c.at for c in sim.observe.rest_calls() if c.at < cleared[0]), 0.0)
            # the private snapshot (restart pace), the reconciler (every 5 minutes), the clock
            # (every 5 minutes at most), each call REST_BACKOFF-retried once
            assert max(rest[1:]) <= 2 * (3600 / POLICY.backoff.shortest_saturated + 12 + 12), rest
            assert max(rest[1:]) - min(rest[1:]) <= max(rest[1:]) // 2, rest  # no growth
            logged = per_hour(lines.times, 0.0)
            assert max(logged[1:]) <= 2 * max(rest) + 10, logged
            print(f"\nREST down at start {HOURS} h: REST requests/h {min(rest[1:])}-{max(rest[1:])}, "
                  f"pushes {pushes[0]}, held at most {held_max[0]}, warnings/h {max(logged[1:])}, "
                  f"started {started:.1f}s after REST returned")
