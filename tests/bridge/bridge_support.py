"""Helpers for the bridge tests: the simulator in a subprocess, hosts, a recording handler,
and snapshots of what a stream could leave behind (tasks, threads, sockets).

Each test is a plain sync function that runs its own event loop with :func:`run_on`:

- ``"asyncio"``: a stock selector loop (``asyncio.Runner`` with an explicit loop factory, so
  it stays stock even once ``trio_asyncio`` is imported: importing it changes asyncio's
  policy, and plain ``asyncio.run`` would then build trio-asyncio's sync loop);
- ``"trio-asyncio"``: ``trio_asyncio.run(aio_as_trio(main))``.

The simulator runs as ``python -m hybrid_actors simulator --json`` on loopback ports chosen
by the OS, a fresh one per test (the next one starts in the background while a test runs,
so its start-up costs no test time); its control endpoints are reached over plain asyncio streams (they work on both
loops). Nothing here sleeps on the real clock: waits are on asyncio events under deadlines.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import importlib.util
import json
import logging
import os
import pathlib
import re
import selectors
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from types import ModuleType
from typing import Any, TypeVar

import attrs
import pytest
import trio

from hybrid_actors import BybitHybridStream

HOSTS = ("asyncio", "trio-asyncio")
#: also the bots that drive a stock loop themselves: ``loop.run_until_complete(main())`` and
#: ``loop.run_forever()`` (each followed by ``loop.close()``)
ALL_HOSTS = ("asyncio", "trio-asyncio", "run_until_complete", "run_forever")
#: every test's own deadline (seconds of real time)
TEST_TIMEOUT = 30.0
T = TypeVar("T")


# --- the simulator --------------------------------------------------------------------------

@attrs.frozen
class SimInfo:
    ws_url: str
    rest_url: str
    api_key: str
    api_secret: str = attrs.field(repr=False)

    def stream_kwargs(self) -> dict[str, Any]:
        return {"stream_url": self.ws_url, "rest_url": self.rest_url}


def _spawn_simulator(rate: float, symbols: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "hybrid_actors", "simulator", "--json", "--port", "0", "--rest-port", "0",
            "--symbols", str(symbols), "--positions", "0", "--rate", str(rate), "--seed", "7"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def _announced(process: subprocess.Popen[bytes], deadline: float) -> SimInfo:
    """The simulator's first line (its URLs and test keys), waiting at most ``deadline``."""
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=deadline):
                raise TimeoutError(f"the simulator printed nothing within {deadline}s")
        raw = json.loads(process.stdout.readline())
    except BaseException:
        stop_simulator(process)
        raise
    return SimInfo(raw["ws_url"], raw["rest_url"], raw["api_key"], raw["api_secret"])


#: one simulator per (rate, symbols) already starting for the next test that wants it
_SPARES: dict[tuple[float, int], subprocess.Popen[bytes]] = {}


def launch_simulator(*, rate: float, symbols: int = 20, deadline: float = 20.0) -> tuple[subprocess.Popen[bytes], SimInfo]:
    """A fresh simulator with no positions open (one started in the background while the
    previous test ran, when there is one) and its details; a spare starts for the next test."""
    key = (rate, symbols)
    process = _SPARES.pop(key, None) or _spawn_simulator(rate, symbols)
    _SPARES[key] = _spawn_simulator(rate, symbols)
    return process, _announced(process, deadline)


@atexit.register
def _stop_spares() -> None:
    while _SPARES:
        stop_simulator(_SPARES.popitem()[1])


def stop_simulator(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture
def simulator() -> Iterator[Callable[..., SimInfo]]:
    """``simulator(rate=...)`` starts one (no positions open); all are stopped after the test.

    Imported by the test modules (a ``conftest.py`` here would shadow ``tests/conftest.py``,
    which other tests import by name)."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*, rate: float, symbols: int = 20) -> SimInfo:
        process, info = launch_simulator(rate=rate, symbols=symbols)
        processes.append(process)
        return info

    try:
        yield start
    finally:
        for process in processes:
            stop_simulator(process)


def _load_example_bot() -> ModuleType:
    """scripts/example_bot.py as a module: its control client is the one these tests use (the
    script stays standalone; tests may lean on scripts, never the other way round)."""
    path = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "example_bot.py"
    spec = importlib.util.spec_from_file_location("example_bot", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXAMPLE_BOT = _load_example_bot()


async def control(sim: SimInfo, method: str, **kwargs: Any) -> Any:
    """``POST /control/<method>`` (``GET`` for ``state``) over a fresh connection; the ``result``."""
    verb = "GET" if method == "state" else "POST"
    status, answer = await EXAMPLE_BOT.control_request(sim.rest_url, method, kwargs, verb=verb)
    assert status == 200, f"control {method}({kwargs}) answered {status}: {answer}"
    return answer if method == "state" else answer["result"]


def run_children(argvs: Mapping[str, list[str]], timeout: float) -> dict[str, tuple[int | None, str, str]]:
    """Start every command at once as a child process; (exit code, stdout, stderr) of each by
    its key. One still running after ``timeout`` is killed, and the timeout fails the test."""
    runs = {key: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for key, argv in argvs.items()}
    outputs = {}
    try:
        for key, process in runs.items():
            out, err = process.communicate(timeout=timeout)
            outputs[key] = (process.returncode, out, err)
    finally:
        for process in runs.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return outputs


async def set_marks(sim: SimInfo, symbols: Iterable[str], price: Decimal | int) -> None:
    """The linear mark price of every one of ``symbols`` set to ``price``."""
    for symbol in symbols:
        await control(sim, "set_mark_price", symbol=symbol, price=str(price))


async def open_linear_positions(sim: SimInfo, symbols: list[str], size: str = "1") -> None:
    for symbol in symbols:
        await control(sim, "open_position", symbol=symbol, side="Buy", size=size)


async def open_linear_symbols(sim: SimInfo) -> set[str]:
    state = await control(sim, "state")
    return {p["symbol"] for p in state["positions"] if p["category"] == "linear" and Decimal(p["size"]) != 0}


# --- hosts --------------------------------------------------------------------------------------

def run_on(host: str, main: Callable[[], Awaitable[T]], timeout: float = TEST_TIMEOUT) -> T:
    """Run ``main()`` on a fresh loop of ``host`` under a deadline; return its result."""
    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    if host == "trio-asyncio":
        import trio_asyncio

        return trio_asyncio.run(trio_asyncio.aio_as_trio(bounded))
    if host in ("run_until_complete", "run_forever"):
        loop = asyncio.SelectorEventLoop()
        try:
            if host == "run_until_complete":
                return loop.run_until_complete(bounded())
            task = loop.create_task(bounded())
            task.add_done_callback(lambda _: loop.stop())
            loop.run_forever()
            return task.result()
        finally:
            loop.close()
    assert host == "asyncio", host
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        return runner.run(bounded())


def expected_host(host: str) -> str:
    return {"asyncio": "guest", "trio-asyncio": "trio-asyncio", "run_until_complete": "guest",
            "run_forever": "guest"}[host]


# --- the handler -----------------------------------------------------------------------------------

@attrs.define(eq=False)
class Recorder:
    """An event handler that records ``(event_name, data)`` and lets a test wait for a match.

    Position events go to ``events`` (and the waiters), ``stream.*`` notices to ``notices``."""

    events: list[tuple[str, dict[str, Any]]] = attrs.Factory(list)
    notices: list[tuple[str, dict[str, Any]]] = attrs.Factory(list)
    _notice_waiters: list[tuple[Callable[[dict[str, Any]], bool], asyncio.Future[dict[str, Any]]]] = (
        attrs.Factory(list))
    _waiters: list[tuple[Callable[[str, dict[str, Any]], bool], asyncio.Future[tuple[str, dict[str, Any]]]]] = (
        attrs.Factory(list))

    async def __call__(self, name: str, data: dict[str, Any]) -> None:
        self.record(name, data)

    def record(self, name: str, data: dict[str, Any]) -> None:
        if name.startswith("stream."):
            self.notices.append((name, data))
            for waiter in list(self._notice_waiters):
                if not waiter[1].done() and waiter[0](data):
                    waiter[1].set_result(data)
                    self._notice_waiters.remove(waiter)
            return
        self.events.append((name, data))
        for waiter in list(self._waiters):
            predicate, future = waiter
            if not future.done() and predicate(name, data):
                future.set_result((name, data))
                self._waiters.remove(waiter)

    async def wait_for(self, predicate: Callable[[str, dict[str, Any]], bool], *, after: int = 0,
                       timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        """The first event at index >= ``after`` matching ``predicate``, waiting up to ``timeout``."""
        for name, data in self.events[after:]:
            if predicate(name, data):
                return name, data
        future: asyncio.Future[tuple[str, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        waiter = (predicate, future)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def states(self) -> list[str]:
        return [data["state"] for name, data in self.notices if name == "stream.state"]

    async def wait_for_state(self, state: str, *, timeout: float = 10.0) -> dict[str, Any]:
        """The first ``stream.state`` notice in ``state``, waiting up to ``timeout``."""
        def match(data: dict[str, Any]) -> bool:
            return data["event"] == "stream.state" and data["state"] == state

        for _, data in self.notices:
            if match(data):
                return data
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        waiter = (match, future)
        self._notice_waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            if waiter in self._notice_waiters:
                self._notice_waiters.remove(waiter)

    def of(self, symbol: str) -> list[tuple[str, dict[str, Any]]]:
        return [(n, d) for n, d in self.events if d["symbol"] == symbol]

    def mark(self) -> int:
        return len(self.events)


async def wait_until(predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> Any:
    """Check ``predicate`` after every loop turn (yielding 5 ms between checks) until true.

    The bridge runs on a real asyncio loop, which no mock clock drives: this waits for a
    condition (bounded by ``timeout``), never for a length of time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_subscribed(stream: BybitHybridStream, count: int) -> None:
    """Until the stream has ``count`` linear tickers subscribed, every one confirmed."""
    def subscribed() -> bool:
        subs = stream.health().subscriptions.get("linear", {})
        return subs.get("confirmed", 0) == subs.get("desired", -1) == count

    await wait_until(subscribed, what=f"{count} tickers subscribed")


# --- what a stream could leave behind ------------------------------------------------------------------

def forget_captured_log_records() -> None:
    """Drop the records pytest's log capture holds. The supervisor logs a dropped socket's
    ``ConnectionLost`` as a log *argument*; a handler that keeps records (pytest's does; a
    formatting handler does not) keeps that exception, its frames and so the dead socket
    reachable, which would look like a socket left open by the stream."""
    from _pytest.logging import LogCaptureHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, LogCaptureHandler):
            handler.records.clear()  # in place: pytest keeps other references to this list


_TRIO_CACHE_THREAD = re.compile(r"Trio thread \d+")


@attrs.frozen
class Leftovers:
    """A snapshot of the process: asyncio tasks, threads, open file descriptors, trio tasks."""

    tasks: frozenset[asyncio.Task[Any]]
    threads: frozenset[int]
    fds: frozenset[tuple[int, str]]
    trio_tasks: frozenset[object] | None

    @classmethod
    def take(cls) -> Leftovers:
        return cls(frozenset(asyncio.all_tasks()), frozenset(t.ident for t in threading.enumerate() if t.ident),
                   open_fds(), _trio_tasks())


def open_fds() -> frozenset[tuple[int, str]]:
    """Every open file descriptor of this process and what it is (``socket:[inode]``...)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            fds.add((int(name), os.readlink(f"/proc/self/fd/{name}")))
        except FileNotFoundError:  # the listing's own descriptor, closed by now
            continue
    return frozenset(fds)


def _trio_tasks() -> frozenset[object] | None:
    """Every task of the trio run we are in (trio-asyncio host), or None outside trio."""
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:
        return None
    if root is None:
        return None
    seen: set[object] = set()
    todo = [root]
    while todo:
        task = todo.pop()
        seen.add(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return frozenset(seen)


def socket_fds(fds: frozenset[tuple[int, str]]) -> set[tuple[int, str]]:
    return {fd for fd in fds if fd[1].startswith("socket:")}


async def assert_nothing_left(before: Leftovers, host: str, *, collect_garbage: bool = False) -> None:
    """No task, trio task, file descriptor (sockets included) or busy thread beyond ``before``.

    ``collect_garbage``: run the cyclic GC first. Only for streams that saw a server-side
    close: trio-websocket 0.12 never closes a client socket whose peer closed first (it
    waits for the server's FIN, then stops reading), so that descriptor is released when
    the connection object is collected, not by ``stop()``.

    Guest mode waits for trio's I/O in a worker of trio's thread cache; when the run ends
    that worker goes back to the cache and exits after 10 idle seconds. Such a leftover is
    accepted only if it is demonstrably idle: one probe job per leftover worker, all held
    at a barrier until every one has started, must run on exactly those workers.
    """
    if collect_garbage:
        gc.collect()
    after = Leftovers.take()
    assert after.tasks == before.tasks, f"asyncio tasks left: {after.tasks - before.tasks}"
    assert after.fds == before.fds, (f"file descriptors opened: {sorted(after.fds - before.fds)}; "
                                     f"closed: {sorted(before.fds - after.fds)}")
    if host == "trio-asyncio":
        assert after.trio_tasks == before.trio_tasks, f"trio tasks left: {after.trio_tasks - before.trio_tasks}"  # type: ignore[operator]
    else:
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass
        else:
            raise AssertionError("a trio run is still active on this thread after stop()")
    extra = [t for t in threading.enumerate() if t.ident not in before.threads]
    assert all(_TRIO_CACHE_THREAD.fullmatch(t.name) for t in extra), f"threads left: {extra}"
    if extra:
        await _prove_idle(extra)


async def _prove_idle(workers: list[threading.Thread]) -> None:
    loop = asyncio.get_running_loop()
    barrier = threading.Barrier(len(workers), timeout=5)
    ran_on: list[int] = []
    done = loop.create_future()

    def probe() -> int:
        barrier.wait()
        return threading.get_ident()

    def deliver(result: Any) -> None:
        def record() -> None:
            ran_on.append(result.unwrap())
            if len(ran_on) == len(workers) and not done.done():
                done.set_result(None)
        loop.call_soon_threadsafe(record)

    known = {t.ident for t in threading.enumerate()}
    for _ in workers:
        trio.lowlevel.start_thread_soon(probe, deliver)
    await asyncio.wait_for(done, 10)
    assert sorted(ran_on) == sorted(t.ident for t in workers), "a leftover trio worker thread was busy"
    assert {t.ident for t in threading.enumerate()} <= known, "probing needed new threads: a worker was busy"
