"""Embedding the stream in an asyncio program: :class:`BybitHybridStream`.

The one module of the package that imports asyncio (and talks to trio-asyncio). A bot
keeps its asyncio code and its event router; only its start-up changes::

    stream = BybitHybridStream(api_key=key, api_secret=secret, event_handler=on_event)
    await stream.start()        # both sockets up, REST snapshot applied
    ...
    await stream.stop()         # graceful, idempotent

``on_event(event_name, data)`` is awaited with ``"position.update"`` / ``"position.closed"``
and the event's :meth:`~hybrid_actors.state.PositionEvent.as_dict` (Decimals kept).

Two hosts, chosen by :meth:`BybitHybridStream.start` from the running loop
--------------------------------------------------------------------------
- **trio-asyncio** (the program runs under ``trio_asyncio.run(...)``): the asyncio loop is
  itself driven by trio, so the supervised actors run as ordinary trio tasks of that run,
  started with ``loop.trio_as_future`` (trio-asyncio's documented trio-from-asyncio call).
- **trio guest mode** (a stock ``asyncio.run()`` loop): trio runs as a guest of the
  asyncio loop (``trio.lowlevel.start_guest_run``). trio's task steps run as asyncio
  callbacks on the loop's thread; one trio worker thread only waits for trio's I/O. Every
  stream on one loop shares one guest run (:class:`_GuestRun`), which ends when the last
  stream's trio side has returned.

trio-asyncio is never imported here: importing it replaces asyncio's event-loop policy for
the whole process (``asyncio.run`` would then build trio-asyncio's sync loop), so we only
look for it in ``sys.modules``; a program running on a trio-asyncio loop has imported it.

Delivery and ordering
---------------------
The trio side (``_pump``) takes every event queued in the stream as one batch (at most
``MAX_BATCH``) and stamps it with ``perf_counter_ns``. It runs on the loop's thread (a
guest-mode trio step is an asyncio callback; trio-asyncio runs the loop inside trio), so it
queues the batch in the asyncio side's lanes directly and wakes the delivery task: one
loop wakeup per batch, never one per event (a loop callback costs ~4 µs on a stock loop,
~40 µs on trio-asyncio). Each position (``(category, symbol, position_idx)``) has a lane.
The delivery task runs each handler call's first step inline; a call that returns
without waiting costs no task. A call that waits keeps the task it started in (so
``asyncio.timeout`` and ``current_task()`` behave), that task owns the lane until the lane
is empty, and a new delivery task carries on with the other lanes. Hence: calls for one
position are never concurrent and never reordered; a slow handler for one position does
not hold up the others. Each call runs in a copy of the context ``start()`` was called in.

Bounded buffers, and the plan for full
--------------------------------------
- Price-only updates (``source == "ticker"``) conflate per lane: a lane queues at most one
  price update behind its last queued lifecycle event, and a newer price replaces it
  (latest wins, counted as ``bridge_conflated``). So the prices held for a slow handler are
  bounded by the number of positions, whatever the tick rate.
- Lifecycle events (open, resize, close, REST corrections) are never dropped or reordered.
  At most ``config.event_buffer`` of them wait in the lanes; at that point the trio side
  stops taking batches (backpressure) until half the room is free. The stream's own output
  queue then conflates prices and, once its lifecycle buffer is full too, makes the actors
  wait (see :class:`~hybrid_actors.actors.mailboxes.EventQueue`). A lane stuck on a
  handler that never returns therefore stalls everyone only after ``event_buffer``
  lifecycle events for it, and :meth:`BybitHybridStream.health` says so.
- Every hop carries at most ``MAX_BATCH`` events; delivery delays go into a fixed-bucket
  histogram (:class:`DelayHistogram`).

A handler that raises is logged with the event (which holds no credentials), counted
(``stream.handler_errors``, ``health().events["handler_errors"]``) and the stream goes on.

Shutdown
--------
:meth:`BybitHybridStream.stop` cancels the trio side's own cancel scope (through the trio
token, which wakes the run), waits for it to close its sockets and return, waits for the
guest run to finish if this was its last stream, then drops the events not yet handed to
the handler and gives handler calls in progress ``stop_timeout`` seconds before cancelling
them. If the loop shuts down without ``stop()`` (``asyncio.run`` cancels every task), the
host task runs the same trio shutdown before it lets the cancellation through.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import sys
import time
import types
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from contextlib import suppress
from typing import Any, Final, Literal

import attrs
import outcome
import trio

from . import __version__
from .actors.mailboxes import StreamClosed
from .config import Credentials, Endpoints, StreamConfig, mask_key
from .errors import ConfigError, HybridActorsError, StartTimeout
from .health import HealthReport
from .state import Event, Key, PositionUpdate
from .supervisor import HybridStream, open_hybrid_stream

__all__ = ["BybitHybridStream", "BridgeStats", "DelayHistogram", "EventHandler", "SUPPORTED_MODES", "MAX_BATCH"]

log = logging.getLogger(__name__)

#: ``async def handler(event_name: str, data: dict) -> None``
EventHandler = Callable[[str, dict[str, Any]], Awaitable[object]]
Host = Literal["trio-asyncio", "guest"]
State = Literal["new", "starting", "running", "failed", "stopped"]

#: ``mode=None`` means "production" too; the rollout modes of the original plan
#: (canary, parallel, rest) are not part of this version
SUPPORTED_MODES: Final[tuple[str, ...]] = ("production",)
#: most events the trio side takes from the stream per batch
MAX_BATCH: Final = 256
#: the delivery task yields to the loop after this long of back-to-back handler calls, so
#: a backlog (or handlers with slow synchronous parts) holds up the bot's other tasks, and
#: trio's, for at most about this long
DELIVERY_SLICE_NS: Final = 2_000_000
DEFAULT_START_TIMEOUT: Final = 60.0
DEFAULT_STOP_TIMEOUT: Final = 5.0
#: handler errors logged with a traceback per window; the rest are counted and summarised
_ERROR_LOG_BURST: Final = 10
_ERROR_LOG_WINDOW: Final = 60.0
#: options that have their own arguments
_RESERVED: Final = {"credentials": "api_key and api_secret", "endpoints": "testnet, stream_url and rest_url",
                    "categories": "categories"}


# --- measurements ----------------------------------------------------------------------------

@attrs.define(eq=False)
class DelayHistogram:
    """Delays in bounded buckets: 1 µs below 1 ms, 10 µs below 10 ms, 1 ms above (capped at
    60 s), so at most ~2,900 buckets whatever the run length; ``max`` is exact."""

    _counts: dict[int, int] = attrs.Factory(dict)
    count: int = 0
    max_us: int = 0

    def add(self, delay_ns: int) -> None:
        us = delay_ns // 1000
        if us > self.max_us:
            self.max_us = us
        if us >= 1_000:
            us = us - us % 10 if us < 10_000 else min(us - us % 1_000, 60_000_000)
        counts = self._counts
        counts[us] = counts.get(us, 0) + 1
        self.count += 1

    def quantile_ms(self, q: float) -> float | None:
        """The smallest bucket at or below which ``q`` of the samples fall, in ms."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for us in sorted(self._counts):
            seen += self._counts[us]
            if seen >= rank:
                return us / 1000
        return self.max_us / 1000  # pragma: no cover - rank <= count

    def reset(self) -> None:
        self._counts.clear()
        self.count = 0
        self.max_us = 0

    def summary(self) -> dict[str, Any]:
        return {"samples": self.count, "p50_ms": self.quantile_ms(0.50), "p99_ms": self.quantile_ms(0.99),
                "max_ms": self.max_us / 1000 if self.count else None}


@attrs.define(eq=False)
class BridgeStats:
    """What the bridge did. ``delays``: from the trio side taking a batch to the handler call."""

    batches: int = 0
    events_in: int = 0
    handler_calls: int = 0
    handler_errors: int = 0
    conflated: int = 0
    dropped_on_stop: int = 0
    delays: DelayHistogram = attrs.Factory(DelayHistogram)
    #: the part of ``delays`` spent before the idle delivery task got the thread back (per
    #: wakeup): time the loop's thread was busy elsewhere (trio's own steps, other callbacks)
    wake_delays: DelayHistogram = attrs.Factory(DelayHistogram)

    def reset_delays(self) -> None:
        self.delays.reset()
        self.wake_delays.reset()

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "events_in": self.events_in, "handler_calls": self.handler_calls,
                "handler_errors": self.handler_errors, "conflated": self.conflated,
                "dropped_on_stop": self.dropped_on_stop, "delivery_delay": self.delays.summary(),
                "wake_delay": self.wake_delays.summary()}


# --- the asyncio side: one lane per position ---------------------------------------------------

@attrs.define(eq=False, slots=True)
class _Lane:
    key: Key
    #: (event, perf_counter_ns when the trio side took its batch)
    pending: deque[tuple[Event, int]] = attrs.Factory(deque)
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
    data: dict[str, Any]


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
class _Dispatcher:
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
    handler: EventHandler
    capacity: int
    wake_producer: Callable[[], None]
    stats: BridgeStats
    context: contextvars.Context
    lanes: dict[Key, _Lane] = attrs.Factory(dict)
    ready: deque[_Lane] = attrs.Factory(deque)
    lifecycle_pending: int = 0
    producer_waiting: bool = False
    closed: bool = False
    #: the current delivery task, and the tasks that own a lane
    task: asyncio.Task[None] | None = None
    owners: set[asyncio.Task[None]] = attrs.Factory(set)
    _wakeup: asyncio.Future[None] | None = None
    #: the stamp of the batch that woke the delivery task
    _woken_at: int = 0
    _window_start: float = attrs.field(factory=time.monotonic)
    _logged: int = 0
    _suppressed: int = 0

    def start(self) -> None:
        self.task = self.loop.create_task(self._deliver(), name="hybrid_actors bridge delivery")
        self.task.add_done_callback(self._delivery_ended)

    def _delivery_ended(self, task: asyncio.Task[None]) -> None:
        """Delivery must never just stop. A handler runs its first step inside the delivery
        task, so it can cancel it (``asyncio.current_task().cancel()``) or worse; then the
        lanes left waiting are queued again and a new delivery task takes over."""
        if self.closed or (not task.cancelled() and task.exception() is None):
            return  # stopped, or handed the lanes on to a successor (see ``_deliver``)
        reason = "was cancelled" if task.cancelled() else f"failed: {task.exception()!r}"
        self.stats.handler_errors += 1
        log.error("the bridge's delivery task %s (from inside an event handler?); restarting it", reason)
        for lane in self.lanes.values():
            if lane.pending and lane.owner is None and not lane.queued:
                lane.queued = True
                self.ready.append(lane)
        if self.task is task:
            self.start()

    def room(self) -> int:
        return self.capacity - self.lifecycle_pending

    def queued(self) -> int:
        return sum(len(lane.pending) for lane in self.lanes.values())

    def accept(self, batch: list[Event], stamp: int) -> None:
        """Queue a batch in its lanes and wake the delivery task (called by the trio side)."""
        stats = self.stats
        stats.batches += 1
        stats.events_in += len(batch)
        if self.closed:
            stats.dropped_on_stop += len(batch)
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
    async def _deliver(self) -> None:
        ready = self.ready
        perf = time.perf_counter_ns
        turn_ends = perf() + DELIVERY_SLICE_NS
        while True:
            if not ready:
                if self.closed:
                    return
                self._wakeup = self.loop.create_future()
                await self._wakeup
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
                if call is not None:  # the handler is waiting: stay with it, let a new task deliver the rest
                    task = asyncio.current_task()
                    assert task is not None
                    lane.owner = task
                    self.owners.add(task)
                    self.start()
                    await self._own(lane, call)
                    return
            self._retire(lane)
            if perf() > turn_ends:  # a long backlog: let the rest of the loop have a turn
                await asyncio.sleep(0)
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
            self.owners.discard(task)  # type: ignore[arg-type]
            if lane.pending and not self.closed:  # left early (the handler raised CancelledError itself)
                lane.queued = True
                self.ready.append(lane)
                if self._wakeup is not None and not self._wakeup.done():
                    self._wakeup.set_result(None)
            else:
                self._retire(lane)

    def _first_step(self, lane: _Lane) -> _Suspended | None:
        """Take the lane's next event and run the handler until it finishes or first waits."""
        event, stamp = lane.pending.popleft()
        if event.is_lifecycle:
            self.lifecycle_pending -= 1
            if self.producer_waiting:
                self._maybe_wake()
        data = event.as_dict()
        stats = self.stats
        stats.handler_calls += 1
        stats.delays.add(time.perf_counter_ns() - stamp)
        context = self.context.copy()
        try:
            coro = context.run(self._invoke, event.name, data)
            yielded = context.run(coro.send, None)
        except StopIteration:
            return None
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - (its own CancelledError too)
            self._failed(event.name, data, exc)
            return None
        return _Suspended(coro, context, yielded, event.name, data)

    def _invoke(self, name: str, data: dict[str, Any]) -> Coroutine[Any, Any, object]:
        result = self.handler(name, data)
        return result if type(result) is types.CoroutineType else _await_any(result)  # type: ignore[arg-type]

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

    def _failed(self, name: str, data: dict[str, Any], exc: BaseException) -> None:
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
    async def close(self, grace: float, spare: set[asyncio.Task[Any]]) -> None:
        """Drop what has not been handed to the handler; give calls in progress ``grace`` seconds.

        ``spare``: tasks waiting in ``stop()`` (a handler that stops the stream) are not awaited.
        """
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


# --- hosting trio inside the asyncio loop --------------------------------------------------------

def _trio_asyncio_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Is ``loop`` a trio-asyncio loop (``trio_asyncio.run``/``open_loop``, or its sync loop)?"""
    if "trio_asyncio" not in sys.modules:
        return False  # never import it on the program's behalf: that changes asyncio's policy
    import trio_asyncio

    return isinstance(loop, trio_asyncio.BaseTrioEventLoop)


_GUEST_RUNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _GuestRun] = weakref.WeakKeyDictionary()


@attrs.define(eq=False)
class _GuestRun:
    """One trio guest run per asyncio loop, shared by the streams on it.

    ``submit(fn)`` runs ``fn`` as a task of the run and returns an asyncio future of its
    outcome. When the last submitted task returns the run ends (``closing``, then ``done``);
    the next stream then starts a new run, after waiting for this one to finish.
    """

    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]
    token: trio.lowlevel.TrioToken | None = None
    nursery: trio.Nursery | None = None
    users: int = 0
    closing: bool = False
    _backlog: list[tuple[Callable[[], Awaitable[None]], asyncio.Future[None]]] = attrs.Factory(list)
    _idle: trio.Event | None = None
    _futures: set[asyncio.Future[None]] = attrs.Factory(set)

    @classmethod
    async def acquire(cls, loop: asyncio.AbstractEventLoop) -> _GuestRun:
        while True:
            run = _GUEST_RUNS.get(loop)
            if run is None:
                run = cls(loop, loop.create_future())
                run._start()
                _GUEST_RUNS[loop] = run
                return run
            if not run.closing:
                return run
            await asyncio.shield(run.done)

    def _start(self) -> None:
        try:
            trio.lowlevel.start_guest_run(
                self._main, run_sync_soon_threadsafe=self.loop.call_soon_threadsafe,
                run_sync_soon_not_threadsafe=self.loop.call_soon, done_callback=self._finished,
                host_uses_signal_set_wakeup_fd=True)
        except RuntimeError as exc:
            raise HybridActorsError(
                "cannot run trio as a guest of this asyncio loop: a trio run is already active in this "
                "thread; run the bot under trio_asyncio.run(...) instead") from exc

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._idle = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            for fn, future in self._backlog:
                nursery.start_soon(self._job, fn, future)
            self._backlog.clear()
            await self._idle.wait()

    def submit(self, fn: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self.loop.create_future()
        self.users += 1
        self._futures.add(future)
        if self.nursery is None or self.token is None:
            self._backlog.append((fn, future))
        else:
            self.token.run_sync_soon(self.nursery.start_soon, self._job, fn, future)
        return future

    async def _job(self, fn: Callable[[], Awaitable[None]], future: asyncio.Future[None]) -> None:
        try:
            await fn()
        except BaseException as exc:
            if not future.done():
                if isinstance(exc, trio.Cancelled):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise  # Cancelled, KeyboardInterrupt: the run's business
        else:
            if not future.done():
                future.set_result(None)
        finally:
            self._futures.discard(future)
            self.users -= 1
            if self.users == 0:
                self.closing = True
                assert self._idle is not None
                self._idle.set()

    def _finished(self, result: outcome.Outcome[None]) -> None:
        """trio's ``done_callback``: the run is over (its worker thread is idle again)."""
        self.closing = True
        if _GUEST_RUNS.get(self.loop) is self:
            del _GUEST_RUNS[self.loop]
        if isinstance(result, outcome.Error):
            log.error("the trio guest run ended with an error", exc_info=result.error)
        for future in self._futures:
            if not future.done():
                future.set_exception(HybridActorsError("the trio guest run ended before the stream's trio side"))
        self._futures.clear()
        if not self.done.done():
            self.done.set_result(None)


# --- the public class ------------------------------------------------------------------------------

class BybitHybridStream:
    """Live Bybit positions with live mark prices, delivered to an asyncio event handler.

    ``BybitHybridStream(api_key, api_secret, event_handler, testnet=False, *,
    categories=("linear",), stream_url=None, rest_url=None, mode=None, **config)``

    - ``event_handler(event_name, data)``: an async callable; ``event_name`` is
      ``"position.update"`` or ``"position.closed"``, ``data`` has ``symbol``, ``category``,
      ``side``, ``size``, ``entry_price``, ``mark_price``, ``unrealized_pnl``,
      ``position_idx``, ``source``, ``exchange_ts``, ``received_ts`` (Decimals for numbers).
    - ``stream_url`` / ``rest_url``: base URLs overriding mainnet/testnet (e.g. the simulator).
    - ``mode``: ``None`` or ``"production"``.
    - ``start_timeout``: seconds :meth:`start` waits for the exchange before raising
      :class:`~hybrid_actors.errors.StartTimeout` (None: keep retrying); ``stop_timeout``:
      grace :meth:`stop` gives handler calls in progress.
    - ``**config``: other :class:`~hybrid_actors.config.StreamConfig` fields, e.g.
      ``heartbeat_interval=20``, ``subscriptions=SubscriptionPolicy(...)``, ``event_buffer``.

    Bad arguments raise :class:`~hybrid_actors.errors.ConfigError` here, at construction.
    """

    def __init__(self, api_key: str, api_secret: str, event_handler: EventHandler, testnet: bool = False, *,
                 categories: str | Iterable[str] = ("linear",), stream_url: str | None = None,
                 rest_url: str | None = None, mode: str | None = None,
                 start_timeout: float | None = DEFAULT_START_TIMEOUT, stop_timeout: float = DEFAULT_STOP_TIMEOUT,
                 **config: Any) -> None:
        if mode is not None and mode not in SUPPORTED_MODES:
            raise ConfigError(f"mode {mode!r} is not supported: hybrid_actors {__version__} supports mode=None or "
                              f"{', '.join(repr(m) for m in SUPPORTED_MODES)} (the hybrid stream feeds the bot); "
                              "the canary/parallel/rest rollout modes are not part of this version")
        for name, value in (("api_key", api_key), ("api_secret", api_secret)):
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name} must be a non-empty string")
        if not callable(event_handler):
            raise ConfigError("event_handler must be an async callable handler(event_name, data), "
                              f"got {type(event_handler).__name__}")
        if not isinstance(testnet, bool):
            raise ConfigError(f"testnet must be True or False, got {testnet!r}")
        _check_seconds("start_timeout", start_timeout, optional=True)
        _check_seconds("stop_timeout", stop_timeout, optional=False)
        known = {field.name for field in attrs.fields(StreamConfig)}
        for name in config:
            if name in _RESERVED:
                raise ConfigError(f"pass {_RESERVED[name]} as arguments of BybitHybridStream, not {name}=")
            if name not in known:
                options = ", ".join(sorted(known - set(_RESERVED)))
                raise ConfigError(f"unknown option {name}=; BybitHybridStream takes these StreamConfig options: "
                                  f"{options}")
        endpoints = Endpoints.choose(testnet=testnet, stream_url=stream_url, rest_url=rest_url)
        self._config = StreamConfig(credentials=Credentials(api_key, api_secret), endpoints=endpoints,
                                    categories=categories, **config)
        self._handler = event_handler
        self._mode = mode or "production"
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._stats = BridgeStats()
        self._state: State = "new"
        self._host: Host | None = None
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._context: contextvars.Context | None = None
        self._dispatcher: _Dispatcher | None = None
        self._started: asyncio.Future[BaseException | None] | None = None
        self._closed: asyncio.Event | None = None
        self._host_task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._stop_waiters: set[asyncio.Task[Any]] = set()
        self._guest: _GuestRun | None = None
        # trio side (set and read on the loop's thread)
        self._stream: HybridStream | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._trio_scope: trio.CancelScope | None = None
        self._stop_requested = False
        self._room: trio.Event | None = None

    def __repr__(self) -> str:
        return (f"<BybitHybridStream key={mask_key(self._config.credentials.api_key)} "
                f"categories={','.join(self._config.categories)} host={self._host or '-'} state={self._state}>")

    # --- read-only facts ----------------------------------------------------------------------
    @property
    def config(self) -> StreamConfig:
        return self._config

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def host(self) -> Host | None:
        """``"trio-asyncio"`` or ``"guest"`` once started."""
        return self._host

    @property
    def state(self) -> State:
        return self._state

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def error(self) -> BaseException | None:
        """The error that ended the stream after it had started (None while fine or stopped by us)."""
        return self._error

    @property
    def stats(self) -> BridgeStats:
        return self._stats

    @property
    def handler_errors(self) -> int:
        return self._stats.handler_errors

    @property
    def metrics_url(self) -> str | None:
        """``http://host:port`` of ``/metrics`` and ``/health`` while running with ``metrics_port=``."""
        stream = self._stream
        return stream.metrics_url if stream is not None else None

    # --- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the stream; return once both sockets are up and the REST snapshot is applied.

        Raises :class:`~hybrid_actors.errors.AuthRejected` for bad keys (the message shows
        the key's first four characters, never the secret), :class:`StartTimeout` when the
        exchange cannot be reached within ``start_timeout``, or the error that ended the
        start-up. Nothing of ours is left running when it raises.
        """
        if self._state != "new":
            raise RuntimeError(f"start() was already called (the stream is {self._state}); "
                               "create a new BybitHybridStream to start again")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._context = contextvars.copy_context()
        self._host = "trio-asyncio" if _trio_asyncio_loop(loop) else "guest"
        self._state = "starting"
        self._started = loop.create_future()
        self._closed = asyncio.Event()
        self._dispatcher = _Dispatcher(loop, self._handler, self._config.event_buffer, self._wake_pump, self._stats,
                                       self._context)
        self._dispatcher.start()
        self._host_task = loop.create_task(self._host_main(), name=f"hybrid_actors bridge host ({self._host})")
        try:
            failure = await asyncio.shield(self._started)
        except asyncio.CancelledError:
            await self.stop()
            raise
        if failure is not None:
            await self.stop()  # the trio side is down already; end the delivery task too
            raise failure

    async def stop(self) -> None:
        """Stop the stream: close both sockets, end our trio tasks (and the guest run if this
        was its last stream), drop undelivered events and let handler calls in progress
        finish within ``stop_timeout``. Idempotent; safe to call from a handler."""
        if self._state == "new":
            self._state = "stopped"
            return
        if self._loop is None:
            return
        if self._stopping is None:
            self._stopping = self._loop.create_task(self._stop(), name="hybrid_actors bridge stop")
        caller = asyncio.current_task()
        if caller is not None:
            self._stop_waiters.add(caller)
        try:
            await asyncio.shield(self._stopping)
        finally:
            self._stop_waiters.discard(caller)  # type: ignore[arg-type]

    async def _stop(self) -> None:
        self._request_trio_stop()
        if self._host_task is not None:
            await asyncio.wait([self._host_task])
        if self._dispatcher is not None:
            await self._dispatcher.close(self._stop_timeout, self._stop_waiters)
        self._state = "stopped"

    async def wait_closed(self) -> None:
        """Wait until the stream has ended (``stop()`` or a fatal error); raise that error, if any."""
        if self._closed is None:
            raise RuntimeError("the stream was never started")
        await self._closed.wait()
        if self._error is not None:
            raise self._error

    async def __aenter__(self) -> BybitHybridStream:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> None:
        await self.stop()
        if exc_type is None and self._error is not None:
            raise self._error

    # --- views ----------------------------------------------------------------------------------
    def positions(self) -> tuple[PositionUpdate, ...]:
        """The open positions with their latest mark and PnL (empty unless running)."""
        stream = self._stream
        return stream.positions() if stream is not None else ()

    def health(self) -> HealthReport:
        """The stream's :class:`HealthReport`; ``events`` also holds the bridge's counters
        (``handler_calls``, ``handler_errors``, ``bridge_conflated``, ``bridge_queued``,
        ``delivery_delay``, ``wake_delay``)."""
        stream = self._stream
        report = None
        if stream is not None:
            try:
                report = stream.health()
            except RuntimeError:  # the trio run is gone (it is ending)
                report = None
        if report is None:
            problem = {"new": "the stream has not been started", "starting": "the stream is starting",
                       "running": "the stream's trio side has ended"}.get(self._state)
            if problem is None:
                problem = f"the stream failed: {self._error}" if self._error is not None else "the stream is stopped"
            report = HealthReport("down", {}, {}, {}, {}, 0, (problem,))
        stats = self._stats
        dispatcher = self._dispatcher
        events = {**report.events, "handler_calls": stats.handler_calls, "handler_errors": stats.handler_errors,
                  "bridge_conflated": stats.conflated, "bridge_batches": stats.batches,
                  "bridge_queued": dispatcher.queued() if dispatcher is not None else 0,
                  "bridge_lifecycle_queued": dispatcher.lifecycle_pending if dispatcher is not None else 0,
                  "delivery_delay": stats.delays.summary(), "wake_delay": stats.wake_delays.summary()}
        status, problems = report.status, report.problems
        if dispatcher is not None and not dispatcher.closed and dispatcher.room() <= 0:
            problems = (*problems, f"the event handler is behind: {dispatcher.lifecycle_pending} lifecycle events "
                                   "wait for it and the stream is holding back new ones")
            status = "degraded" if status == "ok" else status
        return attrs.evolve(report, status=status, events=events, problems=problems)

    # --- asyncio side of the host ----------------------------------------------------------------
    async def _host_main(self) -> None:
        """Own the trio side's lifetime: start it, wait for it, and stop it first if we are cancelled."""
        loop = self._loop
        assert loop is not None and self._started is not None and self._closed is not None
        cancelled = False
        error: BaseException | None = None
        try:
            if self._host == "trio-asyncio":
                runner = loop.trio_as_future(self._trio_main)  # type: ignore[attr-defined]
            else:
                self._guest = await _GuestRun.acquire(loop)
                runner = self._guest.submit(self._trio_main)
            while not runner.done():
                try:
                    await asyncio.shield(runner)
                except asyncio.CancelledError:
                    if not runner.done():
                        cancelled = True  # e.g. asyncio.run() ending without stop(): stop trio first
                        self._request_trio_stop()
            if runner.cancelled():  # trio-asyncio's loop is closing and cancelled our trio task
                if not self._stop_requested:
                    log.warning("the trio-asyncio loop ended the stream; call stop() before the loop ends")
                    self._stop_requested = True
            else:
                error = runner.exception()
            await self._release_guest()
        except asyncio.CancelledError:
            cancelled = True
            self._request_trio_stop()
        except Exception as exc:  # noqa: BLE001 - e.g. a guest run that could not start
            error = exc
        self._stream = None
        if not self._started.done():
            self._state = "stopped"
            self._started.set_result(error if error is not None else HybridActorsError(
                "the stream was stopped before it finished starting"))
        elif error is not None and not self._stop_requested:
            log.error("the hybrid stream has ended: %s: %s", type(error).__name__, error, exc_info=error)
            self._error = error
            self._state = "failed"
        elif self._stopping is None:
            self._state = "stopped"  # the loop is ending without stop(): the trio side is down all the same
        self._closed.set()
        if cancelled:
            raise asyncio.CancelledError

    async def _release_guest(self) -> None:
        guest = self._guest
        if guest is None or not guest.closing:
            return  # another stream still uses the run
        cancelled = False
        while not guest.done.done():
            try:
                await asyncio.shield(guest.done)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    def _on_started(self, stream: HybridStream) -> None:
        if self._started is None or self._started.done() or self._stop_requested:
            return
        self._stream = stream
        stats = self._stats
        stream.hub.health.handler_errors_source = lambda: stats.handler_errors  # for /metrics
        self._state = "running"
        self._started.set_result(None)

    def _request_trio_stop(self) -> None:
        self._stop_requested = True
        token, scope = self._token, self._trio_scope
        if token is not None and scope is not None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(scope.cancel)

    def _wake_pump(self) -> None:
        room, token = self._room, self._token
        if room is not None and token is not None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(room.set)

    # --- trio side ----------------------------------------------------------------------------------
    async def _trio_main(self) -> None:
        loop, context = self._loop, self._context
        assert loop is not None and context is not None
        self._token = trio.lowlevel.current_trio_token()
        timeout = self._start_timeout
        with trio.CancelScope() as scope:
            self._trio_scope = scope
            if self._stop_requested:
                scope.cancel()
            with trio.CancelScope(deadline=math.inf if timeout is None else trio.current_time() + timeout) as starting:
                async with open_hybrid_stream(self._config) as stream:
                    starting.deadline = math.inf
                    loop.call_soon(self._on_started, stream, context=context)
                    await self._pump(stream)
            if starting.cancelled_caught:
                endpoints = self._config.endpoints
                public = ", ".join(endpoints.public_url(c) for c in self._config.categories)
                raise StartTimeout(
                    f"the stream did not start within {timeout:g}s: could not open {endpoints.ws_private_url} and "
                    f"{public} and load positions from {endpoints.rest_url}; check the network and the URLs "
                    "(the warnings of hybrid_actors.supervisor above say what failed)")

    async def _pump(self, stream: HybridStream) -> None:
        """Move events to the loop: a batch at a time, and only while the lanes have room.

        ``accept`` runs right here: this trio task runs on the loop's thread (as a guest-mode
        callback, or inside trio-asyncio's loop), so queueing a batch costs no loop callback;
        waking the delivery task is the one hop per batch.
        """
        dispatcher = self._dispatcher
        assert dispatcher is not None
        accept, perf = dispatcher.accept, time.perf_counter_ns
        try:
            while True:
                room = dispatcher.room()
                if room <= 0:
                    self._room = trio.Event()
                    dispatcher.producer_waiting = True
                    await self._room.wait()
                    continue
                batch = await stream.batches(min(room, MAX_BATCH))
                accept(batch, perf())
        except StreamClosed:
            return


def _check_seconds(name: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds{' or None' if optional else ''}, "
                          f"got {value!r}")
