"""Hypothesis drives the pure layer with arbitrary interleavings (issue 8, fuzzing).

A model exchange changes positions over time; its pushes are delivered late, out of order
or lost (a reconnect); REST snapshots come complete or partial (fetched for some settle
coins only); mark prices move; the combiner crashes between a state change and the
hand-over of its events and is resynced. Throughout, nothing raises and the consumer's
picture (built only from the events) equals the combiner's; after a final complete
snapshot the book equals the exchange's truth.

The codec side: position pushes mixing good, ``"None"``-sided and broken records, and
sessions fed arbitrary (mutated recorded) acks.
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from foundation_helpers import load_vector
from hybrid_actors.protocol.frames import MalformedFrame, Position, PositionPush, SubscribeResult, decode
from hybrid_actors.protocol.session import Session, arg_cost
from hybrid_actors.state import SNAPSHOT_SKEW_MS, Combiner, Mark, PositionClosed, PositionUpdate

pytestmark = pytest.mark.unit

#: (key, settle coin): USDT and USDC linear (one hedge pair), and an inverse position
KEYS = {("linear", "BTCUSDT", 0): "USDT", ("linear", "ETHUSDT", 1): "USDT", ("linear", "ETHUSDT", 2): "USDT",
        ("linear", "BTCPERP", 0): "USDC", ("inverse", "BTCUSD", 0): None}
SCOPES = (("linear", "USDT"), ("linear", "USDC"), ("inverse", None))
CATEGORIES = ("linear", "inverse")
SIZES = (Decimal("0.001"), Decimal(1), Decimal("2.5"))
PRICES = (Decimal("100.5"), Decimal(27000), Decimal("0.3615"))


class Interleavings(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.combiner = Combiner()
        self.truth: dict[tuple[str, str, int], Position] = {}
        self.inflight: list[Position] = []
        self.now = 1_700_000_000_000
        self.seq = 0
        self.received = 0
        #: keys whose latest exchange record has reached the combiner
        self.delivered: set[tuple[str, str, int]] = set()
        #: what a consumer knows, from the events alone
        self.seen: dict[tuple[str, str, int], tuple[str, Decimal, Decimal | None]] = {}

    def _tick(self, ms: int) -> int:
        self.now += ms
        self.received += 1
        return self.now

    def _consume(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, PositionClosed):
                assert event.key in self.seen, f"closed {event.key} never seen open"
                del self.seen[event.key]
            else:
                assert isinstance(event, PositionUpdate)
                self.seen[event.key] = (event.side, event.size, event.entry_price)

    def _snapshot(self, scopes: tuple[tuple[str, str | None], ...]) -> list[Position]:
        listed = [key for key, p in self.truth.items() if p.is_open and (key[0], KEYS[key]) in scopes]
        self.delivered.update(listed)
        return [self.truth[key] if KEYS[key] is None else _with_coin(self.truth[key], KEYS[key]) for key in listed]

    def _pushed(self, batch: list[Position]) -> None:
        self.delivered.update(p.key for p in batch if p is self.truth[p.key])

    # --- the exchange ----------------------------------------------------------------------
    @rule(key=st.sampled_from(sorted(KEYS)), side=st.sampled_from(["Buy", "Sell", "", "None"]),
          size=st.sampled_from(SIZES), entry=st.sampled_from(PRICES), dt=st.integers(1, 800),
          session=st.booleans())
    def change(self, key, side, size, entry, dt, session):
        self.seq += 1
        flat = side in ("", "None")
        record = Position(category=key[0], symbol=key[1], side="" if flat else side,
                          size=Decimal(0) if flat else size, position_idx=key[2],
                          entry_price=Decimal(0) if flat else entry, mark_price=entry,
                          updated_time=self._tick(dt), seq=self.seq,
                          session_avg_price=entry + 1 if session and KEYS[key] == "USDC" and not flat else None)
        self.truth[key] = record
        self.inflight.append(record)
        self.delivered.discard(key)

    # --- the client ------------------------------------------------------------------------
    @precondition(lambda self: self.inflight)
    @rule(data=st.data())
    def deliver(self, data):
        """Some pending pushes, in any order, as one push."""
        count = data.draw(st.integers(1, len(self.inflight)))
        batch = [self.inflight.pop(data.draw(st.integers(0, len(self.inflight) - 1))) for _ in range(count)]
        self._pushed(batch)
        self._consume(self.combiner.apply_push(batch, received_ts=self.received))

    @rule(dt=st.integers(0, 2 * SNAPSHOT_SKEW_MS))
    def reconnect(self, dt):
        """The socket drops: pending pushes are lost; the reconnect's snapshot is complete."""
        self.inflight.clear()
        as_of = self._tick(dt)
        self._consume(self.combiner.apply_snapshot(self._snapshot(SCOPES), categories=CATEGORIES, as_of_ms=as_of,
                                                   received_ts=self.received, coverage=SCOPES))

    @rule(scopes=st.lists(st.sampled_from(SCOPES), unique=True, max_size=3), dt=st.integers(0, 2 * SNAPSHOT_SKEW_MS))
    def snapshot(self, scopes, dt):
        """A reconciliation, complete or fetched for some settle coins only."""
        chosen = tuple(scopes)
        as_of = self._tick(dt)
        self._consume(self.combiner.apply_snapshot(self._snapshot(chosen), categories=CATEGORIES, as_of_ms=as_of,
                                                   received_ts=self.received, coverage=chosen))

    @rule(symbol=st.sampled_from(["BTCUSDT", "ETHUSDT", "BTCPERP"]), price=st.sampled_from(PRICES),
          dt=st.integers(0, 500))
    def mark(self, symbol, price, dt):
        ts = self._tick(dt)
        self._consume(self.combiner.apply_marks("linear", {symbol: Mark(price, ts, ts)}))

    @precondition(lambda self: self.inflight)
    @rule(data=st.data())
    def crash(self, data):
        """The combiner applies a push (or a snapshot) and dies before handing the events
        over; its next incarnation resyncs from the book."""
        if data.draw(st.booleans()):
            batch = [self.inflight.pop(0)]
            self._pushed(batch)
            self.combiner.apply_push(batch, received_ts=self.received, commit=False)
        else:
            as_of = self._tick(data.draw(st.integers(0, 500)))
            self.combiner.apply_snapshot(self._snapshot(SCOPES[:1]), categories=CATEGORIES, as_of_ms=as_of,
                                         received_ts=self.received, coverage=SCOPES[:1], commit=False)
        self._consume(self.combiner.resync(self.received))

    # --- what must hold --------------------------------------------------------------------
    @invariant()
    def the_consumer_sees_what_the_combiner_shows(self):
        views = {v.key: (v.side, v.size, v.entry_price) for v in self.combiner.current()}
        assert self.seen == views
        assert {p.key for p in self.combiner.book.open_positions()} == set(views)

    @invariant()
    def nothing_the_exchange_holds_open_is_closed(self):
        """A position whose latest record reached us stays open while the exchange holds it
        open: no snapshot closes what it did not read (a partial one least of all)."""
        for key in self.delivered:
            if self.truth[key].is_open:
                assert self.combiner.book.get(key) is not None, f"{key} closed but open on the exchange"

    def teardown(self):
        self.inflight.clear()
        as_of = self._tick(SNAPSHOT_SKEW_MS + 1)
        self._consume(self.combiner.apply_snapshot(self._snapshot(SCOPES), categories=CATEGORIES, as_of_ms=as_of,
                                                   received_ts=self.received, coverage=SCOPES))
        truth = {k: (p.side, p.size, p.entry_price) for k, p in self.truth.items() if p.is_open}
        assert {p.key: (p.side, p.size, p.entry_price) for p in self.combiner.book.open_positions()} == truth
        assert self.seen == truth


def _with_coin(position: Position, coin: str) -> Position:
    import attrs
    return attrs.evolve(position, settle_coin=coin)


Interleavings.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
test_arbitrary_interleavings_converge_to_the_rest_truth = Interleavings.TestCase


# --- the codec ----------------------------------------------------------------------------

PUSH_RECORDS = [m["data"][0] for m in load_vector("position_push")["messages"]]
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
junk = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                 st.sampled_from(["None", "", "Sideways", "-1", "1e999", "NaN"]))


@st.composite
def mixed_push(draw: st.DrawFn) -> tuple[dict[str, Any], list[bool]]:
    """A push of recorded records, some given a ``"None"`` side, some broken in one field."""
    data, usable = [], []
    for _ in range(draw(st.integers(1, 5))):
        record = copy.deepcopy(draw(st.sampled_from(PUSH_RECORDS)))
        how = draw(st.sampled_from(["as recorded", "None side", "broken"]))
        if how == "None side":
            record.update(side="None", size="0")
        elif how == "broken":
            record[draw(st.sampled_from(["side", "size", "positionIdx", "symbol"]))] = draw(junk)
        data.append(record)
        usable.append(how != "broken")
    return {"id": "x", "topic": "position", "creationTime": 1, "data": data}, usable


@FAST
@given(mixed_push())
def test_a_push_keeps_every_usable_record(case):
    push, usable = case
    frame = decode(json.dumps(push))
    if isinstance(frame, MalformedFrame):
        assert not any(usable)
        return
    assert isinstance(frame, PositionPush)
    assert len(frame.positions) + len(frame.rejected) == len(push["data"])
    assert len(frame.positions) >= sum(usable)  # a "broken" field may still be valid (e.g. size "-1" is not)
    for position in frame.positions:
        assert position.side in ("Buy", "Sell", "")
    Combiner().apply_push(frame.positions, received_ts=1)


ACKS = load_vector("subscribe_ok")["messages"] + load_vector("subscribe_fail")["messages"]


@st.composite
def ack_streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    acks = []
    for _ in range(draw(st.integers(1, 8))):
        ack = copy.deepcopy(draw(st.sampled_from(ACKS)))
        if "req_id" in ack or draw(st.booleans()):
            ack["req_id"] = draw(st.sampled_from(["r1", "r2", "r3", "r9", "", None]))
        if "ret_msg" in ack and draw(st.booleans()):
            ack["ret_msg"] = draw(st.sampled_from(["error:already subscribed", "error:already subscribed,topic:tickers.A",
                                                   "Length of 'args' array over 21,000 characters",
                                                   "error:handler not found,topic:tickers.B", "", "whatever"]))
        acks.append(ack)
    return acks


@FAST
@given(ack_streams(), st.sampled_from(["linear", "spot", "option"]))
def test_a_session_takes_any_acks(acks, category):
    session = Session(category)
    session.subscribe(["tickers.A", "tickers.B", "tickers.C"], now=0.0)
    session.subscribe(["tickers.D"], now=0.0)
    everything = sum(arg_cost(t) for t in ("tickers.A", "tickers.B", "tickers.C", "tickers.D"))
    for raw in acks:
        frame = decode(json.dumps(raw), category=category)
        if isinstance(frame, SubscribeResult):
            session.receive_ack(frame)
        assert 0 <= session.budget.used_chars <= everything  # never counted twice, at any step
    held = session.budget.used_chars
    assert held <= everything
