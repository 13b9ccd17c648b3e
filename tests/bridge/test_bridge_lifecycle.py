"""BybitHybridStream's life cycle under both hosts, against the simulator on loopback:
start() returns with positions known; stop() is idempotent and leaves no task, trio task,
socket or busy thread (``async with``: see test_bridge_delivery); bad keys; an unreachable exchange; a stream that
dies after start (stopped, or never stopped); a loop that ends without stop(), and stop()
from a later loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
import traceback
import warnings
from decimal import Decimal

import pytest
import trio

from bridge_support import (HOSTS, Leftovers, Recorder, assert_nothing_left, control, expected_host,
                            forget_captured_log_records, open_fds,
                            open_linear_positions, open_linear_symbols, run_on, simulator, wait_until)
from hybrid_actors import AuthRejected, BybitHybridStream, HybridActorsError
from hybrid_actors.errors import StartTimeout

pytestmark = pytest.mark.system
__all__ = ["simulator"]  # the fixture, imported

SECRET = "s3cr3t-that-must-never-print-0123456789"


@pytest.mark.parametrize("host", HOSTS)
def test_start_returns_with_positions_known_and_stop_leaves_nothing(host, simulator):
    sim = simulator(rate=20)

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT", "ETHUSDT", "SOLUSDT"])
        before = Leftovers.take()
        handler = Recorder()
        stream = BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs())
        await stream.start()
        try:
            assert stream.host == expected_host(host)
            assert stream.running
            positions = {p.symbol: p for p in stream.positions()}
            assert set(positions) == await open_linear_symbols(sim) == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
            for view in positions.values():
                assert view.size == Decimal(1) and view.side == "Buy"
                assert isinstance(view.mark_price, Decimal) and view.mark_price > 0
            health = stream.health()
            assert health.status == "ok", health.problems
            assert health.connections["private"]["connected"] and health.connections["public:linear"]["connected"]
            assert health.positions == 3
            await handler.wait_for(lambda name, data: data["source"] == "ticker")  # it is live
        finally:
            await asyncio.gather(stream.stop(), stream.stop())  # concurrent stops share one shutdown
        await stream.stop()  # and a later one is a no-op
        assert stream.state == "stopped" and stream.error is None
        assert stream.positions() == () and stream.health().status == "down"
        await assert_nothing_left(before, host)
        with pytest.raises(RuntimeError, match="already called"):
            await stream.start()

    run_on(host, main)


@pytest.mark.parametrize("host", HOSTS)
def test_bad_keys_raise_auth_rejected_without_the_secret(host, simulator, caplog):
    sim = simulator(rate=20)
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        before = Leftovers.take()
        stream = BybitHybridStream("test_key", SECRET, Recorder(), **sim.stream_kwargs())
        assert SECRET not in repr(stream)
        with pytest.raises(AuthRejected) as caught:
            await stream.start()
        text = "".join(traceback.format_exception(caught.value))
        assert SECRET not in text and SECRET not in repr(caught.value)
        assert "test" in str(caught.value)  # says which key (its first four characters)
        assert stream.state == "stopped" and not stream.running
        await stream.stop()
        await assert_nothing_left(before, host)

    run_on(host, main)
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert SECRET not in logged


@pytest.mark.parametrize("host", HOSTS)
def test_an_unreachable_exchange_times_out_start_clearly(host):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> None:
        before = Leftovers.take()
        stream = BybitHybridStream("key1", SECRET, Recorder(), stream_url=f"ws://127.0.0.1:{port}",
                                   rest_url=f"http://127.0.0.1:{port}", start_timeout=0.5)
        with pytest.raises(StartTimeout) as caught:
            await stream.start()
        assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, HybridActorsError)
        message = str(caught.value)
        assert "0.5s" in message and f"ws://127.0.0.1:{port}/v5/private" in message and SECRET not in message
        await assert_nothing_left(before, host)

    run_on(host, main)


@pytest.mark.parametrize("host", HOSTS)
def test_a_stream_that_dies_after_start_reports_why(host, simulator):
    sim = simulator(rate=20)

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT"])
        before = Leftovers.take()
        stream = BybitHybridStream(sim.api_key, sim.api_secret, Recorder(), **sim.stream_kwargs())
        await stream.start()
        await control(sim, "fail_auth", count=None)  # the key is revoked...
        await control(sim, "drop_private")  # ...and the reconnect's auth fails: fatal
        with pytest.raises(AuthRejected):
            await asyncio.wait_for(stream.wait_closed(), 10)
        assert stream.state == "failed" and isinstance(stream.error, AuthRejected)
        health = stream.health()
        assert health.status == "down" and "failed" in health.problems[0]
        with pytest.raises(RuntimeError, match="already called"):
            await stream.start()
        await stream.stop()
        assert stream.state == "stopped" and isinstance(stream.error, AuthRejected)
        forget_captured_log_records()
        await assert_nothing_left(before, host, collect_garbage=True)

    run_on(host, main)


@pytest.mark.parametrize("host", HOSTS)
def test_a_failed_stream_never_stopped_delivers_its_last_notice_and_leaves_nothing_running(host, simulator, caplog):
    """The documented supervision: ``await wait_closed()`` raises the error, the bot builds a
    new stream and never calls stop() on the failed one. Its "failed" notice still reaches
    the handler and the iterator; then its delivery task ends and its stall watch is off (a
    blocked loop is no longer counted nor logged by it)."""
    sim = simulator(rate=20)
    caplog.set_level(logging.WARNING, logger="hybrid_actors.bridge")
    threshold, block = 0.1, 0.25  # the watch's timer would fire 0.2 s or more late

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT"])
        before = Leftovers.take()
        handler = Recorder()
        stream = BybitHybridStream(sim.api_key, sim.api_secret, handler, stall_threshold=threshold,
                                   **sim.stream_kwargs())
        await stream.start()
        seen: list[dict] = []

        async def read() -> None:
            async for event in stream.events():
                seen.append(event)

        reader = asyncio.create_task(read())
        await asyncio.sleep(0)  # the iterator is waiting
        await control(sim, "fail_auth", count=None)  # the key is revoked...
        await control(sim, "drop_private")  # ...and the reconnect's auth fails: fatal
        with pytest.raises(AuthRejected):
            await asyncio.wait_for(stream.wait_closed(), 10)
        with pytest.raises(AuthRejected):
            await asyncio.wait_for(reader, 10)
        assert (await handler.wait_for_state("failed", timeout=2))["reason"].startswith("AuthRejected")
        assert seen[-1]["event"] == "stream.state" and seen[-1]["state"] == "failed"
        await wait_until(lambda: Leftovers.take().tasks == before.tasks, timeout=2,
                         what="the failed stream's delivery task to end")
        stalls = stream.health().events["loop_stalls"]
        # a real block: the watch measures the loop's own timer on the monotonic clock
        time.sleep(block)
        await asyncio.sleep(threshold)  # an armed timer fires (and counts the stall) meanwhile
        assert stream.health().events["loop_stalls"] == stalls
        assert stream.state == "failed"
        forget_captured_log_records()
        await assert_nothing_left(before, host, collect_garbage=True)

    run_on(host, main)
    assert not any("loop's thread was blocked" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("host", HOSTS)
def test_stop_from_inside_the_handler(host, simulator):
    sim = simulator(rate=20)

    async def main() -> None:
        await open_linear_positions(sim, ["DOGEUSDT"])
        before = Leftovers.take()
        stopped = asyncio.Event()

        async def handler(name: str, data: dict) -> None:
            if name == "position.closed":
                await stream.stop()  # must not wait for this very call
                stopped.set()

        stream = BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs())
        await stream.start()
        await control(sim, "close_position", symbol="DOGEUSDT")
        await asyncio.wait_for(stopped.wait(), 10)
        assert stream.state == "stopped"
        await wait_until(lambda: Leftovers.take().tasks == before.tasks, what="the handler call to return")
        await assert_nothing_left(before, host)

    run_on(host, main)


@pytest.mark.parametrize("host", HOSTS)
def test_a_loop_that_ends_without_stop_still_shuts_trio_down(host, simulator):
    """asyncio.run() / trio_asyncio.run() cancel what is left; the trio side must close first."""
    sim = simulator(rate=20)
    fds_before = open_fds()
    streams: list[BybitHybridStream] = []

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT"])
        stream = BybitHybridStream(sim.api_key, sim.api_secret, Recorder(), **sim.stream_kwargs())
        streams.append(stream)
        await stream.start()  # and return without stop()

    run_on(host, main)
    assert streams[0].state == "stopped" and streams[0].error is None
    assert open_fds() == fds_before  # the loop is closed, and so are our sockets
    with pytest.raises(RuntimeError):
        trio.lowlevel.current_trio_token()  # no trio run lingers on this thread

    async def connections() -> list:
        return (await control(sim, "state"))["connections"]

    async def sim_sees_no_connection() -> None:
        while await connections():
            await asyncio.sleep(0.01)  # the simulator's state, polled over its control channel

    run_on("asyncio", sim_sees_no_connection, timeout=10)


@pytest.mark.parametrize("host", HOSTS)
def test_stop_in_a_new_loop_after_the_first_one_ended_is_a_quiet_no_op(host, simulator):
    """The usual shutdown path: ``try: asyncio.run(main()) except ...: asyncio.run(bot.shutdown())``.
    The first loop ended without stop() (the stream is stopped already); stop() from the
    second loop returns at once, idempotently, and leaves no never-awaited coroutine."""
    sim = simulator(rate=20)
    streams: list[BybitHybridStream] = []

    async def main() -> None:
        stream = BybitHybridStream(sim.api_key, sim.api_secret, lambda name, data: None, **sim.stream_kwargs())
        streams.append(stream)
        await stream.start()
        raise LookupError("the bot's main ends with an error")

    ended = False
    try:
        run_on(host, main)
    except* LookupError:  # trio_asyncio.run() reports it in an exception group
        ended = True
    stream = streams[0]
    assert ended
    assert stream.state == "stopped"

    async def shutdown() -> None:
        await stream.stop()
        await stream.stop()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_on(host, shutdown)
        gc.collect()  # a coroutine created and dropped would warn "never awaited" here
    assert stream.state == "stopped" and stream.error is None
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []


@pytest.mark.parametrize(("host", "exit_with", "kind"), [
    ("asyncio", SystemExit, "def"), ("asyncio", KeyboardInterrupt, "def"), ("asyncio", SystemExit, "async def"),
    ("asyncio", KeyboardInterrupt, "async def")])
def test_a_handler_that_exits_the_program_stops_the_stream_like_a_host_shutdown(host, exit_with, kind, simulator,
                                                                                caplog):
    """``sys.exit()`` or ``KeyboardInterrupt`` from the handler is the program ending, not a
    bridge bug: it comes out of the host as asyncio lets it; the stream stops as when the
    loop ends, counts no handler error, restarts no delivery task and leaves none pending.
    (Not under trio_asyncio.run(): there any asyncio task's SystemExit stops trio-asyncio's
    loop for good and the program hangs, with or without a stream.)"""
    sim = simulator(rate=0)
    caplog.set_level(logging.INFO)
    fds_before = open_fds()
    streams: list[BybitHybridStream] = []

    def fatal(name: str, data: dict) -> None:
        if name == "position.update":
            raise exit_with(3) if exit_with is SystemExit else exit_with()

    async def afatal(name: str, data: dict) -> None:
        await asyncio.sleep(0)  # in the call's own task by now
        fatal(name, data)

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT"])  # the start-up snapshot calls the handler
        stream = BybitHybridStream(sim.api_key, sim.api_secret, fatal if kind == "def" else afatal,
                                   **sim.stream_kwargs())
        streams.append(stream)
        await stream.start()
        await asyncio.Event().wait()  # the handler's exit ends this

    exited = False
    try:
        run_on(host, main)
    except exit_with:
        exited = True
    gc.collect()  # a task left pending would be reported ("destroyed but it is pending") here
    stream = streams[0]
    assert exited and stream.state == "stopped" and stream.handler_errors == 0
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert messages == [], messages
    assert open_fds() == fds_before
    with pytest.raises(RuntimeError):
        trio.lowlevel.current_trio_token()  # no trio run lingers on this thread


def test_asyncio_run_after_trio_asyncio_import_uses_the_trio_asyncio_host(simulator):
    """Importing trio_asyncio makes plain asyncio.run() build its sync loop; that is a trio-asyncio host."""
    import trio_asyncio  # noqa: F401 - the import is the point

    sim = simulator(rate=20)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert type(loop).__name__ == "SyncTrioEventLoop"
        await open_linear_positions(sim, ["BTCUSDT"])
        handler = Recorder()
        async with BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs()) as stream:
            assert stream.host == "trio-asyncio"
            await handler.wait_for(lambda name, data: data["source"] == "ticker")

    asyncio.run(asyncio.wait_for(main(), 30))


def test_two_streams_on_one_loop_share_a_guest_run_that_ends_with_the_last(simulator):
    """Guest mode: one trio guest run per loop; the second stream joins the running one, the
    first can stop while the second goes on, and the run ends with the last stream."""
    sim = simulator(rate=20)

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT", "ETHUSDT"])
        before = Leftovers.take()
        first, second = Recorder(), Recorder()
        one = BybitHybridStream(sim.api_key, sim.api_secret, first, **sim.stream_kwargs())
        two = BybitHybridStream(sim.api_key, sim.api_secret, second, **sim.stream_kwargs())
        await one.start()
        token = trio.lowlevel.current_trio_token()  # the guest run is up on this thread
        await two.start()
        assert trio.lowlevel.current_trio_token() is token  # joined, not a second run
        await first.wait_for(lambda n, d: d["source"] == "ticker")
        await second.wait_for(lambda n, d: d["source"] == "ticker")
        await one.stop()
        assert trio.lowlevel.current_trio_token() is token and two.running
        mark = second.mark()
        await second.wait_for(lambda n, d: d["source"] == "ticker", after=mark)  # still flowing
        await two.stop()
        await assert_nothing_left(before, "asyncio")  # and the guest run is over

    run_on("asyncio", main)


@pytest.mark.parametrize("host", HOSTS)
def test_stream_state_reaches_the_handler_live_degraded_recovered_then_failed_on_revoked_keys(host, simulator):
    sim = simulator(rate=0)

    async def main() -> None:
        handler = Recorder()
        stream = BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs())
        await stream.start()
        try:
            live = await handler.wait_for_state("live")
            assert live["sockets"] == {"private": True, "public:linear": True}
            assert stream.health().stream_state["state"] == "live"
            await control(sim, "drop_public", category="linear")
            degraded = await handler.wait_for_state("degraded")
            assert degraded["sockets"]["public:linear"] is False and "public:linear is down" in degraded["reason"]
            await handler.wait_for_state("recovered")
            await control(sim, "fail_auth", count=None)  # the key is revoked
            await control(sim, "drop_private")
            with pytest.raises(AuthRejected):
                await asyncio.wait_for(stream.wait_closed(), 10)
            failed = await handler.wait_for_state("failed")
            assert failed["reason"].startswith("AuthRejected: ") and stream.state == "failed"
            assert str(stream.error) in failed["reason"]
        finally:
            await stream.stop()
        assert handler.states() == ["starting", "live", "degraded", "recovered", "degraded", "failed"]
        assert handler.notices[-1][1] is failed  # nothing after failed

    run_on(host, main)


@pytest.mark.parametrize("host", HOSTS)
def test_an_error_raised_on_the_trio_side_while_stop_runs_is_logged_and_kept(host, simulator, caplog, monkeypatch):
    """A crash during shutdown (here the stream's event queue failing as stop() closes it)
    must not vanish: it is logged with its traceback, kept in ``stream.error``, named by
    ``health()`` and raised by ``wait_closed()``; ``stop()`` itself still returns (it is a
    shutdown path) and the state is ``stopped``."""
    from hybrid_actors.actors.mailboxes import EventQueue

    close = EventQueue.close

    def breaks_when_closed_by_stop(self: EventQueue, error: BaseException | None = None) -> None:
        close(self, error)
        if error is None:  # open_hybrid_stream's own close on the way out, i.e. stop()
            raise LookupError("the event queue broke while stopping")

    monkeypatch.setattr(EventQueue, "close", breaks_when_closed_by_stop)
    sim = simulator(rate=20)
    caplog.set_level(logging.INFO)

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT"])
        before = Leftovers.take()
        handler = Recorder()
        stream = BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs())
        await stream.start()
        await handler.wait_for(lambda name, data: data["source"] == "ticker")
        await stream.stop()
        assert stream.state == "stopped" and not stream.running
        assert isinstance(stream.error, LookupError), stream.error
        health = stream.health()
        assert health.status == "down" and "broke while stopping" in health.problems[0], health.problems
        with pytest.raises(LookupError, match="broke while stopping"):
            await stream.wait_closed()
        await stream.stop()  # still idempotent
        again = BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs())
        with pytest.raises(LookupError, match="broke while stopping"):
            async with again:  # a block that raised nothing gets the shutdown's error at its end
                await handler.wait_for(lambda name, data: data["source"] == "ticker", after=handler.mark())
        assert again.state == "stopped" and isinstance(again.error, LookupError)
        bridge_records = [r for r in caplog.records if r.name == "hybrid_actors.bridge"]
        kept.extend((r.levelno, r.getMessage(), r.exc_info is not None and r.exc_info[1] is stream.error)
                    for r in bridge_records)
        forget_captured_log_records()
        await assert_nothing_left(before, host, collect_garbage=True)

    kept: list[tuple[int, str, bool]] = []
    run_on(host, main)
    assert any(level >= logging.ERROR and "while stopping" in message and with_traceback
               for level, message, with_traceback in kept), kept


@pytest.mark.parametrize("host", HOSTS)
def test_state_says_stopping_while_stop_runs_and_agrees_with_health(host, simulator, caplog):
    """stop() waits up to stop_timeout for a handler call in progress; meanwhile the trio side
    is down, health() says so, and ``state`` must not still claim ``running``. A plain stop
    logs no error and leaves ``error`` None."""
    sim = simulator(rate=20)
    caplog.set_level(logging.INFO)

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT"])
        entered, release = asyncio.Event(), asyncio.Event()

        async def handler(name: str, data: dict) -> None:
            if name == "position.update" and not entered.is_set():
                entered.set()
                await release.wait()  # a handler call in progress when stop() comes

        stream = BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs())
        await stream.start()
        await asyncio.wait_for(entered.wait(), 10)
        stopping = asyncio.create_task(stream.stop())
        await asyncio.sleep(0)  # stop() has begun; its trio side may well be up still
        health = stream.health()
        assert stream.state == "stopping" and health.status == "down", (stream.state, health.status)
        assert health.problems[0] == "the stream is stopping", health.problems
        await wait_until(lambda: stream.health().status == "down", what="health() to report the stream down")
        assert not stopping.done()
        assert stream.state == "stopping" and not stream.running
        assert "stopping" in stream.health().problems[0] and "stopping" in repr(stream)
        release.set()
        await stopping
        assert stream.state == "stopped" and stream.error is None
        assert stream.health().problems == ("the stream is stopped",)

    run_on(host, main)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records
