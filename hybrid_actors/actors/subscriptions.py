"""Subscription manager actor: drives each public socket from confirmed to desired topics.

Desired = symbols with an open position (published by the combiner). Confirmed = topics
the current connection acked. The manager sends the difference as subscribe /
unsubscribe frames through the socket's outbox, and:

- rate-limits frames per socket (token bucket: ``requests_per_second``, ``burst``);
- treats ``already subscribed`` as success;
- marks ``handler not found`` / ``Invalid symbol`` symbols failed: reported, retried
  only every ``unknown_symbol_retry`` seconds, never blocking other symbols;
- retries everything else (error acks naming no topic or another topic, ack timeouts)
  through the one backoff policy (``SubscriptionPolicy.backoff``). What counts as a
  subscription failure (health, metrics, the rollback trigger): a refused symbol, once
  while it stays wanted (its retries every ``unknown_symbol_retry`` do not count again);
  an error ack naming no topic, once for its frame; the acks one connection fails to
  answer, once per ack timeout together. The other topics of a frame whose ack named one
  refused or ``already subscribed`` topic do not count: Bybit answers for one topic per
  frame and subscribes the rest, which the one-topic retry confirms;
- unsubscribes a symbol no longer wanted whose subscribe had no clear answer (it may be
  held: a ticker nobody wants must not stream for the connection's life);
- waits ``unsubscribe_grace`` before unsubscribing a closed position's symbol, so a
  flipped position does not churn;
- resubscribes a confirmed topic that has been silent for ``silence_timeout``;
- on a new connection (a restarted public actor) starts from nothing confirmed, so the
  whole desired set is subscribed again.

All of that state lives in the hub (:class:`~.hub.CategorySubscriptions`), so a
restarted manager carries on where it was; stale acks of older connections are ignored.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Final, NoReturn

import attrs
import trio

from ..messages import AckReceived, LinkDown, LinkUp, SubscriptionMessage
from ..protocol.client import max_args_per_request, symbol_of_topic, ticker_topic
from ..protocol.session import AckOutcome, Session
from .hub import CategorySubscriptions, Failed, Hub

__all__ = ["SubscriptionManager"]

log = logging.getLogger(__name__)

#: shortest wait between two passes (float clocks cannot tell now from now + 1e-12)
MIN_WAIT: Final = 0.001
#: a token bucket refilled over float time may stop a hair short of a whole token
TOKEN_EPSILON: Final = 1e-9
#: numbers the sessions made after crashes (their req_ids must not match an older session's)
_RESETS: Final = itertools.count(1)


@attrs.define(eq=False)
class SubscriptionManager:
    hub: Hub
    name: str = "subscriptions"
    _wake: trio.Event = attrs.field(init=False, factory=trio.Event)

    @staticmethod
    def reset_after_crash(hub: Hub) -> None:
        """Owns ``subscriptions``. Known-good after a crash (which may have come between a
        request and its bookkeeping): nothing in flight (a fresh session per connection, so
        late acks of the old one are ignored), no retry timers or parked failures, and every
        wanted symbol unverified: subscribed again on the live connection, where Bybit's
        "already subscribed" confirms the ones it has. Symbols possibly subscribed but no
        longer wanted stay confirmed, so they are unsubscribed after the grace."""
        policy = hub.config.subscriptions
        now = trio.current_time()
        for category, subs in hub.subscriptions.items():
            desired = hub.desired.value.get(category, frozenset())
            # what the exchange may hold: confirmed, in flight, or asked with no clear answer yet
            unwanted = (subs.confirmed | set(subs.inflight) | set(subs.retry_at)) - desired
            subs.failed.clear()
            if subs.link is None or subs.session is None:
                subs.link = subs.session = None
                subs.confirmed.clear()
                subs.confirmed_at.clear()
                for field in (subs.inflight, subs.retry_at, subs.attempts, subs.leaving):
                    field.clear()
                subs.resubscribe.clear()
                continue
            session = Session(category, policy.chunk_size,
                              id_prefix=f"{category}{subs.link.generation}r{next(_RESETS)}-")
            subs.reset_for(subs.link, session, policy.burst, now)
            subs.confirmed |= unwanted
            subs.confirmed_at.update(dict.fromkeys(unwanted, now))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        hub = self.hub
        with hub.subs_recv.clone() as inbox:  # closed synchronously: see CombinerActor.run
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, inbox)
                nursery.start_soon(self._watch_desired)
                task_status.started()
                while True:
                    self._wake = trio.Event()
                    now = trio.current_time()
                    # Whatever was due has just been done; never spin on a deadline already passed.
                    due = max(self.reconcile(now), now + MIN_WAIT)
                    with trio.move_on_at(due):
                        await self._wake.wait()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _receive(self, inbox: trio.MemoryReceiveChannel[SubscriptionMessage]) -> None:
        async for message in inbox:
            self.handle(message, trio.current_time())
            self._wake.set()

    async def _watch_desired(self) -> NoReturn:
        desired = self.hub.desired
        while True:
            version = desired.version
            self._wake.set()
            await desired.wait_newer(version)

    # -- inputs ---------------------------------------------------------------------------
    def handle(self, message: SubscriptionMessage, now: float) -> None:
        subs = self.hub.subscriptions.get(message.category)
        if subs is None:
            log.error("subscription message for unconfigured category %r ignored", message.category)
            return
        if isinstance(message, LinkUp):
            current = subs.link
            if current is not None and current.generation > message.link.generation:
                return  # an older connection announced itself late
            policy = self.hub.config.subscriptions
            session = Session(message.category, policy.chunk_size, id_prefix=f"{message.category}{message.link.generation}-")
            subs.reset_for(message.link, session, policy.burst, now)
        elif isinstance(message, LinkDown):
            if subs.link is not None and subs.link.generation == message.generation:
                subs.link = None
                subs.session = None
                subs.inflight.clear()
                subs.confirmed.clear()
        elif isinstance(message, AckReceived):
            if subs.link is None or subs.session is None or subs.link.generation != message.generation:
                return  # an ack from a connection that is gone
            outcome = subs.session.receive_ack(message.result)
            if outcome is None:
                log.warning("public:%s: unsolicited %s ack ignored: %r", message.category,
                            message.result.op, message.result.ret_msg)
                return
            self._apply(subs, outcome, now)

    def _apply(self, subs: CategorySubscriptions, outcome: AckOutcome, now: float) -> None:
        policy = self.hub.config.subscriptions
        health = self.hub.health
        op = outcome.request.op
        for topic in outcome.confirmed:
            symbol = symbol_of_topic(topic)
            if symbol is None:
                continue
            subs.inflight.pop(symbol, None)
            if op == "subscribe":
                subs.confirmed.add(symbol)
                subs.confirmed_at[symbol] = now
                subs.attempts.pop(symbol, None)
                subs.retry_at.pop(symbol, None)
                if subs.failed.pop(symbol, None) is not None:
                    log.info("public:%s: %s subscribed after earlier refusals", subs.category, symbol)
            else:
                subs.confirmed.discard(symbol)
                subs.confirmed_at.pop(symbol, None)
                subs.leaving.pop(symbol, None)
                subs.resubscribe.discard(symbol)
                if subs.link is not None:  # the ack's own connection (handle() checked the generation)
                    subs.link.retire(symbol)
        over_limit: list[str] = []
        for topic, failure in outcome.failed:
            symbol = symbol_of_topic(topic)
            if symbol is None:
                continue
            subs.inflight.pop(symbol, None)
            previous = subs.failed.get(symbol)
            subs.failed[symbol] = Failed(failure.kind, failure.ret_msg, now + policy.unknown_symbol_retry,
                                         previous.attempts + 1 if previous else 1)
            if previous is not None:  # refused again on its periodic retry: counted the first time
                log.warning("public:%s: tickers.%s refused again (%s, %d times); retrying in %gs",
                            subs.category, symbol, failure.ret_msg, previous.attempts + 1,
                            policy.unknown_symbol_retry)
                continue
            if failure.kind == "too_many_args":  # the frame's (or connection's) args: one incident
                over_limit.append(symbol)
            else:
                health.subscription_failed(now, subs.category, symbol, failure.ret_msg)
            log.error("public:%s: the exchange refused tickers.%s (%s); its position gets no live mark "
                      "price; retrying in %gs", subs.category, symbol, failure.ret_msg,
                      policy.unknown_symbol_retry)
        if over_limit:
            health.subscription_failed(now, subs.category, _shown(over_limit), f"args limit ({len(over_limit)} topic(s))")
        unknown = []
        for topic in outcome.unknown:
            symbol = symbol_of_topic(topic)
            if symbol is None:
                continue
            subs.inflight.pop(symbol, None)
            if op == "subscribe":
                unknown.append(symbol)
                reason = outcome.failure.ret_msg if outcome.failure else "unknown"
                self._retry_later(subs, symbol, now, reason, count=False)
        refusal = outcome.failure
        if unknown and not outcome.failed and (refusal is None or refusal.kind != "already_subscribed"):
            # an error ack that named none of the frame's topics: one failure for the frame
            health.subscription_failed(now, subs.category, _shown(unknown),
                                       f"{refusal.ret_msg if refusal else 'unknown'} ({len(unknown)} topic(s))")

    def _retry_later(self, subs: CategorySubscriptions, symbol: str, now: float, reason: str,
                     *, count: bool = True) -> None:
        policy = self.hub.config.subscriptions
        backoff = policy.backoff
        # the count lives in the hub and outlives restarts: kept bounded by the policy, so
        # days of failures neither overflow nor grow it
        previous = subs.attempts.get(symbol, 0)
        delay = backoff.delay(previous, self.hub.rng)
        attempts = min(previous + 1, backoff.saturation + 1)  # failures so far, capped
        subs.attempts[symbol] = attempts
        subs.retry_at[symbol] = now + delay
        if count:
            self.hub.health.subscription_failed(now, subs.category, symbol, reason)
        log.warning("public:%s: subscribing %s did not succeed (%s); retrying in %.2fs",
                    subs.category, symbol, reason, delay)

    # -- the diff -------------------------------------------------------------------------
    def reconcile(self, now: float) -> float:
        """Send what is due on every socket; return the time anything next becomes due."""
        due = math.inf
        desired = self.hub.desired.value
        for category, subs in self.hub.subscriptions.items():
            due = min(due, self._reconcile(subs, desired.get(category, frozenset()), now))
        return due

    def _reconcile(self, subs: CategorySubscriptions, desired: frozenset[str], now: float) -> float:
        link, session = subs.link, subs.session
        if link is None or session is None or link.dead.is_set():
            return math.inf
        policy = self.hub.config.subscriptions
        due = math.inf
        # Acks that never came are a failure of this connection, not one per topic: a
        # half-open socket holding twenty subscribes is one incident (the heartbeat finds
        # the socket; the disconnect trigger is about sockets), and counting it twenty times
        # passed production's "> 10 subscription failures an hour" rollback on one fault.
        # A connection that keeps not answering counts again once per ack timeout.
        unanswered = []
        for request in session.overdue(now, policy.ack_timeout):
            for topic in request.topics:
                symbol = symbol_of_topic(topic)
                if symbol is not None and subs.inflight.pop(symbol, None) == "subscribe":
                    unanswered.append(symbol)
                    self._retry_later(subs, symbol, now, f"no ack within {policy.ack_timeout:g}s", count=False)
        if unanswered and now - subs.unanswered_counted_at >= policy.ack_timeout:
            subs.unanswered_counted_at = now
            self.hub.health.subscription_failed(
                now, subs.category, _shown(unanswered),
                f"no ack within {policy.ack_timeout:g}s for {len(unanswered)} topic(s) on this connection")
        # Grace before unsubscribing; a symbol that came back is kept.
        for symbol in [s for s in subs.leaving if s in desired]:
            del subs.leaving[symbol]
        # A refused symbol nobody needs any more is forgotten (and stops showing in health).
        for symbol in [s for s in subs.failed if s not in desired]:
            del subs.failed[symbol]
        for symbol in [s for s in subs.retry_at if s not in desired and s not in subs.inflight]:
            del subs.retry_at[symbol]
            subs.attempts.pop(symbol, None)
            # its last subscribe had no clear answer (another topic's error ack, no ack in
            # time): the exchange may hold it, so unsubscribe it now (idempotent) rather than
            # let a ticker nobody wants stream for the connection's life
            subs.confirmed.add(symbol)
            subs.leaving[symbol] = now
        for symbol in subs.confirmed:
            if symbol not in desired and symbol not in subs.leaving:
                subs.leaving[symbol] = now + policy.unsubscribe_grace
        # Silent topics.
        activity = self.hub.activity[subs.category]
        for symbol in subs.confirmed:
            if symbol in desired and symbol not in subs.inflight and symbol not in subs.resubscribe:
                last = max(activity.get(symbol, -math.inf), subs.confirmed_at.get(symbol, -math.inf))
                if now - last >= policy.silence_timeout:
                    log.warning("public:%s: no data for tickers.%s in %gs; resubscribing", subs.category,
                                symbol, policy.silence_timeout)
                    subs.resubscribe.add(symbol)
                    subs.resubscribes += 1
                else:
                    due = min(due, last + policy.silence_timeout)
        # What to send.
        unsubscribe = []
        for symbol, when in subs.leaving.items():
            if when > now:
                due = min(due, when)
            elif symbol in subs.confirmed and symbol not in subs.inflight:
                unsubscribe.append(symbol)
        unsubscribe += [s for s in subs.resubscribe if s in subs.confirmed and s not in subs.inflight
                        and s not in subs.leaving]
        subscribe = []
        for symbol in sorted(desired):
            if symbol in subs.confirmed or symbol in subs.inflight:
                continue
            failed = subs.failed.get(symbol)
            not_before = max(subs.retry_at.get(symbol, -math.inf), failed.retry_at if failed else -math.inf)
            if not_before > now:
                due = min(due, not_before)
            else:
                subscribe.append(symbol)
        # Send within the token bucket.
        subs.tokens = min(policy.burst * 1.0, subs.tokens + (now - subs.tokens_at) * policy.requests_per_second)
        subs.tokens_at = now
        per_frame = max_args_per_request(subs.category, policy.chunk_size)
        # Symbols being retried go one per frame: an error ack names at most one topic, so a
        # symbol that keeps failing must not take a whole frame of healthy ones down with it.
        retried = [s for s in subscribe if s in subs.attempts or s in subs.failed]
        fresh = [s for s in subscribe if s not in subs.attempts and s not in subs.failed]
        work = ([("unsubscribe", unsubscribe[i:i + per_frame]) for i in range(0, len(unsubscribe), per_frame)]
                + [("subscribe", fresh[i:i + per_frame]) for i in range(0, len(fresh), per_frame)]
                + [("subscribe", [s]) for s in retried])
        while work and subs.tokens >= 1 - TOKEN_EPSILON:
            op, chunk = work.pop(0)
            topics = [ticker_topic(s) for s in chunk]
            if op == "subscribe":
                requests, refused = session.subscribe(topics, now)
                for topic in refused:
                    self._refuse_over_budget(subs, topic, now)
            else:
                requests = session.unsubscribe(topics, now)
            for request in requests:
                if not link.offer(request.text):
                    return now + policy.ack_timeout  # writer gone or stuck: the ack timeout retries
                subs.tokens -= 1
                subs.requests_sent += 1
                for topic in request.topics:
                    symbol = symbol_of_topic(topic)
                    if symbol is not None:
                        subs.inflight[symbol] = op
        if work:  # wait for the next whole token (at least MIN_WAIT: float time has a grain)
            due = min(due, now + max(MIN_WAIT, (1 - subs.tokens) / policy.requests_per_second))
        for request in session.pending:
            due = min(due, request.sent_at + policy.ack_timeout)
        return due

    def _refuse_over_budget(self, subs: CategorySubscriptions, topic: str, now: float) -> None:
        symbol = symbol_of_topic(topic) or topic
        policy = self.hub.config.subscriptions
        previous = subs.failed.get(symbol)
        subs.failed[symbol] = Failed("args_budget", "over the 21,000-character args budget of one connection",
                                     now + policy.unknown_symbol_retry, previous.attempts + 1 if previous else 1)
        if previous is not None:  # still over on its periodic retry: counted the first time
            return
        self.hub.health.subscription_failed(now, subs.category, symbol, "args budget exhausted")
        log.error("public:%s: tickers.%s does not fit this connection's args budget; no live mark price",
                  subs.category, symbol)


def _shown(symbols: list[str]) -> str:
    """Symbols for a failure record: the first five, sorted."""
    return ", ".join(sorted(symbols)[:5]) + (", ..." if len(symbols) > 5 else "")
