"""Stream notices travel the real stream against the simulator: in order with the position
events around them, through ``async for``, ``batches()`` and the JSON lines writer."""

from __future__ import annotations

import contextlib
import os
import random

import attrs
import orjson
import pytest
import trio

from hybrid_actors import AuthRejected, RestartIntensityExceeded, RestartPolicy, StreamConfig
from hybrid_actors.actors import public_ws
from hybrid_actors.errors import StartTimeout
from hybrid_actors.notices import StreamAlert, StreamRollback, StreamState
from hybrid_actors.output import FAILED_FLUSH_TIMEOUT, JsonlWriter, _PollingSink
from hybrid_actors.rollout import RolloutPolicy
from hybrid_actors.state import PositionUpdate
from hybrid_actors.supervisor import open_hybrid_stream
from hybrid_actors.testing.simulator import open_simulator, trio_wall_clock
from stack import TEST_TIMEOUT, EventLog, running, sim_config

pytestmark = pytest.mark.integration


class Sink:
    unsent = b""
    cut = False

    def __init__(self) -> None:
        self.data = b""

    async def send_all(self, data: bytes) -> None:
        self.data += data


async def test_emitted_notices_come_out_of_async_for_in_order_and_as_json_lines(loopback_clock):
    import attrs

    wall = trio_wall_clock()
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(attrs.evolve(sim_config(), wall_clock=wall)) as sim:
            config = StreamConfig(credentials=sim.credentials, endpoints=sim.endpoints)
            async with open_hybrid_stream(config, wall_clock=wall, rng=random.Random(3)) as stream:
                hub = stream.hub
                seen: list[object] = []
                sim.control.open_position("BTCUSDT", "Buy", "1", entry_price="60000.0")
                async for event in stream:
                    if isinstance(event, PositionUpdate) and event.source == "position":
                        seen.append(event)
                        break
                notices = [StreamRollback("divergence", 1), StreamAlert("warning", "lag", "slow", 3, 2, "firing", 2)]
                for notice in notices:
                    hub.emit_notice(notice)
                sim.control.modify_position("BTCUSDT", size="2")
                async for event in stream:
                    seen.append(event)
                    if isinstance(event, PositionUpdate) and event.size == 2:
                        break
                assert seen[1:3] == notices  # after the open, before the resize, in order
                assert stream.health().events["notices"] == 4  # with the stream's own starting and live
                # the JSON lines output prints them like position events
                state = StreamState("degraded", "public:linear disconnected", {"private": True, "public:linear": False},
                                    hub.wall_ms())
                hub.emit_notice(state)
                sink = Sink()
                await JsonlWriter(sink).write_batch(await stream.batches())
                lines = [orjson.loads(line) for line in sink.data.splitlines()]
                assert lines[-1] == {"event": "stream.state", "state": "degraded",
                                     "reason": "public:linear disconnected",
                                     "sockets": {"private": True, "public:linear": False}, "ts": state.ts}


SOCKETS = {"private": True, "public:linear": True, "public:inverse": True}


async def test_stream_state_goes_live_then_degraded_and_recovered_across_a_public_drop(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running(categories=("linear", "inverse")) as s:
            sim, log = s.sim, s.log
            sim.control.open_position("BTCUSDT", "Buy", "1", entry_price="60000.0")
            live = await log.wait_for_state("live")
            assert log.notices[0].state == "starting" and log.notices[0].sockets == dict.fromkeys(SOCKETS, False)
            assert live.sockets == SOCKETS and "every socket is up" in live.reason
            assert s.stream.health().stream_state["state"] == "live"
            mark = len(log.notices)
            sim.control.drop_public("inverse")
            degraded = await log.wait_for_state("degraded", after=mark)
            assert degraded.sockets == {**SOCKETS, "public:inverse": False}
            assert degraded.reason.startswith("public:inverse is down: ConnectionLost")
            assert s.stream.health().stream_state["state"] in ("degraded", "recovered")
            recovered = await log.wait_for_state("recovered", after=mark)
            assert recovered.sockets == SOCKETS and recovered.ts >= degraded.ts
            assert log.states() == ["starting", "live", "degraded", "recovered"]
            health = s.stream.health().stream_state
            assert (health["state"], health["reason"], health["sockets"]) == ("recovered", recovered.reason, SOCKETS)
            # position events went on around the notices, in order (the open came before live)
            sim.control.set_mark_price("BTCUSDT", "60100.0")
            await log.wait_for(lambda e: e.mark_price == 60100)
            assert log.everything.index(recovered) < len(log.everything) - 1


async def test_a_rest_outage_after_a_private_reconnect_is_reported_as_rest_not_the_socket(loopback_clock):
    # the socket is back and authenticated, its pushes flow; only its REST snapshot waits
    with trio.fail_after(TEST_TIMEOUT):
        async with running() as s:
            sim, log = s.sim, s.log
            await log.wait_for_state("live")
            sim.control.rest_http_error(503, count=None, path="/v5/position/list")
            mark = len(log.notices)
            sim.control.drop_private("reset")
            await sim.observe.wait_connection("private", 2)
            waiting = await log.wait_for_state("degraded", after=mark)
            while "waiting for" not in waiting.reason:
                waiting = await log.wait_for_state("degraded", after=log.notices.index(waiting) + 1)
            assert waiting.reason.startswith("private is down: connected, waiting for the REST position snapshot")
            assert "HTTP 503" in waiting.reason
            health = s.stream.health()
            assert health.actors["private"]["waiting_for"].startswith("the REST position snapshot: GET")
            assert any("actor private is starting: connected, waiting for the REST" in p for p in health.problems)
            sim.control.clear_faults()
            await log.wait_for_state("recovered", after=mark)
            assert s.stream.health().actors["private"]["waiting_for"] is None


async def test_a_start_timeout_names_rest_when_the_private_socket_is_up(loopback_clock):
    wall = trio_wall_clock()
    with trio.fail_after(TEST_TIMEOUT * 2):
        async with open_simulator(sim_config(wall_clock=wall)) as sim:
            sim.control.rest_http_error(503, count=None, path="/v5/position/list")
            config = StreamConfig(credentials=sim.credentials, endpoints=sim.endpoints)
            with pytest.raises(StartTimeout) as caught:
                async with open_hybrid_stream(config, wall_clock=wall, start_timeout=30):
                    pytest.fail("the stream must not start")
            assert "private: connected, waiting for the REST position snapshot" in str(caught.value)
            assert "HTTP 503" in str(caught.value)


async def test_revoked_keys_end_the_stream_with_failed_as_its_last_event(loopback_clock):
    wall = trio_wall_clock()
    log: EventLog | None = None
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(sim_config(wall_clock=wall)) as sim:
            config = StreamConfig(credentials=sim.credentials, endpoints=sim.endpoints)
            with pytest.raises(AuthRejected) as raised:
                async with open_hybrid_stream(config, wall_clock=wall, rng=random.Random(3)) as stream:
                    log = EventLog(stream)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(log.run)
                        await log.wait_for_state("live")
                        sim.control.fail_auth(None)  # the key is revoked: every auth fails from now on
                        sim.control.drop_private()
                        await trio.sleep_forever()
            assert log is not None
            log.take(stream.unread())  # what the cancelled reader had not read yet
            assert log.states() == ["starting", "live", "degraded", "failed"]
            failed = log.notices[-1]
            assert log.everything[-1] is failed
            assert failed.reason == f"AuthRejected: {raised.value}"
            assert stream.hub.events.closed and stream.health().stream_state["state"] == "failed"
            stream.hub.emit_notice(StreamRollback("late", 1))  # nothing follows failed
            assert stream.unread() == []


async def test_a_crash_loop_is_failed_too(loopback_clock, monkeypatch):
    async def crash(self, *, task_status=trio.TASK_STATUS_IGNORED):
        raise ValueError("a bug in the public actor")

    stacks, raised = [], []
    with trio.fail_after(TEST_TIMEOUT):
        try:
            # the crash-loop rollback trigger off: with it (the default) production rolls back instead
            async with running(restart=RestartPolicy(max_restarts=3, window=60.0),
                               rollout=RolloutPolicy(rollback_on_crash_loop=False)) as s:
                stacks.append(s)
                await s.log.wait_for_state("live")
                monkeypatch.setattr(public_ws.PublicStreamActor, "run", crash)
                s.sim.control.drop_public("linear")
                await trio.sleep_forever()
        except* RestartIntensityExceeded as group:  # through the simulator's nursery
            raised.extend(group.exceptions)
    [s] = stacks
    assert len(raised) == 1
    s.log.take(s.stream.unread())
    assert s.log.states()[-1] == "failed" and s.log.everything[-1] is s.log.notices[-1]
    assert s.log.notices[-1].reason.startswith("RestartIntensityExceeded: ")
    assert "public:linear is down" in s.log.notices[-2].reason  # degraded on the way


# --- the last lines after a failure, to a reader that lags or has gone ---------------------------------------

FAILED = StreamState("failed", "AuthRejected: auth rejected for key 'abcd…'", {"private": False}, 1)


def full_pipe() -> tuple[int, int]:
    """A pipe whose write end is non-blocking and full: nobody reads it."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 4096)
    return read_end, write_end


async def test_the_last_lines_wait_for_a_stuck_reader_a_bounded_time_and_stderr_says_they_were_not_written(
        autojump_clock, capsys):
    read_end, write_end = full_pipe()
    try:
        writer = JsonlWriter(_PollingSink(write_end))
        with trio.CancelScope() as scope:
            scope.cancel()  # the failure cancels the consumer: the last lines are written anyway
            await writer.write_last([FAILED])
        assert trio.current_time() == FAILED_FLUSH_TIMEOUT
    finally:
        os.close(read_end)
        os.close(write_end)
    err = capsys.readouterr().err
    assert "did not take them within 10s" in err and "'failed' line" in err and "abcd" not in err


async def test_the_last_lines_follow_what_the_cancelled_write_left_once_the_reader_catches_up(autojump_clock):
    read_end, write_end = full_pipe()
    try:
        writer = JsonlWriter(_PollingSink(write_end))
        batch = [FAILED] * 40  # more than one chunk of PIPE_BUF bytes
        with trio.move_on_after(1):
            await writer.write_batch(batch)  # the pipe is full: cancelled before any of it is out
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.write_last, [attrs.evolve(FAILED, ts=2)])
            await trio.sleep(5)  # the reader lags 5 s, then reads everything
            os.set_blocking(read_end, False)
            data = b""
            while not data.endswith(b'"ts":2}\n'):
                with contextlib.suppress(BlockingIOError):
                    data += os.read(read_end, 1 << 16)
                await trio.sleep(0.01)
    finally:
        os.close(read_end)
        os.close(write_end)
    lines = data.lstrip(b"x").splitlines()
    assert len(lines) == 41 and [orjson.loads(line)["ts"] for line in lines] == [1] * 40 + [2]


async def test_the_last_lines_to_a_reader_that_went_away_are_reported_on_stderr(autojump_clock, capsys):
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        await JsonlWriter(_PollingSink(write_end)).write_last([FAILED])
    finally:
        os.close(write_end)
    assert "the reader of stdout went away" in capsys.readouterr().err
