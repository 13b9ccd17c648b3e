"""The public reader's hand-over cadence: a read of up to ``public_ws.STEP`` frames is decoded
and handed to the combiner in one go, with no scheduling point in between (each is a whole
pass of trio's run loop and a combiner wake-up more), not even after its last frame; a
longer read (a burst, a reconnect's snapshots) yields every ``STEP`` frames, so it cannot
starve the combiner or the heartbeat."""

from __future__ import annotations

import math
import random

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
from hybrid_actors.state import TickerBook

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
