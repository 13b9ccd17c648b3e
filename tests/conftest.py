"""Shared fixtures. Time is a fixture: no test sleeps on the real clock."""

from __future__ import annotations

import pathlib
import signal
from collections.abc import Callable
from typing import Any

import pytest
import trio.testing

# A command started in the background by a shell without job control (``cmd &`` in a script,
# ``bash -c '... &'``) inherits SIGINT ignored, and so does every process it starts: Python
# then installs no KeyboardInterrupt handler, and the Ctrl-C tests (the CLI's exit 130, every
# asyncio host's interrupt) would wait for an interrupt that never comes. What those tests
# check is our handling of Ctrl-C, not how the suite was launched: take SIGINT back, here and
# so in every child process the tests start (an ignored signal stays ignored across exec, a
# handled one is reset to its default).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: verbatim copies of ../shared/bybit-vectors (sources inside each file; see vectors/README.md)
VECTORS = pathlib.Path(__file__).resolve().parent / "vectors"
SHARED_VECTORS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "bybit-vectors"


def load_vector(name: str) -> dict:
    import json

    return json.loads((VECTORS / name).read_text())


#: Real seconds every task must have been blocked before ``loopback_clock`` jumps virtual
#: time ahead. Each jump costs this much real time (the suite makes ~3,500 of them: 0.1 s
#: cost ~6 of its 10.5 minutes). Safe because everything a loopback test talks to (the
#: simulator, the stream, our HTTP servers) runs in the test's own trio thread, and loopback
#: TCP delivers inside the sender's syscall: while a message is in flight its sender is
#: still runnable or the receiver's socket is already readable, so "every task blocked,
#: nothing readable" means "every task waits on a timer". What the kernel does defer, when
#: the CPUs are busy: measured with a trio Instrument timing the I/O waits that ended with
#: an event, over ~1,400 runs of the loopback tests at load average 2-6 on this 2-core
#: machine, at most 9 ms (most under 1 ms), except where a test fills a socket buffer (a
#: 1 MiB frame: up to 17 ms with the CPUs saturated; a peer that reads nothing: TCP's 40 ms
#: delayed ACK) or waits on a worker thread: those use ``CUSHION_AUTOJUMP`` (or, like the
#: transport tests, a ``wait_all_tasks_blocked`` cushion); tests waiting on a subprocess
#: have no timer pending meanwhile, so the clock has nowhere to jump to.
LOOPBACK_AUTOJUMP: float = 0.03
#: for the few tests that wait on a worker thread or on a full socket buffer (see above)
CUSHION_AUTOJUMP: float = 0.1


@pytest.fixture
def loopback_clock() -> trio.testing.MockClock:
    """Virtual time for tests that do real I/O on 127.0.0.1: it jumps ahead after every
    task has been blocked for ``LOOPBACK_AUTOJUMP`` of real time (threshold 0 would jump
    in the rare moments the kernel is still delivering). A test that waits on a thread or
    a full socket buffer sets ``loopback_clock.autojump_threshold = CUSHION_AUTOJUMP``.
    Sync on purpose: clock fixtures must be sync (pytest-trio #157)."""
    return trio.testing.MockClock(autojump_threshold=LOOPBACK_AUTOJUMP)


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
        "public:linear": (public_ws, "decode_hot"),
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
