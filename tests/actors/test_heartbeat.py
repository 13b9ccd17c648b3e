"""Heartbeat decisions with explicit times (end to end: tests/integration failover)."""

from __future__ import annotations

import json
import random

import pytest
import trio

from hybrid_actors.actors.heartbeat import HeartbeatActor
from hybrid_actors.actors.hub import Hub
from hybrid_actors.config import Credentials, StreamConfig

pytestmark = pytest.mark.unit


def hub(interval: float = 20.0, timeout: float | None = None) -> Hub:
    config = StreamConfig(credentials=Credentials("k", "s"), heartbeat_interval=interval, pong_timeout=timeout)
    return Hub(config, rest=None, rng=random.Random(0))  # type: ignore[arg-type]


async def test_pings_every_interval_and_measures_rtt(autojump_clock):
    h = hub(20.0)
    send, recv = trio.open_memory_channel[str](10)
    with h.links.register("private", send) as link:
        beat = HeartbeatActor(h)
        t0 = trio.current_time()
        assert beat.tick(t0) == pytest.approx(t0 + 20.0)
        assert beat.tick(t0 + 20.0) == pytest.approx(t0 + 40.0)
        frame = json.loads(recv.receive_nowait())
        assert frame["op"] == "ping" and frame["req_id"] == link.ping_req_id
        link.pong_received(frame["req_id"], t0 + 20.25)
        assert link.rtt == pytest.approx(0.25) and link.ping_sent_at is None
        beat.tick(t0 + 40.0)
        assert json.loads(recv.receive_nowait())["op"] == "ping"
        assert not link.dead.is_set()


async def test_a_missing_pong_kills_the_link_after_the_timeout(autojump_clock):
    h = hub(20.0, timeout=10.0)
    send, recv = trio.open_memory_channel[str](10)
    with h.links.register("public:linear", send) as link:
        beat = HeartbeatActor(h)
        t0 = trio.current_time()
        beat.tick(t0 + 20.0)
        assert beat.tick(t0 + 29.9) == pytest.approx(t0 + 30.0)
        assert not link.dead.is_set()
        beat.tick(t0 + 30.0)
        assert link.dead.is_set() and "no pong within 10s" in link.death_reason


async def test_pongs_without_req_id_answer_the_outstanding_ping(autojump_clock):
    h = hub(20.0)
    send, _recv = trio.open_memory_channel[str](10)
    with h.links.register("public:spot", send) as link:
        HeartbeatActor(h).tick(trio.current_time() + 20.0)
        link.pong_received(None, trio.current_time() + 20.1)  # spot/option pongs echo no req_id
        assert link.ping_sent_at is None and link.pongs == 1
        link.ping_sent("hb9", 50.0)
        link.pong_received("hb8", 50.1)  # a late pong to an older ping answers nothing
        assert link.ping_sent_at == 50.0


async def test_a_restarted_heartbeat_keeps_the_links_deadlines(autojump_clock):
    h = hub(20.0, timeout=5.0)
    send, _recv = trio.open_memory_channel[str](10)
    with h.links.register("private", send) as link:
        t0 = trio.current_time()
        HeartbeatActor(h).tick(t0 + 20.0)
        HeartbeatActor(h).tick(t0 + 25.0)  # a new incarnation: same link, same deadline
        assert link.dead.is_set()
