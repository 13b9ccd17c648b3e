"""Helpers for the simulator tests: a raw WebSocket client (no actors, no client codec)
and shape comparison against the recorded frames in tests/vectors."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import orjson
from trio_websocket import WebSocketConnection, open_websocket_url

from conftest import load_vector
from hybrid_actors.protocol.signing import ws_auth_signature
from hybrid_actors.testing.simulator import Simulator, SimulatorConfig

#: every test caps itself with trio.fail_after(TEST_TIMEOUT) (virtual seconds under loopback_clock)
TEST_TIMEOUT = 30


def config(**overrides: Any) -> SimulatorConfig:
    """Small and quiet by default: 8 symbols, no positions, prices move only on command."""
    values: dict[str, Any] = {"symbols": 8, "positions": 0, "rate": 0.0, "seed": 7}
    values.update(overrides)
    return SimulatorConfig(**values)


def vector(name: str, index: int) -> dict[str, Any]:
    return load_vector(name)["messages"][index]


def shape(value: Any) -> Any:
    """Key sets and JSON value types, recursively (a list is described by its first item)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def assert_shape(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert set(actual) == set(expected), (sorted(set(actual) ^ set(expected)), actual)
    assert shape(actual) == shape(expected)


async def send(ws: WebSocketConnection, obj: Any) -> None:
    await ws.send_message(obj if isinstance(obj, str) else orjson.dumps(obj).decode())


async def recv(ws: WebSocketConnection) -> dict[str, Any]:
    return orjson.loads(await ws.get_message())


async def recv_where(ws: WebSocketConnection, predicate: Callable[[dict[str, Any]], bool],
                     limit: int = 10_000) -> dict[str, Any]:
    for _ in range(limit):
        frame = await recv(ws)
        if predicate(frame):
            return frame
    raise AssertionError(f"no matching frame in {limit}")


async def recv_control(ws: WebSocketConnection) -> dict[str, Any]:
    """The next frame that is not market data (an ack, a pong, an error answer)."""
    return await recv_where(ws, lambda f: "topic" not in f)


def auth_args(sim: Simulator, expires_ms: int) -> list[Any]:
    return [sim.api_key, expires_ms, ws_auth_signature(sim.api_secret, expires_ms)]


def future_ms(sim: Simulator, seconds: float = 10.0) -> int:
    return int((sim.config.wall_clock() + seconds) * 1000)


@asynccontextmanager
async def connect(url: str, **kwargs: Any) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(url, **kwargs) as ws:
        yield ws


@asynccontextmanager
async def private_session(sim: Simulator, topics: tuple[str, ...] = ("position",), *,
                          url: str | None = None) -> AsyncIterator[WebSocketConnection]:
    """Connected, authenticated and subscribed (acks consumed)."""
    async with connect(url or sim.url("private")) as ws:
        await send(ws, {"op": "auth", "args": auth_args(sim, future_ms(sim))})
        assert (await recv(ws))["success"] is True
        if topics:
            await send(ws, {"op": "subscribe", "args": list(topics)})
            assert (await recv(ws))["success"] is True
        yield ws

