"""The asyncio side of delivery: one lane per position, drained by one delivery task.

See :class:`Dispatcher`. Everything here runs on the asyncio loop's thread; the trio side
calls :meth:`Dispatcher.accept` from that same thread (a guest-mode trio step is an asyncio
callback; trio-asyncio runs the loop inside trio).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextlib import suppress
from typing import Any, Final

import attrs

from ..notices import StreamEvent
from ..state import Key
from .feed import Feed
from .stats import BridgeStats

__all__ = ["DELIVERY_SLICE_NS", "Dispatcher", "EventHandler"]

log = logging.getLogger("hybrid_actors.bridge")

#: ``async def handler(event_name: str, data: dict) -> None``, or a plain ``def`` (whatever
#: it returns that is not awaitable means "done"); ``data`` is a dict, or the event record
#: itself with ``records=True``: so any return type, and ``data`` as the handler declares it
EventHandler = Callable[[str, Any], object]
#: the delivery task yields to the loop after this long of back-to-back handler calls, so
#: a backlog (or handlers with slow synchronous parts) holds up the bot's other tasks, and
#: trio's, for at most about this long
DELIVERY_SLICE_NS: Final = 2_000_000
#: handler errors logged with a traceback per window; the rest are counted and summarised
_ERROR_LOG_BURST: Final = 10
_ERROR_LOG_WINDOW: Final = 60.0


@attrs.define(eq=False, slots=True)
class _Lane:
    key: Key
    #: (event, perf_counter_ns when the trio side took its batch)
    pending: deque[tuple[StreamEvent, int]] = attrs.Factory(deque)
    #: the task running this lane's handler call that suspended; it drains the lane, then lets go
    owner: asyncio.Task[None] | None = None
    #: waiting in the delivery task's ready queue
    queued: bool = False


@attrs.frozen
class _Suspended:
    """A handler call whose first step yielded ``yielded`` (it is waiting for something)."""

    coro: Coroutine[Any, Any, object]
    context: contextvars.Context
    yielded: Any
    name: str
    data: Any


@types.coroutine
def _resume(call: _Suspended) -> Generator[Any, Any, object]:
    """What ``await call.coro`` does after its first step: hand each yielded future to the
    running task, forward what it sends or throws back (cancellation included), each step
    in the call's own context. The task is the one the first step ran in."""
    coro, run, yielded = call.coro, call.context.run, call.yielded
    send, throw = coro.send, coro.throw
    while True:
        try:
            value = yield yielded
        except GeneratorExit:
            run(coro.close)
            raise
        except BaseException as exc:  # noqa: BLE001 - forwarded into the handler, as ``await`` would
            try:
                yielded = run(throw, exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = run(send, value)
            except StopIteration as stop:
                return stop.value


async def _await_any(awaitable: Awaitable[object]) -> object:
    return await awaitable


@attrs.define(eq=False)
class Dispatcher:
    """Per-position lanes on the asyncio loop, drained by one delivery task.

    The trio side calls :meth:`accept` with each batch (guest mode runs trio's task steps on
    the loop's thread; trio-asyncio runs the loop inside trio: either way the same thread);
    it queues the events in their lanes and wakes the delivery task, one wakeup per batch.

    The delivery task calls the handler for each ready lane *inline*: it creates the call's
    coroutine and runs its first step itself, so a handler that returns without waiting
    costs no task and no extra loop callback. If the first step suspends, the delivery task
    stays with that call (the handler keeps one task from start to end, which
    ``asyncio.timeout`` and ``current_task()`` rely on), owns that lane until it is empty,
    and a new delivery task carries on with the other lanes. So calls for one position are
    never concurrent nor reordered, and a slow position holds up no other. Each call runs
    in a copy of the context ``start()`` was called in, as a task created there would.

    ``capacity`` bounds the lifecycle events waiting in lanes; the trio side checks
    :meth:`room` before taking a batch and, when there is none, waits until
    ``wake_producer`` is called (once half the room is free).
    """

    loop: asyncio.AbstractEventLoop
    handler: EventHandler | None
    capacity: int
    wake_producer: Callable[[], None]
    stats: BridgeStats
    context: contextvars.Context
    #: called once if the delivery task is cancelled from outside (the loop is shutting down)
    on_host_shutdown: Callable[[], None] = lambda: None
    #: hand the handler the frozen records instead of ``as_dict()``
    records: bool = False
    lanes: dict[Key, _Lane] = attrs.Factory(dict)
    #: the ``events()`` iterators, fed beside the lanes
    feeds: list[Feed] = attrs.Factory(list)
    ready: deque[_Lane] = attrs.Factory(deque)
    lifecycle_pending: int = 0
    producer_waiting: bool = False
    closed: bool = False
    #: no more batches will come (the trio side ended by itself): deliver what is queued, then end
    finishing: bool = False
    #: the current delivery task, and the tasks that own a lane
    task: asyncio.Task[None] | None = None
    owners: set[asyncio.Task[None]] = attrs.Factory(set)
    _wakeup: asyncio.Future[None] | None = None
    #: the stamp of the batch that woke the delivery task
    _woken_at: int = 0
    _window_start: float = attrs.field(factory=time.monotonic)
    _logged: int = 0
    _suppressed: int = 0
    #: a handler cancelled the delivery task; its CancelledError is still to come
    _swallow_cancel: bool = False

    def start(self) -> None:
        self.task = self.loop.create_task(self._deliver(), name="hybrid_actors bridge delivery")
        self.task.add_done_callback(self._delivery_ended)

    def _delivery_ended(self, task: asyncio.Task[None]) -> None:
        """Delivery must never just stop while the stream runs.

        Cancelled from outside (``asyncio.run()`` ending, or the bot cancelling every task):
        the host is shutting down; the dispatcher closes and the stream is told to stop;
        nothing is blamed on the handler and no task is left behind. (A handler that cancels
        the delivery task it runs in is caught in :meth:`_deliver`.) Ended by a handler's
        ``KeyboardInterrupt`` or ``SystemExit`` (``sys.exit()``): the same; asyncio has
        already passed it on out of the loop, as it does for any task, and the program is
        ending. Failed (a bug): the lanes left waiting are queued again and a new delivery
        task takes over."""
        if self.closed or (not task.cancelled() and task.exception() is None):
            return  # stopped, or handed the lanes on to a successor (see ``_deliver``)
        if task.cancelled():
            log.info("the bridge's delivery task was cancelled from outside (the loop is shutting down?); "
                     "the stream stops")
            self.close_now()
            self.on_host_shutdown()
            return
        error = task.exception()
        if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: the program's, not a bug of ours
            log.info("an event handler raised %r; the stream stops (asyncio passes it on to the program)", error)
            self.close_now()
            self.on_host_shutdown()
            return
        self.stats.handler_errors += 1
        log.error("the bridge's delivery task failed: %r; restarting it", error)
        for lane in self.lanes.values():
            if lane.pending and lane.owner is None and not lane.queued:
                lane.queued = True
                self.ready.append(lane)
        if self.task is task:
            self.start()

    def room(self) -> int:
        pending = self.lifecycle_pending
        for feed in self.feeds:
            pending = max(pending, feed.lifecycle)
        return self.capacity - pending

    def feed_lifecycle(self) -> int:
        """The most lifecycle events one ``events()`` iterator holds (it counts in :meth:`room`
        like the handler's lanes). Safe from any thread."""
        return max((feed.lifecycle for feed in list(self.feeds)), default=0)  # copied: any thread

    def add_feed(self, feed: Feed) -> None:
        self.feeds.append(feed)

    def remove_feed(self, feed: Feed) -> None:
        with suppress(ValueError):
            self.feeds.remove(feed)
        self.feed_room()

    def feed_room(self) -> None:
        """A feed freed lifecycle room."""
        if self.producer_waiting:
            self._maybe_wake()

    def queued(self) -> int:
        return sum(len(lane.pending) for lane in list(self.lanes.values()))  # copied: any thread

    def accept(self, batch: list[StreamEvent], stamp: int) -> None:
        """Queue a batch in its lanes and wake the delivery task (called by the trio side)."""
        stats = self.stats
        stats.batches += 1
        stats.events_in += len(batch)
        if self.closed:
            stats.dropped_on_stop += len(batch)
            return
        for feed in self.feeds:
            for event in batch:
                feed.put(event)
        if self.handler is None:
            return
        lanes, ready = self.lanes, self.ready
        for event in batch:
            key = event.key
            lane = lanes.get(key)
            if lane is None:
                lane = lanes[key] = _Lane(key)
            pending = lane.pending
            if event.is_lifecycle:
                self.lifecycle_pending += 1
                pending.append((event, stamp))
            elif pending and not pending[-1][0].is_lifecycle:
                pending[-1] = (event, stamp)  # latest price wins, still after the same lifecycle events
                stats.conflated += 1
            else:
                pending.append((event, stamp))
            if lane.owner is None and not lane.queued:
                lane.queued = True
                ready.append(lane)
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            self._woken_at = stamp
            wakeup.set_result(None)

    # --- delivery ----------------------------------------------------------------------------
    def _handler_cancelled_us(self, task: asyncio.Task[None], cancels: int, lane: _Lane) -> None:
        """A handler call, run inline, cancelled the delivery task (``current_task().cancel()``)."""
        while task.cancelling() > cancels:
            task.uncancel()
        self._swallow_cancel = True  # the CancelledError still arrives at our next await
        self.stats.handler_errors += 1
        log.error("an event handler for %s cancelled its task, which is the bridge's shared delivery task: "
                  "the delivery task was cancelled from inside the handler; ignored, delivery goes on", lane.key)

    async def _pause(self, awaitable: Awaitable[object]) -> None:
        """Await in the delivery task; a cancellation a handler caused is dropped, any other raised."""
        try:
            await awaitable
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._swallow_cancel or (task is not None and task.cancelling()):
                raise
            self._swallow_cancel = False

    async def _deliver(self) -> None:
        ready = self.ready
        perf = time.perf_counter_ns
        task = asyncio.current_task()
        assert task is not None
        cancels = task.cancelling()
        turn_ends = perf() + DELIVERY_SLICE_NS
        while True:
            if not ready:
                if self.closed or self.finishing:
                    return
                self._wakeup = self.loop.create_future()
                await self._pause(self._wakeup)
                self._wakeup = None
                if self._woken_at:
                    self.stats.wake_delays.add(perf() - self._woken_at)
                    self._woken_at = 0
                turn_ends = perf() + DELIVERY_SLICE_NS
                continue
            lane = ready.popleft()
            lane.queued = False
            while lane.pending:
                call = self._first_step(lane)
                if task.cancelling() != cancels:
                    self._handler_cancelled_us(task, cancels, lane)
                if call is not None:  # the handler is waiting: stay with it, let a new task deliver the rest
                    lane.owner = task
                    self.owners.add(task)
                    self.start()
                    await self._own(lane, call)
                    return
            self._retire(lane)
            if perf() > turn_ends:  # a long backlog: let the rest of the loop have a turn
                await self._pause(asyncio.sleep(0))
                turn_ends = perf() + DELIVERY_SLICE_NS

    async def _own(self, lane: _Lane, call: _Suspended) -> None:
        """Finish ``call``, then deliver this lane's events until it is empty, in this task."""
        task = asyncio.current_task()
        try:
            await self._finish(call)
            while lane.pending and not self.closed:
                suspended = self._first_step(lane)
                if suspended is not None:
                    await self._finish(suspended)
        finally:
            lane.owner = None
            self.owners.discard(task)
            if lane.pending and not self.closed:  # left early (the handler raised CancelledError itself)
                lane.queued = True
                self.ready.append(lane)
                if self._wakeup is not None and not self._wakeup.done():
                    self._wakeup.set_result(None)
                elif self.finishing and (self.task is None or self.task.done()):
                    self.start()  # the delivery task has ended already; one more takes this lane
            else:
                self._retire(lane)

    def _first_step(self, lane: _Lane) -> _Suspended | None:
        """Take the lane's next event and run the handler until it finishes or first waits."""
        event, stamp = lane.pending.popleft()
        if event.is_lifecycle:
            self.lifecycle_pending -= 1
            if self.producer_waiting:
                self._maybe_wake()
        data = event if self.records else event.as_dict()
        stats = self.stats
        stats.handler_calls += 1
        stats.delays.add(time.perf_counter_ns() - stamp)
        received = getattr(event, "received_ts", None)
        if received is not None:  # from the frame's read (epoch ms): what a blocked loop delays
            stats.frame_delays.add((time.time_ns() // 1_000_000 - received) * 1_000_000)
        context = self.context.copy()
        try:  # apart from the first step's: a plain ``def`` handler's own StopIteration is its bug
            coro = context.run(self._invoke, event.event, data)
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - (its own CancelledError too)
            self._failed(event.event, data, exc)
            return None
        if coro is None:  # a plain ``def`` handler: it has run
            return None
        try:
            yielded = context.run(coro.send, None)
        except StopIteration:  # the coroutine finished without waiting
            return None
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - (its own CancelledError too)
            self._failed(event.event, data, exc)
            return None
        return _Suspended(coro, context, yielded, event.event, data)

    def _invoke(self, name: str, data: Any) -> Coroutine[Any, Any, object] | None:
        """Call the handler; its coroutine, an awaitable's wrapper, or None when it is done already
        (a plain ``def`` handler: whatever it returned that is not awaitable means "done")."""
        handler = self.handler
        if handler is None:
            return None
        result = handler(name, data)
        if type(result) is types.CoroutineType:
            return result
        return _await_any(result) if inspect.isawaitable(result) else None

    async def _finish(self, call: _Suspended) -> None:
        try:
            await _resume(call)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled (stop() past its grace period)
            self._failed(call.name, call.data, exc)
        except Exception as exc:  # noqa: BLE001 - the bot's bug must not end the stream
            self._failed(call.name, call.data, exc)

    def _retire(self, lane: _Lane) -> None:
        if not lane.pending and lane.owner is None and not lane.queued and self.lanes.get(lane.key) is lane:
            del self.lanes[lane.key]

    def _maybe_wake(self) -> None:
        if self.producer_waiting and 2 * self.room() >= self.capacity:
            self.producer_waiting = False
            self.wake_producer()

    def _failed(self, name: str, data: Any, exc: BaseException) -> None:
        self.stats.handler_errors += 1
        now = time.monotonic()
        if now - self._window_start >= _ERROR_LOG_WINDOW:
            if self._suppressed:
                log.error("%d more event handler errors in the last %gs were counted but not logged",
                          self._suppressed, _ERROR_LOG_WINDOW)
            self._window_start, self._logged, self._suppressed = now, 0, 0
        if self._logged < _ERROR_LOG_BURST:
            self._logged += 1
            log.error("event handler raised on %s %s (handler error %d; the stream keeps running)",
                      name, data, self.stats.handler_errors, exc_info=exc)
        else:
            self._suppressed += 1

    # --- shutdown -------------------------------------------------------------------------------
    def finish(self) -> None:
        """No batch will come any more (the trio side has ended without ``stop()``: a failure,
        the loop ending): deliver what is queued (the stream's last notices: its ``stream.state``
        "failed"), then let the delivery task return. A lane's owner finishes its lane first."""
        self.finishing = True
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def close_now(self) -> None:
        """Drop what has not been handed to the handler and let the delivery task return."""
        self.closed = True
        dropped = 0
        for lane in self.lanes.values():
            dropped += len(lane.pending)
            lane.pending.clear()
        self.stats.dropped_on_stop += dropped
        self.ready.clear()
        self.lifecycle_pending = 0
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def close(self, grace: float, spare: set[asyncio.Task[Any]]) -> None:
        """Drop what has not been handed to the handler; give calls in progress ``grace`` seconds.

        ``spare``: tasks waiting in ``stop()`` (a handler that stops the stream) are not awaited.
        """
        self.close_now()
        tasks = [t for t in (self.task, *self.owners) if t is not None and not t.done() and t not in spare]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace)
        if late:
            log.warning("%d event handler call(s) still running %gs after stop(); cancelling them", len(late), grace)
            for task in late:
                task.cancel()
            _, stuck = await asyncio.wait(late, timeout=grace)
            if stuck:
                log.error("%d event handler call(s) ignored cancellation; they are left running", len(stuck))

