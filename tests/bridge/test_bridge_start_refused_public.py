"""Issue 8 (defect 3) through the asyncio bridge: a public endpoint refused from the start
does not keep ``start()`` from returning, nor the positions from reaching the handler."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bridge_support import HOSTS, Recorder, control, open_linear_positions, run_on, simulator, wait_until
from hybrid_actors import BybitHybridStream

pytestmark = pytest.mark.system
__all__ = ["simulator"]  # the fixture, imported


@pytest.mark.parametrize("host", HOSTS)
def test_start_returns_with_rest_positions_while_the_public_endpoint_refuses(host, simulator):
    sim = simulator(rate=0)

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT", "ETHUSDT"])
        await control(sim, "reject_connections", count=None, status=503, target="linear")
        handler = Recorder()
        async with BybitHybridStream(sim.api_key, sim.api_secret, handler, **sim.stream_kwargs()) as stream:
            for symbol in ("BTCUSDT", "ETHUSDT"):
                _, data = await handler.wait_for(lambda n, d, s=symbol: d["symbol"] == s)
                assert data["source"] == "rest" and Decimal(data["mark_price"]) > 0
            health = stream.health()
            assert not health.connections["public:linear"]["connected"]
            assert health.connections["private"]["connected"]
            await control(sim, "clear_faults")
            await wait_until(lambda: stream.health().connections["public:linear"]["connected"], timeout=10.0,
                             what="the public socket back within the 4 s backoff cap")
            mark = handler.mark()
            await wait_until(lambda: stream.health().subscriptions["linear"]["confirmed"] == 2, timeout=10.0,
                             what="both tickers subscribed")
            await control(sim, "set_mark_price", symbol="ETHUSDT", price="3333.3")
            _, live = await handler.wait_for(lambda n, d: d["symbol"] == "ETHUSDT"
                                             and Decimal(d["mark_price"]) == Decimal("3333.3"), after=mark)
            assert live["source"] == "ticker"

    run_on(host, main)
