"""The two ways of hosting trio inside an asyncio program.

- **trio-asyncio** (the program runs under ``trio_asyncio.run(...)``): the asyncio loop is
  itself driven by trio, so the stream's trio side is an ordinary trio task of that run,
  started with ``loop.trio_as_future`` (trio-asyncio's documented trio-from-asyncio call).
- **trio guest mode** (a stock ``asyncio.run()`` loop): trio runs as a guest of the asyncio
  loop (``trio.lowlevel.start_guest_run``). trio's task steps run as asyncio callbacks on
  the loop's thread; one trio worker thread only waits for trio's I/O. Every stream on one
  loop shares one guest run (:class:`GuestRun`), which ends when the last stream's trio
  side has returned.

trio-asyncio is never imported on the program's behalf: importing it replaces asyncio's
event-loop policy for the whole process (``asyncio.run`` would then build trio-asyncio's
sync loop), so we only look for it in ``sys.modules``; a program running on a trio-asyncio
loop has imported it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import types
import weakref
from collections.abc import Awaitable, Callable
from typing import Literal

import attrs
import outcome
import trio

from ..errors import HybridActorsError

__all__ = ["GuestRun", "Host", "choose_host", "run_on_trio_asyncio"]

log = logging.getLogger("hybrid_actors.bridge")

Host = Literal["trio-asyncio", "guest"]


def choose_host(loop: asyncio.AbstractEventLoop) -> Host:
    """``"trio-asyncio"`` for a trio-asyncio loop (``trio_asyncio.run``/``open_loop``, or
    its sync loop), ``"guest"`` for any other."""
    if "trio_asyncio" not in sys.modules:
        return "guest"  # never import it on the program's behalf: that changes asyncio's policy
    import trio_asyncio  # type: ignore[import-untyped]  # it ships neither stubs nor py.typed

    return "trio-asyncio" if isinstance(loop, trio_asyncio.BaseTrioEventLoop) else "guest"


def run_on_trio_asyncio(loop: asyncio.AbstractEventLoop, fn: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
    """Run ``fn`` as a trio task of the trio run driving ``loop``; an asyncio future of its end."""
    return loop.trio_as_future(fn)  # type: ignore[attr-defined, no-any-return]  # trio-asyncio's loop; untyped


#: the live guest run of each loop. Weak values: the run is kept alive by its streams and by
#: trio's own callbacks, never by this registry, so a run abandoned with its loop goes away.
_GUEST_RUNS: weakref.WeakValueDictionary[asyncio.AbstractEventLoop, GuestRun] = weakref.WeakValueDictionary()


def _raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


@attrs.define(eq=False)
class GuestRun:
    """One trio guest run per asyncio loop, shared by the streams on it.

    ``submit(fn, stop)`` runs ``fn`` as a task of the run and returns an asyncio future of
    its end (``fn`` reports its own outcome; the future only says "returned" or carries a
    :class:`HybridActorsError`). When the last submitted task returns the run ends
    (``closing``, then ``done``); the next stream then starts a new run, after waiting for
    this one to finish.

    Ctrl-C belongs to the host. trio installs its own SIGINT handler only when it finds
    Python's default one (``signal.default_int_handler``) in place; under ``asyncio.run()``
    asyncio's runner has replaced it already, but under ``loop.run_until_complete()`` /
    ``run_forever()`` it has not. There we install a host-side handler first (main thread
    only; restored when the run ends), so trio leaves SIGINT alone: it raises
    ``KeyboardInterrupt`` where the program is, as Python's default would, except inside a
    trio step (which must not be torn mid-way), where it is raised from a loop callback
    right after the step, i.e. out of ``run_until_complete()`` / ``run_forever()``.

    Closing the loop ends the run. asyncio has no close hook, so the run shadows the loop's
    ``close`` with a wrapper (an instance attribute, removed again when the run ends) that
    first stops every stream on the loop (``stop()``, run on the loop) and lets the guest
    run finish; otherwise trio's run state would stay behind in this thread and every later
    ``trio.run`` here would fail. A loop that does not allow this (no instance attributes)
    is warned about once.

    Stopping the streams there means running the loop again (``run_until_complete``): our
    host and delivery tasks, the guest run's own callbacks and handler calls in progress
    only advance on it, and asyncio's public API cannot run some ready callbacks and not
    others. So while ``close()`` stops the streams (milliseconds: close frames are sent, not
    waited for; up to ``stop_timeout`` with a handler call in progress) the bot's own
    pending tasks run as well: a task whose sleep ends or whose future completes then
    resumes, after the bot's ``main()`` has returned. Plain ``close()`` would run nothing.
    Driving trio without the loop would not help: our asyncio tasks would be left pending
    (and destroyed with "Task was destroyed but it is pending!"), handler calls in progress
    dropped. The hook is the fallback; bots call ``stop()`` before closing the loop (or use
    ``asyncio.run``, which cancels their tasks first). Pinned by
    ``test_closing_the_loop_without_stop_runs_the_loop_so_the_bots_pending_tasks_resume``.
    """

    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]
    token: trio.lowlevel.TrioToken | None = None
    nursery: trio.Nursery | None = None
    users: int = 0
    closing: bool = False
    #: ``stop()`` of each stream on the run, for the loop's close hook
    stoppers: dict[object, Callable[[], Awaitable[None]]] = attrs.Factory(dict)
    _backlog: list[tuple[Callable[[], Awaitable[None]], asyncio.Future[None]]] = attrs.Factory(list)
    _idle: trio.Event | None = None
    _futures: set[asyncio.Future[None]] = attrs.Factory(set)
    #: depth of trio steps running right now (the SIGINT handler must not tear one)
    _in_trio: int = 0
    _sigint: Callable[[int, types.FrameType | None], None] | None = None
    _close_hook: Callable[[], None] | None = None

    @classmethod
    async def acquire(cls, loop: asyncio.AbstractEventLoop) -> GuestRun:
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

    # --- the host's side of trio: callbacks, Ctrl-C, close ---------------------------------
    def _tick(self, fn: Callable[[], object]) -> None:
        self._in_trio += 1
        try:
            fn()
        finally:
            self._in_trio -= 1

    def _soon(self, fn: Callable[[], object]) -> None:
        self.loop.call_soon(self._tick, fn)

    def _soon_threadsafe(self, fn: Callable[[], object]) -> None:
        self.loop.call_soon_threadsafe(self._tick, fn)

    def _on_sigint(self, signum: int, frame: types.FrameType | None) -> None:
        if self._in_trio and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(_raise_keyboard_interrupt)  # right after this trio step
            return
        raise KeyboardInterrupt

    def _take_sigint(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread gets signals (and trio installs nothing elsewhere either)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._sigint = self._on_sigint
            signal.signal(signal.SIGINT, self._sigint)

    def _give_back_sigint(self) -> None:
        handler, self._sigint = self._sigint, None
        if handler is not None and signal.getsignal(signal.SIGINT) == handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _hook_close(self) -> None:
        loop = self.loop
        original = loop.close

        def close() -> None:
            self._loop_closing()
            original()

        try:
            loop.close = close  # type: ignore[method-assign]  # on purpose: this instance's close() is watched
        except (AttributeError, TypeError):
            log.warning("cannot watch %s for close(): call stop() on every BybitHybridStream before closing "
                        "the loop, or trio's guest run is left behind in this thread", type(loop).__name__)
            return
        self._close_hook = close

    def _unhook_close(self) -> None:
        hook, self._close_hook = self._close_hook, None
        if hook is not None and vars(self.loop).get("close") is hook:
            del self.loop.close

    def _loop_closing(self) -> None:
        """The loop's ``close()`` was called with this run still going: stop its streams first."""
        loop = self.loop
        self._unhook_close()
        if self.done.done() or loop.is_running() or loop.is_closed():
            return  # nothing to do, or close() is about to refuse anyway
        log.warning("the asyncio loop is being closed with %d BybitHybridStream(s) still running; stopping them "
                    "first, which runs the loop (and the program's own pending tasks) until they are down; call "
                    "stop() before closing the loop", len(self.stoppers))

        async def stop_all() -> None:
            await asyncio.gather(*(stop() for stop in list(self.stoppers.values())), return_exceptions=True)
            await asyncio.shield(self.done)

        try:
            loop.run_until_complete(stop_all())
        except BaseException as exc:  # noqa: BLE001 - close() must still close; say why trio may linger
            log.error("could not stop the streams before the loop closed: %r", exc)
            if not isinstance(exc, Exception):
                raise

    # --- the run -------------------------------------------------------------------------
    def _start(self) -> None:
        self._take_sigint()
        try:
            trio.lowlevel.start_guest_run(
                self._main, run_sync_soon_threadsafe=self._soon_threadsafe,
                run_sync_soon_not_threadsafe=self._soon, done_callback=self._finished,
                host_uses_signal_set_wakeup_fd=True)
        except RuntimeError as exc:
            self._give_back_sigint()
            raise HybridActorsError(
                f"cannot run trio as a guest of this asyncio loop: this thread is already running trio ({exc}). "
                "Either this asyncio loop runs inside trio.run() (then host the asyncio code with trio_asyncio "
                "instead), or an earlier guest run was left behind when its loop was closed without stop() "
                "on a loop that could not be watched for close() (call stop() before closing the loop)") from exc
        self._hook_close()

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._idle = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            for fn, future in self._backlog:
                nursery.start_soon(self._job, fn, future)
            self._backlog.clear()
            await self._idle.wait()

    def submit(self, key: object, fn: Callable[[], Awaitable[None]],
               stop: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self.loop.create_future()
        self.users += 1
        self.stoppers[key] = stop
        self._futures.add(future)
        if self.nursery is None or self.token is None:
            self._backlog.append((fn, future))
        else:
            self.token.run_sync_soon(self.nursery.start_soon, self._job, fn, future)
        return future

    def release(self, key: object) -> None:
        self.stoppers.pop(key, None)

    async def _job(self, fn: Callable[[], Awaitable[None]], future: asyncio.Future[None]) -> None:
        try:
            await fn()
        except BaseException as exc:
            if not future.done():
                if isinstance(exc, trio.Cancelled):
                    future.cancel()
                elif isinstance(exc, Exception):
                    future.set_exception(exc)
                else:  # KeyboardInterrupt, SystemExit...: never into an asyncio future (a task would re-raise it)
                    future.set_exception(HybridActorsError(f"the stream's trio side ended with {exc!r}"))
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
        self._give_back_sigint()
        self._unhook_close()
        if isinstance(result, outcome.Error):
            log.error("the trio guest run ended with an error", exc_info=result.error)
        for future in self._futures:
            if not future.done():
                future.set_exception(HybridActorsError("the trio guest run ended before the stream's trio side"))
        self._futures.clear()
        if not self.done.done():
            self.done.set_result(None)
