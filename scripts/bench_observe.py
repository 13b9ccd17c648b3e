#!/usr/bin/env python
"""Benchmark what observability costs: the hot path's per-event recording, and one
/health, /metrics and dashboard render with many open positions.

Runs the simulator in-process with ``--positions`` open positions (tickers at ``--rate``
per symbol), opens the stream with ``metrics_port=0``, waits until every position has a
live mark, then measures, and prints one JSON object:

    record_event_us             the combiner's per-event bookkeeping (two histogram
                                observations + the per-kind counter), microseconds
    health_report_ms            build_health_report (with the position rows), per call
    health_json_ms              /health's body: report + JSON encoding, per call
    metrics_render_ms           /metrics' body: report + collector + exposition, per call
    dashboard_render_N_rows_ms  the rich dashboard of that report with N position rows shown
                                (``run --output table`` draws it in a worker thread)
    http_health_ms / http_metrics_ms   a GET through the server on loopback (median of N)
    health_bytes / metrics_bytes       body sizes
    max/p99_actor_stall_ms      how late a 1 ms ticker task in the stream's loop ran while
                                the server was asked back to back (what serving costs the
                                actors); baseline_*: the same with nobody asking

Usage: python scripts/bench_observe.py [--positions 200] [--rate 5] [--repeat 50]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import trio
from rich.console import Console

from hybrid_actors import StreamConfig
from hybrid_actors.dashboard import render_dashboard
from hybrid_actors.health import Health
from hybrid_actors.http_endpoint import fetch_json
from hybrid_actors.latency import Latency
from hybrid_actors.metrics import make_registry, render
from hybrid_actors.observability import health_json, stream_sample
from hybrid_actors.state import PositionUpdate
from hybrid_actors.supervisor import build_health_report, open_hybrid_stream
from hybrid_actors.testing.simulator import ScenarioConfig, SimulatorConfig, open_simulator


def per_call_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return round((time.perf_counter() - start) / repeat * 1000, 3)


def record_event_us(n: int = 200_000) -> float:
    """The bookkeeping CombinerActor._measure does for a chunk of ticker events, per event."""
    from decimal import Decimal

    from hybrid_actors.actors.emitter import TICKER_KIND
    from hybrid_actors.state import Mark

    latency, health = Latency(), Health()
    event = PositionUpdate(symbol="BTCUSDT", category="linear", side="Buy", size=Decimal(1),
                           entry_price=Decimal(1), mark_price=Decimal(2), unrealized_pnl=Decimal(1), position_idx=0,
                           source="ticker", exchange_ts=1_700_000_000_000, received_ts=1_700_000_000_001)
    by_kind = health.events_by_kind
    exchange, frame = latency.exchange_to_event.observe, latency.frame_to_event.observe
    marks = {"BTCUSDT": Mark(Decimal(2), 1_700_000_000_000, 1_700_000_000_001, 1_700_000_000.0015)}
    events = [event] * 16  # one chunk (emitter.STEP)
    wall, now = 1_700_000_000.003, 5.0
    start = time.perf_counter()
    for _ in range(n // 16):
        by_kind[TICKER_KIND] = by_kind.get(TICKER_KIND, 0) + len(events)
        for item in events:
            mark = marks.get(item.symbol)
            read_at = mark.read_at if mark is not None else None
            frame(wall - (read_at if read_at is not None else item.received_ts / 1000.0), now)
            if item.exchange_ts is not None:
                exchange(wall - item.exchange_ts / 1000.0, now)
    return round((time.perf_counter() - start) / (n // 16 * 16) * 1e6, 3)


async def get_ms(url: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fetch_json(url) if url.endswith("/health") else await _get(url)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


async def _get(url: str) -> bytes:
    host, port = url.removeprefix("http://").split("/", 1)[0].rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(1 << 16):
            data += chunk
    return data


async def main(opts: argparse.Namespace) -> dict[str, float | None]:
    scenario = ScenarioConfig(categories=("linear",), min_interval=3600.0, max_interval=7200.0, max_open=1)
    sim_config = SimulatorConfig(symbols=opts.positions * 3, positions=opts.positions, rate=opts.rate, seed=5,
                                 scenario=scenario)
    async with open_simulator(sim_config) as sim:
        config = StreamConfig(credentials=sim.credentials, endpoints=sim.endpoints, metrics_port=0,
                              categories=("linear", "inverse"))
        async with open_hybrid_stream(config) as stream, trio.open_nursery() as nursery:
            async def drain() -> None:
                while True:
                    await stream.batches()

            nursery.start_soon(drain)
            with trio.fail_after(60):
                while sum(1 for p in stream.positions() if p.source == "ticker") < len(stream.positions()) * 0.9 \
                        or not stream.positions():
                    await trio.sleep(0.2)
            hub = stream.hub
            report = build_health_report(hub)
            registry = make_registry(lambda: stream_sample(hub, lambda: build_health_report(hub)))
            console = Console(file=io.StringIO(), width=160, record=False)
            figures: dict[str, float | None] = {
                "positions": len(report.open_positions),
                "record_event_us": record_event_us(),
                "health_report_ms": per_call_ms(lambda: build_health_report(hub), opts.repeat),
                "health_json_ms": per_call_ms(lambda: health_json(build_health_report(hub)), opts.repeat),
                "metrics_render_ms": per_call_ms(lambda: render(registry), opts.repeat),
                **{f"dashboard_render_{rows}_rows_ms": per_call_ms(
                    lambda rows=rows: console.print(render_dashboard(report.as_dict(), max_rows=rows)), 5)
                   for rows in (0, 25, 50)},
                "health_bytes": len(health_json(report)),
                "metrics_bytes": len(render(registry)),
            }
            # what serving costs the actors: a 1 ms ticker's worst lateness while we GET in a loop
            stalls: list[float] = []

            async def ticker() -> None:
                while True:
                    before = trio.current_time()
                    await trio.sleep(0.001)
                    stalls.append(trio.current_time() - before - 0.001)

            nursery.start_soon(ticker)
            await trio.sleep(2.0)  # the same ticker with nobody asking: the machine's own noise
            figures["baseline_max_stall_ms"] = round(max(stalls) * 1000, 3)
            figures["baseline_p99_stall_ms"] = round(sorted(stalls)[int(len(stalls) * 0.99)] * 1000, 3)
            stalls.clear()
            assert stream.metrics_url is not None  # metrics_port=0 above: served on a free port
            figures["http_health_ms"] = await get_ms(stream.metrics_url + "/health", opts.repeat)
            figures["http_metrics_ms"] = await get_ms(stream.metrics_url + "/metrics", opts.repeat)
            figures["max_actor_stall_ms"] = round(max(stalls) * 1000, 3) if stalls else None
            figures["p99_actor_stall_ms"] = round(sorted(stalls)[int(len(stalls) * 0.99)] * 1000, 3) if stalls else None
            nursery.cancel_scope.cancel()
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", type=int, default=200)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=50)
    print(json.dumps(trio.run(main, parser.parse_args()), indent=2))
