from __future__ import annotations

from decimal import Decimal

import pytest
import trio
import trio.testing

from hybrid_actors.actors.mailboxes import EventQueue, LatestByKey, StreamClosed, Watch
from hybrid_actors.state import PositionClosed, PositionUpdate

pytestmark = pytest.mark.unit


def ev(symbol: str, mark: str, source: str = "ticker", closed: bool = False, idx: int = 0):
    cls = PositionClosed if closed else PositionUpdate
    return cls(symbol=symbol, category="linear", side="Buy", size=Decimal("0" if closed else "1"),
               entry_price=Decimal("100"), mark_price=Decimal(mark), unrealized_pnl=Decimal(mark) - 100,
               position_idx=idx, source=source, exchange_ts=1, received_ts=2)


async def test_price_updates_conflate_per_position_latest_wins():
    q = EventQueue(capacity=10)
    q.put(ev("BTC", "101"))
    q.put(ev("ETH", "201"))
    q.put(ev("BTC", "102"))
    q.put(ev("BTC", "103"))
    batch = await q.get_batch()
    assert [(e.symbol, e.mark_price) for e in batch] == [("BTC", Decimal("103")), ("ETH", Decimal("201"))]
    assert q.conflated == 2


async def test_a_price_update_after_its_slot_was_handed_over_is_queued_not_merged_into_it():
    """Once a price update has been read, the next one for the same position is news: it
    must get a slot of its own, not overwrite the one already handed over (and be lost).
    Also after a partial read (``max_items``), for the slots read and those left."""
    q = EventQueue(capacity=10)
    q.put(ev("BTC", "101"))
    assert [e.mark_price for e in await q.get_batch()] == [Decimal("101")]
    q.put(ev("BTC", "102"))
    assert len(q) == 1
    assert [e.mark_price for e in await q.get_batch()] == [Decimal("102")]

    q.put(ev("BTC", "103"))
    q.put(ev("ETH", "201"))
    assert [e.symbol for e in await q.get_batch(1)] == ["BTC"]
    q.put(ev("BTC", "104"))  # BTC's slot was read: a new one, behind ETH's
    q.put(ev("ETH", "202"))  # ETH's slot is still queued: merged into it
    assert [(e.symbol, e.mark_price) for e in await q.get_batch()] == [("ETH", Decimal("202")),
                                                                      ("BTC", Decimal("104"))]
    assert q.conflated == 1
    assert q.delivered == 5


async def test_lifecycle_events_are_never_merged_nor_overtaken():
    q = EventQueue(capacity=10)
    q.put(ev("BTC", "101"))
    q.put(ev("BTC", "105", source="position"))  # size change
    q.put(ev("BTC", "102"))
    q.put(ev("BTC", "103"))
    q.put(ev("BTC", "103", closed=True, source="position"))
    q.put(ev("BTC", "104"))
    batch = await q.get_batch()
    assert [(type(e).__name__, e.source, e.mark_price) for e in batch] == [
        ("PositionUpdate", "ticker", Decimal("101")),
        ("PositionUpdate", "position", Decimal("105")),
        ("PositionUpdate", "ticker", Decimal("103")),
        ("PositionClosed", "position", Decimal("103")),
        ("PositionUpdate", "ticker", Decimal("104")),
    ]


async def test_hedge_legs_conflate_separately():
    q = EventQueue()
    q.put(ev("BTC", "1", idx=1))
    q.put(ev("BTC", "2", idx=2))
    q.put(ev("BTC", "3", idx=1))
    assert [(e.position_idx, e.mark_price) for e in await q.get_batch()] == [(1, Decimal(3)), (2, Decimal(2))]


async def test_producers_wait_for_lifecycle_space_not_for_prices():
    q = EventQueue(capacity=2)
    q.put(ev("A", "1", source="position"))
    q.put(ev("B", "1", source="position"))
    for i in range(100):
        q.put(ev("C", str(i)))  # prices never block and stay one slot
    assert len(q) == 3
    waited = trio.Event()

    async def producer():
        await q.wait_for_space()
        waited.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert not waited.is_set()
        assert [e.symbol for e in await q.get_batch(1)] == ["A"]
        await trio.testing.wait_all_tasks_blocked()
        assert waited.is_set()


async def test_close_drains_then_raises():
    q = EventQueue()
    q.put(ev("A", "1"))
    q.close()
    assert len(await q.get_batch()) == 1
    with pytest.raises(StreamClosed):
        await q.get_batch()


async def test_reader_wakes_on_put():
    q = EventQueue()
    got = []

    async def reader():
        got.extend(await q.get_batch())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        q.put(ev("A", "1"))
    assert [e.symbol for e in got] == ["A"]


async def test_latest_by_key_hands_over_one_dict_per_commit(autojump_clock):
    box: LatestByKey[str, int] = LatestByKey()
    box.put("a", 1)
    box.put("a", 2)
    box.put("b", 3)
    box.commit()
    assert await box.take() == {"a": 2, "b": 3}
    with trio.move_on_after(0.01) as scope:
        await box.take()
    assert scope.cancelled_caught


async def test_watch_wakes_readers_only_on_change():
    w = Watch({"linear": frozenset()})
    w.set({"linear": frozenset()})
    assert w.version == 0
    async with trio.open_nursery() as nursery:
        seen = []

        async def reader():
            seen.append(await w.wait_newer(0))

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert not seen
        w.set({"linear": frozenset({"BTCUSDT"})})
    assert seen == [{"linear": frozenset({"BTCUSDT"})}]


def note(reason: str):
    from hybrid_actors.notices import StreamState

    return StreamState("degraded", reason, {"private": True}, 0)


async def test_notices_keep_their_place_and_are_never_conflated():
    q = EventQueue(capacity=10)
    q.put(ev("BTC", "101"))
    q.put(note("first"))
    q.put(ev("BTC", "102"))  # after the notice: must not merge into the price before it
    q.put(note("second"))
    q.put(ev("BTC", "103"))
    q.put(ev("BTC", "104"))
    batch = await q.get_batch()
    assert [getattr(e, "reason", None) or str(e.mark_price) for e in batch] == [
        "101", "first", "102", "second", "104"]
    assert q.conflated == 1 and q.lifecycle_queued == 0


async def test_a_chunk_put_at_once_keeps_every_rule_of_single_puts():
    """``put_many`` (how the switch hands over a chunk): conflation, lifecycle and notice
    barriers inside one call, and the reader woken once."""
    q = EventQueue(capacity=10)
    q.put_many([ev("BTC", "101"), ev("BTC", "102"), ev("BTC", "105", source="position"), ev("BTC", "106"),
                note("first"), ev("BTC", "107"), ev("ETH", "1"), ev("BTC", "108")])
    batch = await q.get_batch()
    assert [getattr(e, "reason", None) or f"{e.symbol} {e.mark_price} {e.source}" for e in batch] == [
        "BTC 102 ticker", "BTC 105 position", "BTC 106 ticker", "first", "BTC 108 ticker", "ETH 1 ticker"]
    assert q.conflated == 2 and q.lifecycle_queued == 0
    q.put_many([])
    assert len(q) == 0


async def test_notices_count_as_lifecycle_for_backpressure(autojump_clock):
    q = EventQueue(capacity=1)
    q.put(note("only"))
    assert q.lifecycle_queued == 1
    with trio.move_on_after(0.01) as scope:
        await q.wait_for_space()
    assert scope.cancelled_caught  # full: producers wait
    await q.get_batch()
    await q.wait_for_space()  # room again


async def test_drain_after_close_hands_over_what_is_left_in_order():
    q = EventQueue()
    q.put(ev("A", "1", source="position"))
    q.put(note("last"))
    q.close(RuntimeError("ended"))
    q.put(ev("A", "2", source="position"))  # after close: ignored
    assert [getattr(e, "reason", None) or e.symbol for e in q.drain()] == ["A", "last"]
    assert q.drain() == [] and q.closed
    with pytest.raises(RuntimeError, match="ended"):
        await q.get_batch()


class _Steps(trio.abc.Instrument):
    """Counts how often each task was scheduled (a task waiting on an event is not)."""

    def __init__(self) -> None:
        self.steps: dict[trio.lowlevel.Task, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task] = self.steps.get(task, 0) + 1


async def _returned_within(fn, checkpoints: int = 20) -> bool:
    """Whether ``fn()`` returns while this task passes ``checkpoints`` scheduling points (a
    bound that holds also when ``fn`` spins on an event that stays set; cancelled if not)."""
    done = False

    async def run() -> None:
        nonlocal done
        await fn()
        done = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        for _ in range(checkpoints):
            if done:
                break
            await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    return done


async def test_close_releases_a_producer_waiting_for_room_and_the_ones_after_it():
    """A producer waiting for lifecycle room when the stream ends must not wait for ever (its
    task would keep the stream's shutdown waiting): ``close`` wakes it, and a producer that
    asks for room on a closed, still full queue is not kept waiting either."""
    q = EventQueue(capacity=1)
    q.put(ev("A", "1", source="position"))
    released = trio.Event()

    async def producer():
        await q.wait_for_space()
        released.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert not released.is_set()
        q.close()
        assert await _returned_within(released.wait)  # the producer is done: the nursery ends
    assert q.lifecycle_queued == 1  # still full: nothing was read
    assert await _returned_within(q.wait_for_space)


async def test_a_producer_waiting_for_room_a_second_time_sleeps_instead_of_spinning():
    """The wake-up a drain gives is used once: the next time the queue is full, producers
    wait on a fresh event. Left set, every later wait would return at once and a producer
    facing a full queue would spin, scheduled over and over, instead of sleeping."""
    q = EventQueue(capacity=1)
    q.put(ev("A", "1", source="position"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(q.wait_for_space)
        await trio.testing.wait_all_tasks_blocked()
        await q.get_batch()  # room: the producer is woken and returns
    q.put(ev("A", "2", source="position"))  # full again
    counter = _Steps()
    trio.lowlevel.add_instrument(counter)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(q.wait_for_space, name="producer")
            for _ in range(20):
                await trio.lowlevel.checkpoint()
            steps = [n for task, n in counter.steps.items() if task.name == "producer"]
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert steps == [1]  # scheduled once, to start waiting, and not since
