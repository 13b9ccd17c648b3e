#!/usr/bin/env python
"""Benchmark the asyncio bridge: delay added between the trio stream and the asyncio handler.

For each host (trio guest mode on a stock ``asyncio`` loop, and ``trio-asyncio``) the
script starts a fresh simulator in a subprocess (every tick moves every mark, so
``--symbols`` positions x ``--rate`` Hz is the update rate; 500 x 10 = 5,000/s), opens one
linear position per symbol over the simulator's HTTP control API, then runs a
``BybitHybridStream`` against it in a child process of its own (importing trio-asyncio
changes asyncio's loop policy, so the hosts never share an interpreter). After a warm-up
it measures for ``--seconds`` and prints one JSON object, the hosts side by side:

    delay_ms_p50/p99/max   the batch being taken from the trio stream (stamped by the
                           bridge) to the asyncio handler being called, per event
    frame_delay_ms_*       from the frame's read (the event's received_ts, 1 ms steps) to
                           the handler call: what health()'s delivery_delay reports
    wake_ms_p50/p99/max    the part of it before the idle delivery task got the thread
                           back, per wakeup: the loop's thread busy with trio's own steps
    events_per_s           handler calls per second during the window
    handler_calls          handler calls during the window
    conflated_bridge       price updates replaced in a lane before the handler saw them
    conflated_stream       price updates conflated in the stream's own output queue
    batches / mean_batch   hops across the boundary and events per hop
    cpu_s_per_1000_events  CPU seconds (user+system) of the bot process per 1,000 events
    emitted_per_s          events the stream produced (before any conflation)

Usage: python scripts/bench_bridge.py [--symbols 500] [--rate 10] [--seconds 10] [--warmup 3]
       [--hosts guest,trio-asyncio] [--handler-work-us 0]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import subprocess
import sys
import time
import urllib.request
from typing import Any

HOSTS = ("guest", "trio-asyncio")
SIM_ENV = "BENCH_BRIDGE_SIMULATOR"
SIM_LAUNCHER = """
import sys, trio
from functools import partial
from hybrid_actors.testing.cli import serve
from hybrid_actors.testing.simulator import SimulatorConfig
config = SimulatorConfig(symbols=int(sys.argv[1]), positions=0, rate=float(sys.argv[2]), seed=1,
                         mark_move_probability=1.0, outbox_limit=1_000_000)
trio.run(partial(serve, config, as_json=True))
"""


def read_first_line(process: subprocess.Popen[bytes], deadline_s: float) -> bytes:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=deadline_s):
            raise TimeoutError(f"no output from {process.args!r} within {deadline_s}s")
    return process.stdout.readline()


def control(rest_url: str, method: str, **kwargs: Any) -> Any:
    request = urllib.request.Request(f"{rest_url}/control/{method}", data=json.dumps(kwargs).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- child: one host, one stream --------------------------------------------------------------

async def measure(info: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    from hybrid_actors import BybitHybridStream

    calls = 0
    spin_ns = args.handler_work_us * 1000

    async def handler(event_name: str, data: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if spin_ns:
            end = time.perf_counter_ns() + spin_ns
            while time.perf_counter_ns() < end:
                pass

    stream = BybitHybridStream(info["api_key"], info["api_secret"], handler, stream_url=info["ws_url"],
                               rest_url=info["rest_url"], start_timeout=30)
    await stream.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:  # every ticker subscribed
            subs = stream.health().subscriptions.get("linear", {})
            if subs.get("confirmed", 0) >= args.symbols or loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(args.warmup)
        stats = stream.stats
        stats.reset_delays()
        health = stream.health().events
        before = (calls, stats.conflated, stats.batches, health["conflated"], health["emitted"], cpu_seconds(),
                  time.perf_counter())
        await asyncio.sleep(args.seconds)
        health = stream.health().events
        after = (calls, stats.conflated, stats.batches, health["conflated"], health["emitted"], cpu_seconds(),
                 time.perf_counter())
        delays, wakes, frames = stats.delays.summary(), stats.wake_delays.summary(), stats.frame_delays.summary()
        subscribed = stream.health().subscriptions.get("linear", {}).get("confirmed")
    finally:
        await stream.stop()
    handled, conflated, batches, stream_conflated, emitted, cpu, elapsed = (b - a for a, b in zip(before, after))
    return {
        "host": stream.host, "subscribed": subscribed, "seconds": round(elapsed, 2),
        "delay_ms_p50": delays["p50_ms"], "delay_ms_p99": delays["p99_ms"], "delay_ms_max": delays["max_ms"],
        "wake_ms_p50": wakes["p50_ms"], "wake_ms_p99": wakes["p99_ms"], "wake_ms_max": wakes["max_ms"],
        "frame_delay_ms_p50": frames["p50_ms"], "frame_delay_ms_p99": frames["p99_ms"],
        "frame_delay_ms_max": frames["max_ms"],
        "events_per_s": round(handled / elapsed), "handler_calls": handled, "conflated_bridge": conflated,
        "conflated_stream": stream_conflated, "batches": batches,
        "mean_batch": round(handled / batches, 1) if batches else None,
        "cpu_s_per_1000_events": round(1000 * cpu / handled, 4) if handled else None,
        "emitted_per_s": round(emitted / elapsed), "handler_errors": stream.handler_errors,
    }


def child(host: str, info: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if host == "trio-asyncio":
        import trio_asyncio  # type: ignore[import-untyped]  # it ships neither stubs nor py.typed

        figures: dict[str, Any] = trio_asyncio.run(trio_asyncio.aio_as_trio(measure), info, args)  # measure's result
        return figures
    import asyncio

    return asyncio.run(measure(info, args))


# --- parent: a simulator and a child per host ----------------------------------------------------

def run_host(host: str, args: argparse.Namespace) -> dict[str, Any]:
    sim = subprocess.Popen([sys.executable, "-c", SIM_LAUNCHER, str(args.symbols), str(args.rate)],
                           stdout=subprocess.PIPE)
    try:
        info = json.loads(read_first_line(sim, 30))
        with urllib.request.urlopen(f"{info['rest_url']}/v5/market/tickers?category=linear", timeout=10) as response:
            symbols = [item["symbol"] for item in json.loads(response.read())["result"]["list"]][:args.symbols]
        for symbol in symbols:
            control(info["rest_url"], "open_position", symbol=symbol, side="Buy", size="1")
        argv = [sys.executable, __file__, "--child", host, "--symbols", str(args.symbols),
                "--seconds", str(args.seconds), "--warmup", str(args.warmup),
                "--handler-work-us", str(args.handler_work_us)]
        env = {**os.environ, SIM_ENV: json.dumps(info)}  # not argv: keys do not belong on command lines
        out = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + args.warmup + 120, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"{host} child failed:\n{out.stderr}")
        figures: dict[str, Any] = json.loads(out.stdout)  # the child's one JSON object
        return figures
    finally:
        sim.terminate()
        sim.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--hosts", default=",".join(HOSTS))
    parser.add_argument("--handler-work-us", type=int, default=0,
                        help="busy-wait this long in the handler (a bot's own work per event)")
    parser.add_argument("--child", choices=HOSTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, json.loads(os.environ[SIM_ENV]), args)))
        return
    hosts = [h for h in args.hosts.split(",") if h]
    results = {host: run_host(host, args) for host in hosts}
    print(json.dumps({"symbols": args.symbols, "rate_hz": args.rate, "target_updates_per_s": round(args.symbols * args.rate),
                      "python": sys.version.split()[0], "cpus": os.cpu_count(), "hosts": results}))


if __name__ == "__main__":
    main()
