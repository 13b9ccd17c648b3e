"""``python -m hybrid_actors simulator``: serve the simulated exchange until Ctrl-C.

It prints its WebSocket and REST base URLs and the test API key and secret it accepts
(this is a local test exchange: printing its own test secret is the point), one item
per line, flushed, or one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from functools import partial
from typing import Sequence, TextIO

import trio

from ..errors import ConfigError
from .simulator import ScenarioConfig, SimulatorConfig, open_simulator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hybrid_actors simulator",
                                     description="A local Bybit v5 exchange (WebSocket + REST) for tests and demos.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="WebSocket port (default 0: any free port)")
    parser.add_argument("--rest-port", type=int, default=0, help="REST port (default 0: any free port)")
    parser.add_argument("--symbols", type=int, default=50, help="known instruments per category (default 50)")
    parser.add_argument("--positions", type=int, default=5, help="random positions open at start (default 5)")
    parser.add_argument("--rate", type=float, default=10.0,
                        help="ticker pushes per second per subscribed symbol (default 10; 0 = only on change)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    parser.add_argument("--scenario", action="store_true",
                        help="open, resize and close positions at random while serving")
    parser.add_argument("--json", action="store_true", help="print the connection details as one JSON line")
    parser.add_argument("--log-level", default="WARNING", type=str.upper, metavar="LEVEL",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                        help="logs on stderr at this level and above: DEBUG, INFO, WARNING, ERROR, CRITICAL, "
                             "any case (default WARNING)")
    return parser


def _announce(sim_info: dict[str, object], as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(sim_info) + "\n")
    else:
        for key, value in sim_info.items():
            out.write(f"{key}: {value}\n")
        out.write("serving; Ctrl-C to stop\n")
    out.flush()


async def serve(config: SimulatorConfig, *, as_json: bool = False, out: TextIO = sys.stdout) -> None:
    """Run until SIGINT/SIGTERM, then close every socket and return."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_simulator(config) as sim:
            _announce({"ws_url": sim.ws_url, "rest_url": sim.rest_url, "api_key": sim.api_key,
                       "api_secret": sim.api_secret, "seed": sim.seed,
                       "private_url": sim.url("private"), "public_url": f"{sim.ws_url}/v5/public/{{category}}"},
                      as_json, out)
            async for _signal in signals:
                break


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; ``argv`` may start with the word ``simulator``. Returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["simulator"]:
        args_list = args_list[1:]
    args = build_parser().parse_args(args_list)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = SimulatorConfig(symbols=args.symbols, positions=args.positions, rate=args.rate, seed=args.seed,
                                 host=args.host, ws_port=args.port, rest_port=args.rest_port,
                                 scenario=ScenarioConfig() if args.scenario else None)
    except ConfigError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(partial(serve, config, as_json=args.json))
    except KeyboardInterrupt:  # Ctrl-C before the signal receiver was installed
        return 0
    except OSError as exc:
        print(f"simulator: cannot serve on {args.host}: {exc}", file=sys.stderr)
        return 1
    return 0
