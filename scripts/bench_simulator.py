#!/usr/bin/env python
"""Benchmark the simulator: sustained ticker frame rate and its CPU cost.

Runs the simulator CLI in a subprocess (so its CPU time is measured in isolation through
/proc/<pid>/stat), subscribes a lean raw trio-websocket client to every symbol of one
category over a few connections, counts frames for a fixed window after a warm-up, and
prints one JSON object:

    frames_per_s                  sustained data frames received per second
    sim_cpu_s_per_1000_frames     simulator CPU seconds (user+system) per 1,000 frames
    sim_cpu_share_of_one_core     simulator CPU seconds per wall second
    client_cpu_s_per_1000_frames  this (client) process, for comparison
    lag_ms_p50 / lag_ms_p99       receive wall time minus the frame's ``ts``

Usage: python scripts/bench_simulator.py [--symbols 500] [--rate 10] [--seconds 12]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial

import orjson
import trio
from trio_websocket import open_websocket_url

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_support, also when loaded by path
from bench_support import self_cpu_seconds, simulator_process  # noqa: E402

class Counter:
    def __init__(self) -> None:
        self.counting = False
        self.frames = 0
        self.lags: list[float] = []


async def consume(url: str, topics: list[str], counter: Counter, ready: trio.Event, pending: list[int]) -> None:
    chunk = 10 if url.endswith("/spot") else 100  # spot refuses more than 10 args per request
    async with open_websocket_url(url, max_message_size=1 << 22) as ws:
        for start in range(0, len(topics), chunk):
            await ws.send_message(orjson.dumps({"op": "subscribe", "args": topics[start:start + chunk]}).decode())
        pending[0] -= 1
        if pending[0] == 0:
            ready.set()
        sample = 0
        while True:
            message = await ws.get_message()
            if not counter.counting:
                continue
            counter.frames += 1
            sample += 1
            if sample % 20 == 0:  # parse a sample only: the client stays lean
                frame = orjson.loads(message)
                if "ts" in frame:
                    counter.lags.append(time.time() * 1000 - frame["ts"])


async def bench(args: argparse.Namespace) -> dict[str, object]:
    async with simulator_process(args.symbols, args.rate, 1, module="hybrid_actors.testing.simulator") as sim:
        url = f"{sim.ws_url}/v5/public/{args.category}"
        symbols = [f"tickers.{s}" for s in await _symbols(sim.rest_url, args.category)]
        counter, ready, pending = Counter(), trio.Event(), [args.connections]
        async with trio.open_nursery() as nursery:
            for i in range(args.connections):
                nursery.start_soon(consume, url, symbols[i::args.connections], counter, ready, pending)
            await ready.wait()
            await trio.sleep(args.warmup)
            counter.counting = True
            sim_cpu0, self_cpu0, t0 = sim.cpu_seconds(), self_cpu_seconds(), time.monotonic()
            await trio.sleep(args.seconds)
            counter.counting = False
            sim_cpu1, self_cpu1, t1 = sim.cpu_seconds(), self_cpu_seconds(), time.monotonic()
            nursery.cancel_scope.cancel()
    elapsed, frames = t1 - t0, counter.frames
    lags = sorted(counter.lags)
    sim_cpu, client_cpu = sim_cpu1 - sim_cpu0, self_cpu1 - self_cpu0
    return {
        "symbols": len(symbols), "category": args.category, "rate_hz": args.rate, "connections": args.connections,
        "duration_s": round(elapsed, 2), "frames": frames,
        "frames_per_s": round(frames / elapsed, 1), "target_frames_per_s": round(len(symbols) * args.rate),
        "sim_cpu_s": round(sim_cpu, 3),
        "sim_cpu_s_per_1000_frames": round(sim_cpu / frames * 1000, 4) if frames else None,
        "sim_cpu_share_of_one_core": round(sim_cpu / elapsed, 3),
        "client_cpu_s_per_1000_frames": round(client_cpu / frames * 1000, 4) if frames else None,
        "lag_ms_p50": round(lags[len(lags) // 2], 2) if lags else None,
        "lag_ms_p99": round(lags[int(len(lags) * 0.99)], 2) if lags else None,
        "simulator_exit_code": sim.exit_code,
    }


async def _symbols(rest_url: str, category: str) -> list[str]:
    import httpx

    symbols: list[str] = []
    async with httpx.AsyncClient(base_url=rest_url) as client:
        # option tickers need a baseCoin (the simulator's options are on BTC, ETH and SOL)
        for base in ("BTC", "ETH", "SOL") if category == "option" else (None,):
            params = {"category": category, **({"baseCoin": base} if base else {})}
            response = await client.get("/v5/market/tickers", params=params)
            symbols += [item["symbol"] for item in response.json()["result"]["list"]]
    return symbols


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=12.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--category", default="linear", choices=("linear", "inverse", "spot", "option"))
    args = parser.parse_args()
    print(json.dumps(trio.run(partial(bench, args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
