"""The :class:`Hub`: every channel and piece of state that must outlive an actor.

The supervisor builds one hub and hands it to every actor incarnation. Channel ends in
the hub are the originals; an actor uses a ``clone()`` of the ends it consumes and
closes its clone when it exits, so a restarted actor finds the queued messages intact.
Books, desired topics, subscription state and ping deadlines live here, which is why
a restart loses nothing. Every field has one writer, named in its comment; after a crash
the supervisor has the crashed actor reset what it owns (``reset_after_crash``), so the
restart does not inherit the state that caused the crash.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Final

import attrs
import trio

from ..config import StreamConfig
from ..health import Health
from ..alerts import AlertEvaluator
from ..latency import Latency
from ..messages import Lifecycle, SubscriptionMessage
from ..notices import Notice, StateTracker
from ..protocol.session import Session
from ..rest import RestClient
from ..rollout import Comparator, Mode, ReturnGate
from ..state import Combiner, Event, Mark
from .links import Link, LinkRegistry
from .mailboxes import EventQueue, LatestByKey, Watch
from .switch import SourceSwitch

__all__ = ["Hub", "CategorySubscriptions", "Failed", "LIFECYCLE_BUFFER", "SUBSCRIPTION_INBOX"]

LIFECYCLE_BUFFER: Final = 256
SUBSCRIPTION_INBOX: Final = 256


@attrs.frozen
class Failed:
    """A symbol the exchange refused; retried at ``retry_at`` (trio time)."""

    kind: str
    ret_msg: str
    retry_at: float
    attempts: int


@attrs.define(eq=False)
class CategorySubscriptions:
    """Desired vs confirmed ticker topics of one category (symbols, not topic strings)."""

    category: str
    link: Link | None = None
    session: Session | None = None
    confirmed: set[str] = attrs.Factory(set)
    confirmed_at: dict[str, float] = attrs.Factory(dict)
    #: symbol → "subscribe" | "unsubscribe" while a request for it awaits its ack
    inflight: dict[str, str] = attrs.Factory(dict)
    failed: dict[str, Failed] = attrs.Factory(dict)
    #: unknown outcome (error ack naming another topic, ack timeout): retry not before
    retry_at: dict[str, float] = attrs.Factory(dict)
    attempts: dict[str, int] = attrs.Factory(dict)
    #: closed positions' symbols: unsubscribe when the grace period ends
    leaving: dict[str, float] = attrs.Factory(dict)
    #: confirmed topics gone silent: unsubscribe, then subscribe again
    resubscribe: set[str] = attrs.Factory(set)
    tokens: float = 0.0
    tokens_at: float = -math.inf
    requests_sent: int = 0
    resubscribes: int = 0
    #: when unanswered acks of the current connection last counted as a subscription failure
    unanswered_counted_at: float = -math.inf

    def reset_for(self, link: Link, session: Session, burst: int, now: float) -> None:
        """A new connection: nothing is subscribed on it yet."""
        self.link = link
        self.session = session
        self.confirmed.clear()
        self.confirmed_at.clear()
        self.inflight.clear()
        self.retry_at.clear()
        self.attempts.clear()
        self.leaving.clear()
        self.resubscribe.clear()
        self.tokens = burst * 1.0  # a token count, not a price
        self.tokens_at = now
        self.unanswered_counted_at = -math.inf


@attrs.define(eq=False)
class RolloutRuntime:
    """Rollout state that outlives the REST poller and the rollback monitor."""

    #: the REST view of every position (written by the REST poller only)
    combiner: Combiner = attrs.Factory(Combiner)
    comparator: Comparator | None = None
    #: REST ticker marks for hybrid positions whose live mark went stale (poller → combiner)
    fallback_marks: LatestByKey[tuple[str, str], Mark] = attrs.Factory(LatestByKey)
    #: (category, symbol) → trio time since when the poller has watched its mark age
    tracked_since: dict[tuple[str, str], float] = attrs.Factory(dict)
    #: symbols currently fed from REST because their live mark is stale (the REST poller's)
    stale: frozenset[tuple[str, str]] = frozenset()
    #: since when (trio time) each symbol of ``stale`` has been; the REST poller's only,
    #: bounded by the open positions (a symbol leaves with its staleness)
    stale_since: dict[tuple[str, str], float] = attrs.Factory(dict)
    fallback_marks_sent: int = 0
    position_polls: int = 0
    ticker_polls: int = 0
    #: trio time of the last REST position snapshot applied
    positions_at: float | None = None
    #: the hybrid actor whose crash loop was reported (the rollback monitor takes it)
    crash_loop: str | None = None
    wake_monitor: trio.Event = attrs.Factory(trio.Event)
    #: trio time the rollback monitor first ran (sockets never connected count as down since)
    started_at: float | None = None
    #: when to return to hybrid after a rollback (the rollback monitor's)
    gate: ReturnGate | None = None
    #: since when at least one hybrid position has been open (the rollback monitor's)
    open_since: float | None = None

    def wake(self) -> None:
        """Ask the rollback monitor to evaluate now."""
        self.wake_monitor.set()


@attrs.define(eq=False)
class Hub:
    """Each field names its one writer. Channels name their producers and their one
    consumer. After a crash the supervisor calls the crashed actor's ``reset_after_crash``,
    which puts the fields that actor owns back to a known-good value before the restart."""

    #: read-only after construction
    config: StreamConfig
    #: the REST client; its clock offset is written by its own ``sync_time`` only
    rest: RestClient
    #: read-only after construction
    wall_clock: Callable[[], float] = time.time
    #: the one source of randomness (backoff jitter); drawn from by every retry loop
    rng: random.Random = attrs.field(factory=random.Random, repr=False)
    #: written by the combiner only
    combiner: Combiner = attrs.Factory(Combiner)
    #: counters; each section names its writer in :mod:`~hybrid_actors.health` (actor stats:
    #: the supervisor; link stats: the socket's owner; event counters: the combiner)
    health: Health = attrs.Factory(Health)
    #: written by the combiner only (when it hands events over)
    latency: Latency = attrs.Factory(Latency)
    #: alert state; the alert actor is its only writer
    alerts: AlertEvaluator = attrs.field(init=False)
    #: set when something the alert rules read has changed (events made or delivered,
    #: notices, a divergence counted, the stale-fallback set): a request flag anyone may set;
    #: only the alert actor replaces it (after each evaluation)
    alert_watch: trio.Event = attrs.Factory(trio.Event)
    #: the consumer's queue: position events put by the combiner, ``stream.*`` notices by
    #: their owners through :meth:`emit_notice`; read by the consumer
    events: EventQueue = attrs.field(init=False)
    #: conflating mailbox: each public actor writes its own category's keys; the combiner takes
    marks: LatestByKey[tuple[str, str], Mark] = attrs.Factory(LatestByKey)
    #: written by the combiner only (symbols with an open position, per category)
    desired: Watch[dict[str, frozenset[str]]] = attrs.field(init=False)
    #: each socket's owner registers its own link; the heartbeat writes the ping fields
    links: LinkRegistry = attrs.field(init=False)
    #: written by the subscription manager only
    subscriptions: dict[str, CategorySubscriptions] = attrs.field(init=False)
    #: trio time of the last ticker frame per category and symbol: written by that
    #: category's public actor only, read by the subscription manager, the REST poller
    #: (stale marks) and the liveness of the silence trigger and alert (:meth:`held_frame_at`)
    activity: dict[str, dict[str, float]] = attrs.field(init=False)
    #: per category, the latest frame time of a held symbol whose ``activity`` entry was
    #: dropped (a resubscribe, a reconnect, a crash): written by that category's public
    #: actor only (``public_ws.forget_activity``); one entry per category
    held_frames: dict[str, float] = attrs.Factory(dict)
    #: lifecycle channel: the private actor and the reconciler send (clones); the combiner receives
    lifecycle_send: trio.MemorySendChannel[Lifecycle] = attrs.field(init=False)
    lifecycle_recv: trio.MemoryReceiveChannel[Lifecycle] = attrs.field(init=False)
    #: subscription inbox: the public actors send (clones); the subscription manager receives
    subs_send: trio.MemorySendChannel[SubscriptionMessage] = attrs.field(init=False)
    subs_recv: trio.MemoryReceiveChannel[SubscriptionMessage] = attrs.field(init=False)
    #: a request flag: anyone may set it (:meth:`request_reconcile`); only the reconciler
    #: takes it (replaces it with a fresh event)
    reconcile_now: trio.Event = attrs.Factory(trio.Event)
    #: consecutive private auth refusals (the first is retried after a clock resync):
    #: written by the private actor only
    auth_refusals: int = 0
    #: private auth requests sent in a row that got no verdict: no answer (the socket closed
    #: or stayed silent) or a failure not about the credentials: written by the private actor only
    auth_unanswered: int = 0
    #: see :meth:`socket_waiting`; the supervisor installs its handler
    _on_socket_waiting: Callable[[str, str], None] = lambda name, why: None
    #: a request flag: anyone may set it (:meth:`request_clock_sync`); only the clock actor takes it
    clock_sync_requested: trio.Event = attrs.Factory(trio.Event)
    #: set by the combiner only, once the private socket is authenticated and its REST
    #: snapshot applied: the stream counts as started (``open_hybrid_stream`` yields)
    first_snapshot: trio.Event = attrs.Factory(trio.Event)
    #: the rollout mode in force (``config.mode`` or ``HYBRID_MODE`` resolved)
    mode: Mode = "production"
    switch: SourceSwitch = attrs.field(init=False)
    rollout: RolloutRuntime = attrs.field(init=False)
    #: the last position event handed to the consumer (either source): trio time and its
    #: ``received_ts`` (epoch ms). Written only by :meth:`_delivered`, the switch's
    #: ``on_delivered`` (the switch is the one writer of the consumer's queue); read by
    #: ``health()['events']`` (``last_event_age_s``, ``last_event_ms``) and so by the metric
    #: and, in rest mode, the ``no_events`` alert
    delivered_at: float | None = None
    delivered_ms: int | None = None
    #: ``stream.state``: written by the supervisor only (see :class:`~..notices.StateTracker`)
    stream_state: StateTracker = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.alerts = AlertEvaluator(self.config.alerts)
        cats = self.config.categories
        self.events = EventQueue(capacity=self.config.event_buffer)
        self.desired = Watch({c: frozenset() for c in cats})
        self.links = LinkRegistry(self.config.heartbeat_interval)
        self.subscriptions = {c: CategorySubscriptions(c) for c in cats}
        self.activity = {c: {} for c in cats}
        self.stream_state = StateTracker.for_sockets(["private", *(f"public:{c}" for c in cats)])
        self.lifecycle_send, self.lifecycle_recv = trio.open_memory_channel[Lifecycle](LIFECYCLE_BUFFER)
        self.subs_send, self.subs_recv = trio.open_memory_channel[SubscriptionMessage](SUBSCRIPTION_INBOX)
        policy = self.config.rollout
        self.switch = SourceSwitch(self.mode, policy, self.events, on_delivered=self._delivered)
        self.rollout = RolloutRuntime(
            comparator=Comparator(policy.divergence_threshold) if self.mode == "parallel" else None,
            gate=ReturnGate(policy))
        self.health.on_subscription_failure = self.rollout.wake

    def wall_ms(self) -> int:
        return int(self.wall_clock() * 1000)

    def _delivered(self, events: Sequence[Event]) -> None:
        """The switch handed ``events`` to the consumer (either source): when, for the
        consumer-facing liveness, and a wake-up for the alert rules that read it."""
        self.delivered_at = trio.current_time()
        self.delivered_ms = events[-1].received_ts
        watch = self.alert_watch
        if not watch.is_set():
            watch.set()

    def held_frame_at(self) -> float | None:
        """Trio time of the latest ticker frame of any symbol with an open hybrid position
        (None: none yet), including frames whose ``activity`` entry a resubscribe or a
        reconnect dropped (``held_frames``). Safe from any thread: ``desired`` holds
        frozensets replaced whole, and each lookup is one dict ``get``. O(open symbols),
        for once-a-second checks."""
        latest: float | None = max(list(self.held_frames.values()), default=None)
        activity = self.activity
        for category, symbols in list(self.desired.value.items()):
            frames = activity.get(category)
            if not frames:
                continue
            for symbol in symbols:
                at = frames.get(symbol)
                if at is not None and (latest is None or at > latest):
                    latest = at
        return latest

    def socket_waiting(self, name: str, why: str) -> None:
        """Actor ``name`` has its socket up but waits for ``why`` before it counts as up
        (e.g. the private socket for its REST snapshot): health, the ``stream.state`` reason
        and a start timeout say so instead of its last error. The supervisor handles it."""
        self._on_socket_waiting(name, why)

    def request_reconcile(self) -> None:
        self.reconcile_now.set()

    async def room_for_events(self) -> None:
        """Wait for room in the output queue (a slow consumer slows the producers), once the
        stream has started. Before that nobody can read the queue (``open_hybrid_stream`` has
        not returned): waiting then would keep the first snapshot out for good."""
        if self.first_snapshot.is_set():
            await self.events.wait_for_space()

    def report_crash_loop(self, actor: str) -> None:
        """A hybrid actor is crash-looping: the rollback monitor decides what that means."""
        self.rollout.crash_loop = actor
        self.rollout.wake()

    def request_clock_sync(self) -> None:
        self.clock_sync_requested.set()

    def emit_notice(self, notice: Notice) -> None:
        """Queue a ``stream.*`` notice for the consumer, in order with the position events
        around it. Never dropped nor conflated; never waits (notices are rare, so they may
        exceed the queue's lifecycle capacity by a few). After the queue is closed (the
        stream has ended) it is ignored."""
        self.events.put(notice)
        self.health.notices_emitted += 1
        self.alert_watch.set()
