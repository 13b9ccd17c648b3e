#!/usr/bin/env python
"""A small asyncio trading bot fed by ``BybitHybridStream``, against the local simulator.

The bot is written the way such bots already are: an ``EventRouter`` with
``@router.on('position.update')`` handlers, a position manager that does
``position.current_price = data.get('mark_price')``, a trailing stop whose
``async def update_price(self, symbol, price)`` turns the price into ``Decimal(str(price))``,
and an aged-position monitor listening to the same events (it ages a position from the
exchange's ``created_time``, so a restarted bot knows how old its positions are). None of
that knows where the events come from; only ``TradingBot.start_streams`` (the "ten-line
change") does. A ``stream.state`` handler reports when the stream degrades and recovers.

The script starts the simulator (``python -m hybrid_actors simulator --json``) in a
subprocess, opens an ETHUSDT long and a BTCUSDT short there, and then walks the ETHUSDT
mark up and back down through the simulator's HTTP control API: the trailing stop
activates at +``--activation`` %, trails the high, and fires when the price falls
``--callback`` % from it; the bot then closes the position (here through the simulator,
standing in for the stop order filling) and the stream reports ``position.closed``.

    python scripts/example_bot.py                      # plain asyncio.run() (trio guest mode)
    python scripts/example_bot.py --host trio-asyncio  # under trio_asyncio.run()
    python scripts/example_bot.py --seconds 20
    python scripts/example_bot.py --head-start 4 --max-age 5   # positions opened 4 s before the bot

It exits by itself after ``--seconds`` (0 when the stop activated and fired, 1 otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import selectors
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from hybrid_actors import BybitHybridStream

log = logging.getLogger("example_bot")
T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:6.2f}s] {text}", flush=True)


# --- the bot, unchanged by the switch to the hybrid stream ------------------------------------------

#: ``async def handler(data)``: ``data`` is the event's dict, as the stream hands it over
Handler = Callable[[dict[str, Any]], Awaitable[None]]


class EventRouter:
    """Routes stream events to every handler registered for their name."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)

    def on(self, event_name: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self._handlers[event_name].append(handler)
            return handler
        return register

    async def emit(self, event_name: str, data: dict[str, Any]) -> None:
        for handler in self._handlers.get(event_name, ()):
            await handler(data)


class Position:
    def __init__(self, symbol: str, side: str, quantity: Any, entry_price: Any, created_ms: int | None) -> None:
        self.symbol = symbol
        self.side = side
        self.quantity = quantity
        self.entry_price = entry_price
        self.current_price = entry_price
        self.unrealized_pnl: Any = 0
        #: when the exchange opened it (epoch ms): survives a restart of the bot, unlike our own clock
        self.created_ms = created_ms


class TrailingStop:
    """Activates once the price is ``activation_percent`` in profit, then keeps a stop
    ``callback_percent`` behind the best price; ``on_trigger`` is awaited when it is hit."""

    class Instance:
        def __init__(self, symbol: str, side: str, entry_price: Decimal) -> None:
            self.symbol, self.side, self.entry_price = symbol, side, entry_price
            self.current_price = entry_price
            self.best_price = entry_price
            self.activated = False
            self.stop_price: Decimal | None = None
            self.triggered = False

    def __init__(self, activation_percent: Decimal, callback_percent: Decimal,
                 on_trigger: Callable[[str, Decimal], Awaitable[None]]) -> None:
        self.activation_percent = activation_percent
        self.callback_percent = callback_percent
        self.on_trigger = on_trigger
        self.instances: dict[str, TrailingStop.Instance] = {}
        self.activations = 0
        self.triggers = 0

    def track(self, symbol: str, side: str, entry_price: Any) -> None:
        self.instances[symbol] = TrailingStop.Instance(symbol, side, Decimal(str(entry_price)))

    def forget(self, symbol: str) -> None:
        self.instances.pop(symbol, None)

    async def update_price(self, symbol: str, price: float) -> None:
        instance = self.instances.get(symbol)
        if instance is None or instance.triggered or price is None:
            return
        instance.current_price = Decimal(str(price))
        long = instance.side == "Buy"
        profit = (instance.current_price - instance.entry_price) / instance.entry_price * 100
        if not long:
            profit = -profit
        better = instance.current_price > instance.best_price if long else instance.current_price < instance.best_price
        if better:
            instance.best_price = instance.current_price
        if not instance.activated and profit >= self.activation_percent:
            instance.activated = True
            self.activations += 1
            say(f"TRAILING STOP ACTIVATED {symbol} at {instance.current_price} (+{profit:.2f}%)")
        if not instance.activated:
            return
        factor = (1 - self.callback_percent / 100) if long else (1 + self.callback_percent / 100)
        stop = (instance.best_price * factor).quantize(instance.current_price)  # the price's own precision
        if stop != instance.stop_price:
            instance.stop_price = stop
            say(f"  trailing stop {symbol}: best {instance.best_price}, stop moved to {stop}")
        hit = instance.current_price <= stop if long else instance.current_price >= stop
        if hit:
            instance.triggered = True
            self.triggers += 1
            say(f"TRAILING STOP HIT {symbol}: price {instance.current_price} crossed stop {stop}")
            await self.on_trigger(symbol, instance.current_price)


class PositionManager:
    def __init__(self, event_router: EventRouter, trailing_stop: TrailingStop) -> None:
        self.positions: dict[str, Position] = {}
        self.trailing_stop = trailing_stop
        self.updates = 0

        @event_router.on("position.update")
        async def handle_position_update(data: dict[str, Any]) -> None:
            self.updates += 1
            position = self.positions.get(data["symbol"])
            if position is None:
                position = Position(data["symbol"], data["side"], data["size"], data["entry_price"],
                                    data.get("created_time"))
                self.positions[data["symbol"]] = position
                trailing_stop.track(position.symbol, position.side, position.entry_price)
                say(f"position opened {position.symbol} {position.side} {position.quantity} @ {position.entry_price}")
            position.quantity = data.get("size")
            position.current_price = data.get("mark_price")
            position.unrealized_pnl = data.get("unrealized_pnl")
            await self.trailing_stop.update_price(position.symbol, position.current_price)

        @event_router.on("position.closed")
        async def handle_position_closed(data: dict[str, Any]) -> None:
            position = self.positions.pop(data["symbol"], None)
            trailing_stop.forget(data["symbol"])
            if position is not None:
                say(f"position closed {data['symbol']} (last mark {data.get('mark_price')})")


class AgedPositionMonitor:
    """Flags positions held longer than ``max_age`` seconds (once each), by the exchange's
    ``created_time``: a position opened before the bot (re)started is as old as it really is."""

    def __init__(self, event_router: EventRouter, position_manager: PositionManager, max_age: float) -> None:
        self.flagged: set[str] = set()

        @event_router.on("position.update")
        async def check_age(data: dict[str, Any]) -> None:
            position = position_manager.positions.get(data["symbol"])
            if position is None or position.symbol in self.flagged or position.created_ms is None:
                return
            age = time.time() - position.created_ms / 1000
            if age > max_age:
                self.flagged.add(position.symbol)
                say(f"AGED POSITION {position.symbol}: open {age:.1f}s (limit {max_age:g}s), "
                    f"PnL {position.unrealized_pnl}")

        @event_router.on("position.closed")
        async def forget(data: dict[str, Any]) -> None:
            self.flagged.discard(data["symbol"])


class TradingBot:
    def __init__(self, exchange: SimulatedExchange, args: argparse.Namespace) -> None:
        self.exchange = exchange
        self.event_router = EventRouter()
        self.trailing_stop = TrailingStop(Decimal(str(args.activation)), Decimal(str(args.callback)),
                                          on_trigger=self.close_position)
        self.position_manager = PositionManager(self.event_router, self.trailing_stop)
        self.aged_monitor = AgedPositionMonitor(self.event_router, self.position_manager, args.max_age)
        self.bybit_hybrid_stream: BybitHybridStream | None = None
        self.stream_states: list[str] = []

        @self.event_router.on("stream.state")
        async def stream_state(data: dict[str, Any]) -> None:
            self.stream_states.append(data["state"])
            say(f"stream {data['state']}: {data['reason']}")

    async def _handle_stream_event(self, event_name: str, data: dict[str, Any]) -> None:
        await self.event_router.emit(event_name, data)

    async def start_streams(self, api_key: str, api_secret: str, stream_url: str, rest_url: str) -> None:
        # --- the start-up change: the hybrid stream instead of the private-only stream ---
        self.bybit_hybrid_stream = BybitHybridStream(
            api_key=api_key,
            api_secret=api_secret,
            event_handler=self._handle_stream_event,
            testnet=False,
            stream_url=stream_url,  # the simulator; omit both URLs for Bybit itself
            rest_url=rest_url,
        )
        await self.bybit_hybrid_stream.start()

    async def close_position(self, symbol: str, price: Decimal) -> None:
        """What a real bot does with a market order; here the simulator closes it."""
        await self.exchange.control("close_position", symbol=symbol)

    async def stop(self) -> None:
        if self.bybit_hybrid_stream is not None:
            await self.bybit_hybrid_stream.stop()


# --- the simulated exchange (a subprocess) and its HTTP control API --------------------------------

async def control_request(rest_url: str, method: str, kwargs: dict[str, Any], *, verb: str = "POST"
                          ) -> tuple[int, Any]:
    """``<verb> /control/<method>`` with ``kwargs`` as a JSON object, over a fresh plain asyncio
    connection (it works on any loop): the HTTP status and the decoded JSON answer."""
    parts = urlsplit(rest_url)
    body = json.dumps(kwargs).encode()
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(f"{verb} /control/{method} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


class SimulatedExchange:
    def __init__(self, rate: float) -> None:
        argv = [sys.executable, "-m", "hybrid_actors", "simulator", "--json", "--port", "0", "--rest-port", "0",
                "--symbols", "10", "--positions", "0", "--rate", str(rate), "--seed", "5"]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE)
        try:
            assert self.process.stdout is not None
            with selectors.DefaultSelector() as selector:
                selector.register(self.process.stdout, selectors.EVENT_READ)
                if not selector.select(timeout=30):
                    raise RuntimeError("the simulator did not start within 30 s")
            self.info = json.loads(self.process.stdout.readline())
        except BaseException:
            self.close()
            raise

    async def control(self, method: str, **kwargs: Any) -> Any:
        """``POST /control/<method>`` with a JSON object of keyword arguments; the result."""
        status, answer = await control_request(self.info["rest_url"], method, kwargs)
        if status != 200:
            raise RuntimeError(f"simulator refused {method}: {answer}")
        return answer["result"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- the scenario ---------------------------------------------------------------------------------------

async def move_prices(exchange: SimulatedExchange, symbol: str, entry: Decimal, args: argparse.Namespace) -> None:
    """Walk the mark up ~1.5x the activation, then down until the trailing stop must fire."""
    step = entry * Decimal("0.004")  # 0.4 % per step
    peak_steps = int(Decimal(str(args.activation)) * Decimal("1.5") / Decimal("0.4")) + 1
    path = [entry + step * k for k in range(1, peak_steps + 1)]
    path += [path[-1] - step * k for k in range(1, peak_steps + 1)]
    for price in path:
        await asyncio.sleep(args.step_interval)
        await exchange.control("set_mark_price", symbol=symbol, price=str(price.quantize(Decimal("0.01"))))


async def run_bot(exchange: SimulatedExchange, args: argparse.Namespace) -> bool:
    bot = TradingBot(exchange, args)
    info = exchange.info
    eth = await exchange.control("open_position", symbol="ETHUSDT", side="Buy", size="1")
    await exchange.control("open_position", symbol="BTCUSDT", side="Sell", size="0.01")
    if args.head_start:  # the positions were opened before this bot (re)started
        await asyncio.sleep(args.head_start)
    await bot.start_streams(info["api_key"], info["api_secret"], info["ws_url"], info["rest_url"])
    stream = bot.bybit_hybrid_stream
    assert stream is not None
    say(f"stream started on the {stream.host} host; positions: "
        + ", ".join(f"{p.symbol} {p.side} {p.size} mark {p.mark_price}" for p in stream.positions()))
    mover = asyncio.create_task(move_prices(exchange, "ETHUSDT", Decimal(eth["entryPrice"]), args))
    try:
        deadline = asyncio.get_running_loop().time() + args.seconds
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            await asyncio.sleep(min(2.0, left))
            health = stream.health()
            marks = ", ".join(f"{p.symbol} {p.current_price} (PnL {p.unrealized_pnl})"
                              for p in bot.position_manager.positions.values())
            say(f"status {health.status}: {health.events['handler_calls']} events handled, "
                f"{health.events['handler_errors']} handler errors; {marks or 'no open positions'}")
    finally:
        mover.cancel()
        await asyncio.gather(mover, return_exceptions=True)
        await bot.stop()
    ts = bot.trailing_stop
    say(f"done: {bot.position_manager.updates} position updates, trailing stop activated {ts.activations}x, "
        f"fired {ts.triggers}x, aged positions flagged: {sorted(bot.aged_monitor.flagged) or 'none'}")
    return ts.activations >= 1 and ts.triggers >= 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", choices=("asyncio", "trio-asyncio"), default="asyncio",
                        help="asyncio: plain asyncio.run() (trio runs as a guest); trio-asyncio: trio_asyncio.run()")
    parser.add_argument("--seconds", type=float, default=12.0, help="stop by itself after this long (default 12)")
    parser.add_argument("--activation", type=float, default=1.5, help="trailing stop activation, %% profit")
    parser.add_argument("--callback", type=float, default=1.0, help="trailing stop distance from the best price, %%")
    parser.add_argument("--max-age", type=float, default=5.0, help="aged-position limit, seconds (default 5)")
    parser.add_argument("--head-start", type=float, default=0.0,
                        help="open the positions this many seconds before the bot starts (default 0)")
    parser.add_argument("--step-interval", type=float, default=0.3, help="seconds between scripted price moves")
    parser.add_argument("--rate", type=float, default=2.0, help="simulator ticks per second per symbol")
    parser.add_argument("--log-level", default="WARNING", type=str.upper, metavar="LEVEL",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                        help="logs on stderr at this level and above, any case (default WARNING)")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    exchange = SimulatedExchange(args.rate)
    say(f"simulator on {exchange.info['ws_url']} (REST {exchange.info['rest_url']})")
    try:
        if args.host == "trio-asyncio":
            import trio_asyncio  # type: ignore[import-untyped]  # it ships neither stubs nor py.typed

            ok = trio_asyncio.run(trio_asyncio.aio_as_trio(run_bot), exchange, args)
        else:
            ok = asyncio.run(run_bot(exchange, args))
    finally:
        exchange.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
