"""``StreamConfig.read_coalesce`` reaches the public sockets: against the simulator, reads of
a busy public socket are spaced by the window, so one read carries a tick's frames; the
private socket and health say what is in effect."""

from __future__ import annotations

import pytest
import trio

from stack import TEST_TIMEOUT, running, sim_config

pytestmark = pytest.mark.integration

SYMBOLS = 30


async def frames_per_read(window: float) -> tuple[float, dict]:
    """Open a position on each of SYMBOLS symbols (10 ticks a second each) and count the
    public socket's frames per read over 3 virtual seconds."""
    async with running(sim_config(symbols=SYMBOLS, rate=10.0), read_coalesce=window) as s:
        symbols = s.sim.symbols("linear")[:SYMBOLS]
        for symbol in symbols:
            s.sim.control.open_position(symbol, "Buy", "1")
        await s.sim.observe.wait_subscribed("linear", symbols)
        before = s.stream.health().connections["public:linear"]
        await trio.sleep(3)
        after = s.stream.health().connections["public:linear"]
        frames, reads = after["frames"] - before["frames"], after["batches"] - before["batches"]
        assert frames >= 2 * SYMBOLS * 10  # the market kept ticking
        return frames / reads, after


async def test_a_coalescing_window_makes_one_read_carry_a_ticks_frames(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        coalesced, health = await frames_per_read(0.05)
        assert health["read_coalesce_ms"] == 50
        # a tick of SYMBOLS frames comes in about three reads: the first frames are read at once
        # (the socket was quiet: its rate is low), the rest wait for enough bytes or the window
        assert coalesced >= SYMBOLS / 4
        plain, health = await frames_per_read(0.0)
        assert health["read_coalesce_ms"] == 0
        assert plain < coalesced / 2  # without the window, reads follow the simulator's writes
