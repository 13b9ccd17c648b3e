"""Private stream actor: owns the private socket and the position lifecycle.

On every (re)connect: auth with a fresh ``expires`` → wait for the auth ack (never
subscribe before it: Bybit answers ``Request not authorized``) → subscribe ``position``
→ fetch the REST ``position/list`` snapshot (all settle coins, all pages) and hand it to
the combiner as authoritative. Bybit sends no snapshot on subscribe, so this is how
opens and closes missed while disconnected are recovered. Ready when the snapshot is
queued. Pushes that arrive meanwhile are forwarded at once; the combiner holds them until
the first snapshot is applied (the latest per position), then the book's version rule
keeps whichever is newer.

A rejected auth (``Params Error``, or a text naming the key, signature or expiry: see
:attr:`~hybrid_actors.protocol.frames.AuthResult.refuses_credentials`) is retried once after
the clock is measured, then raises :class:`~hybrid_actors.errors.AuthRejected`, which ends
the stream: retrying bad credentials only risks an IP ban. A ``success:false`` with any other
text (a server error, a rate limit) is no verdict on the keys: retried like an outage.
"""

from __future__ import annotations

import logging
from typing import Final, NoReturn

import attrs
import trio

from ..config import AUTH_EXPIRY_MARGIN_MS
from ..errors import AuthRejected, ConnectionLost, HandshakeError, RestError, RestUnavailable
from ..messages import Lifecycle, PositionsPushed, PositionsSnapshot, PushUnreadable
from ..protocol.frames import (AuthResult, Frame, MalformedFrame, Pong, PositionPush, SubscribeResult,
                               UnknownFrame, decode)
from ..protocol.session import AckOutcome, Session
from ..rest import PositionSnapshot
from ..transport import Transport
from .connection import FrameReporter, open_link
from .hub import Hub
from .links import Link

__all__ = ["PrivateStreamActor"]

log = logging.getLogger(__name__)
NAME = "private"
#: auth requests in a row without a verdict (no answer, or a failure that is not about the
#: credentials) before the credentials are checked on REST
UNANSWERED_AUTHS_BEFORE_CHECK: Final = 2


@attrs.define(eq=False)
class PrivateStreamActor:
    hub: Hub
    name: str = NAME
    _session: Session = attrs.field(init=False, factory=lambda: Session(None, id_prefix="p"))
    _auth: AuthResult | None = attrs.field(init=False, default=None)
    _authed: trio.Event = attrs.field(init=False, factory=trio.Event)
    _subscribed: trio.Event = attrs.field(init=False, factory=trio.Event)
    _sub_outcome: AckOutcome | None = attrs.field(init=False, default=None)

    @staticmethod
    def reset_after_crash(hub: Hub) -> None:
        """Owns ``auth_refusals`` and ``auth_unanswered``. Known-good after a crash: no
        refusal counted (a crash is not the exchange refusing us); the next refusal gets its
        one retry again."""
        hub.auth_refusals = 0
        hub.auth_unanswered = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        hub = self.hub
        config = hub.config
        credentials = config.credentials
        # Sign with the last known offset (the clock actor keeps it fresh in the background):
        # a REST outage or ban must not keep a socket down that could connect.
        clock_measured = hub.auth_refusals > 0 and await self._measure_clock()
        if hub.auth_unanswered >= UNANSWERED_AUTHS_BEFORE_CHECK:
            await self._check_credentials()
        async with open_link(hub, self.name, config.private_url) as conn, \
                hub.lifecycle_send.clone() as lifecycle:
            conn.nursery.start_soon(self._read, conn.transport, conn.link, lifecycle)
            expires = hub.rest.now_ms() + AUTH_EXPIRY_MARGIN_MS
            conn.link.offer(self._session.auth(credentials.api_key, credentials.api_secret, expires))
            hub.auth_unanswered += 1
            await self._wait(self._authed, config.auth_timeout, "an answer to auth")
            assert self._auth is not None
            if not self._auth.success and not self._auth.refuses_credentials:
                # A server error, a rate limit, a text nobody documented: no verdict on the
                # keys, so an outage (retried with backoff), not a refusal. It counts like an
                # unanswered auth: two in a row and one signed REST call checks the keys.
                log.warning("private stream: auth answered %r, which is not a refusal of the credentials; "
                            "retrying like an outage (%d such answer(s) or silences in a row)",
                            self._auth.ret_msg, hub.auth_unanswered)
                raise ConnectionLost(f"private stream: auth failed with {self._auth.ret_msg!r} (not a refusal "
                                     "of the credentials); retrying like an outage")
            hub.auth_unanswered = 0
            if not self._auth.success and not clock_measured:
                # The docs' 'Params Error' covers bad keys and an expired `expires` alike: resync
                # the clock (next incarnation) and try again before calling the keys bad. Only
                # a refusal after a clock measured since the last one ends the stream: while
                # REST cannot measure it, a refusal is retried like an outage.
                hub.auth_refusals += 1
                hub.request_clock_sync()
                raise ConnectionLost(f"private stream: auth refused ({self._auth.ret_msg!r}); "
                                     "resyncing the clock and trying again")
            if not self._auth.success:
                raise AuthRejected(
                    f"private stream: auth rejected for key {credentials.key_hint}: {self._auth.ret_msg!r}. "
                    "Check that the API key and secret belong together, that the key was made for this "
                    "environment (mainnet / testnet / demo), and that this machine's clock is correct.",
                    key_hint=credentials.key_hint, ret_msg=self._auth.ret_msg)
            hub.auth_refusals = 0
            for request in self._session.subscribe(["position"], trio.current_time())[0]:
                conn.link.offer(request.text)
            await self._wait(self._subscribed, config.auth_timeout, "an ack of the position subscription")
            outcome = self._sub_outcome
            assert outcome is not None
            if not outcome.confirmed:
                reason = outcome.failure.ret_msg if outcome.failure else "no reason given"
                raise ConnectionLost(f"private stream: subscribing 'position' was refused: {reason}")
            snapshot = await self._snapshot()
            await lifecycle.send(PositionsSnapshot(
                snapshot.categories, snapshot.positions, snapshot.as_of_ms, hub.wall_ms(), reason="connect",
                coverage=snapshot.coverage, uncertain=snapshot.uncertain))
            log.info("private stream live (generation %d): %d position records from %d REST page(s)",
                     conn.link.generation, len(snapshot.positions), snapshot.requests)
            task_status.started()
            await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _measure_clock(self) -> bool:
        """After a refused auth: measure the clock before signing again (the same offset
        would prove nothing). False when REST cannot answer: the socket is tried anyway."""
        try:
            await self.hub.rest.sync_time()
        except RestUnavailable as exc:
            log.warning("private stream: the clock could not be measured after a refused auth (%s); "
                        "trying with the last known offset", exc)
            return False
        return True

    async def _check_credentials(self) -> None:
        """Auth requests in a row got no answer, or one that was no verdict on the keys
        (``success:false`` with a server-error text): some gateways close the socket instead
        of refusing bad keys. One signed REST call tells: rejected credentials end the stream
        (:class:`AuthRejected`, at once, not after hours of bad signatures); any other answer,
        or none, and the socket is tried again as after an outage."""
        hub = self.hub
        category = hub.config.categories[0]
        coin = hub.rest.linear_settle_coins[0] if category == "linear" and hub.rest.linear_settle_coins else None
        try:
            await hub.rest.position_page(category, settle_coin=coin)
        except AuthRejected:
            raise
        except RestError as exc:
            log.warning("private stream: %d auth requests in a row got no verdict; REST could not check "
                        "the credentials either (%s)", hub.auth_unanswered, exc)
            return
        log.warning("private stream: %d auth requests in a row got no verdict; the credentials work on "
                    "REST, so the private endpoint is treated as down", hub.auth_unanswered)
        hub.auth_unanswered = 0

    async def _snapshot(self) -> PositionSnapshot:
        """REST position/list, retried here for as long as it takes: a REST outage must not
        cost a healthy socket (its pushes keep flowing meanwhile, the heartbeat keeps it up)."""
        hub = self.hub
        backoff = hub.config.restart.backoff
        attempt = 0
        while True:
            try:
                return await hub.rest.positions(hub.config.categories)
            except RestUnavailable as exc:
                if not attempt:  # once per connection: the socket is fine, REST is not
                    hub.socket_waiting(self.name, f"the REST position snapshot: {exc}")
                delay = backoff.delay(attempt, hub.rng, exc.retry_after)
                attempt = backoff.next_attempt(attempt)
                log.warning("private stream: REST snapshot failed (%s); the socket stays up, "
                            "retrying in %.1fs", exc, delay)
                await trio.sleep(delay)

    @staticmethod
    async def _wait(event: trio.Event, timeout: float, what: str) -> None:
        with trio.move_on_after(timeout):
            await event.wait()
            return
        raise HandshakeError(f"private stream: no {what} within {timeout:g}s")

    async def _read(self, transport: Transport, link: Link,
                    lifecycle: trio.MemorySendChannel[Lifecycle]) -> NoReturn:
        hub = self.hub
        stats = hub.health.link(self.name)
        reporter = FrameReporter(self.name)
        categories = frozenset(hub.config.categories)
        while True:
            batch = await transport.receive_batch()
            now = trio.current_time()
            received_ms = hub.wall_ms()
            link.last_frame_at = now
            stats.frames += len(batch)
            stats.batches += 1
            unreadable = False
            for raw in batch:
                frame = decode(raw)
                if isinstance(frame, PositionPush):
                    positions = tuple(p for p in frame.positions if p.category in categories)
                    if positions:
                        await link.deliver(lifecycle, PositionsPushed(positions, received_ms))
                    if frame.rejected:
                        # the push's other records were used; what the bad one said is healed
                        # from REST (a close in it must not be missed for five minutes)
                        reporter.report(MalformedFrame("position record(s) dropped: " + "; ".join(frame.rejected),
                                                       ""), hub)
                        unreadable = True
                elif isinstance(frame, MalformedFrame):
                    # it may have been a position push (a close is usually pushed alone)
                    reporter.report(frame, hub)
                    unreadable = True
                else:
                    self._control(frame, link, now, reporter)
            if unreadable:
                self._push_unreadable(lifecycle, received_ms)

    def _push_unreadable(self, lifecycle: trio.MemorySendChannel[Lifecycle], received_ms: int) -> None:
        """Tell the combiner a push could not be read (once per read, however many were bad):
        it asks REST at once and again after the skew. Never waits: a full channel means the
        combiner is behind a slow consumer, and a flood of bad frames must not stop the reader
        (pongs, the next pushes) behind it; then the snapshot is asked for directly (without
        the follow-up: the periodic reconciliation is the backstop for that rare case)."""
        try:
            lifecycle.send_nowait(PushUnreadable(received_ms))
        except trio.WouldBlock:
            log.warning("private: lifecycle channel full; asking for a REST snapshot directly "
                        "for an unreadable push")
            self.hub.request_reconcile()

    def _control(self, frame: Frame, link: Link, now: float, reporter: FrameReporter) -> None:
        if isinstance(frame, Pong):
            link.pong_received(frame.req_id, now)
        elif isinstance(frame, AuthResult):
            if self._authed.is_set():
                reporter.report(UnknownFrame("a second auth answer", {}), self.hub)
                return
            self._session.receive_auth(frame)
            self._auth = frame
            link.conn_id = frame.conn_id
            self._authed.set()
        elif isinstance(frame, SubscribeResult):
            outcome = self._session.receive_ack(frame)
            if outcome is None:
                reporter.report(UnknownFrame(f"unsolicited {frame.op} ack: {frame.ret_msg!r}", {}), self.hub)
            elif not self._subscribed.is_set():
                self._sub_outcome = outcome
                self._subscribed.set()
        elif isinstance(frame, (MalformedFrame, UnknownFrame)):
            reporter.report(frame, self.hub)
        else:
            reporter.report(UnknownFrame(f"{type(frame).__name__} on the private socket", {}), self.hub)
