"""An error an actor raises while the stream is being stopped is not masked.

Closing a memory channel with ``async with`` awaits a checkpoint, which in a cancelled scope
raises ``Cancelled`` and replaces whatever the block was raising: an actor's bug met during
shutdown vanished without a log line or an exception (found through the asyncio bridge,
whose ``stop()`` then reported a clean stop). The actors close their channels synchronously."""

from __future__ import annotations

import pytest
import trio

from hybrid_actors.actors.emitter import CombinerActor
from hybrid_actors.actors.subscriptions import SubscriptionManager
from stack import TEST_TIMEOUT, running

pytestmark = pytest.mark.integration


class ShutdownBug(LookupError):
    pass


@pytest.mark.parametrize(("actor", "method"), [(CombinerActor, "_follow_ups"),
                                               (SubscriptionManager, "_watch_desired")])
async def test_an_actors_error_during_shutdown_reaches_whoever_stops_the_stream(loopback_clock, monkeypatch,
                                                                                actor, method):
    async def fails_when_cancelled(self: object) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            raise ShutdownBug(f"{actor.__name__}.{method} failed while stopping") from None

    monkeypatch.setattr(actor, method, fails_when_cancelled)
    caught: list[BaseException] = []
    with trio.fail_after(TEST_TIMEOUT):
        try:
            async with running() as s:  # the stream inside the simulator's nursery: a group
                await trio.sleep(1)
                assert s.stream.health().status == "ok"  # nothing failed before the stop
        except* ShutdownBug as group:
            caught += group.exceptions
    assert [str(e) for e in caught] == [f"{actor.__name__}.{method} failed while stopping"]
