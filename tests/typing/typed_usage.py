"""A bot's typed use of the public API: ``mypy --strict`` must accept it as is
(tests/typing/test_typing.py). Never run; only type-checked."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any, assert_type

import trio

import hybrid_actors
from hybrid_actors import (AuthRejected, BybitHybridStream, Credentials, Endpoints, HealthReport, HybridStream,
                           PositionClosed, PositionUpdate, StreamConfig, StreamEvent, StreamState,
                           open_hybrid_stream)


def describe(event: StreamEvent) -> str:
    if isinstance(event, StreamState):
        sockets: dict[str, bool] = dict(event.sockets)
        return f"{event.state}: {event.reason} ({sockets})"
    if isinstance(event, (PositionUpdate, PositionClosed)):
        pnl: Decimal | None = event.unrealized_pnl
        size: Decimal = event.size + Decimal(1) - 1
        created: int | None = event.created_time
        age: int | None = event.mark_age_ms
        leverage: Decimal | None = event.leverage
        return f"{event.event} {event.symbol} {size} {pnl} {created} {age} {leverage}"
    return event.event


async def trio_bot(key: str, secret: str) -> None:
    config = StreamConfig(credentials=Credentials(key, secret), endpoints=Endpoints.testnet(),
                          categories=("linear",))
    try:
        async with open_hybrid_stream(config) as stream:
            assert_type(stream, HybridStream)
            views: tuple[PositionUpdate, ...] = stream.positions()
            health: HealthReport = stream.health()
            state: dict[str, Any] = health.stream_state
            print(views, health.status, state.get("state"))
            async for event in stream:
                print(describe(event))
            batch: list[StreamEvent] = await stream.batches()
            print(len(batch), stream.unread())
    except AuthRejected as exc:
        print(f"bad keys: {exc}")


async def on_event(name: str, data: dict[str, Any]) -> None:
    if name == "stream.state":
        print(data["state"], data["reason"])
    elif data["take_profit"] is not None:
        print(Decimal(data["take_profit"]) - data["mark_price"])


def on_event_sync(name: str, data: dict[str, Any]) -> None:  # a plain ``def`` handler (documented)
    print(name, data["symbol"])


def on_record(name: str, data: PositionUpdate | PositionClosed) -> bool:  # records=True: the record itself
    return data.mark_price is not None


async def asyncio_bot(key: str, secret: str) -> None:
    stream = BybitHybridStream(key, secret, on_event, testnet=True)
    assert_type(stream, hybrid_actors.BybitHybridStream)
    BybitHybridStream(key, secret, on_event_sync, testnet=True)
    BybitHybridStream(key, secret, on_record, records=True)
    BybitHybridStream(key, secret, None)
    await stream.start()
    try:
        report: HealthReport = stream.health()
        print(report.as_dict(), stream.positions(), stream.state, stream.error)
        await stream.wait_closed()
    finally:
        await stream.stop()


if __name__ == "__main__":
    trio.run(trio_bot, "key", "secret")
    asyncio.run(asyncio_bot("key", "secret"))
