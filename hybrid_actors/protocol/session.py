"""Per-connection protocol state, sans-IO (in the manner of h11/wsproto).

A :class:`Session` belongs to one WebSocket connection. It produces request frames
(with ``req_id`` correlation and chunking), tracks the auth state of the private socket,
the args budget of a public one, and turns acks into :class:`AckOutcome` values that
say, per topic, what is now known: confirmed, failed (and why), or unknown (retry).

State table (private socket)::

    NEW --auth()--> AUTHENTICATING --AuthResult(ok)--> AUTHENTICATED
                                   --AuthResult(fail)-> REJECTED
    subscribe() is allowed only in AUTHENTICATED (subscribing before the auth ack is
    answered ``Request not authorized``: the nautilus_trader reconnect race).

A public session starts in OPEN. Time is an input: callers pass ``now``.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final, Literal

import attrs

from ..config import OPTION_MAX_ARGS_PER_CONNECTION, PUBLIC_ARGS_CHAR_BUDGET
from ..errors import LocalProtocolError
from .client import auth_frame, chunk_topics, max_args_per_request, ping_frame, request_frame
from .frames import AuthResult, SubscribeFailure, SubscribeResult

__all__ = ["SessionState", "Request", "AckOutcome", "Session", "ArgsBudget", "arg_cost", "ARG_OVERHEAD"]

Op = Literal["subscribe", "unsubscribe"]
PERMANENT_FAILURES: Final = frozenset({"handler_not_found", "invalid_symbol"})


class SessionState(enum.Enum):
    NEW = "new"
    AUTHENTICATING = "authenticating"
    AUTHENTICATED = "authenticated"
    REJECTED = "rejected"
    OPEN = "open"  # public sockets need no auth


@attrs.frozen
class Request:
    """One subscribe/unsubscribe frame on the wire, awaiting its ack."""

    req_id: str
    op: Op
    topics: tuple[str, ...]
    text: str = attrs.field(repr=False)
    sent_at: float


@attrs.frozen
class AckOutcome:
    """What one ack taught us.

    ``confirmed``: now subscribed (subscribe) or gone (unsubscribe). ``failed``: refused
    for a reason that retrying soon will not fix (unknown symbol). ``unknown``: the
    exchange named another topic or none; their fate is unknown, so send them again.
    """

    request: Request
    confirmed: tuple[str, ...] = ()
    failed: tuple[tuple[str, SubscribeFailure], ...] = ()
    unknown: tuple[str, ...] = ()
    failure: SubscribeFailure | None = None


#: what one topic costs beyond its own characters when counted conservatively: its two
#: JSON quotes and a comma (BYBIT_V5.md §12, "Args budget")
ARG_OVERHEAD: Final = 3


def arg_cost(topic: str) -> int:
    return len(topic) + ARG_OVERHEAD


@attrs.define
class ArgsBudget:
    """Bybit caps the total length of all args on one public connection at 21,000
    characters (and options at 2,000 args). Counted for subscribed + in-flight topics,
    conservatively: each topic with its JSON quotes and comma (:func:`arg_cost`)."""

    max_chars: int = PUBLIC_ARGS_CHAR_BUDGET
    max_args: int | None = None
    _topics: set[str] = attrs.Factory(set)
    _chars: int = 0

    @property
    def used_chars(self) -> int:
        return self._chars

    def fits(self, topic: str) -> bool:
        if topic in self._topics:
            return True
        if self.max_args is not None and len(self._topics) >= self.max_args:
            return False
        return self._chars + arg_cost(topic) <= self.max_chars

    def add(self, topic: str) -> None:
        if topic not in self._topics:
            self._topics.add(topic)
            self._chars += arg_cost(topic)

    def discard(self, topic: str) -> None:
        if topic in self._topics:
            self._topics.remove(topic)
            self._chars -= arg_cost(topic)


@attrs.define(eq=False)
class Session:
    """Protocol state of one connection. ``category`` is None for the private socket."""

    category: str | None
    chunk_size: int = 10
    id_prefix: str = "r"
    state: SessionState = attrs.field(init=False)
    budget: ArgsBudget = attrs.field(init=False)
    _pending: OrderedDict[str, Request] = attrs.field(init=False, factory=OrderedDict)
    _counter: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self.state = SessionState.NEW if self.category is None else SessionState.OPEN
        max_args = OPTION_MAX_ARGS_PER_CONNECTION if self.category == "option" else None
        self.budget = ArgsBudget(max_args=max_args)

    @property
    def is_private(self) -> bool:
        return self.category is None

    def _next_id(self) -> str:
        self._counter += 1
        return f"{self.id_prefix}{self._counter}"

    # -- auth -------------------------------------------------------------------------
    def auth(self, api_key: str, api_secret: str, expires_ms: int) -> str:
        if self.state is not SessionState.NEW:
            raise LocalProtocolError(f"auth is sent once, on a new private socket (state {self.state.value})")
        self.state = SessionState.AUTHENTICATING
        return auth_frame(api_key, api_secret, expires_ms, req_id=self._next_id())

    def receive_auth(self, result: AuthResult) -> None:
        if self.state is not SessionState.AUTHENTICATING:
            raise LocalProtocolError(f"auth answer in state {self.state.value}")
        self.state = SessionState.AUTHENTICATED if result.success else SessionState.REJECTED

    # -- ping -------------------------------------------------------------------------
    def ping(self) -> tuple[str, str]:
        """``(req_id, text)``; the pong echoes ``req_id`` on linear/inverse/private."""
        req_id = f"ping-{self._next_id()}"
        return req_id, ping_frame(req_id)

    # -- subscribe / unsubscribe -------------------------------------------------------
    def subscribe(self, topics: Iterable[str], now: float) -> tuple[list[Request], list[str]]:
        """Frames for ``topics`` and the topics that do not fit the args budget."""
        if self.is_private and self.state is not SessionState.AUTHENTICATED:
            raise LocalProtocolError(
                f"private subscribe before the auth ack (state {self.state.value}); "
                "the exchange would answer 'Request not authorized'")
        fitting: list[str] = []
        refused: list[str] = []
        for topic in dict.fromkeys(topics):
            if self.budget.fits(topic):
                self.budget.add(topic)
                fitting.append(topic)
            else:
                refused.append(topic)
        return self._requests("subscribe", fitting, now), refused

    def unsubscribe(self, topics: Iterable[str], now: float) -> list[Request]:
        return self._requests("unsubscribe", list(dict.fromkeys(topics)), now)

    def _requests(self, op: Op, topics: list[str], now: float) -> list[Request]:
        out = []
        for chunk in chunk_topics(topics, max_args_per_request(self.category, self.chunk_size)):
            req_id = self._next_id()
            request = Request(req_id, op, chunk, request_frame(op, chunk, req_id), now)
            self._pending[req_id] = request
            out.append(request)
        return out

    @property
    def pending(self) -> tuple[Request, ...]:
        return tuple(self._pending.values())

    def overdue(self, now: float, timeout: float) -> list[Request]:
        """Requests unanswered for ``timeout``: forgotten here, to be retried by the caller."""
        late = [r for r in self._pending.values() if now - r.sent_at >= timeout]
        for request in late:
            del self._pending[request.req_id]
            if request.op == "subscribe":
                for topic in request.topics:
                    self.budget.discard(topic)
        return late

    def receive_ack(self, ack: SubscribeResult) -> AckOutcome | None:
        """Match an ack to its request; None when nothing pending matches (unsolicited)."""
        request = self._match(ack)
        if request is None:
            return None
        del self._pending[request.req_id]
        outcome = _interpret(request, ack)
        if request.op == "subscribe":
            for topic in (*outcome.unknown, *(t for t, _ in outcome.failed)):
                self.budget.discard(topic)
        else:
            for topic in outcome.confirmed:
                self.budget.discard(topic)
        return outcome

    def _match(self, ack: SubscribeResult) -> Request | None:
        if ack.req_id is not None:
            # Every request we send carries a req_id and the exchange echoes it, so an ack
            # with an id we do not hold answers a request already given up on (overdue) or
            # never ours. Matching it FIFO would pin its verdict on another request.
            return self._pending.get(ack.req_id)
        if ack.op is None:  # option COMMAND_RESP: no req_id, no op; match by topics
            # The option socket names every topic of the frame it answers (successTopics or
            # failTopics), so an answer is a request's only when it names exactly its topics:
            # one naming a subset answers another frame (e.g. a late answer to a request
            # given up on, whose topic was asked again in a bigger frame) and must neither
            # confirm topics it never named nor take the real answer's place.
            named = set(ack.success_topics) | set(ack.fail_topics)
            for request in self._pending.values():
                if named and named == set(request.topics):
                    return request
            if named:  # no pending request asked exactly these: a late answer to one given up on
                return None
        for request in self._pending.values():  # acks come back in order on one socket
            if ack.op is None or request.op == ack.op:
                return request
        return None


def _interpret(request: Request, ack: SubscribeResult) -> AckOutcome:
    topics = request.topics
    if request.op == "unsubscribe":
        # Unsubscribing is idempotent: even a refusal ("not subscribed") leaves the topic gone.
        return AckOutcome(request, confirmed=topics, failure=ack.failure)
    if ack.op is None:  # option: per-topic lists
        ok = tuple(t for t in topics if t in ack.success_topics)
        bad = tuple(t for t in topics if t in ack.fail_topics)
        rest = tuple(t for t in topics if t not in ok and t not in bad)
        failure = ack.failure
        failed = tuple((t, failure) for t in bad) if failure is not None else ()
        return AckOutcome(request, confirmed=ok + (rest if ack.success and not bad else ()),
                          failed=failed, unknown=() if ack.success and not bad else rest, failure=failure)
    if ack.success:
        return AckOutcome(request, confirmed=topics)
    failure = ack.failure
    assert failure is not None
    named = tuple(t for t in failure.topics if t in topics)
    others = tuple(t for t in topics if t not in named)
    if failure.kind == "already_subscribed":
        if not named and len(topics) == 1:
            # naming no topic on a one-topic frame, it can only mean that one: subscribed
            return AckOutcome(request, confirmed=topics, failure=failure)
        return AckOutcome(request, confirmed=named, unknown=others, failure=failure)
    if failure.kind == "too_many_args":
        # the frame (or the connection's args) is over the exchange's limit: sending the
        # same again soon fails the same way; held back like a refused symbol
        return AckOutcome(request, failed=tuple((t, failure) for t in topics), failure=failure)
    if failure.kind in PERMANENT_FAILURES and named:
        return AckOutcome(request, failed=tuple((t, failure) for t in named), unknown=others, failure=failure)
    if failure.kind in PERMANENT_FAILURES and len(topics) == 1:
        return AckOutcome(request, failed=((topics[0], failure),), failure=failure)
    return AckOutcome(request, unknown=topics, failure=failure)
