"""Shared fixtures. Time is a fixture: no test sleeps on the real clock."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import pytest
import trio.testing

#: verbatim copies of ../shared/bybit-vectors (sources inside each file; see vectors/README.md)
VECTORS = pathlib.Path(__file__).resolve().parent / "vectors"
SHARED_VECTORS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "bybit-vectors"


def load_vector(name: str) -> dict:
    import json

    return json.loads((VECTORS / name).read_text())


@pytest.fixture
def loopback_clock() -> trio.testing.MockClock:
    """Virtual time for tests that do real I/O on 127.0.0.1.

    The clock jumps ahead only after every task has been blocked for 0.1 s of real
    time, so loopback I/O in flight is never mistaken for idleness (threshold 0 can
    jump mid-I/O). Sync on purpose: clock fixtures must be sync (pytest-trio #157).
    """
    return trio.testing.MockClock(autojump_threshold=0.1)


#: the actors a bug can be injected into (``crash_once``), as the supervisor names them
CRASHABLE_ACTORS = ("combiner", "heartbeat", "subscriptions", "public:linear", "private", "reconciler")


@pytest.fixture
def crash_once(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[bool]]:
    """A bug injected into an actor: ``armed = crash_once("combiner")`` (an actor of
    ``CRASHABLE_ACTORS``, at one call it makes) or ``crash_once(owner, "attribute")`` (any
    callable). The call raises ``RuntimeError("injected crash in <attribute>")`` the first
    time it runs after ``armed[0]`` is True (``armed`` starts False), which then reads False."""
    from hybrid_actors.actors import private_ws, public_ws, reconciler
    from hybrid_actors.actors.emitter import CombinerActor
    from hybrid_actors.actors.heartbeat import HeartbeatActor
    from hybrid_actors.actors.subscriptions import SubscriptionManager

    points: dict[str, tuple[Any, str]] = {
        "combiner": (CombinerActor, "apply"),
        "heartbeat": (HeartbeatActor, "tick"),
        "subscriptions": (SubscriptionManager, "reconcile"),
        "public:linear": (public_ws, "decode"),
        "private": (private_ws, "decode"),
        "reconciler": (reconciler, "PositionsSnapshot"),
    }
    assert set(points) == set(CRASHABLE_ACTORS)

    def arm(target: Any, attribute: str | None = None) -> list[bool]:
        owner, name = points[target] if attribute is None else (target, attribute)
        original = getattr(owner, name)
        armed = [False]

        def boom(*args: Any, **kwargs: Any) -> Any:
            if armed[0]:
                armed[0] = False
                raise RuntimeError(f"injected crash in {name}")
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, boom)
        return armed

    return arm
