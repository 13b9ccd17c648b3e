"""``open_simulator``: the exchange, its WebSocket and REST servers and its tasks, in one nursery."""

from __future__ import annotations

import logging
import random
from contextlib import asynccontextmanager
from typing import AsyncIterator, Final

import attrs
import trio

from ...config import Credentials, Endpoints
from .config import SimulatorConfig
from .control import Control
from .exchange import Exchange
from .faults import DropMode
from .observe import Observer
from .rest_api import RestApi
from .rest_http import serve_http
from .scenario import run_scenario
from .server import WsServer, open_ws_listener
from .wire import PRIVATE, PUBLIC_KINDS

log = logging.getLogger(__name__)

#: how long open sockets get to close politely when the simulator exits
SHUTDOWN_TIMEOUT: Final = 2.0


@attrs.define(eq=False)
class Simulator:
    """A running simulated exchange. ``ws_url`` is the base (paths are appended)."""

    config: SimulatorConfig
    #: the seed in use (``config.seed`` or the random one drawn at start)
    seed: int
    ws_url: str
    rest_url: str
    api_key: str
    api_secret: str = attrs.field(repr=False)
    control: Control = attrs.field(repr=False)
    observe: Observer = attrs.field(repr=False)
    exchange: Exchange = attrs.field(repr=False)

    def url(self, kind: str, *, max_active_time: str | None = None) -> str:
        """``url("linear")`` → ``ws://127.0.0.1:PORT/v5/public/linear``; ``url("private")`` → ``.../v5/private``."""
        if kind == PRIVATE:
            query = "" if max_active_time is None else f"?max_active_time={max_active_time}"
            return f"{self.ws_url}/v5/private{query}"
        if kind not in PUBLIC_KINDS:
            raise ValueError(f"kind must be one of {', '.join((*PUBLIC_KINDS, PRIVATE))}, got {kind!r}")
        return f"{self.ws_url}/v5/public/{kind}"

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints.local(self.ws_url, self.rest_url)

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.api_key, self.api_secret)

    def symbols(self, category: str) -> list[str]:
        """The known instruments of a category, in generation order."""
        return list(self.exchange.market.instruments[category])


@asynccontextmanager
async def open_simulator(config: SimulatorConfig | None = None) -> AsyncIterator[Simulator]:
    """Serve a simulated Bybit v5 exchange on loopback for the duration of the block.

    On exit every open socket is closed (1001) within ``SHUTDOWN_TIMEOUT``, then all tasks are cancelled.
    """
    config = config or SimulatorConfig()
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
    exchange = Exchange.create(config, seed)
    control = Control(exchange)
    ws_listener = await open_ws_listener(config.host, config.ws_port)
    rest_listener = (await trio.open_tcp_listeners(config.rest_port, host=config.host))[0]
    async with trio.open_nursery() as nursery:
        await nursery.start(WsServer(exchange, ws_listener).run)
        await nursery.start(serve_http, rest_listener, RestApi(exchange, control))
        await nursery.start(exchange.market.run)
        await nursery.start(exchange.run_idle_sweeper)
        if config.usdc_settlement:
            await nursery.start(exchange.run_settlement)
        if config.scenario is not None:
            await nursery.start(run_scenario, exchange, config.scenario)
        host = config.host if ":" not in config.host else f"[{config.host}]"
        sim = Simulator(config, seed, f"ws://{host}:{ws_listener.port}",
                        f"http://{host}:{rest_listener.socket.getsockname()[1]}", config.api_key,
                        config.api_secret, control, exchange.observer, exchange)
        log.info("simulator up: %s %s (seed %d)", sim.ws_url, sim.rest_url, seed)
        try:
            yield sim
        finally:
            with trio.move_on_after(SHUTDOWN_TIMEOUT, shield=True):
                await _close_all(exchange)
            nursery.cancel_scope.cancel()


async def _close_all(exchange: Exchange) -> None:
    for conn in exchange.connections():
        conn.request_drop(DropMode.CLOSE, code=1001, reason="simulator shutting down", cause="shutdown")
    exchange.changed()
    await exchange.observer.wait_until(lambda: not exchange.connections())
