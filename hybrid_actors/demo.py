"""``python -m hybrid_actors demo``: the whole product against the built-in simulator.

The simulator runs in-process on loopback with a seeded scenario that opens, resizes and
closes positions while prices move; the supervised stream connects to it exactly as it
would to Bybit (auth, REST snapshot, ticker subscriptions, pings) and the CLI shows the
result as a live table or JSON lines. No keys, no network.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import nullcontext

import trio

from .cli_rollout import rollout_settings
from .config import StreamConfig
from .output import consume
from .supervisor import open_hybrid_stream
from .testing.simulator import ScenarioConfig, SimulatorConfig, open_simulator

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


async def run_demo(args: argparse.Namespace, output: str) -> None:
    categories = tuple(args.categories or ("linear",))
    scenario = ScenarioConfig(categories=categories, min_interval=0.5, max_interval=2.0,
                              max_open=max(1, min(8, args.symbols)))
    sim_config = SimulatorConfig(symbols=args.symbols, positions=args.positions, rate=args.rate,
                                 seed=args.seed, scenario=scenario, position_categories=categories)
    async with open_simulator(sim_config) as sim:
        log.info("simulator on %s (REST %s), seed %d", sim.ws_url, sim.rest_url, sim.seed)
        config = StreamConfig(credentials=sim.credentials, endpoints=sim.endpoints, categories=categories,
                              heartbeat_interval=args.heartbeat_interval, metrics_port=args.metrics_port,
                              metrics_host=args.metrics_host, read_coalesce=args.read_coalesce_ms / 1000,
                              **rollout_settings(args))
        async with open_hybrid_stream(config, start_timeout=args.start_timeout) as stream:
            print(f"demo: streaming {len(stream.positions())} open position(s) from the simulator "
                  f"({', '.join(categories)}); Ctrl-C to stop", file=sys.stderr, flush=True)
            with trio.move_on_after(args.seconds) if args.seconds else nullcontext():  # from start-up done
                await consume(stream, output)
