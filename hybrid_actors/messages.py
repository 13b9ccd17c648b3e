"""Frozen records the actors exchange over channels. Pure: no trio."""

from __future__ import annotations

from typing import Any

import attrs

from .protocol.frames import Position, SubscribeResult
from .protocol.rest import Scope


@attrs.frozen
class PositionsPushed:
    """Private stream → combiner: one ``position`` push (full records)."""

    positions: tuple[Position, ...]
    received_ts: int


@attrs.frozen
class PositionsSnapshot:
    """Private stream / reconciler → combiner: every position of ``categories`` per REST.

    Authoritative for ``coverage`` only (the (category, settle coin) scopes read completely;
    None: all of ``categories``), except over records the book knows to be newer (see
    PositionBook).
    """

    categories: tuple[str, ...]
    positions: tuple[Position, ...]
    as_of_ms: int | None
    received_ts: int
    reason: str  # "connect" | "reconcile"
    coverage: tuple[Scope, ...] | None = None
    #: (category, symbol) whose records REST sent unusable: none of their positions is closed
    uncertain: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class PushUnreadable:
    """Private stream → combiner: a frame that may have been a position push could not be
    used (whole, or some of its records): what it said must come from REST."""

    received_ts: int


Lifecycle = PositionsPushed | PositionsSnapshot | PushUnreadable


@attrs.frozen
class LinkUp:
    """Public stream → subscription manager: a new connection for ``category`` is ready
    for subscribe frames. ``link`` is the connection's :class:`~hybrid_actors.actors.links.Link`."""

    category: str
    link: Any = attrs.field(eq=False)


@attrs.frozen
class LinkDown:
    """Public stream → subscription manager: connection ``generation`` of ``category`` ended."""

    category: str
    generation: int


@attrs.frozen
class AckReceived:
    """Public stream → subscription manager: a subscribe/unsubscribe ack on ``generation``."""

    category: str
    generation: int
    result: SubscribeResult


SubscriptionMessage = LinkUp | LinkDown | AckReceived
