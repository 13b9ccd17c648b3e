"""The restart strategy on its own, with small actors whose failures we script.

(The same strategy is exercised against the simulator in tests/integration.)"""

from __future__ import annotations

import logging
import random

import attrs
import pytest
import trio

from hybrid_actors.actors.hub import Hub
from hybrid_actors.config import Credentials, RestartPolicy, StreamConfig
from hybrid_actors.errors import AuthRejected, ConnectionLost, RestartIntensityExceeded
from hybrid_actors.supervisor import ChildSpec, Supervisor, classify

pytestmark = pytest.mark.unit


def make_hub(**policy: float) -> Hub:
    config = StreamConfig(credentials=Credentials("key", "secret"), restart=RestartPolicy(**policy))
    return Hub(config, rest=None, rng=random.Random(1))  # type: ignore[arg-type]  # no REST used here


@attrs.define(eq=False)
class Scripted:
    """Fails with ``script[n]`` on its n-th start (None = run forever)."""

    name: str
    script: list[BaseException | None]
    starts: list[float]

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        self.starts.append(trio.current_time())
        index = len(self.starts) - 1
        failure = self.script[index] if index < len(self.script) else None
        task_status.started()
        if failure is not None:
            raise failure
        await trio.sleep_forever()


def spec(name: str, script: list, starts: list) -> ChildSpec:
    return ChildSpec(name, lambda: Scripted(name, script, starts))


async def test_a_crash_restarts_only_that_actor(autojump_clock):
    hub = make_hub()
    a_starts, b_starts = [], []
    sup = Supervisor(hub, (spec("a", [], a_starts), spec("b", [RuntimeError("bug")], b_starts)))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert len(a_starts) == 1
    assert len(b_starts) == 2
    assert hub.health.actors["b"].crashes == 1
    assert hub.health.actors["a"].crashes == 0
    assert hub.health.actors["b"].state == "running"


async def test_first_retry_is_fast_then_backoff_grows_and_caps(autojump_clock):
    hub = make_hub(backoff_initial=0.5, backoff_max=4.0)
    starts: list[float] = []
    outages = [ConnectionLost(f"drop {i}") for i in range(12)]
    sup = Supervisor(hub, (spec("net", outages, starts),))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(starts) == 13  # twelve outages, then it stays up
    assert gaps[0] <= 0.5  # full jitter within the first, small window
    assert all(gap <= 4.0 for gap in gaps)  # capped
    assert all(gap <= 0.5 * 2 ** i for i, gap in enumerate(gaps))
    assert hub.health.actors["net"].outages == 12
    assert hub.health.actors["net"].crashes == 0


async def test_outages_never_end_the_stream(autojump_clock):
    hub = make_hub(backoff_max=1.0, max_restarts=3, window=1000.0)
    starts: list[float] = []
    sup = Supervisor(hub, (spec("net", [ConnectionLost("down")] * 200, starts),))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(500)
        nursery.cancel_scope.cancel()
    assert len(starts) > 100  # far past max_restarts: outages are not crashes


async def test_crash_loop_ends_the_stream_with_a_clear_error(autojump_clock):
    hub = make_hub(max_restarts=4, window=60.0, backoff_max=1.0)
    starts: list[float] = []
    sup = Supervisor(hub, (spec("buggy", [ZeroDivisionError("oops")] * 10, starts),))
    with pytest.RaisesGroup(pytest.RaisesExc(RestartIntensityExceeded, match="buggy.*4 times within 60s.*ZeroDivisionError"),
                            flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await trio.sleep(100)
    assert len(starts) == 4
    assert hub.health.actors["buggy"].state == "failed"


async def test_crashes_spread_out_in_time_are_tolerated(autojump_clock):
    hub = make_hub(max_restarts=3, window=10.0, backoff_initial=30.0, backoff_max=30.0, stable_after=1000)
    starts: list[float] = []
    sup = Supervisor(hub, (spec("rare", [RuntimeError("x")] * 5, starts),))
    hub.rng = random.Random(0)  # pinned: these draws put >= 10 s between every third start
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.sleep(400)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    windows = [starts[i + 2] - starts[i] for i in range(len(starts) - 2)]
    assert len(starts) == 6 and all(w >= 10.0 for w in windows), (gaps, windows)


async def test_rejected_credentials_end_the_stream_at_once(autojump_clock):
    hub = make_hub()
    starts: list[float] = []
    sup = Supervisor(hub, (spec("private", [AuthRejected("auth rejected for key 'abcd…': Params Error")], starts),))
    with pytest.RaisesGroup(AuthRejected, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await trio.sleep(10)
    assert len(starts) == 1


def test_classify_reads_through_exception_groups():
    assert classify(ExceptionGroup("g", [ConnectionLost("x")]))[0] == "outage"
    assert classify(ExceptionGroup("g", [ConnectionLost("x"), KeyError("k")]))[0] == "crash"
    kind, leaf = classify(ExceptionGroup("g", [ExceptionGroup("h", [AuthRejected("no")]), KeyError("k")]))
    assert kind == "fatal" and isinstance(leaf, AuthRejected)


@pytest.mark.failover
async def test_48_virtual_hours_of_refusals_neither_overflow_nor_storm(autojump_clock, caplog):
    caplog.set_level(logging.ERROR, logger="hybrid_actors")  # 57,000 warnings cost seconds
    # the old ``backoff_initial * 2 ** attempt`` raised OverflowError at attempt 1024 (~4 h)
    hub = make_hub()  # the default policy: 0.25 s growing to 4 s, jitter 0.5
    starts: list[float] = []
    hours = 48
    # fails until 48 h have passed, then stays up
    refusals = [ConnectionLost("refused")] * 200_000
    sup = Supervisor(hub, (spec("net", refusals, starts),))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.sleep(hours * 3600)
        assert hub.health.actors["net"].state in ("backoff", "starting")
        del refusals[len(starts):]  # the exchange accepts again from the next attempt on
        back_at = trio.current_time()
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    stats = hub.health.actors["net"]
    assert stats.state == "running" and stats.crashes == 0
    assert starts[-1] - back_at <= hub.config.restart.backoff_max  # back within the cap (4 s)
    attempts_per_second = (len(starts) - 1) / (hours * 3600)
    assert 0.25 < attempts_per_second <= 0.5  # <= 1/s per socket; mean delay 3 s
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert max(gaps) <= 4.0 and min(gaps[10:]) >= 2.0


async def test_a_crash_resets_the_state_the_child_owns_before_the_restart_and_an_outage_does_not(autojump_clock):
    hub = make_hub()
    owned = {"value": "good"}
    seen_at_start: list[str] = []

    @attrs.define(eq=False)
    class Corrupting:
        name: str = "owner"

        async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
            seen_at_start.append(owned["value"])
            task_status.started()
            if len(seen_at_start) == 1:
                owned["value"] = "bad"  # the bug writes bad state, then crashes on it
                raise KeyError("bad state")
            if len(seen_at_start) == 2:
                owned["value"] = "half-written"
                raise ConnectionLost("an outage: state is kept")
            await trio.sleep_forever()

    def reset() -> None:
        owned["value"] = "good"

    sup = Supervisor(hub, (ChildSpec("owner", Corrupting, reset),))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert seen_at_start == ["good", "good", "half-written"]
    assert hub.health.actors["owner"].crashes == 1 and hub.health.actors["owner"].outages == 1
