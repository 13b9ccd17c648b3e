"""Manual check against Bybit **testnet** with your own keys (skipped in CI without them).

Run it as a script::

    BYBIT_API_KEY=... BYBIT_API_SECRET=... python tests/manual/test_hybrid_connection.py [--seconds 30]

or through pytest (``python -m pytest tests/manual -m manual -s``). It connects to testnet,
prints the positions from the REST snapshot, then streams events and checks that every
open position gets a live mark price from the public ticker stream. Use a read-only key.
"""

from __future__ import annotations

import argparse
import os
import sys

import pytest
import trio

from hybrid_actors import Credentials, Endpoints, StreamConfig, open_hybrid_stream

pytestmark = pytest.mark.manual

HAVE_KEYS = bool(os.environ.get("BYBIT_API_KEY") and os.environ.get("BYBIT_API_SECRET"))


async def check_testnet(seconds: float, categories: tuple[str, ...] = ("linear",)) -> dict[str, int]:
    config = StreamConfig(credentials=Credentials(os.environ["BYBIT_API_KEY"], os.environ["BYBIT_API_SECRET"]),
                          endpoints=Endpoints.testnet(), categories=categories)
    seen_ticker: dict[str, int] = {}
    with trio.fail_after(seconds + 60):
        async with open_hybrid_stream(config) as stream:
            views = stream.positions()
            print(f"connected; {len(views)} open position(s) from the REST snapshot")
            for view in views:
                print(f"  {view.category} {view.symbol} idx={view.position_idx} {view.side} {view.size} "
                      f"entry={view.entry_price} mark={view.mark_price}")
            with trio.move_on_after(seconds):
                while True:
                    for event in await stream.batches():
                        if event.source == "ticker":
                            seen_ticker[event.symbol] = seen_ticker.get(event.symbol, 0) + 1
                        else:
                            print(f"{event.name}: {event.to_json()}")
            health = stream.health()
            print(f"health: {health.status}; problems: {list(health.problems)}")
            print(f"ticker updates per symbol in {seconds:g}s: {seen_ticker}")
            missing = {v.symbol for v in stream.positions()} - set(seen_ticker)
            assert not missing, f"no live mark price for {sorted(missing)}"
    return seen_ticker


@pytest.mark.skipif(not HAVE_KEYS, reason="needs BYBIT_API_KEY and BYBIT_API_SECRET for Bybit testnet")
def test_testnet_positions_get_live_mark_prices() -> None:
    trio.run(check_testnet, 30.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--category", action="append", dest="categories")
    args = parser.parse_args()
    if not HAVE_KEYS:
        sys.exit("set BYBIT_API_KEY and BYBIT_API_SECRET (testnet keys) first")
    trio.run(check_testnet, args.seconds, tuple(args.categories or ("linear",)))
