"""The public class: :class:`BybitHybridStream`, the stream's asyncio face.

It owns the stream's life cycle (start, stop, the loop ending without stop), its
configuration, the read-only views (``health()``, ``positions()``, ``state``) and the trio
side (``_trio_main`` / ``_pump``), which it runs on one of the two hosts of
:mod:`.hosts` and which feeds the lanes of :mod:`.lanes`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import suppress
from typing import Any, Final, Literal

import attrs
import trio

from .. import __version__
from ..actors.hub import Hub
from ..actors.mailboxes import StreamClosed
from ..config import Credentials, Endpoints, StreamConfig, mask_key
from ..errors import ConfigError, HybridActorsError, StartTimeout
from ..health import HealthReport
from ..rollout import MODES, resolve_mode
from ..state import PositionUpdate
from ..supervisor import HybridStream, open_hybrid_stream
from .feed import Feed
from .hosts import GuestRun, Host, choose_host, run_on_trio_asyncio
from .lanes import Dispatcher, EventHandler
from .stalls import DEFAULT_STALL_THRESHOLD, LoopWatch
from .stats import BridgeStats

__all__ = ["BybitHybridStream", "MAX_BATCH", "SUPPORTED_MODES", "State"]

log = logging.getLogger("hybrid_actors.bridge")

#: ``new`` -> ``starting`` -> ``running`` -> ``stopping`` (``stop()`` is under way: the trio
#: side is being or has been shut down, handler calls in progress may still finish) ->
#: ``stopped``; ``failed`` when the stream ended by itself with an error (``error`` holds it;
#: ``stop()`` then takes it to ``stopped``, keeping ``error``). Only ``running`` is up.
State = Literal["new", "starting", "running", "stopping", "failed", "stopped"]

#: the rollout modes (see :mod:`hybrid_actors.rollout`); ``mode=None`` means ``HYBRID_MODE``
#: from the environment, else production
SUPPORTED_MODES: Final[tuple[str, ...]] = MODES
#: most events the trio side takes from the stream per batch
MAX_BATCH: Final = 256
DEFAULT_START_TIMEOUT: Final = 60.0
DEFAULT_STOP_TIMEOUT: Final = 5.0
#: options that have their own arguments
_RESERVED: Final = {"credentials": "api_key and api_secret", "categories": "categories"}


class BybitHybridStream:
    """Live Bybit positions with live mark prices, delivered to an asyncio event handler.

    ``BybitHybridStream(api_key, api_secret, event_handler, testnet=False, *, demo=False,
    endpoints=None, categories=("linear",), stream_url=None, rest_url=None, mode=None,
    records=False, stall_threshold=0.25, **config)``

    - ``event_handler(event_name, data)``: an ``async def`` or a plain ``def`` (a result that
      is not awaitable means "done"), or None to read :meth:`events` only; ``event_name`` is
      ``"position.update"`` or ``"position.closed"``, ``data`` has ``symbol``, ``category``,
      ``side``, ``size``, ``entry_price``, ``mark_price``, ``unrealized_pnl``,
      ``position_idx``, ``source``, ``exchange_ts``, ``received_ts`` (Decimals for numbers).
    - ``records=True``: ``data`` is the frozen record itself
      (:class:`~hybrid_actors.state.PositionUpdate` / ``PositionClosed``), not a dict.
    - ``testnet=True``: Bybit testnet. ``demo=True``: Bybit demo trading (private stream on
      ``stream-demo.bybit.com``, public streams from mainnet, REST on ``api-demo.bybit.com``).
    - ``stream_url`` / ``rest_url``: base URLs overriding those (e.g. the simulator);
      ``endpoints``: an explicit :class:`~hybrid_actors.config.Endpoints` instead of all four.
    - ``mode``: ``"production"`` (the hybrid stream feeds the handler), ``"canary"`` (REST
      polling feeds it, the hybrid stream runs beside it monitor-only), ``"parallel"``
      (canary plus a REST/WS price comparator) or ``"rest"`` (REST polling only); None:
      the ``HYBRID_MODE`` environment variable, else production. ``rollout=RolloutPolicy(...)``
      sets cutover, stale-price fallback, rollback triggers and auto-return.
    - ``stall_threshold``: seconds the loop's thread may be blocked before it counts (and
      is logged) as a stall; see :mod:`.stalls`.
    - ``start_timeout``: seconds :meth:`start` waits for the exchange before raising
      :class:`~hybrid_actors.errors.StartTimeout` (None: keep retrying); ``stop_timeout``:
      grace :meth:`stop` gives handler calls in progress.
    - ``**config``: other :class:`~hybrid_actors.config.StreamConfig` fields, e.g.
      ``heartbeat_interval=20``, ``subscriptions=SubscriptionPolicy(...)``, ``event_buffer``.

    Bad arguments raise :class:`~hybrid_actors.errors.ConfigError` here, at construction.
    """

    def __init__(self, api_key: str, api_secret: str, event_handler: EventHandler | None, testnet: bool = False,
                 *, demo: bool = False, endpoints: Endpoints | None = None,
                 categories: str | Iterable[str] = ("linear",), stream_url: str | None = None,
                 rest_url: str | None = None, mode: str | None = None, records: bool = False,
                 start_timeout: float | None = DEFAULT_START_TIMEOUT, stop_timeout: float = DEFAULT_STOP_TIMEOUT,
                 stall_threshold: float = DEFAULT_STALL_THRESHOLD, **config: Any) -> None:
        resolved_mode = resolve_mode(mode, os.environ)  # a bad value is a ConfigError here
        for name, value in (("api_key", api_key), ("api_secret", api_secret)):
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name} must be a non-empty string")
        if event_handler is not None and not callable(event_handler):
            raise ConfigError("event_handler must be a callable handler(event_name, data) (async def or def), "
                              f"or None to read stream.events() only; got {type(event_handler).__name__}")
        for name, flag in (("testnet", testnet), ("demo", demo), ("records", records)):
            if not isinstance(flag, bool):
                raise ConfigError(f"{name} must be True or False, got {flag!r}")
        _check_seconds("start_timeout", start_timeout, optional=True)
        _check_seconds("stop_timeout", stop_timeout, optional=False)
        _check_seconds("stall_threshold", stall_threshold, optional=False)
        known = {field.name for field in attrs.fields(StreamConfig)}
        for name in config:
            if name in _RESERVED:
                raise ConfigError(f"pass {_RESERVED[name]} as arguments of BybitHybridStream, not {name}=")
            if name not in known:
                options = ", ".join(sorted(known - set(_RESERVED)))
                raise ConfigError(f"unknown option {name}=; BybitHybridStream takes these StreamConfig options: "
                                  f"{options}")
        if endpoints is not None:
            if not isinstance(endpoints, Endpoints):
                raise ConfigError(f"endpoints must be a hybrid_actors.Endpoints, got {type(endpoints).__name__}")
            given = [name for name, value in (("testnet", testnet), ("demo", demo), ("stream_url", stream_url),
                                              ("rest_url", rest_url)) if value not in (False, None)]
            if given:
                raise ConfigError(f"endpoints= already says where to connect; drop {' and '.join(given)}")
        else:
            endpoints = Endpoints.choose(testnet=testnet, demo=demo, stream_url=stream_url, rest_url=rest_url)
        self._config = StreamConfig(credentials=Credentials(api_key, api_secret), endpoints=endpoints,
                                    categories=categories, mode=resolved_mode, **config)
        self._handler = event_handler
        self._records = records
        self._stall_threshold = stall_threshold
        self._watch: LoopWatch | None = None
        self._feeds: set[Feed] = set()
        self._mode = resolved_mode
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._stats = BridgeStats()
        self._state: State = "new"
        self._host: Host | None = None
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._context: contextvars.Context | None = None
        self._dispatcher: Dispatcher | None = None
        self._started: asyncio.Future[BaseException | None] | None = None
        self._closed: asyncio.Event | None = None
        self._host_task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._stop_waiters: set[asyncio.Task[Any]] = set()
        self._guest: GuestRun | None = None
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
        """Where the stream is in its life (see :data:`State`). Safe from any thread: one
        attribute read; it says ``stopping`` from the moment ``stop()`` is called."""
        return self._state

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def error(self) -> BaseException | None:
        """The error that ended the stream after it had started, also one raised on the trio
        side while ``stop()`` was shutting it down (logged with its traceback either way);
        None while fine or when stopped cleanly."""
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
        """Start the stream; return once the private socket and the public one of
        every category are up and the REST snapshot is applied.

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
        self._host = choose_host(loop)
        self._state = "starting"
        self._started = loop.create_future()
        self._closed = asyncio.Event()
        self._dispatcher = Dispatcher(loop, self._handler, self._config.event_buffer, self._wake_pump, self._stats,
                                      self._context, on_host_shutdown=self._host_shutting_down, records=self._records)
        self._dispatcher.start()
        self._watch = LoopWatch(loop, self._stall_threshold, on_stall=self._wake_alerts)
        self._watch.start()
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
        """Stop the stream: close its sockets, end our trio tasks (and the guest run if this
        was its last stream), drop undelivered events and let handler calls in progress
        finish within ``stop_timeout``. Idempotent; safe to call from a handler.

        Once the stream's loop is gone (``asyncio.run(main())`` ended without ``stop()``, and
        the bot's shutdown path calls ``stop()`` in a new loop) the stream is stopped already:
        ``stop()`` then only ends what is left on this side and returns, from any loop.

        ``state`` is ``stopping`` while it runs and ``stopped`` once it returns. It does not
        raise the stream's error (it is a shutdown path): an error the trio side raises while
        being stopped is logged with its traceback and kept in :attr:`error`, where
        ``health()``, ``wait_closed()`` and ``async with`` report it."""
        if self._state == "new":
            self._state = "stopped"
            return
        loop = self._loop
        if loop is None:
            return
        if loop is not asyncio.get_running_loop():
            self._stop_after_loop(loop)
            return
        if self._stopping is None:
            if self._state in ("starting", "running"):
                self._state = "stopping"  # health() reports the stream down from here on too
            self._stopping = loop.create_task(self._stop(), name="hybrid_actors bridge stop")
        caller = asyncio.current_task()
        if caller is not None:
            self._stop_waiters.add(caller)
        try:
            await asyncio.shield(self._stopping)
        finally:
            if caller is not None:
                self._stop_waiters.discard(caller)

    def _stop_after_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """``stop()`` from another loop: fine once the stream's own loop has ended it (nothing
        is left to await there), an error while the trio side may still run on that loop."""
        busy = [task for task in (self._host_task, self._stopping) if task is not None and not task.done()]
        if busy and not loop.is_closed():
            raise RuntimeError(f"stop() must be awaited on the loop the stream was started on ({loop!r}): the "
                               "stream is still running there")
        self._stop_requested = True
        if self._dispatcher is not None and not self._dispatcher.closed:
            self._dispatcher.close_now()
        self._end_side_things()
        self._state = "stopped"

    async def _stop(self) -> None:
        self._request_trio_stop()
        if self._host_task is not None:
            await asyncio.wait([self._host_task])
        if self._dispatcher is not None:
            await self._dispatcher.close(self._stop_timeout, self._stop_waiters)
        self._end_side_things()
        self._state = "stopped"

    def _end_side_things(self) -> None:
        """The stall watch's timer and the ``events()`` feeds end with the stream."""
        if self._watch is not None:
            self._watch.stop()
        for feed in list(self._feeds):
            feed.close(self._error)

    def _host_shutting_down(self) -> None:
        """The delivery task was cancelled from outside: the loop (or the bot) is shutting down."""
        self._request_trio_stop()
        self._end_side_things()

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

    async def events(self, *, records: bool | None = None) -> AsyncIterator[Any]:
        """``async for event in stream.events():`` every event from now on, in order, beside
        the handler (which may be None): dicts carrying ``"event"`` like the handler's
        ``data``, or the frozen records with ``records=True`` (default: the stream's
        ``records``). Ends when the stream stops; raises the error when it fails. Price-only
        updates of one position conflate while you are behind; lifecycle events never drop:
        beyond ``event_buffer`` of them waiting here the stream holds back new events, for the
        handler and the other iterators too, so close an iterator you stop reading
        (``aclose()``, or ``contextlib.aclosing``)."""
        if self._state not in ("starting", "running", "stopping") or self._loop is None or self._dispatcher is None:
            raise RuntimeError(f"events() needs a started stream (it is {self._state})")
        dispatcher = self._dispatcher
        feed = Feed(self._loop, self._records if records is None else records, dispatcher.feed_room)
        self._feeds.add(feed)
        dispatcher.add_feed(feed)
        try:
            while True:
                try:
                    event = await feed.get()
                except StopAsyncIteration:
                    return
                yield event
        finally:
            self._feeds.discard(feed)
            dispatcher.remove_feed(feed)

    # --- views (safe from any thread) -------------------------------------------------------------
    def positions(self) -> tuple[PositionUpdate, ...]:
        """The open positions with their latest mark and PnL (empty unless running).
        Safe from any thread."""
        stream = self._stream
        return stream.positions() if stream is not None else ()

    def health(self) -> HealthReport:
        """The stream's :class:`HealthReport`; ``events`` also holds the bridge's counters
        (``handler_calls``, ``handler_errors``, ``bridge_conflated``, ``bridge_queued``,
        ``bridge_lifecycle_queued`` (waiting for the handler), ``bridge_iterator_lifecycle_queued``
        (the most any ``events()`` iterator holds), ``delivery_delay`` (frame read to handler
        call), ``bridge_delay``, ``wake_delay``)
        and the loop's stalls (``loop_stalls``, ``loop_stall_max_ms``, ``loop_blocked_ms``...).

        Safe from any thread (a metrics exporter's, say): it reads the trio run's clock
        object, never ``trio.current_time()``, and copies what it walks. While the loop's
        thread is blocked the report says so (status ``degraded``). From the call of
        ``stop()`` on (``state`` ``stopping``) the status is ``down``, whatever the trio side's
        sockets still say: the stream is going away, whatever its last events still do."""
        state, error = self._state, self._error  # one read each: another thread may be asking
        stream = self._stream
        report = None
        if stream is not None:
            try:
                report = stream.health()
            except RuntimeError:  # the trio run is gone (it is ending)
                report = None
        if report is not None and state == "stopping":
            report = attrs.evolve(report, status="down", problems=("the stream is stopping", *report.problems))
        if report is None:
            problem = {"new": "the stream has not been started", "starting": "the stream is starting",
                       "running": "the stream's trio side has ended", "stopping": "the stream is stopping"}.get(state)
            if problem is None:
                problem = f"the stream failed: {error}" if error is not None else "the stream is stopped"
            report = HealthReport("down", {}, {}, {}, {}, 0, (problem,))
        stats = self._stats
        dispatcher = self._dispatcher
        events = {**report.events, "handler_calls": stats.handler_calls, "handler_errors": stats.handler_errors,
                  "bridge_conflated": stats.conflated, "bridge_batches": stats.batches,
                  "bridge_queued": dispatcher.queued() if dispatcher is not None else 0,
                  "bridge_lifecycle_queued": dispatcher.lifecycle_pending if dispatcher is not None else 0,
                  "bridge_iterator_lifecycle_queued": dispatcher.feed_lifecycle() if dispatcher is not None else 0,
                  "delivery_delay": stats.frame_delays.summary(), "bridge_delay": stats.delays.summary(),
                  "wake_delay": stats.wake_delays.summary()}
        status, problems = report.status, report.problems
        watch = self._watch
        if watch is not None:
            events.update(watch.summary())
            blocked = watch.blocked_for() if state == "running" else 0.0
            if blocked:
                problems = (*problems, f"the asyncio loop's thread has been blocked for {blocked:.3f}s: trio shares "
                                       "it, so the stream's sockets are not being read")
                status = "degraded" if status == "ok" else status
        if dispatcher is not None and not dispatcher.closed and dispatcher.room() <= 0:
            # room() counts the handler's lanes and every events() iterator: name whichever is full
            handler, iterator, capacity = dispatcher.lifecycle_pending, dispatcher.feed_lifecycle(), dispatcher.capacity
            if handler >= capacity:
                problems = (*problems, f"the event handler is behind: {handler} lifecycle events wait for it and "
                                       "the stream is holding back new ones")
            if iterator >= capacity:
                problems = (*problems, f"an events() iterator is behind: {iterator} lifecycle events wait for it "
                                       "and the stream is holding back new ones, for the handler too (close "
                                       "iterators you stop reading)")
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
                runner = run_on_trio_asyncio(loop, self._trio_main)
            else:
                self._guest = await GuestRun.acquire(loop)
                runner = self._guest.submit(self, self._trio_main, self.stop)
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
        except BaseException as exc:  # noqa: BLE001 - a guest run that could not start; KeyboardInterrupt...
            error = exc
        if self._guest is not None:
            self._guest.release(self)
        self._stream = None
        if not self._started.done():
            self._state = "stopped"
            self._started.set_result(error if error is not None else HybridActorsError(
                "the stream was stopped before it finished starting"))
        elif isinstance(error, (KeyboardInterrupt, SystemExit)):
            log.info("the hybrid stream was interrupted (%r); it is stopped", error)
            self._error = error
            self._state = "stopped"
        elif error is not None:
            # Also while stopping: a crash during shutdown (an actor failing as it is cancelled)
            # is the bot's to know about. A plain cancellation never gets here (the trio side's
            # own scope catches it, and a cancelled runner carries no error).
            self._error = error
            if not self._stop_requested:
                log.error("the hybrid stream has ended: %s: %s", type(error).__name__, error, exc_info=error)
                self._state = "failed"
            else:
                log.error("the hybrid stream failed while it was being stopped: %s: %s", type(error).__name__, error,
                          exc_info=error)
                if self._stopping is None:
                    self._state = "stopped"  # the loop is ending without stop(); stop() sets it otherwise
        elif self._stopping is None:
            self._state = "stopped"  # the loop is ending without stop(): the trio side is down all the same
        self._closed.set()
        if self._stopping is None:  # it ended by itself: nothing must wait for a stop() that may never come
            if self._dispatcher is not None:
                self._dispatcher.finish()  # the last events (the "failed" notice) still reach the handler
            if self._watch is not None:
                self._watch.stop()
        for feed in list(self._feeds):
            feed.close(self._error)
        if cancelled:
            raise asyncio.CancelledError
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise error  # recorded above; it is the program's, not ours

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
        if self._started is None or self._started.done() or self._stop_requested or self._state != "starting":
            return
        self._stream = stream
        stats = self._stats
        stream.hub.health.handler_errors_source = lambda: stats.handler_errors  # for /metrics
        if self._watch is not None:  # the loop_stalled alert, /health and /metrics see the stalls
            stream.hub.health.loop_stalls_source = self._watch.summary
        self._state = "running"
        self._started.set_result(None)

    def _request_trio_stop(self) -> None:
        self._stop_requested = True
        token, scope = self._token, self._trio_scope
        if token is not None and scope is not None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(scope.cancel)

    def _wake_alerts(self) -> None:
        """A stall was counted: the alert actor evaluates ``loop_stalled`` now. It otherwise
        wakes only for events and socket changes, so a quiet stream would not fire it."""
        stream, token = self._stream, self._token
        if stream is not None and token is not None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(_wake_alert_actor, stream.hub)

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
                opened: list[HybridStream] = []
                try:
                    async with open_hybrid_stream(self._config) as stream:
                        opened.append(stream)
                        starting.deadline = math.inf
                        loop.call_soon(self._on_started, stream, context=context)
                        await self._pump(stream)
                except Exception:
                    if opened and self._dispatcher is not None:
                        # the stream's last events, its ``stream.state`` "failed" included: the
                        # error cancelled the pump before it could take them
                        self._dispatcher.accept(opened[0].unread(), time.perf_counter_ns())
                    raise
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


def _wake_alert_actor(hub: Hub) -> None:
    hub.alert_watch.set()  # read here, in trio: the alert actor replaces the event after each evaluation


def _check_seconds(name: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds{' or None' if optional else ''}, "
                          f"got {value!r}")
