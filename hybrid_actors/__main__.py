"""``python -m hybrid_actors`` (also the ``hybrid-actors`` console script).

Subcommands:

- ``run``        stream your Bybit positions (keys from BYBIT_API_KEY / BYBIT_API_SECRET)
- ``demo``       the same stream against the built-in simulator: no keys, no network
- ``simulator``  serve the local Bybit v5 simulator for other processes
- ``dashboard``  a live terminal dashboard of a running stream (its ``--metrics-port``)

Events go to stdout (JSON lines or a live table); logs go to stderr. Help texts are plain
text (argparse prints them as they are). Exit codes: see :data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext
from functools import partial
from typing import Any

import trio

from . import __version__
from .cli_rollout import add_rollout_options, rollout_settings
from .config import DEFAULT_READ_COALESCE, MAX_READ_COALESCE, MIN_HEARTBEAT_INTERVAL, POSITION_CATEGORIES, Credentials, Endpoints, StreamConfig
from .errors import AuthRejected, ConfigError, HybridActorsError, RestartIntensityExceeded, StartTimeout
from .output import consume
from .supervisor import exception_leaves, open_hybrid_stream

__all__ = ["main", "build_parser"]

log = logging.getLogger("hybrid_actors")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_AUTH, EXIT_START_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
#: 128 + SIGTERM, as a shell reports a process the signal ended
EXIT_TERMINATED = 143


class _Terminated(Exception):
    """SIGTERM (``kill``, ``docker stop``, systemd) asked the run to end."""


async def _terminable(async_fn: Callable[..., Awaitable[None]], *args: Any) -> None:
    """Run ``async_fn(*args)``; SIGTERM cancels it like the end of ``--seconds`` (the last
    batch is written whole, stdout and the terminal are left as found) and then raises
    :class:`_Terminated`. Without this the signal killed the process mid-write."""
    terminated = False
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                nonlocal terminated
                async for _ in signals:
                    terminated = True
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            await async_fn(*args)
            nursery.cancel_scope.cancel()
    if terminated:
        raise _Terminated()
#: what each exit code means (also in --help and the README)
EXIT_CODES = {EXIT_OK: "done (--seconds elapsed after start-up, or the reader of stdout went away)",
              EXIT_ERROR: "the stream ended: crash loop or unexpected error",
              EXIT_USAGE: "bad flag or configuration",
              EXIT_AUTH: "credentials rejected",
              EXIT_START_TIMEOUT: "never connected within --start-timeout",
              EXIT_INTERRUPTED: "interrupted (Ctrl-C)"}
#: how an error of ours that ended the run is reported: the first row whose type matches gives
#: what follows "hybrid_actors: " on stderr and the exit status
ENDINGS: tuple[tuple[type[HybridActorsError], str, int], ...] = (
    (ConfigError, "configuration error: {exc}", EXIT_USAGE),
    (AuthRejected, "{exc}", EXIT_AUTH),
    (StartTimeout, "never connected: {exc}", EXIT_START_TIMEOUT),
    (RestartIntensityExceeded, "stopped: {exc}", EXIT_ERROR),
    (HybridActorsError, "stopped: {kind}: {exc}", EXIT_ERROR),
)
DESCRIPTION = ("Live Bybit v5 positions for a trading bot: the private position stream and the public "
               "tickers combined into one event stream (JSON lines or a live table on stdout; logs on stderr).")
EPILOG = "exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items())
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_START_TIMEOUT = 30.0


def _check_positive(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Durations and rates (never prices) are floats; argparse parses them, we bound them."""
    for name in ("heartbeat_interval", "seconds", "rate", "start_timeout", "refresh"):
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {value}")
    heartbeat = getattr(args, "heartbeat_interval", None)
    if heartbeat is not None and heartbeat < MIN_HEARTBEAT_INTERVAL:  # every socket would be declared dead
        parser.error(f"--heartbeat-interval must be at least {MIN_HEARTBEAT_INTERVAL:g} second, got {heartbeat}")
    coalesce = getattr(args, "read_coalesce_ms", None)
    if coalesce is not None and not 0 <= coalesce <= MAX_READ_COALESCE * 1000:
        parser.error(f"--read-coalesce-ms must be between 0 (off) and {MAX_READ_COALESCE * 1000:g}, got {coalesce}")
    for name in ("symbols", "positions", "rows"):
        value = getattr(args, name, None)
        if value is not None and value < 0:
            parser.error(f"--{name} must be >= 0, got {value}")


def _add_stream_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--category", action="append", choices=POSITION_CATEGORIES, dest="categories",
                        help="position category to follow; repeat for several (default: linear)")
    parser.add_argument("--output", choices=("jsonl", "table"), default=None,
                        help="jsonl: one event per line on stdout; table: a live position table "
                             "(default: table on a terminal, jsonl otherwise)")
    parser.add_argument("--heartbeat-interval", type=float, default=20.0, metavar="SECONDS",
                        help="JSON ping interval on every socket (default 20)")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve Prometheus metrics at /metrics and JSON health at /health on this port "
                             "(0: any free port, logged)")
    parser.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDRESS",
                        help="address the metrics server binds (default 127.0.0.1: this machine only)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="stop by itself this many seconds after the stream has started (start-up "
                             "does not count; exit 0)")
    parser.add_argument("--start-timeout", type=float, default=DEFAULT_START_TIMEOUT, metavar="SECONDS",
                        help=f"give up (exit {EXIT_START_TIMEOUT}, saying what failed) if the stream is not up "
                             f"within this many seconds (default {DEFAULT_START_TIMEOUT:g})")
    parser.add_argument("--read-coalesce-ms", type=float, default=DEFAULT_READ_COALESCE * 1000, metavar="MS",
                        help="public sockets: while ticker frames come faster than this, wait up to this "
                             "long before the next read, so one read carries many frames (less CPU, up to "
                             f"this much more latency; at least 1 ms in practice; 0: off; at most "
                             f"{MAX_READ_COALESCE * 1000:g}; default {DEFAULT_READ_COALESCE * 1000:g})")
    add_log_level(parser, "INFO")
    add_rollout_options(parser)


def add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    """``--log-level``, any case (``debug`` = ``DEBUG``), with help."""
    parser.add_argument("--log-level", default=default, type=str.upper, choices=LOG_LEVELS, metavar="LEVEL",
                        help=f"logs on stderr at this level and above: {', '.join(LOG_LEVELS)}, any case "
                             f"(default {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hybrid_actors", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"hybrid_actors {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,demo,simulator,dashboard}")

    run = sub.add_parser("run", help="stream live Bybit positions (keys from the environment)",
                         description="Stream Bybit positions with live mark prices. Keys come from "
                                     "BYBIT_API_KEY and BYBIT_API_SECRET.", epilog=EPILOG)
    run.set_defaults(subparser=run)
    env = run.add_mutually_exclusive_group()
    env.add_argument("--testnet", action="store_true", help="use Bybit testnet")
    env.add_argument("--demo-trading", action="store_true",
                     help="use Bybit demo trading (a mainnet demo account: private socket on stream-demo, "
                          "public data from mainnet); not the keyless 'demo' command")
    env.add_argument("--demo", action="store_true", dest="demo_deprecated", help=argparse.SUPPRESS)
    run.add_argument("--stream-url", metavar="ws://HOST:PORT",
                     help="WebSocket base; /v5/public/{category} and /v5/private are appended")
    run.add_argument("--rest-url", metavar="http://HOST:PORT", help="REST base URL")
    _add_stream_options(run)

    demo = sub.add_parser("demo", help="run the stream against the built-in simulator (no keys, no network)",
                          description="The stream against the built-in Bybit simulator on loopback: no keys, "
                                      "no network.", epilog=EPILOG)
    demo.set_defaults(subparser=demo)
    demo.add_argument("--symbols", type=int, default=20, help="instruments the simulator lists (default 20)")
    demo.add_argument("--positions", type=int, default=5,
                      help="positions open at start, in the categories followed (default 5)")
    demo.add_argument("--rate", type=float, default=10.0, help="ticker pushes per second per symbol")
    demo.add_argument("--seed", type=int, default=7, help="random seed of prices and the scenario")
    _add_stream_options(demo)

    dash = sub.add_parser("dashboard", help="live terminal dashboard of a running stream, from its /health",
                          description="Poll a running stream's /health (start it with --metrics-port) and "
                                      "show sockets, subscriptions, latency, alerts, rollout and positions.")
    dash.add_argument("--url", required=True, metavar="http://127.0.0.1:PORT",
                      help="the stream's metrics server (its --metrics-port)")
    dash.add_argument("--refresh", type=float, default=1.0, metavar="SECONDS", help="poll interval (default 1)")
    dash.add_argument("--rows", type=int, default=None, help="position rows to show (default: what fits)")
    dash.add_argument("--sort", choices=("pnl", "age", "symbol"), default="pnl",
                      help="pnl: largest |uPnL| first (default); age: stalest mark first; symbol")
    dash.add_argument("--once", action="store_true", help="print one frame and exit (for scripts)")
    add_log_level(dash, "WARNING")
    dash.set_defaults(subparser=dash)
    sub.add_parser("simulator", help="serve the local Bybit v5 simulator (see 'simulator --help')",
                   add_help=False)
    return parser


def _deduplicated(args: argparse.Namespace) -> None:
    """A repeated --category counts once (first mention first)."""
    if getattr(args, "categories", None):
        args.categories = list(dict.fromkeys(args.categories))


def _configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def _credentials_from_env() -> Credentials:
    key = os.environ.get("BYBIT_API_KEY", "").strip()
    secret = os.environ.get("BYBIT_API_SECRET", "").strip()
    if not key or not secret:
        raise ConfigError("set BYBIT_API_KEY and BYBIT_API_SECRET in the environment (a read-only key with "
                          "'Positions' permission is enough); or try 'python -m hybrid_actors demo'")
    return Credentials(key, secret)


async def _run(config: StreamConfig, output: str, seconds: float | None, start_timeout: float) -> None:
    async with open_hybrid_stream(config, start_timeout=start_timeout) as stream:
        with trio.move_on_after(seconds) if seconds else nullcontext():  # counted from start-up done
            await consume(stream, output)


def _config_from(args: argparse.Namespace, credentials: Credentials, endpoints: Endpoints) -> StreamConfig:
    return StreamConfig(credentials=credentials, endpoints=endpoints,
                        categories=tuple(args.categories or ("linear",)),
                        heartbeat_interval=args.heartbeat_interval, metrics_port=args.metrics_port,
                        metrics_host=args.metrics_host, read_coalesce=args.read_coalesce_ms / 1000,
                        **rollout_settings(args))


#: how the run command spells Endpoints.choose's options (its errors name these flags)
_ENDPOINT_FLAGS = {"testnet": "--testnet", "demo": "--demo-trading", "stream_url": "--stream-url",
                   "rest_url": "--rest-url"}


def _run_unwrapped(args: argparse.Namespace, output: str) -> None:
    """Run the command; an error that ended it comes out on its own, not in a group."""
    try:
        if args.command == "run":
            try:
                endpoints = Endpoints.choose(testnet=args.testnet, demo=args.demo_trading, stream_url=args.stream_url,
                                             rest_url=args.rest_url, names=_ENDPOINT_FLAGS)
            except ConfigError as exc:
                args.subparser.error(str(exc))  # a bad flag: say so with the command's usage
            config = _config_from(args, _credentials_from_env(), endpoints)
            trio.run(_terminable, _run, config, output, args.seconds, args.start_timeout)
        elif args.command == "dashboard":
            from .dashboard import default_rows, run_dashboard

            rows = args.rows if args.rows is not None else default_rows()
            trio.run(_terminable, partial(run_dashboard, args.url, refresh=args.refresh, max_rows=rows,
                                          sort=args.sort, once=args.once))
        else:
            from .demo import run_demo

            trio.run(_terminable, run_demo, args, output)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from group
        raise


def _leaves(exc: BaseException) -> list[BaseException]:
    return [leaf for leaf in exception_leaves(exc) if not isinstance(leaf, trio.Cancelled)]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "simulator":
        from .testing.cli import main as simulator_main

        return simulator_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_positive(args.subparser, args)
    _deduplicated(args)
    if getattr(args, "demo_deprecated", False):
        print("hybrid_actors: warning: 'run --demo' is deprecated; use 'run --demo-trading' (Bybit demo trading). "
              "The keyless simulator demo is the 'demo' command.", file=sys.stderr)
        args.demo_trading = True
    if sys.stdout is None:  # started with stdout closed (`>&-`): nowhere to write the events
        print("hybrid_actors: stdout is closed; give the events somewhere to go (a file, a pipe, "
              "/dev/null)", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(args.log_level)
    output = getattr(args, "output", None) or ("table" if sys.stdout.isatty() else "jsonl")
    try:
        _run_unwrapped(args, output)
    except HybridActorsError as exc:
        text, status = next((text, status) for kind, text, status in ENDINGS if isinstance(exc, kind))
        print("hybrid_actors: " + text.format(exc=exc, kind=type(exc).__name__), file=sys.stderr)
        return status
    except KeyboardInterrupt:
        print("hybrid_actors: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        print("hybrid_actors: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:  # the reader of our stdout went away (e.g. `| head`)
        # Point stdout at /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - a bug of ours: say so, with the traceback, and exit 1
        log.critical("unexpected error", exc_info=exc)
        print(f"hybrid_actors: stopped by an unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
