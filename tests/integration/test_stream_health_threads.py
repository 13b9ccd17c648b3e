"""HybridStream.health() and positions() from another thread (a metrics exporter's): the
same report as on trio's thread, on the run's own clock (a MockClock here), while the actors
keep writing."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
import trio

from conftest import CUSHION_AUTOJUMP
from stack import TEST_TIMEOUT, running

pytestmark = pytest.mark.integration


def _without_moving_figures(report: dict) -> dict:
    for actor in report["actors"].values():
        actor.pop("since_s")
    for connection in report["connections"].values():
        connection.pop("last_frame_age_s")
    report["events"].pop("last_event_age_s", None)
    report.get("stream_state", {}).pop("since_s", None)
    for row in report.get("open_positions", ()):
        row.pop("mark_age_s", None)
    return report


async def test_health_and_positions_from_a_worker_thread(loopback_clock):
    # virtual time must not jump while a worker thread runs: that waits on the OS scheduler
    loopback_clock.autojump_threshold = CUSHION_AUTOJUMP
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            s.sim.control.open_position("BTCUSDT", "Buy", "1")
            await s.sim.observe.wait_subscribed("linear", ["BTCUSDT"])
            await s.log.wait_for(lambda e: e.symbol == "BTCUSDT")
            await trio.sleep(30)  # virtual: the MockClock jumps
            here = s.stream.health()
            there = await trio.to_thread.run_sync(s.stream.health)
            assert there.status == here.status
            assert _without_moving_figures(there.as_dict()) == _without_moving_figures(here.as_dict())
            # the thread read the run's clock (virtual time, 30 s on), not a real one
            assert min(a["since_s"] for a in there.actors.values()) >= 30
            assert await trio.to_thread.run_sync(s.stream.positions) == s.stream.positions()
            # and a reader that never stops while prices move
            errors: list[BaseException] = []
            stop = threading.Event()

            def hammer() -> int:
                reads = 0
                while not stop.is_set():
                    try:
                        s.stream.health().as_dict()
                        s.stream.positions()
                    except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                        errors.append(exc)
                        return reads
                    reads += 1
                return reads

            async with trio.open_nursery() as nursery:
                results: list[int] = []

                async def read() -> None:
                    results.append(await trio.to_thread.run_sync(hammer))

                nursery.start_soon(read)
                for price in range(60001, 60031):
                    s.sim.control.set_mark_price("BTCUSDT", str(price))
                    await s.log.wait_for(lambda e, p=price: e.symbol == "BTCUSDT" and e.mark_price == p)
                stop.set()
            assert errors == [] and results[0] > 0


async def test_position_rows_say_how_old_the_mark_is(loopback_clock):
    """A row's ``mark_age_s`` counts from the receipt of the ticker mark the row shows, not
    from the row's last event (here a private push a second later, carrying the same mark),
    in decimal strings as the exchange spelt them, whether the report is built on trio's
    thread or another."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            s.sim.control.open_position("BTCUSDT", "Buy", "0.001")
            await s.sim.observe.wait_subscribed("linear", ["BTCUSDT"])
            s.sim.control.set_mark_price("BTCUSDT", "60001.5")
            await s.log.wait_for(lambda e: e.symbol == "BTCUSDT" and e.mark_price == Decimal("60001.5"))
            s.sim.control.stop_ticker("BTCUSDT")  # no frame after this one: the mark only ages
            await trio.sleep(1)
            s.sim.control.modify_position("BTCUSDT", take_profit="70000")
            await s.log.wait_for(lambda e: e.symbol == "BTCUSDT" and e.take_profit == Decimal("70000"))
            await trio.sleep(1)  # 2 s in all: under stale_after (3 s), no REST fallback mark yet
            loopback_clock.autojump_threshold = CUSHION_AUTOJUMP  # a worker thread runs below
            for report in (s.stream.health(), await trio.to_thread.run_sync(s.stream.health)):
                (row,) = report.open_positions
                assert (row["symbol"], row["side"], row["size"], row["mark_price"]) == ("BTCUSDT", "Buy", "0.001",
                                                                                       "60001.50")
                assert row["source"] == "position" and type(row["unrealized_pnl"]) is str
                assert 2.0 <= row["mark_age_s"] < 2.5, row  # 1.0 if counted from the push
