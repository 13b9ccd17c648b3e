"""Position lifecycle where a stream missed something: a close pushed while the private
socket was down, a push the codec could not read, a reversal through zero in one record,
and a REST list that missed a live position. Each is healed or reported within seconds,
not at the next 5-minute reconciliation.

Against the simulator on loopback, on virtual time."""

from __future__ import annotations

from decimal import Decimal

import random

import attrs
import orjson
import pytest
import trio

from hybrid_actors import StreamConfig
from hybrid_actors.supervisor import open_hybrid_stream
from hybrid_actors.testing.simulator import open_simulator, trio_wall_clock

from hybrid_actors.actors import hub as hub_module
from hybrid_actors.actors.emitter import MAX_FOLLOW_UPS
from hybrid_actors.state import PositionClosed, PositionUpdate
from stack import TEST_TIMEOUT, eventually, running, sim_config

POSITION_LIST = "/v5/position/list"

pytestmark = [pytest.mark.integration, pytest.mark.failover]


async def test_a_close_missed_while_the_private_socket_was_down_comes_within_seconds(loopback_clock):
    # The position was updated less than the snapshot skew (1 s) before the reconnect's
    # snapshot, so that snapshot cannot tell "closed" from "updated after the list was
    # read": the follow-up snapshot read after the update can, ~1.5 s later.
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim = s.sim
            sim.control.open_position("BTCUSDT", "Buy", "1")
            await s.wait_subscriptions_match_positions()
            sim.control.modify_position("BTCUSDT", size="2")  # the bot adds to it...
            await s.log.wait_for(lambda e: e.symbol == "BTCUSDT" and e.size == Decimal(2))
            sim.control.drop_private("reset")  # ...the private socket drops...
            await sim.observe.wait_until(lambda: not sim.observe.open_connections("private"))
            closed_at = trio.current_time()
            mark = s.log.mark()
            sim.control.close_position("BTCUSDT")  # ...and the close fills meanwhile: pushed to nobody
            await sim.observe.wait_connection("private", 2)
            closed = await s.log.wait_for(lambda e: isinstance(e, PositionClosed), after=mark)
            assert closed.symbol == "BTCUSDT" and closed.source == "rest"
            assert trio.current_time() - closed_at < 4.0
            assert not s.stream.positions()
            # nothing about the closed position after its close
            assert [type(e) for e in s.log.events[mark:] if e.symbol == "BTCUSDT"] == [PositionClosed]
            assert s.hub.health.reconcile_corrections == 1


async def test_a_push_the_codec_refused_is_healed_from_rest_at_once(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim = s.sim
            sim.control.open_position("ETHUSDT", "Sell", "3")
            await s.wait_subscriptions_match_positions()
            mark = s.log.mark()
            sent_at = trio.current_time()
            # the exchange closed it, and its push reached us unreadable (one record, so the
            # whole frame is malformed: nothing in it was usable)
            sim.exchange.book.close("linear", "ETHUSDT", 0)
            sim.control.inject("raw", "private", text=unreadable_close(sim, "ETHUSDT"))
            closed = await s.log.wait_for(lambda e: isinstance(e, PositionClosed), after=mark)
            assert closed.symbol == "ETHUSDT" and closed.source == "rest"
            assert trio.current_time() - sent_at < 3.0  # not the 5-minute reconciliation
            assert s.hub.health.link("private").malformed == 1


def unreadable_close(sim, symbol: str) -> str:  # type: ignore[no-untyped-def]
    bad = {"category": "linear", "symbol": symbol, "side": "", "size": "0.0.1", "positionIdx": 0,
           "entryPrice": "0", "markPrice": "3000", "updatedTime": str(sim.exchange.now_ms()), "seq": 9}
    return orjson.dumps({"id": "x1", "topic": "position", "creationTime": sim.exchange.now_ms(),
                         "data": [bad]}).decode()


async def test_an_unreadable_close_is_healed_even_when_rest_lags_behind_it(loopback_clock):
    # the snapshot asked at once may be read before the change (REST trails the matching engine
    # by up to the skew): the one asked 1.5 s later is read after it
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim = s.sim
            sim.control.open_position("ETHUSDT", "Sell", "3")
            await s.wait_subscriptions_match_positions()
            await trio.sleep(5)  # long settled: nothing unconfirmed on its account
            mark = s.log.mark()
            sent_at = trio.current_time()
            served = s.hub.health.reconciliations
            sim.control.inject("raw", "private", text=unreadable_close(sim, "ETHUSDT"))
            # the list asked at once is served before REST shows the close
            await eventually(lambda: s.hub.health.reconciliations > served, first_step=0.001)
            sim.exchange.book.close("linear", "ETHUSDT", 0)
            closed = await s.log.wait_for(lambda e: isinstance(e, PositionClosed), after=mark)
            assert closed.symbol == "ETHUSDT" and closed.source == "rest"
            assert trio.current_time() - sent_at < 3.0


async def test_a_flood_of_unreadable_frames_asks_rest_a_bounded_number_of_times(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim = s.sim
            sim.control.open_position("ETHUSDT", "Sell", "3")
            await s.wait_subscriptions_match_positions()
            await trio.sleep(5)
            snapshots = s.hub.health.reconciliations
            for _ in range(100):  # ten seconds of a bad frame every 0.1 s
                sim.control.inject("non_json", "private")
                await trio.sleep(0.1)
            await trio.sleep(3)
            asked = s.hub.health.reconciliations - snapshots
            # one at once per 1.5 s, one 1.5 s after the last: ~8, not 100
            assert 2 <= asked <= 10 * 2 / 1.5 + 2, asked
            assert [p.symbol for p in s.stream.positions()] == ["ETHUSDT"]


async def test_a_reversal_through_zero_is_a_close_then_an_open(loopback_clock):
    # one-way mode: an order larger than the position reverses it, in one pushed record
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim = s.sim
            sim.control.open_position("XRPUSDT", "Buy", "100", entry_price="0.5")
            await s.wait_subscriptions_match_positions()
            await s.log.wait_for(lambda e: e.symbol == "XRPUSDT" and e.source == "ticker")
            mark = s.log.mark()
            sim.control.modify_position("XRPUSDT", side="Sell", size="40", entry_price="0.6")
            short = await s.log.wait_for(lambda e: e.symbol == "XRPUSDT" and e.side == "Sell", after=mark)
            closed, opened = s.log.events[mark:][:2]
            assert type(closed) is PositionClosed and (closed.side, closed.size, closed.entry_price) == (
                "Buy", 0, Decimal("0.5"))
            assert opened is short and type(short) is PositionUpdate and short.source == "position"
            assert (short.size, short.entry_price) == (Decimal(40), Decimal("0.6"))
            assert [(p.side, p.size) for p in s.stream.positions()] == [("Sell", Decimal(40))]
            await trio.sleep(s.hub.config.subscriptions.unsubscribe_grace * 3)
            assert sim.observe.requests("linear", op="unsubscribe") == []  # the ticker stays


async def test_a_reversal_is_a_close_then_an_open_from_rest_too(loopback_clock):
    # rest mode (the fallback, or after a rollback): the consumer's view is synchronised from
    # each REST snapshot, which must say the same as the live path
    with trio.fail_after(TEST_TIMEOUT):
        async with running(mode="rest") as s:
            sim = s.sim
            sim.control.open_position("XRPUSDT", "Buy", "100", entry_price="0.5")
            await s.log.wait_for(lambda e: e.symbol == "XRPUSDT")
            mark = s.log.mark()
            sim.control.modify_position("XRPUSDT", side="Sell", size="40", entry_price="0.6")
            short = await s.log.wait_for(lambda e: e.symbol == "XRPUSDT" and e.side == "Sell", after=mark)
            closed, opened = s.log.events[mark:][:2]
            assert type(closed) is PositionClosed and (closed.side, closed.size, closed.source) == ("Buy", 0, "rest")
            assert opened is short and (short.size, short.entry_price, short.source) == (Decimal(40), Decimal("0.6"),
                                                                                       "rest")


async def test_a_reconciliation_undoes_the_close_of_a_list_that_missed_a_live_position(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim = s.sim
            sim.control.open_position("SOLUSDT", "Buy", "5")
            await s.wait_subscriptions_match_positions()
            await trio.sleep(5)  # well past the snapshot skew: the list is authoritative for it
            mark = s.log.mark()
            sim.control.rest_omit("SOLUSDT")  # one lagging list leaves the live position out
            s.hub.request_reconcile()
            closed = await s.log.wait_for(lambda e: isinstance(e, PositionClosed), after=mark)
            assert closed.symbol == "SOLUSDT" and closed.source == "rest"
            # the next reconciliation (read later) lists it, unchanged since it opened: open again
            await trio.sleep(1)
            s.hub.request_reconcile()
            back = await s.log.wait_for(lambda e: isinstance(e, PositionUpdate), after=mark + 1)
            assert back.symbol == "SOLUSDT" and back.source == "rest" and back.size == Decimal(5)
            assert [(p.symbol, p.size) for p in s.stream.positions()] == [("SOLUSDT", Decimal(5))]
            assert s.hub.health.reconcile_corrections == 2


async def test_follow_up_snapshots_stop_after_a_few_in_a_row(loopback_clock, caplog):
    # REST keeps leaving out a position that pushes keep updating: each list is "too early"
    # for it, so each asks for a follow-up; after MAX_FOLLOW_UPS in a row the periodic
    # reconciliation takes over instead of a REST request every 1.5 s
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim = s.sim
            sim.control.open_position("XRPUSDT", "Buy", "10")
            await s.wait_subscriptions_match_positions()
            await trio.sleep(5)
            lists = len(sim.observe.rest_calls(POSITION_LIST))
            s.hub.request_reconcile()  # one plain snapshot: how many calls (pages) one costs
            await eventually(lambda: s.hub.health.reconciliations >= 1)
            per_snapshot = len(sim.observe.rest_calls(POSITION_LIST)) - lists
            lists += per_snapshot
            sim.control.rest_omit("XRPUSDT", count=None)
            for step in range(60):  # an order amended every 0.4 s for 24 s: a push each time
                sim.control.modify_position("XRPUSDT")
                if step == 1:
                    s.hub.request_reconcile()
                await trio.sleep(0.4)
            asked = len(sim.observe.rest_calls(POSITION_LIST)) - lists
            assert asked == (1 + MAX_FOLLOW_UPS) * per_snapshot, (asked, per_snapshot)
            assert f"{MAX_FOLLOW_UPS} follow-up REST snapshots in a row" in caplog.text
            assert [p.symbol for p in s.stream.positions()] == ["XRPUSDT"]  # never closed



async def test_an_unusable_rest_record_does_not_keep_the_stream_from_starting(loopback_clock):
    # at start the snapshot is what the stream waits for: one bad record in it must not
    # stop it, nor close (or hide) the position whose record it was; its scope closes nothing
    wall = trio_wall_clock()
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(attrs.evolve(sim_config(), wall_clock=wall)) as sim:
            sim.control.open_position("BTCUSDT", "Buy", "1")
            sim.control.open_position("ETHUSDT", "Sell", "2")
            sim.control.rest_garble("ETHUSDT", {"size": "0.0.1"})  # the first list only
            config = StreamConfig(credentials=sim.credentials, endpoints=sim.endpoints)
            async with open_hybrid_stream(config, wall_clock=wall, rng=random.Random(5)) as stream:
                assert [p.symbol for p in stream.positions()] == ["BTCUSDT"]
                assert "1 record(s) unusable" in stream.hub.rest.paging_problems[("linear", "USDT")]
                # the next reconciliation reads it whole: ETHUSDT is there, the problem gone
                stream.hub.request_reconcile()
                await eventually(lambda: len(stream.positions()) == 2)
                assert stream.hub.rest.paging_problems == {}


async def test_in_rest_mode_a_persistently_unusable_record_costs_only_its_own_symbol(loopback_clock):
    # rest mode: REST is the only source of closes; one record REST always garbles must not
    # stop the closes of every other position in its scope
    with trio.fail_after(TEST_TIMEOUT):
        async with running(mode="rest") as s:
            sim = s.sim
            sim.control.open_position("BTCUSDT", "Buy", "1")
            sim.control.open_position("ETHUSDT", "Sell", "2")
            await s.log.wait_for(lambda e: e.symbol == "ETHUSDT")
            sim.control.rest_garble("ETHUSDT", {"size": "0.0.1"}, count=None)
            mark = s.log.mark()
            sim.control.close_position("BTCUSDT")
            closed = await s.log.wait_for(lambda e: isinstance(e, PositionClosed), after=mark)
            assert closed.symbol == "BTCUSDT"
            assert sorted(p.symbol for p in s.stream.positions()) == ["ETHUSDT"]  # kept, not closed


async def test_unreadable_pushes_do_not_stop_the_private_reader_behind_a_full_lifecycle_channel(
        loopback_clock, caplog, monkeypatch):
    monkeypatch.setattr(hub_module, "LIFECYCLE_BUFFER", 16)  # 256 by default: the same, sooner
    # A consumer that stopped reading: the combiner waits for room in the event queue, the
    # lifecycle channel fills with pushes. Bad frames must still be read and reported,
    # and the snapshot they call for asked, without waiting for the consumer.
    wall = trio_wall_clock()
    config = attrs.evolve(sim_config(), wall_clock=wall)
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config) as sim:
            stream_config = StreamConfig(credentials=sim.credentials, endpoints=sim.endpoints, event_buffer=8)
            async with open_hybrid_stream(stream_config, wall_clock=wall, rng=random.Random(5)) as stream:
                hub = stream.hub
                sim.control.open_position("ETHUSDT", "Sell", "3")
                channel = hub.lifecycle_send
                size = 3
                while channel.statistics().current_buffer_used < channel.statistics().max_buffer_size:
                    size += 1
                    sim.control.modify_position("ETHUSDT", size=size)
                    await trio.sleep(0.01)
                link = hub.health.link("private")
                malformed = link.malformed
                lists = len(sim.observe.rest_calls(POSITION_LIST))
                for _ in range(2):
                    sim.control.inject("non_json", "private")
                await eventually(lambda: link.malformed == malformed + 2)
                assert "lifecycle channel full" in caplog.text
                # REST asked without waiting for the combiner (its answer waits for room instead)
                await eventually(lambda: len(sim.observe.rest_calls(POSITION_LIST)) > lists)
                # the consumer comes back: everything pushed arrives, the last size last
                seen: list[Decimal] = []
                while not seen or seen[-1] != size:
                    seen += [e.size for e in await stream.batches() if isinstance(e, PositionUpdate)]
                assert len(sim.observe.open_connections("private")) == 1  # the heartbeat did not give up


async def test_a_long_rest_outage_at_start_with_trading_going_on_does_not_keep_the_stream_down(loopback_clock):
    # Nobody reads the events before open_hybrid_stream returns: pushes during a start that
    # waits for REST must not fill the output queue (16 here, 4,096 by default) and keep
    # the first snapshot out for good once REST is back.
    loopback_clock.autojump_threshold = 0.002  # ~100 REST retries: keep the jumps short
    wall = trio_wall_clock()
    config = attrs.evolve(sim_config(), wall_clock=wall)
    with trio.fail_after(3600):
        async with open_simulator(config) as sim:
            sim.control.open_position("ETHUSDT", "Sell", "3")
            sim.control.open_position("BTCUSDT", "Buy", "1")
            sim.control.rest_http_error(503, count=None, path=POSITION_LIST)
            stream_config = StreamConfig(credentials=sim.credentials, endpoints=sim.endpoints, event_buffer=16)
            back_at: list[float] = []

            async def trade() -> None:
                await sim.observe.wait_connection("private", 1)
                for size in range(4, 44):  # 40 pushes over ~3 minutes: the bot trades on
                    await trio.sleep(5)
                    sim.control.modify_position("ETHUSDT", size=size)
                sim.control.close_position("BTCUSDT")
                await trio.sleep(5)
                sim.control.clear_faults()
                back_at.append(trio.current_time())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trade)
                async with open_hybrid_stream(stream_config, wall_clock=wall, rng=random.Random(5)) as stream:
                    assert back_at and trio.current_time() - back_at[0] < 5.0
                    # the state at start, not a backlog of every push: one event per position
                    assert stream.hub.events.lifecycle_queued <= 4
                    assert [(p.symbol, p.size) for p in stream.positions()] == [("ETHUSDT", Decimal(43))]
                    seen = [e for e in stream.hub.events.drain() if isinstance(e, (PositionUpdate, PositionClosed))]
                    assert [(e.symbol, e.size) for e in seen] == [("ETHUSDT", Decimal(43))]


@pytest.mark.parametrize("buffer", [1, 2])
async def test_the_smallest_event_buffer_still_starts(loopback_clock, buffer):
    # the start's own "starting" notice fills a buffer of one: waiting for room before the
    # first snapshot would never end
    wall = trio_wall_clock()
    config = attrs.evolve(sim_config(), wall_clock=wall)
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config) as sim:
            for symbol in ("ETHUSDT", "BTCUSDT", "SOLUSDT"):
                sim.control.open_position(symbol, "Buy", "1")
            stream_config = StreamConfig(credentials=sim.credentials, endpoints=sim.endpoints, event_buffer=buffer)
            async with open_hybrid_stream(stream_config, wall_clock=wall, rng=random.Random(5)) as stream:
                assert len(stream.positions()) == 3
                sim.control.modify_position("ETHUSDT", size="2")
                seen: list[PositionUpdate] = []
                while not any(e.size == Decimal(2) for e in seen):
                    seen += [e for e in await stream.batches() if isinstance(e, PositionUpdate)]
                assert {e.symbol for e in seen} == {"ETHUSDT", "BTCUSDT", "SOLUSDT"}


async def test_while_the_private_socket_is_down_positions_come_from_rest_within_seconds(loopback_clock):
    # A private endpoint refused for long while the public ones stream: nothing pushes
    # opens or closes. REST is listed every rest_interval (5 s) meanwhile, not every 5 min.
    loopback_clock.autojump_threshold = 0.002  # ~1,000 refused handshakes: keep the jumps short
    with trio.fail_after(3600):
        async with running() as s:
            sim = s.sim
            await s.log.wait_for_state("live")
            sim.control.reject_connections(None, status=503, target="private")
            sim.control.drop_private("reset")
            await sim.observe.wait_until(lambda: not sim.observe.open_connections("private"))
            await trio.sleep(60)
            mark, opened_at = s.log.mark(), trio.current_time()
            sim.control.open_position("ETHUSDT", "Buy", "2")  # pushed to nobody
            opened = await s.log.wait_for(lambda e: e.symbol == "ETHUSDT", after=mark)
            assert opened.source == "rest" and trio.current_time() - opened_at < 6.0
            await s.wait_subscriptions_match_positions()  # and its live marks
            closed_at = trio.current_time()
            sim.control.close_position("ETHUSDT")
            await s.log.wait_for(lambda e: isinstance(e, PositionClosed), after=mark)
            assert trio.current_time() - closed_at < 6.0
            # ten minutes more of it: one list per 5 s, not a storm
            before = s.hub.health.reconciliations
            await trio.sleep(600)
            snapshots = s.hub.health.reconciliations - before
            assert 600 / 5 * 0.8 <= snapshots <= 600 / 5 + 2, snapshots
            # the private socket is back: its reconnect's snapshot, then the 5-minute rhythm
            sim.control.clear_faults()
            await sim.observe.wait_until(lambda: sim.observe.open_connections("private"))
            await trio.sleep(30)
            before = s.hub.health.reconciliations
            await trio.sleep(900)
            assert s.hub.health.reconciliations - before <= 3


async def test_a_socket_resumed_after_backpressure_is_pinged_at_once(loopback_clock, monkeypatch):
    monkeypatch.setattr(hub_module, "LIFECYCLE_BUFFER", 16)
    # While the private reader waits for a slow consumer its pongs go unread, so the
    # heartbeat skips it; once it reads again its ping is due at once, not up to an
    # interval later (a dead socket would go unnoticed that much longer).
    wall = trio_wall_clock()
    config = attrs.evolve(sim_config(), wall_clock=wall)
    with trio.fail_after(TEST_TIMEOUT * 5):
        async with open_simulator(config) as sim:
            stream_config = StreamConfig(credentials=sim.credentials, endpoints=sim.endpoints, event_buffer=8,
                                         heartbeat_interval=20.0)
            async with open_hybrid_stream(stream_config, wall_clock=wall, rng=random.Random(5)) as stream:
                sim.control.open_position("ETHUSDT", "Sell", "3")
                channel = stream.hub.lifecycle_send
                size = 3
                while channel.statistics().current_buffer_used < channel.statistics().max_buffer_size:
                    size += 1
                    sim.control.modify_position("ETHUSDT", size=size)
                    await trio.sleep(0.01)
                sim.control.modify_position("ETHUSDT", size=size + 1)  # the reader waits on this one
                link = stream.hub.links.get("private")
                await eventually(lambda: link.paused)
                await trio.sleep(47)  # well inside a ping interval of every socket
                pinged = len(sim.observe.pings("private"))
                resumed_at = trio.current_time()
                while link.paused:  # the consumer reads again
                    await stream.batches()
                await sim.observe.wait_until(lambda: len(sim.observe.pings("private")) > pinged)
                assert trio.current_time() - resumed_at < 1.0
