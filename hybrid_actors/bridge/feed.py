"""``async for event in stream.events()``: an asyncio-side iterator beside the handler.

Each :class:`Feed` gets every event the trio side hands over, in order, beside the
handler's lanes. Its buffer follows the lanes' plan: per position, a price-only update
waiting behind no newer lifecycle event is replaced by a newer one (latest price wins);
lifecycle events are never dropped. Backpressure is shared: the trio side stops taking
batches while the lanes or any one feed hold ``capacity`` lifecycle events (see
:meth:`~.lanes.Dispatcher.room`), so a feed nobody reads holds back the handler and the
other feeds too (bounded memory); ``health()`` names it. It ends when the stream does:
drained and ``StopAsyncIteration`` after ``stop()``, the error after a failure.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["Feed"]


@attrs.define(eq=False)
class Feed:
    loop: asyncio.AbstractEventLoop
    records: bool
    #: called when this feed frees lifecycle room (the trio side may be waiting for it)
    on_room: Callable[[], None]
    #: ``[event]`` cells in order; a cell's event may be replaced by a newer price of its key
    _queue: deque[list[Any]] = attrs.Factory(deque)
    _last: dict[Any, list[Any]] = attrs.Factory(dict)
    lifecycle: int = 0
    conflated: int = 0
    closed: bool = False
    error: BaseException | None = None
    _waiter: asyncio.Future[None] | None = None
    #: the ``events()`` generator holding this feed is gone or finished
    detached: bool = False

    def put(self, event: Any) -> None:
        key = event.key
        if not event.is_lifecycle:
            cell = self._last.get(key)
            if cell is not None and not cell[0].is_lifecycle:
                cell[0] = event
                self.conflated += 1
                return
        else:
            self.lifecycle += 1
        cell = [event]
        self._queue.append(cell)
        self._last[key] = cell
        self._wake()

    def close(self, error: BaseException | None = None) -> None:
        self.closed = True
        if error is not None and self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        """The next event (a dict, or the frozen record); StopAsyncIteration/the error at the end."""
        queue = self._queue
        while not queue:
            if self.closed:
                if self.error is not None:
                    raise self.error
                raise StopAsyncIteration
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        cell = queue.popleft()
        event = cell[0]
        if self._last.get(event.key) is cell:
            del self._last[event.key]
        if event.is_lifecycle:
            self.lifecycle -= 1
            self.on_room()
        return event if self.records else event.as_dict()
