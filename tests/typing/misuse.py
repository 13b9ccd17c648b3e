"""Wrong uses mypy must refuse: proof that the checked types are the real classes, not Any
(tests/typing/test_typing.py expects exactly these errors)."""

from __future__ import annotations

from hybrid_actors import BybitHybridStream, PositionUpdate, StreamState, open_hybrid_stream


def wrong(update: PositionUpdate, state: StreamState) -> None:
    update.size + 1.5  # Decimal + float  # MISUSE operator
    state.sockets["private"] = False  # read-only mapping  # MISUSE index
    open_hybrid_stream("not a config")  # MISUSE arg-type
    BybitHybridStream("key", "secret", lambda name: None)  # a handler that takes one argument  # MISUSE arg-type
