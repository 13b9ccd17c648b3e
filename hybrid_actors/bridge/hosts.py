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
import sys
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
    import trio_asyncio

    return "trio-asyncio" if isinstance(loop, trio_asyncio.BaseTrioEventLoop) else "guest"


def run_on_trio_asyncio(loop: asyncio.AbstractEventLoop, fn: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
    """Run ``fn`` as a trio task of the trio run driving ``loop``; an asyncio future of its end."""
    return loop.trio_as_future(fn)  # type: ignore[attr-defined, no-any-return]


_GUEST_RUNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GuestRun] = weakref.WeakKeyDictionary()


@attrs.define(eq=False)
class GuestRun:
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

