"""The subscription manager's decisions, step by step with explicit times.

(End to end against the simulator: tests/integration.)"""

from __future__ import annotations

import json
import random

import pytest
import trio

from hybrid_actors.actors.hub import Hub
from hybrid_actors.actors.subscriptions import MIN_WAIT, SubscriptionManager
from hybrid_actors.config import Credentials, StreamConfig, SubscriptionPolicy
from hybrid_actors.messages import AckReceived, LinkDown, LinkUp
from hybrid_actors.protocol.frames import SubscribeResult

pytestmark = pytest.mark.unit


class Harness:
    def __init__(self, **policy):
        config = StreamConfig(credentials=Credentials("k", "s"), subscriptions=SubscriptionPolicy(**policy))
        self.hub = Hub(config, rest=None, rng=random.Random(0))  # type: ignore[arg-type]
        self.manager = SubscriptionManager(self.hub)
        self.send, self.recv = trio.open_memory_channel[str](1000)
        self.link = None

    def connect(self, now: float) -> None:
        self._cm = self.hub.links.register("public:linear", self.send.clone())
        self.link = self._cm.__enter__()
        self.manager.handle(LinkUp("linear", self.link), now)

    def want(self, *symbols: str) -> None:
        self.hub.desired.set({"linear": frozenset(symbols)})

    def sent(self) -> list[dict]:
        frames = []
        while True:
            try:
                frames.append(json.loads(self.recv.receive_nowait()))
            except trio.WouldBlock:
                return frames

    def ack(self, frame: dict, now: float, *, success: bool = True, ret_msg: str = "") -> None:
        result = SubscribeResult(op=frame["op"], success=success, ret_msg=ret_msg, req_id=frame["req_id"])
        self.manager.handle(AckReceived("linear", self.link.generation, result), now)

    @property
    def subs(self):
        return self.hub.subscriptions["linear"]


def topics(frames: list[dict], op: str = "subscribe") -> list[str]:
    return [t for f in frames if f["op"] == op for t in f["args"]]


async def test_desired_symbols_go_out_in_chunks_and_acks_confirm_them():
    h = Harness(chunk_size=10)
    h.connect(0.0)
    h.want(*(f"S{i:02d}USDT" for i in range(25)))
    h.manager.reconcile(0.0)
    frames = h.sent()
    assert [len(f["args"]) for f in frames] == [10, 10, 5]
    for frame in frames:
        h.ack(frame, 0.1)
    assert len(h.subs.confirmed) == 25 and not h.subs.inflight
    h.manager.reconcile(0.2)
    assert h.sent() == []  # nothing more to do


async def test_the_token_bucket_paces_frames_and_never_spins_on_float_time():
    h = Harness(chunk_size=1, requests_per_second=20.0, burst=10)
    h.connect(1_000_000.0)
    h.want(*(f"S{i:02d}USDT" for i in range(30)))
    now = 1_000_000.0
    due = h.manager.reconcile(now)
    assert len(h.sent()) == 10
    assert due > now
    # A refill that lands a hair short of a whole token must not produce a deadline equal
    # to `now` (which spun the real manager at 100% CPU before the fix).
    h.subs.tokens, h.subs.tokens_at = 0.9999999999, now
    due = h.manager.reconcile(now)
    sent = len(h.sent())
    assert sent == 1  # a hair short of a whole token is a whole token (TOKEN_EPSILON)
    assert due >= now + MIN_WAIT - 1e-9  # and the next deadline is never `now`
    t = now
    while sent < 20:
        t += 0.05
        h.manager.reconcile(t)
        sent += len(h.sent())
    assert sent == 20 and t - now == pytest.approx(1.0, abs=0.11)  # 20 frames/s after the burst


async def test_already_subscribed_counts_as_success_and_other_errors_retry_with_backoff():
    h = Harness(chunk_size=3, retry_initial=1.0)
    h.connect(0.0)
    h.want("AUSDT", "BUSDT", "CUSDT")
    h.manager.reconcile(0.0)
    [frame] = h.sent()
    h.ack(frame, 0.1, success=False, ret_msg="error:already subscribed,topic:tickers.BUSDT")
    assert h.subs.confirmed == {"BUSDT"}
    assert set(h.subs.retry_at) == {"AUSDT", "CUSDT"}
    h.manager.reconcile(0.2)
    assert h.sent() == []  # backing off
    h.manager.reconcile(max(h.subs.retry_at.values()) + 0.01)
    assert sorted(topics(h.sent())) == ["tickers.AUSDT", "tickers.CUSDT"]


async def test_a_retry_count_left_in_the_hub_by_days_of_failures_neither_overflows_nor_grows():
    # the count lives in the hub, so a restarted manager inherits it: with the old
    # ``retry_initial * 2 ** attempts`` every restart crashed again (RestartIntensityExceeded)
    h = Harness(chunk_size=1, retry_initial=1.0, retry_max=60.0)
    h.connect(0.0)
    h.want("AUSDT")
    h.subs.attempts["AUSDT"] = 10**6  # e.g. left by an older build, or days of ack timeouts
    h.manager.reconcile(0.0)
    [frame] = h.sent()
    h.ack(frame, 0.1, success=False, ret_msg="error:timeout")  # names no topic: retried later
    assert 30.1 <= h.subs.retry_at["AUSDT"] <= 60.1  # the capped delay, jittered
    backoff = h.hub.config.subscriptions.backoff
    assert h.subs.attempts["AUSDT"] <= backoff.saturation + 1
    now = 0.1
    for _ in range(1000):  # a thousand more failures keep the counter where it is
        now = h.subs.retry_at["AUSDT"] + 0.01
        h.manager.reconcile(now)
        [frame] = h.sent()
        h.ack(frame, now, success=False, ret_msg="error:timeout")
    assert h.subs.attempts["AUSDT"] == backoff.saturation + 1
    assert h.subs.retry_at["AUSDT"] - now <= 60.0


async def test_an_unknown_symbol_is_parked_without_blocking_the_rest():
    h = Harness(chunk_size=1, unknown_symbol_retry=300.0, silence_timeout=1000.0)
    h.connect(0.0)
    h.want("NOPEUSDT", "BTCUSDT")
    h.manager.reconcile(0.0)
    frames = {f["args"][0]: f for f in h.sent()}
    h.ack(frames["tickers.NOPEUSDT"], 0.1, success=False, ret_msg="error:handler not found,topic:tickers.NOPEUSDT")
    h.ack(frames["tickers.BTCUSDT"], 0.1)
    assert h.subs.confirmed == {"BTCUSDT"}
    assert h.subs.failed["NOPEUSDT"].kind == "handler_not_found"
    due = h.manager.reconcile(1.0)
    assert h.sent() == [] and due == pytest.approx(300.1)
    h.manager.reconcile(300.2)
    assert topics(h.sent()) == ["tickers.NOPEUSDT"]
    assert h.hub.health.failures_within(300.2, 3600) == 1


async def test_unsubscribe_waits_for_the_grace_and_a_flip_cancels_it():
    h = Harness(unsubscribe_grace=2.0)
    h.connect(0.0)
    h.want("AUSDT", "BUSDT")
    h.manager.reconcile(0.0)
    for f in h.sent():
        h.ack(f, 0.0)
    h.want("BUSDT")
    due = h.manager.reconcile(10.0)
    assert h.sent() == [] and due == pytest.approx(12.0)
    h.want("AUSDT", "BUSDT")  # the position came back (flipped)
    h.manager.reconcile(11.0)
    h.manager.reconcile(13.0)
    assert h.sent() == []
    h.want("BUSDT")
    h.manager.reconcile(20.0)
    h.manager.reconcile(22.0)
    [frame] = h.sent()
    assert (frame["op"], frame["args"]) == ("unsubscribe", ["tickers.AUSDT"])
    assert not h.link.has_retired  # still subscribed until the exchange confirms
    h.ack(frame, 22.1)
    assert h.subs.confirmed == {"BUSDT"}
    # the socket's owner learns it may forget the symbol's ticker state, once
    assert h.link.take_retired() == {"AUSDT"} and h.link.take_retired() == set()


async def test_a_new_connection_starts_from_nothing_and_stale_acks_are_ignored():
    h = Harness()
    h.connect(0.0)
    h.want("AUSDT")
    h.manager.reconcile(0.0)
    [old_frame] = h.sent()
    old_generation = h.link.generation
    h.manager.handle(LinkDown("linear", old_generation), 0.5)
    h.connect(1.0)
    h.ack(old_frame, 1.1)  # an ack that belongs to the dead connection
    result = SubscribeResult(op="subscribe", success=True, ret_msg="", req_id=old_frame["req_id"])
    h.manager.handle(AckReceived("linear", old_generation, result), 1.2)
    assert h.subs.confirmed == set()
    h.manager.reconcile(1.3)
    [frame] = h.sent()
    assert frame["args"] == ["tickers.AUSDT"] and frame["req_id"] != old_frame["req_id"]


async def test_a_missing_ack_is_retried_and_a_silent_topic_is_resubscribed():
    h = Harness(ack_timeout=10.0, silence_timeout=60.0, retry_initial=1.0)
    h.connect(0.0)
    h.want("AUSDT")
    h.manager.reconcile(0.0)
    [lost] = h.sent()
    h.manager.reconcile(10.0)
    assert h.sent() == [] and "AUSDT" in h.subs.retry_at
    h.manager.reconcile(12.0)
    [again] = h.sent()
    assert again["args"] == ["tickers.AUSDT"] and again["req_id"] != lost["req_id"]
    h.ack(again, 12.1)
    h.hub.activity["linear"]["AUSDT"] = 30.0
    h.manager.reconcile(89.0)
    assert h.sent() == []
    h.manager.reconcile(90.0)  # 60 s after the last data
    [unsub] = h.sent()
    assert unsub["op"] == "unsubscribe"
    h.ack(unsub, 90.1)
    h.manager.reconcile(90.2)
    [resub] = h.sent()
    assert (resub["op"], resub["args"]) == ("subscribe", ["tickers.AUSDT"])
    assert h.subs.resubscribes == 1


async def test_symbols_being_retried_go_one_per_frame():
    h = Harness(chunk_size=50, retry_initial=1.0)
    h.connect(0.0)
    h.want("AUSDT", "BUSDT", "CUSDT", "DUSDT")
    h.manager.reconcile(0.0)
    [frame] = h.sent()
    h.ack(frame, 0.1, success=False, ret_msg="Params Error")  # names nothing: all four unknown
    h.manager.reconcile(10.0)
    retries = h.sent()
    assert sorted(f["args"][0] for f in retries) == ["tickers.AUSDT", "tickers.BUSDT", "tickers.CUSDT",
                                                    "tickers.DUSDT"]
    assert all(len(f["args"]) == 1 for f in retries)
    h.want("AUSDT", "BUSDT", "CUSDT", "DUSDT", "EUSDT", "FUSDT")
    for f in retries:
        h.ack(f, 10.1)
    h.manager.reconcile(10.2)
    [fresh] = h.sent()
    assert fresh["args"] == ["tickers.EUSDT", "tickers.FUSDT"]  # new symbols still share a frame


async def test_a_refused_symbol_is_forgotten_once_its_position_is_gone():
    h = Harness(chunk_size=1)
    h.connect(0.0)
    h.want("NOPEUSDT")
    h.manager.reconcile(0.0)
    [frame] = h.sent()
    h.ack(frame, 0.1, success=False, ret_msg="error:handler not found,topic:tickers.NOPEUSDT")
    assert "NOPEUSDT" in h.subs.failed
    h.want()
    h.manager.reconcile(1.0)
    assert h.subs.failed == {} and h.sent() == []


async def test_acks_one_connection_never_answered_count_as_one_failure_not_one_per_topic():
    # A half-open public socket holding 20 subscribes used to count 20 subscription failures,
    # passing production's "more than 10 an hour" rollback on one network fault (the soak
    # rolled back 19 s in). Refused topics still count one each.
    h = Harness(ack_timeout=10.0, chunk_size=10, retry_initial=1.0)
    h.connect(0.0)
    symbols = [f"S{i:02d}USDT" for i in range(20)]
    h.want(*symbols)
    h.manager.reconcile(0.0)
    assert len(topics(h.sent())) == 20  # two frames of ten, never answered
    h.manager.reconcile(10.0)
    assert set(h.subs.retry_at) == set(symbols)  # every topic is retried
    assert h.hub.health.failures_within(10.0, 3600) == 1
    [(_, category, shown, reason)] = h.hub.health.subscription_failures
    assert category == "linear" and "20 topic(s)" in reason and shown.startswith("S00USDT")
    resent = []
    for now in (13.0, 14.0, 15.0):  # the retry round goes out (rate-limited) and is not answered
        h.manager.reconcile(now)
        resent += h.sent()
    assert sorted(topics(resent)) == [f"tickers.{s}" for s in symbols]
    h.manager.reconcile(23.0)  # the first frame of the round is overdue: a new ack timeout
    assert h.hub.health.failures_within(23.0, 3600) == 2
    h.manager.reconcile(24.0)  # the others of the same round, within one ack timeout: no more
    h.manager.reconcile(25.0)
    assert set(h.subs.retry_at) == set(symbols)
    assert h.hub.health.subscription_failures_total == 2
    h.manager.reconcile(30.0)
    again = h.sent()
    h.ack(again[0], 30.1, success=False, ret_msg=f"error:handler not found,topic:{again[0]['args'][0]}")
    assert h.hub.health.failures_within(30.1, 3600) == 3  # a refused topic counts on its own
    h.connect(31.0)  # a new connection starts its own count
    h.manager.reconcile(31.0)
    assert h.sent()
    h.manager.reconcile(41.0)
    assert h.hub.health.failures_within(41.0, 3600) == 4
