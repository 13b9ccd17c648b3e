"""The public reader's hand-over cadence: a read of up to ``public_ws.STEP`` frames is decoded
and handed to the combiner in one go, with no scheduling point in between (each is a whole
pass of trio's run loop and a combiner wake-up more), not even after its last frame; a
longer read (a burst, a reconnect's snapshots) yields every ``STEP`` frames, so it cannot
starve the combiner or the heartbeat."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from decimal import Decimal

import attrs
import orjson
import pytest
import trio

from hybrid_actors.actors import public_ws
from hybrid_actors.actors.hub import Hub
from hybrid_actors.actors.links import Link
from hybrid_actors.actors.mailboxes import LatestByKey
from hybrid_actors.actors.public_ws import PublicStreamActor
from hybrid_actors.config import Credentials, StreamConfig
from hybrid_actors.state import Mark, TickerBook

pytestmark = pytest.mark.unit


def ticker_frames(count: int) -> list[str | bytes]:
    return [orjson.dumps({"topic": f"tickers.S{i}USDT", "type": "snapshot", "ts": 1_700_000_000_000 + i, "cs": 7,
                          "data": {"symbol": f"S{i}USDT", "markPrice": f"{100 + i}.5"}}).decode()
            for i in range(count)]


@attrs.define(eq=False)
class OneRead:
    """A transport whose first ``receive_batch()`` returns ``batch`` at once; the next one
    notes that the batch was handled and waits forever."""

    batch: list[str | bytes]
    url: str = "ws://test.invalid"
    reading: bool = False
    handled: trio.Event = attrs.Factory(trio.Event)

    async def receive_batch(self) -> list[str | bytes]:
        if not self.reading:
            self.reading = True
            return self.batch
        self.handled.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(self, text: str) -> None:
        raise AssertionError("nothing is sent here")

    def abandon(self) -> None:
        pass


async def yields_while_reading(frames: int, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """(times another task ran while the reader handled one read of ``frames`` tickers,
    times the marks mailbox was committed meanwhile)."""
    hub = Hub(StreamConfig(credentials=Credentials("k", "s"), categories=("linear",)),
              rest=None, rng=random.Random(0))  # type: ignore[arg-type]
    commits = 0
    commit = LatestByKey.commit

    def counting_commit(mailbox: LatestByKey) -> None:
        nonlocal commits
        if mailbox is hub.marks:
            commits += 1
        commit(mailbox)

    monkeypatch.setattr(LatestByKey, "commit", counting_commit)
    transport = OneRead(ticker_frames(frames))
    send, _receive = trio.open_memory_channel[object](100)
    outbox, _out = trio.open_memory_channel[str](1)
    link = Link("public:linear", 1, outbox, opened_at=0.0)
    ran = 0

    async def other() -> None:
        nonlocal ran
        while not transport.handled.is_set():
            if transport.reading:
                ran += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(PublicStreamActor(hub, "linear")._read, transport, link,
                           TickerBook("linear", fields=False), send)
        await other()
        nursery.cancel_scope.cancel()
    assert len(await hub.marks.take()) == frames  # every mark was handed over
    return ran, commits


@pytest.mark.parametrize("frames", [1, public_ws.STEP // 2, public_ws.STEP])
async def test_a_read_of_up_to_step_frames_is_one_hand_over_without_a_scheduling_point(frames, monkeypatch):
    ran, commits = await yields_while_reading(frames, monkeypatch)
    assert ran == 0
    assert commits == 1


async def test_a_long_read_yields_every_step_frames(monkeypatch):
    frames = 5 * public_ws.STEP + 3
    ran, commits = await yields_while_reading(frames, monkeypatch)
    # the other task ran at each of the reader's 5 yields (at the last, the reader may finish
    # first in the run loop's random order: then the other task sees the batch handled)
    assert ran >= frames // public_ws.STEP - 1
    assert commits == math.ceil(frames / public_ws.STEP)


def test_a_step_is_a_bounded_slice_of_work():
    # ~5-10 µs of CPU per frame warm, ~2x after an idle wake-up: a step holds the loop < 1 ms
    assert 8 <= public_ws.STEP <= 64


# --- what a read records besides the marks ------------------------------------------------------

def ticker(symbol: str, kind: str = "snapshot", price: str = "100.5", ts: int = 1_700_000_000_000) -> str:
    return orjson.dumps({"topic": f"tickers.{symbol}", "type": kind, "ts": ts, "cs": 7,
                         "data": {"symbol": symbol, "markPrice": price}}).decode()


@attrs.define(eq=False)
class Reads:
    """A transport handing over one batch per ``receive_batch()``, each a second (of trio's
    clock) after the last, after running its ``before`` step; then it waits forever."""

    script: list[tuple[Callable[[], None] | None, list[str | bytes]]]
    url: str = "ws://test.invalid"
    done: trio.Event = attrs.Factory(trio.Event)

    async def receive_batch(self) -> list[str | bytes]:
        if not self.script:
            self.done.set()
            await trio.sleep_forever()
        await trio.sleep(1)
        before, batch = self.script.pop(0)
        if before is not None:
            before()
        return batch

    async def send(self, text: str) -> None:
        raise AssertionError("nothing is sent here")

    def abandon(self) -> None:
        pass


async def read_all(hub: Hub, link: Link, book: TickerBook, transport: Reads) -> None:
    send, _receive = trio.open_memory_channel[object](100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(PublicStreamActor(hub, "linear")._read, transport, link, book, send)
        await transport.done.wait()
        nursery.cancel_scope.cancel()


def new_hub() -> Hub:
    return Hub(StreamConfig(credentials=Credentials("k", "s"), categories=("linear",)),
               rest=None, rng=random.Random(0))  # type: ignore[arg-type]


async def test_a_read_records_each_symbols_last_frame_the_link_s_last_frame_and_the_counts(autojump_clock):
    """Per read: each changed mark with the frame's exchange time and the read's wall-clock
    time (what decides between a ticker mark and a position record's own, and a mark's age),
    the trio time of each symbol's last ticker (the silence trigger's and the REST poller's
    evidence that a mark is live), the link's last frame (health), frames and batches, and
    the symbols the connection holds a snapshot of."""
    hub = new_hub()
    hub.wall_clock = lambda: 1_700_000_000.5
    outbox, _out = trio.open_memory_channel[str](1)
    link = Link("public:linear", 1, outbox, opened_at=0.0)
    book = TickerBook("linear", fields=False)
    start = trio.current_time()
    await read_all(hub, link, book, Reads([
        (None, [ticker("AUSDT"), ticker("BUSDT")]),
        (None, [ticker("AUSDT", "delta", "101", ts=1_699_999_999_900), ticker("CUSDT")]),
        (None, [ticker("BUSDT", "delta", "99", ts=1_699_999_999_950)]),
    ]))
    assert await hub.marks.take() == {
        ("linear", "AUSDT"): Mark(Decimal("101"), 1_699_999_999_900, 1_700_000_000_500),
        ("linear", "BUSDT"): Mark(Decimal("99"), 1_699_999_999_950, 1_700_000_000_500),
        ("linear", "CUSDT"): Mark(Decimal("100.5"), 1_700_000_000_000, 1_700_000_000_500)}
    assert hub.activity["linear"] == {"AUSDT": start + 2, "BUSDT": start + 3, "CUSDT": start + 2}
    assert link.last_frame_at == start + 3
    stats = hub.health.link("public:linear")
    assert (stats.frames, stats.batches, stats.tickers) == (5, 3, 3)


async def test_a_retired_symbol_is_forgotten_before_the_next_read_and_held_frames_keep_liveness(autojump_clock):
    """Symbols whose unsubscribe the exchange confirmed leave the merged state (a new
    subscribe starts from its snapshot), the activity table and the tickers count before the
    next read is handled. The latest frame among the dropped symbols that still hold a
    position is kept in ``held_frames``, never moving back, so liveness does not lie either
    way: a symbol nobody holds never counts."""
    hub = new_hub()
    hub.desired.set({"linear": frozenset({"AUSDT", "BUSDT"})})
    outbox, _out = trio.open_memory_channel[str](1)
    link = Link("public:linear", 1, outbox, opened_at=0.0)
    book = TickerBook("linear", fields=False)
    start = trio.current_time()
    await read_all(hub, link, book, Reads([
        (None, [ticker("AUSDT")]),
        (None, [ticker("BUSDT")]),
        (None, [ticker("XUSDT")]),  # held by nobody (its topic not yet unsubscribed): the latest frame
        (lambda: (link.retire("BUSDT"), link.retire("XUSDT")), []),
        (lambda: link.retire("AUSDT"), []),  # held, but its last frame is older than B's
    ]))
    assert book.symbols() == frozenset() and hub.health.link("public:linear").tickers == 0
    assert hub.activity["linear"] == {}
    assert hub.held_frames["linear"] == start + 2  # B's frame: not X's later one, not A's earlier one
