"""What a bot author may rely on beyond ``async def`` handlers, under both hosts, against the
simulator on loopback: plain ``def`` handlers; ``health()``/``positions()``/``state`` from
another thread; a blocked loop shows as a stall; ``async for`` over ``stream.events()``; the
frozen records instead of dicts; ``demo=True`` and ``endpoints=``."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from decimal import Decimal
from typing import Any

import attrs
import pytest

from bridge_support import (ALL_HOSTS, HOSTS, Recorder, control, open_linear_positions, run_on, set_marks, simulator,
                            wait_subscribed, wait_until)
from hybrid_actors import BybitHybridStream, Endpoints, HealthReport, PositionClosed, PositionUpdate
from hybrid_actors.config import AlertPolicy

pytestmark = pytest.mark.system
__all__ = ["simulator"]  # the fixture, imported



@pytest.mark.parametrize("host", ALL_HOSTS)
def test_a_plain_def_handler_receives_every_event_without_errors(host, simulator):
    sim = simulator(rate=0)  # no random ticks: every event is one we cause

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT", "ETHUSDT"])
        seen = Recorder()
        returned: list[object] = []

        def handler(name: str, data: dict[str, Any]) -> int:  # not async; its result is not awaitable
            seen.record(name, data)
            returned.append(len(seen.events))
            return len(seen.events)

        stream = BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs())
        await stream.start()
        try:
            await wait_subscribed(stream, 2)
            for step in range(1, 6):
                await set_marks(sim, ("BTCUSDT", "ETHUSDT"), 3000 + step)
                for symbol in ("BTCUSDT", "ETHUSDT"):
                    await seen.wait_for(lambda n, d, s=symbol, p=Decimal(3000 + step): d["symbol"] == s
                                        and d["mark_price"] == p)
            await control(sim, "modify_position", symbol="ETHUSDT", size="2")
            await seen.wait_for(lambda n, d: d["symbol"] == "ETHUSDT" and d["size"] == Decimal(2))
            await control(sim, "close_position", symbol="BTCUSDT")
            await seen.wait_for(lambda n, d: n == "position.closed" and d["symbol"] == "BTCUSDT")
            assert stream.handler_errors == 0
            calls = stream.health().events["handler_calls"]
            assert calls == len(seen.events) + len(seen.notices) == len(returned)
            assert "live" in seen.states() and len(seen.events) >= 13
        finally:
            await stream.stop()
        for symbol in ("BTCUSDT", "ETHUSDT"):
            marks = [d["mark_price"] for n, d in seen.of(symbol) if d["source"] == "ticker"]
            assert marks[-5:] == [Decimal(3000 + step) for step in range(1, 6)], (symbol, marks)  # after the snapshot's

    run_on(host, main)


def _comparable(report: HealthReport) -> dict[str, Any]:
    """The report without the figures that move with the clock between two calls."""
    data = report.as_dict()
    for actor in data["actors"].values():
        actor.pop("since_s")
    for connection in data["connections"].values():
        connection.pop("last_frame_age_s")
    for key in ("last_event_age_s", "hybrid_last_event_age_s", "hybrid_quiet_s", "loop_stall_last_age_s",
                "loop_blocked_ms"):
        data["events"].pop(key, None)
    data.get("stream_state", {}).pop("since_s", None)
    for row in data.get("open_positions", ()):
        row.pop("mark_age_s", None)
    return data


@pytest.mark.parametrize("host", ALL_HOSTS)
def test_health_positions_and_state_from_a_worker_thread_equal_the_loop_threads(host, simulator):
    sim = simulator(rate=20)

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT", "ETHUSDT"])
        seen = Recorder()
        async with BybitHybridStream(sim.api_key, sim.api_secret, seen, **sim.stream_kwargs()) as stream:
            await wait_subscribed(stream, 2)
            await seen.wait_for(lambda n, d: d["source"] == "ticker")
            from_thread: list[Any] = []

            def read() -> None:
                from_thread.append((stream.health(), stream.positions(), stream.state))

            here = (stream.health(), stream.positions(), stream.state)
            worker = threading.Thread(target=read)
            worker.start()
            worker.join(10)  # on purpose on the loop's thread: nothing moves meanwhile
            there = from_thread[0]
            assert there[0].status == here[0].status == "ok", (there[0].problems, here[0].problems)
            assert _comparable(there[0]) == _comparable(here[0])
            assert there[1] == here[1] and len(there[1]) == 2
            assert there[2] == here[2] == "running"
            # and while the loop goes on (the actors writing), a thread keeps reading without error
            stop = threading.Event()
            errors: list[BaseException] = []
            reads = 0

            def hammer() -> None:
                nonlocal reads
                while not stop.is_set():
                    try:
                        stream.health().as_dict()
                        stream.positions()
                        reads += 1
                    except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                        errors.append(exc)
                        return

            reader = threading.Thread(target=hammer)
            reader.start()
            try:
                mark = seen.mark()
                for _ in range(3):
                    await seen.wait_for(lambda n, d: d["source"] == "ticker", after=seen.mark())
            finally:
                stop.set()
                await asyncio.get_running_loop().run_in_executor(None, reader.join, 10)
            assert errors == [] and reads > 0 and seen.mark() > mark

    run_on(host, main)


#: how long the handler below blocks the loop's thread: the 0.2 s threshold plus the watch's
#: 0.1 s interval (its timer may have just been armed when the block starts) plus 0.05 s margin
STALL_THRESHOLD, WATCH_INTERVAL, BLOCK = 0.2, 0.1, 0.35


@pytest.mark.parametrize("host", HOSTS)
def test_a_handler_that_blocks_the_loop_shows_as_a_stall(host, simulator, caplog):
    """The handler blocks on the first of the start-up snapshot's events (one REST page, so one
    batch): the others were read before the block and wait behind it, so delays measured from
    the frame's read show it. A thread reading health() while the loop is still blocked sees
    it blocked; afterwards health() and the log report the stall, and the stream sends a
    ``loop_stalled`` warning (``stream.alert``) to the handler."""
    sim = simulator(rate=20)
    caplog.set_level(logging.WARNING, logger="hybrid_actors.bridge")

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT", "ETHUSDT", "SOLUSDT"])
        during: list[HealthReport] = []
        blocked = asyncio.Event()
        sample_now = threading.Event()

        def sample_health() -> None:  # an exporter's thread: it reads health() when told to
            if sample_now.wait(10):
                during.append(stream.health())

        alerts: list[dict[str, Any]] = []

        def handler(name: str, data: dict[str, Any]) -> None:
            if name == "stream.alert":
                alerts.append(data)
            if data.get("source") == "rest" and not blocked.is_set():
                blocked.set()
                reader = threading.Thread(target=sample_health)
                reader.start()
                # The block under test must be real: the stall watch measures how late the
                # loop's own timer fires on the monotonic clock, which no mock clock moves, and
                # synchronous work on this thread is exactly what it exists to see (trio cannot
                # read its sockets meanwhile either). Kept as short as the checks allow (BLOCK).
                time.sleep(BLOCK)
                sample_now.set()
                reader.join(10)  # the loop stays blocked while the other thread reads health()

        stream = BybitHybridStream(sim.api_key, sim.api_secret, handler, stall_threshold=STALL_THRESHOLD,
                                   **sim.stream_kwargs())
        async with stream:
            await asyncio.wait_for(blocked.wait(), 10)
            await wait_until(lambda: stream.health().events["loop_stalls"] >= 1, what="the stall to be counted")
            events = stream.health().events
            await wait_until(lambda: any(a["name"] == "loop_stalled" and a["state"] == "firing" for a in alerts),
                             what="the loop_stalled alert")
            assert any(a["name"] == "loop_stalled" for a in stream.health().alerts)
        assert during and during[0].status == "degraded", during
        assert any("loop's thread has been blocked for" in p for p in during[0].problems), during[0].problems
        assert during[0].events["loop_blocked_ms"] >= STALL_THRESHOLD * 1000
        least = (BLOCK - WATCH_INTERVAL) * 1000  # the watch's timer was armed at most one interval before
        assert least <= events["loop_stall_max_ms"] < 5000, events
        assert events["loop_stall_last_age_s"] is not None and events["loop_stall_threshold_ms"] == 200
        # read before the block, delivered after it (in the same batch)
        assert events["delivery_delay"]["max_ms"] >= BLOCK * 1000 - 50, events["delivery_delay"]
        assert events["bridge_delay"]["max_ms"] >= BLOCK * 1000 - 50, events["bridge_delay"]

    run_on(host, main)
    assert any("loop's thread was blocked for" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("host", HOSTS)
def test_a_stall_on_a_quiet_stream_fires_loop_stalled_once_the_loop_runs_again(host, simulator):
    """No position, no price: nothing but the stall itself can wake the alert actor. The
    bot's own code (not the handler) blocks the loop; ``loop_stalled`` must still fire
    right after, not wait for the next event, which may be minutes away."""
    sim = simulator(rate=0)

    async def main() -> None:
        notices: list[dict[str, Any]] = []

        def handler(name: str, data: dict[str, Any]) -> None:
            notices.append(data)

        # evaluated at most every 0.1 s: the start-up's wakeups are over quickly
        async with BybitHybridStream(sim.api_key, sim.api_secret, handler, stall_threshold=STALL_THRESHOLD,
                                     alerts=AlertPolicy(interval=0.1), **sim.stream_kwargs()) as stream:
            await wait_until(lambda: any(d.get("state") == "live" for d in notices), what="the live notice")
            await asyncio.sleep(0.3)  # (real time: the alert actor's trio clock is the real one too)
            quiet = len(notices)
            time.sleep(BLOCK)  # a real block (see above), by a bot task: a sync DB call, say
            await wait_until(lambda: stream.health().events["loop_stalls"] == 1, timeout=1, what="the stall")
            await wait_until(lambda: any(d["event"] == "stream.alert" and d["name"] == "loop_stalled"
                                         and d["state"] == "firing" for d in notices), timeout=1,
                             what="the loop_stalled alert")
            assert [d["event"] for d in notices[quiet:]] == ["stream.alert"]  # it was quiet: nothing else came
            assert any(a["name"] == "loop_stalled" for a in stream.health().alerts)

    run_on(host, main)


@pytest.mark.parametrize("host", ALL_HOSTS)
def test_async_for_over_events_beside_a_handler_and_as_records(host, simulator):
    sim = simulator(rate=0)

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT"])
        seen = Recorder()
        stream = BybitHybridStream(sim.api_key, sim.api_secret, seen, **sim.stream_kwargs())
        await stream.start()
        dicts: list[dict[str, Any]] = []
        records: list[Any] = []

        async def read_dicts() -> None:
            async for event in stream.events():
                if event["event"].startswith("position."):  # (the stream.* notices come too)
                    dicts.append(event)

        async def read_records() -> None:
            async for event in stream.events(records=True):
                if event.event.startswith("position."):
                    records.append(event)

        readers = [asyncio.create_task(read_dicts()), asyncio.create_task(read_records())]
        try:
            await wait_subscribed(stream, 1)
            await asyncio.sleep(0)  # both iterators are waiting
            await control(sim, "set_mark_price", symbol="BTCUSDT", price="4100")
            await control(sim, "open_position", symbol="ETHUSDT", side="Sell", size="3")
            await control(sim, "close_position", symbol="BTCUSDT")
            await wait_until(lambda: any(getattr(r, "size", None) == 0 for r in records), what="the close")
            await seen.wait_for(lambda n, d: n == "position.closed")
        finally:
            await stream.stop()
        await asyncio.wait_for(asyncio.gather(*readers), 10)  # both iterations end with the stream
        assert [type(r) for r in records if r.symbol == "BTCUSDT"][-1] is PositionClosed
        assert any(type(r) is PositionUpdate and r.symbol == "ETHUSDT" and r.size == 3 and r.side == "Sell"
                   for r in records)
        # each iterator sees every event from the moment it first waits; the two tasks take
        # their first step at slightly different moments, so one may have missed the first
        # event(s) the other saw: the later one's list is a suffix of the earlier one's
        as_records = [(r.symbol, r.size, r.mark_price) for r in records]
        as_dicts = [(d["symbol"], d["size"], d["mark_price"]) for d in dicts]
        shorter, longer = sorted((as_records, as_dicts), key=len)
        assert shorter and longer[len(longer) - len(shorter):] == shorter
        assert [(d["symbol"], d["size"], d["mark_price"], d["source"]) for d in dicts] == [
            (d["symbol"], d["size"], d["mark_price"], d["source"]) for _, d in seen.events[-len(dicts):]]
        assert any(d["symbol"] == "BTCUSDT" and d["mark_price"] == Decimal(4100) for d in dicts)

    run_on(host, main)


@pytest.mark.parametrize("host", HOSTS)
def test_a_stuck_events_iterator_holds_back_the_handler_and_health_names_the_iterator(host, simulator):
    """Backpressure is shared: an ``events()`` iterator nobody reads any more holds back new
    events for the (fast) handler too, once ``event_buffer`` lifecycle events wait for it.
    health() must blame the iterator, not the handler; closing the iterator lets everything
    through, every lifecycle event in order."""
    sim = simulator(rate=0)

    async def main() -> None:
        sizes: list[Decimal] = []

        def handler(name: str, data: dict[str, Any]) -> None:
            if name.startswith("position.") and data["symbol"] == "BTCUSDT":
                sizes.append(data["size"])

        stream = BybitHybridStream(sim.api_key, sim.api_secret, handler, event_buffer=4, **sim.stream_kwargs())
        await stream.start()
        try:
            feed = stream.events()
            release = asyncio.Event()

            async def audit() -> None:  # reads one event, then waits for something else forever
                async for _ in feed:
                    await release.wait()

            reader = asyncio.create_task(audit())
            await control(sim, "open_position", symbol="BTCUSDT", side="Buy", size="1")
            for size in range(2, 10):
                await control(sim, "modify_position", symbol="BTCUSDT", size=str(size))

            def iterator_blamed() -> HealthReport | None:
                report = stream.health()
                return report if any("an events() iterator is behind" in p for p in report.problems) else None

            report = await wait_until(iterator_blamed, timeout=3, what="health() to name the iterator")
            assert report.status == "degraded"
            assert not any("event handler is behind" in p for p in report.problems), report.problems
            assert report.events["bridge_iterator_lifecycle_queued"] == 4
            assert report.events["bridge_lifecycle_queued"] == 0  # the handler has nothing waiting
            assert Decimal(9) not in sizes  # held back for the handler too
            reader.cancel()
            await asyncio.wait([reader])
            await feed.aclose()  # the bot's fix: close the iterator it stopped reading
            await wait_until(lambda: sizes and sizes[-1] == Decimal(9), timeout=3, what="the last size")
            changes = [s for i, s in enumerate(sizes) if i == 0 or s != sizes[i - 1]]  # (prices repeat a size)
            assert changes == [Decimal(n) for n in range(1, 10)]  # no size change lost, in order
            assert not any("behind" in p for p in stream.health().problems)
        finally:
            await stream.stop()

    run_on(host, main)


@pytest.mark.parametrize("host", HOSTS)
def test_records_option_hands_the_handler_frozen_records_and_events_alone_works(host, simulator):
    sim = simulator(rate=0)

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT"])
        got: list[tuple[str, Any]] = []
        done = asyncio.Event()

        async def handler(name: str, record: Any) -> None:
            got.append((name, record))
            if name == "position.closed":
                done.set()

        async with BybitHybridStream(sim.api_key, sim.api_secret, handler, records=True,
                                     **sim.stream_kwargs()) as stream:
            await control(sim, "close_position", symbol="BTCUSDT")
            await asyncio.wait_for(done.wait(), 10)
        name, record = got[-1]
        assert isinstance(record, PositionClosed) and record.symbol == "BTCUSDT" and record.size == 0
        assert all(isinstance(r, (PositionUpdate, PositionClosed)) for n, r in got if n.startswith("position."))
        assert all(r.event == n for n, r in got) and any(n == "stream.state" for n, _ in got)  # notices too
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            record.size = Decimal(1)  # type: ignore[misc]
        # no handler at all: events() alone
        only = BybitHybridStream(sim.api_key, sim.api_secret, None, **sim.stream_kwargs())
        await only.start()
        seen: list[dict[str, Any]] = []

        async def read() -> None:
            async for event in only.events():
                seen.append(event)
                if event.get("symbol") == "SOLUSDT":
                    await only.stop()

        reader = asyncio.create_task(read())
        await asyncio.sleep(0)
        await control(sim, "open_position", symbol="SOLUSDT", side="Buy", size="5")
        await asyncio.wait_for(reader, 10)
        assert only.state == "stopped" and seen[-1]["size"] == Decimal(5)

    run_on(host, main)


def test_demo_true_chooses_bybits_demo_trading_endpoints():
    stream = BybitHybridStream("abcd1234", "secret-0", lambda name, data: None, demo=True)
    endpoints = stream.config.endpoints
    assert endpoints.ws_private_url == "wss://stream-demo.bybit.com/v5/private"
    assert endpoints.public_url("linear") == "wss://stream.bybit.com/v5/public/linear"  # public data: mainnet
    assert endpoints.rest_url == "https://api-demo.bybit.com"
    assert endpoints == Endpoints.demo()
    assert BybitHybridStream("abcd1234", "secret-0", None).config.endpoints == Endpoints.mainnet()
    assert BybitHybridStream("abcd1234", "secret-0", None, testnet=True).config.endpoints == Endpoints.testnet()


@pytest.mark.parametrize("host", HOSTS)
def test_demo_shaped_endpoints_reach_the_simulator(host, simulator):
    """endpoints= shaped like demo trading's: the private stream and REST on one server (the
    "demo" host, holding the account's positions), the public streams on another (the
    "mainnet" one, setting the marks). Both are simulators on loopback."""
    demo_host, mainnet = simulator(rate=0), simulator(rate=0)
    endpoints = attrs.evolve(Endpoints.demo(), ws_private_url=f"{demo_host.ws_url}/v5/private",
                             rest_url=demo_host.rest_url, ws_public_base=mainnet.ws_url, verify_tls=True)

    async def main() -> None:
        await open_linear_positions(demo_host, ["BTCUSDT"])
        seen = Recorder()
        async with BybitHybridStream(demo_host.api_key, demo_host.api_secret, seen, endpoints=endpoints) as stream:
            assert stream.config.endpoints == endpoints
            assert [p.symbol for p in stream.positions()] == ["BTCUSDT"]
            await wait_subscribed(stream, 1)
            await control(mainnet, "set_mark_price", symbol="BTCUSDT", price="5123")
            await seen.wait_for(lambda n, d: d["mark_price"] == Decimal(5123))
            await control(demo_host, "modify_position", symbol="BTCUSDT", size="4")
            await seen.wait_for(lambda n, d: d["size"] == Decimal(4) and d["source"] == "position")

    run_on(host, main)
