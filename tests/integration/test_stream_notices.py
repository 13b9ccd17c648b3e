"""Stream notices travel the real stream against the simulator: in order with the position
events around them, through ``async for``, ``batches()`` and the JSON lines writer."""

from __future__ import annotations

import random

import orjson
import pytest
import trio

from hybrid_actors import StreamConfig
from hybrid_actors.notices import StreamAlert, StreamRollback, StreamState
from hybrid_actors.output import JsonlWriter
from hybrid_actors.state import PositionUpdate
from hybrid_actors.supervisor import open_hybrid_stream
from hybrid_actors.testing.simulator import open_simulator, trio_wall_clock
from stack import TEST_TIMEOUT, sim_config

pytestmark = pytest.mark.integration


class Sink:
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
                assert stream.health().events["notices"] == 2
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
