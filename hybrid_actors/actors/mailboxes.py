"""Mailboxes with a plan for "full", for the places a plain memory channel is the wrong shape.

- :class:`Watch`        a value whose latest version is all that matters (desired topics):
  readers wait for a newer version; writers never block.
- :class:`LatestByKey`  conflating mailbox for mark prices: the reader takes everything
  written since its last take as one dict (latest per key wins); writers never block, so
  a socket reader never waits for a slow consumer, and one wakeup covers a whole batch.
- :class:`EventQueue`   the stream's output: lifecycle events and stream notices are kept
  in order and never dropped (producers wait for space before taking more input);
  price-only updates of a position conflate while queued (latest price wins) without
  passing its lifecycle events.

Lifecycle and ordinary commands use bounded ``trio.open_memory_channel`` channels.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

import attrs
import trio

from ..notices import NOTICE_KEY, StreamEvent
from ..state import Key

__all__ = ["Watch", "LatestByKey", "EventQueue", "StreamClosed"]

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class StreamClosed(Exception):
    """The event queue was closed; iteration ends."""


@attrs.define(eq=False)
class Watch(Generic[T]):
    value: T
    version: int = 0
    _changed: trio.Event = attrs.field(factory=trio.Event, repr=False)

    def set(self, value: T) -> None:
        if value == self.value:
            return
        self.value = value
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_newer(self, version: int) -> T:
        while self.version <= version:
            await self._changed.wait()
        return self.value


@attrs.define(eq=False)
class LatestByKey(Generic[K, V]):
    _latest: dict[K, V] = attrs.Factory(dict)
    _ready: trio.Event = attrs.Factory(trio.Event)
    puts: int = 0

    def put(self, key: K, value: V) -> None:
        """Record ``value``; call :meth:`commit` once per batch to wake the reader."""
        self._latest[key] = value
        self.puts += 1

    def commit(self) -> None:
        if self._latest:
            self._ready.set()

    async def take(self) -> dict[K, V]:
        await self._ready.wait()
        batch, self._latest, self._ready = self._latest, {}, trio.Event()
        return batch


@attrs.define(eq=False, slots=True)
class _Slot:
    event: StreamEvent
    #: the position key of a price-only update's slot (its entry in ``_price_slots``);
    #: None for a lifecycle event (never merged): ``_pop`` reads this, not the event's properties
    key: Key | None = None


@attrs.define(eq=False)
class EventQueue:
    """Ordered output with per-position conflation of price-only updates.

    ``capacity`` bounds queued lifecycle events: producers call :meth:`wait_for_space`
    before taking their next input, then enqueue synchronously with the state change
    that produced the events, so nothing is reordered between producers.
    """

    capacity: int = 4096
    _queue: deque[_Slot] = attrs.Factory(deque)
    _price_slots: dict[Key, _Slot] = attrs.Factory(dict)
    _lifecycle: int = 0
    _readable: trio.Event = attrs.Factory(trio.Event)
    _space: trio.Event = attrs.Factory(trio.Event)
    _closed: BaseException | None = None
    conflated: int = 0
    delivered: int = 0

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def lifecycle_queued(self) -> int:
        return self._lifecycle

    def put(self, event: StreamEvent) -> None:
        """Enqueue without waiting (see :meth:`wait_for_space`). Notices (``stream.*``) are
        lifecycle, and a barrier: a price update put after one is never merged into a slot
        before it, so the consumer sees everything in the order it happened."""
        self.put_many((event,))

    def put_many(self, events: Iterable[StreamEvent]) -> None:
        """:meth:`put` for each of ``events`` in order (the switch hands over a chunk at once:
        one wake-up of the reader for the chunk)."""
        if self._closed is not None:
            return
        queue, slots = self._queue, self._price_slots
        for event in events:
            if event.is_lifecycle:
                key = event.key
                if key == NOTICE_KEY:
                    slots.clear()
                else:
                    slots.pop(key, None)
                queue.append(_Slot(event))  # key None: lifecycle
                self._lifecycle += 1
            else:  # a price-only update (notices are all lifecycle)
                key = event.key
                slot = slots.get(key)
                if slot is not None:
                    slot.event = event
                    self.conflated += 1
                    continue
                slot = slots[key] = _Slot(event, key)
                queue.append(slot)
        if queue:
            self._readable.set()

    async def wait_for_space(self) -> None:
        while self._lifecycle >= self.capacity and self._closed is None:
            await self._space.wait()

    def close(self, error: BaseException | None = None) -> None:
        """End the stream; readers get ``error`` (or :class:`StreamClosed`) once drained."""
        if self._closed is None:
            self._closed = error if error is not None else StreamClosed("the hybrid stream has stopped")
            self._readable.set()
            self._space.set()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def drain(self) -> list[StreamEvent]:
        """Everything still queued, without waiting (also after :meth:`close`): what a consumer
        that was cancelled by the stream's end has not read yet, its last notice included."""
        return self._pop(len(self._queue))

    async def get_batch(self, max_items: int | None = None) -> list[StreamEvent]:
        """Everything queued (at least one event), in order."""
        while not self._queue:
            if self._closed is not None:
                raise self._closed
            await self._readable.wait()
            if not self._queue and self._closed is None:
                self._readable = trio.Event()
        return self._pop(len(self._queue) if max_items is None else min(max_items, len(self._queue)))

    def _pop(self, count: int) -> list[StreamEvent]:
        """Hand over the first ``count`` queued events: their room freed, producers woken, and
        readers made to wait again once the queue is empty."""
        out: list[StreamEvent] = []
        popleft, slots = self._queue.popleft, self._price_slots
        was_full = self._lifecycle >= self.capacity
        lifecycle = 0
        for _ in range(count):
            slot = popleft()
            key = slot.key
            if key is None:
                lifecycle += 1
            elif slots.get(key) is slot:
                del slots[key]
            out.append(slot.event)
        self._lifecycle -= lifecycle
        if not self._queue and self._closed is None:
            self._readable = trio.Event()
        if was_full and self._lifecycle < self.capacity:  # only a full queue has producers waiting
            self._space.set()
            self._space = trio.Event()
        self.delivered += len(out)
        return out

    async def get(self) -> StreamEvent:
        return (await self.get_batch(1))[0]
