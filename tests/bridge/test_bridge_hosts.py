"""The hosts a bot really runs the stream on, off the happy path: Ctrl-C delivered to the host
under ``run_until_complete``, ``run_forever``, ``asyncio.run`` and ``trio_asyncio.run``
(in child processes, which send themselves SIGINT); a loop closed without ``stop()``;
``asyncio.run()`` ending without ``stop()``."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import pathlib
import sys

import pytest
import trio

from bridge_support import (Leftovers, Recorder, assert_nothing_left, control, open_fds, open_linear_positions,
                            run_children, run_on, simulator, wait_until)
from hybrid_actors import BybitHybridStream

pytestmark = pytest.mark.system
__all__ = ["simulator"]  # the fixture, imported

HOST_BOT = pathlib.Path(__file__).with_name("host_bot.py")
SIGINT_HOSTS = ("run_until_complete", "run_forever", "asyncio.run", "trio-asyncio")


def test_ctrl_c_belongs_to_the_host_on_every_host(simulator):
    """The bot sees KeyboardInterrupt; the stream stops cleanly (no socket left, trio usable
    afterwards, SIGINT's default handler back); under run_until_complete, stop() and
    wait_closed() complete; under run_forever a plain loop.close() tears the stream down."""
    sim = simulator(rate=20)
    info = json.dumps({"ws_url": sim.ws_url, "rest_url": sim.rest_url, "api_key": sim.api_key,
                       "api_secret": sim.api_secret})

    async def open_one() -> None:
        await open_linear_positions(sim, ["BTCUSDT"])

    run_on("asyncio", open_one)
    outputs = run_children({host: [sys.executable, str(HOST_BOT), f"{host}:sigint", info] for host in SIGINT_HOSTS},
                           timeout=90)
    for host, (code, out, err) in outputs.items():
        assert code == 0, f"{host}: exit {code}\n{out}\n{err}"
        report = json.loads(out.strip().splitlines()[-1])
        assert report["saw"] == "KeyboardInterrupt", (host, report, err)
        assert "not_interrupted" not in report
        assert report["host_kind"] == ("trio-asyncio" if host == "trio-asyncio" else "guest")
        assert report["state"] == "stopped", (host, report, err)
        assert report["events"] >= 1 and report["handler_errors"] == 0, (host, report)
        assert report["sockets_left"] == [], (host, report)
        assert report["trio_usable"] is True, (host, report)
        assert report["sigint_handler_restored"], (host, report)
        if host == "run_until_complete":
            assert report["wait_closed"] and report["error"] is None, report
            assert report["state_after_interrupt"] == "running", report  # Ctrl-C went to the host, not trio
        for bad in ("Task was destroyed but it is pending", "Event loop is closed", "BaseExceptionGroup",
                    "unretrieved", "Traceback"):
            assert bad not in err, f"{host}: {bad!r} in stderr\n{err}"


def test_closing_the_loop_without_stop_tears_the_guest_run_down(simulator, caplog):
    """run_until_complete(), then loop.close() with the stream still running: the close stops
    it first; no socket, task or trio run is left; a later trio.run in this thread works; no
    advice to switch to trio-asyncio; the registry holds nothing."""
    from hybrid_actors.bridge import hosts

    sim = simulator(rate=20)
    caplog.set_level(logging.INFO)
    fds_before = open_fds()
    loop = asyncio.SelectorEventLoop()
    handler = Recorder()
    stream = BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs())

    async def start() -> None:
        await open_linear_positions(sim, ["BTCUSDT"])
        await stream.start()
        await handler.wait_for(lambda n, d: d["source"] == "ticker")

    loop.run_until_complete(asyncio.wait_for(start(), 30))
    assert stream.running
    loop.close()  # no stop()
    assert loop.is_closed() and stream.state == "stopped" and stream.error is None
    assert stream.handler_errors == 0
    assert not [t for t in asyncio.all_tasks(loop) if not t.done()]
    gc.collect()
    assert open_fds() == fds_before
    assert len(hosts._GUEST_RUNS) == 0
    assert trio.run(trio.to_thread.run_sync, lambda: 7) == 7  # trio works in this thread again
    messages = [r.getMessage() for r in caplog.records]
    assert any("being closed with 1 BybitHybridStream(s) still running" in m for m in messages), messages
    assert not any("trio_asyncio" in m for m in messages)
    # and a new stream on a new loop in this thread starts a fresh guest run
    handler2 = Recorder()

    async def again() -> None:
        async with BybitHybridStream(sim.api_key, sim.api_secret, handler2, **sim.stream_kwargs()):
            await handler2.wait_for(lambda n, d: d["source"] == "ticker")

    run_on("asyncio", again)


@pytest.mark.parametrize("host", ["asyncio", "trio-asyncio"])
def test_asyncio_run_ending_without_stop_blames_no_handler_and_leaves_no_task(host, simulator, caplog):
    sim = simulator(rate=50)
    caplog.set_level(logging.INFO)
    streams: list[BybitHybridStream] = []
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        await open_linear_positions(sim, ["BTCUSDT", "ETHUSDT"])
        handler = Recorder()
        stream = BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs())
        streams.append(stream)
        await stream.start()
        await handler.wait_for(lambda n, d: d["source"] == "ticker")  # and return without stop()

    run_on(host, main)
    gc.collect()
    stream = streams[0]
    assert stream.state == "stopped" and stream.error is None
    assert stream.handler_errors == 0
    assert not [t for t in asyncio.all_tasks(loops[0]) if not t.done()]
    messages = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert not [m for m in messages if m[1] >= logging.ERROR], messages
    assert not [m for m in messages if "Task was destroyed" in m[2] or "restarting" in m[2]], messages


def test_closing_the_loop_without_stop_runs_the_loop_so_the_bots_pending_tasks_resume(simulator, caplog):
    """What the close hook costs, pinned (documented in docs/embedding.md): stopping the
    streams needs the loop to run (our host and delivery tasks, handler calls in progress
    only advance on it, and asyncio has no public way to run some ready callbacks but not
    others), so while ``loop.close()`` stops them the bot's own pending tasks run too. A
    plain asyncio ``close()`` runs nothing: with the stream stopped first, the bot's task
    takes at most the one step already due when ``main()`` returned."""
    sim = simulator(rate=20)
    caplog.set_level(logging.INFO)

    run_on("asyncio", lambda: open_linear_positions(sim, ["BTCUSDT"]))

    def close_after_main(stop_first: bool) -> tuple[int, int, BybitHybridStream]:
        loop = asyncio.SelectorEventLoop()
        steps = [0]
        handler = Recorder()
        stream = BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs())

        async def bot_task() -> None:  # e.g. a bot's own reconciler, pending when main() ends
            while True:
                await asyncio.sleep(0)
                steps[0] += 1

        async def main() -> None:
            await stream.start()
            loop.create_task(bot_task())
            await handler.wait_for(lambda n, d: d["source"] == "ticker")
            if stop_first:
                await stream.stop()

        loop.run_until_complete(asyncio.wait_for(main(), 30))
        at_end = steps[0]
        loop.close()
        return at_end, steps[0], stream

    at_end, after_close, stream = close_after_main(stop_first=True)
    assert after_close - at_end <= 1, (at_end, after_close)  # asyncio's own close() runs nothing
    at_end, after_close, stream = close_after_main(stop_first=False)
    assert stream.state == "stopped" and stream.error is None
    assert after_close - at_end > 1, (at_end, after_close)  # the close hook ran the loop: the bot's task resumed
    gc.collect()  # the bot's task is still pending, as asyncio leaves it ("Task was destroyed...")
