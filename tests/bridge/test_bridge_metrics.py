"""Issue 11 through the bridge: ``BybitHybridStream(..., metrics_port=0)`` serves /metrics and
/health from inside the stream under both hosts, and the bot handler's errors show as
``hybrid_handler_errors_total``."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge_support import HOSTS, Recorder, control, open_linear_positions, run_on, simulator, wait_until
from hybrid_actors import BybitHybridStream

pytestmark = pytest.mark.system
__all__ = ["simulator"]  # the fixture, imported


async def get(url: str, path: str) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


@pytest.mark.parametrize("host", HOSTS)
def test_the_bridge_serves_metrics_and_counts_handler_errors(host, simulator):
    sim = simulator(rate=0)

    async def main() -> None:
        await open_linear_positions(sim, ["BTCUSDT"])
        seen = Recorder()

        async def handler(name: str, data: dict[str, Any]) -> None:
            seen.record(name, data)
            if data.get("mark_price") == Decimal(4321):
                raise ValueError("a bug in the bot")

        async with BybitHybridStream(sim.api_key, sim.api_secret, handler, metrics_port=0,
                                     **sim.stream_kwargs()) as stream:
            url = stream.metrics_url
            assert url is not None and url.startswith("http://127.0.0.1:")
            await control(sim, "set_mark_price", symbol="BTCUSDT", price="4321")
            await wait_until(lambda: stream.handler_errors == 1, what="the handler error counted")
            text = (await get(url, "/metrics")).decode()
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for family in text_string_to_metric_families(text) for s in family.samples}
            assert samples[("hybrid_handler_errors_total", ())] == 1
            assert samples[("hybrid_open_positions", (("category", "linear"),))] == 1
            health = json.loads(await get(url, "/health"))
            assert [row["symbol"] for row in health["open_positions"]] == ["BTCUSDT"]
            assert sim.api_secret not in text and sim.api_key not in json.dumps(health)
        assert stream.metrics_url is None  # stopped: the server is gone with the stream

    run_on(host, main)
