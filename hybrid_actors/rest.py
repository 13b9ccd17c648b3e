"""The one owner of the HTTP client: signed ``position/list`` (all pages), tickers, time sync.

httpx runs on trio through anyio. Deadlines are trio cancel scopes. Retries, through the
one backoff policy (:data:`REST_BACKOFF`, :mod:`hybrid_actors.backoff`), cover what an outage looks like: network errors,
timeouts, HTTP 5xx/429/403, 10006/10018 rate limits (waiting for the reset header when
given) and 10002 clock skew (after resyncing with ``/v5/market/time``). Credential
errors (10003/10004/10005/10010) are raised at once: retrying cannot fix them; an HTTP 401
without one of those codes (a gateway's page) after one call signed anew with a measured
clock. When the
attempts run out the call raises :class:`~hybrid_actors.errors.RestUnavailable`, which
the supervisor treats as an outage (retried forever, with backoff).
"""

from __future__ import annotations

import logging
import math
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Final, Protocol, TypeVar

import attrs
import httpx
import trio

from .backoff import Backoff
from .config import Credentials
from .errors import RestAuthError, RestClockSkew, RestError, RestRateLimited, RestUnavailable
from .protocol.frames import Position
from .protocol.rest import (
    PositionPage,
    RejectedRecord,
    RestRequest,
    Scope,
    TickerRow,
    is_ip_ban,
    parse_position_page,
    parse_server_time,
    parse_tickers,
    position_list_request,
    server_time_request,
    tickers_request,
)

__all__ = ["RestClient", "open_rest_client", "PositionSnapshot", "Scope", "MAX_REQUESTS_PER_SNAPSHOT"]

log = logging.getLogger(__name__)

#: GET position/list requests one snapshot may make, over every category and settle coin.
#: 200 positions a page: 50 pages hold 10,000 positions, far beyond any real account, and
#: stay within Bybit's 50 requests/s per UID for this endpoint. Hitting it means the
#: exchange's paging misbehaves: the snapshot stops there and says so (health, log).
MAX_REQUESTS_PER_SNAPSHOT: Final = 50
#: retries within one call: 0.5 s, 1 s, 2 s... up to 8 s, jittered; a cool-down the
#: exchange names (reset header, ban) is honoured on top
REST_BACKOFF: Final = Backoff(initial=0.5, maximum=8.0)
#: the longest a rate-limit reset header makes one call wait before retrying
RETRY_CAP: Final = 8.0
#: Bybit: after HTTP 403 (or retCode 10009) "stop everything and wait >= 10 min"
IP_BAN_COOLDOWN: Final = 600.0
#: retCodes that mean the request itself is wrong (10001 params error): not retried
CALLER_ERROR_CODES: Final = frozenset({10001})
#: seconds a scope answered with 10001 is skipped before it is asked again: an account
#: upgraded to Unified gains USDC contracts and options, and a 10001 that was not about the
#: account (a deploy on the exchange's side) must not blind a scope for the process's life
UNSUPPORTED_RECHECK: Final = 3600.0



@attrs.frozen
class PositionSnapshot:
    """Every position of ``categories`` as REST saw it. ``as_of_ms`` is the earliest
    server time among the pages (conservative: pushes after it win).

    ``coverage`` lists the (category, settle coin) scopes that were read completely: the
    snapshot is authoritative for those only (a position elsewhere is not closed by its
    absence). ``skipped`` are scopes the account does not have (10001, e.g. USDC or
    option on a Classic account); ``truncated`` are scopes whose paging was cut short.
    """

    categories: tuple[str, ...]
    positions: tuple[Position, ...]
    as_of_ms: int | None
    requests: int
    coverage: tuple[Scope, ...] = ()
    skipped: tuple[Scope, ...] = ()
    truncated: tuple[Scope, ...] = ()
    #: (category, symbol) of records that could not be used: this snapshot closes none of
    #: their positions (what they said is unknown), whatever its coverage
    uncertain: tuple[tuple[str, str], ...] = ()


_R = TypeVar("_R")
_R_co = TypeVar("_R_co", covariant=True)


class _Parser(Protocol[_R_co]):
    """A ``protocol.rest.parse_*`` function: one answer's body and HTTP status -> its value."""

    def __call__(self, body: bytes | str, *, http_status: int = ...) -> _R_co: ...


@attrs.define(eq=False)
class RestClient:
    """Signed REST calls with retries. Create with :func:`open_rest_client`."""

    base_url: str
    credentials: Credentials | None
    http: httpx.AsyncClient = attrs.field(repr=False)
    recv_window_ms: int = 5000
    timeout: float = 10.0
    attempts: int = 4
    wall_clock: Callable[[], float] = time.time
    linear_settle_coins: tuple[str, ...] = ("USDT", "USDC")
    rng: random.Random = attrs.field(factory=random.Random, repr=False)
    backoff: Backoff = REST_BACKOFF
    offset_ms: int = 0
    synced: bool = False
    calls: int = 0
    failures: int = 0
    #: trio time until which an HTTP 403 IP ban keeps us off the exchange
    banned_until: float = -math.inf
    #: the server certificate's rejection on the last call (unknown issuer, hostname
    #: mismatch), until a call gets an answer; ``health()`` names it as a TLS problem
    tls_error: str | None = None
    #: scopes the account does not have (position/list answered 10001), and why: skipped
    #: until ``UNSUPPORTED_RECHECK`` seconds have passed, then asked again
    unsupported: dict[Scope, str] = attrs.Factory(dict)
    #: per unsupported scope, the trio time from which it is asked again
    _recheck_at: dict[Scope, float] = attrs.Factory(dict)
    #: scopes whose paging misbehaved in the last snapshot, and why (cleared on success)
    paging_problems: dict[Scope, str] = attrs.Factory(dict)
    _last_round_trip: tuple[float, float] = (0.0, 0.0)
    #: per path: trio time until which ``X-Bapi-Limit-Status: 0`` said the quota is spent
    _quota_spent_until: dict[str, float] = attrs.Factory(dict)

    def now_ms(self) -> int:
        return int(self.wall_clock() * 1000) + self.offset_ms

    async def sync_time(self) -> int:
        """Measure ``server - local`` with ``/v5/market/time`` (midpoint of the round trip
        that answered), with the same retries as every other call."""
        server_ms = await self._call(server_time_request, parse_server_time)
        before, after = self._last_round_trip
        self.offset_ms = server_ms - int((before + after) * 500)
        self.synced = True
        if abs(self.offset_ms) > 1000:
            log.warning("local clock is %+d ms off the exchange's; signing with the exchange's time",
                        -self.offset_ms)
        return self.offset_ms

    async def tickers(self, category: str, symbol: str | None = None, *,
                      base_coin: str | None = None) -> tuple[TickerRow, ...]:
        return await self._call(lambda: tickers_request(category, symbol, base_coin=base_coin), parse_tickers)

    async def position_page(self, category: str, *, settle_coin: str | None = None,
                            symbol: str | None = None, cursor: str | None = None) -> PositionPage:
        credentials = self._require_credentials()

        def build() -> RestRequest:  # re-signed on every attempt: the timestamp moves
            return position_list_request(
                credentials.api_key, credentials.api_secret, category=category, timestamp_ms=self.now_ms(),
                recv_window_ms=self.recv_window_ms, symbol=symbol, settle_coin=settle_coin, cursor=cursor)

        return await self._call(build, parse_position_page)

    async def positions(self, categories: Iterable[str]) -> PositionSnapshot:
        """Every open position of ``categories`` (all settle coins, all pages).

        Paging stops on an empty ``nextPageCursor``, on an empty page and on a cursor
        already followed (Bybit's last page may carry a cursor, and following it may
        answer an empty page with the same cursor again). At most
        :data:`MAX_REQUESTS_PER_SNAPSHOT` requests; past that the scope is reported as
        truncated and left out of ``coverage``. A record that cannot be parsed is dropped
        alone: the page's other records are kept, its symbol is in ``uncertain`` (this
        snapshot closes none of its positions) and it is reported in ``paging_problems``;
        one whose symbol cannot be read leaves its whole scope out of ``coverage``, like a
        truncated one. A scope answered with 10001 (the account
        does not have it) is remembered in :attr:`unsupported` and skipped for
        :data:`UNSUPPORTED_RECHECK` seconds, then asked again.
        """
        if not self.synced:
            await self.sync_time()
        cats = tuple(categories)
        collected: dict[tuple[str, str, int], Position] = {}
        as_of: int | None = None
        requests = 0
        coverage: list[Scope] = []
        skipped: list[Scope] = []
        truncated: list[Scope] = []
        uncertain: list[tuple[str, str]] = []
        for category in cats:
            coins: tuple[str | None, ...] = self.linear_settle_coins if category == "linear" else (None,)
            for coin in coins:
                scope = (category, coin)
                if scope in self.unsupported and not self._recheck_due(scope):
                    skipped.append(scope)
                    continue
                cursor: str | None = None
                seen: set[str] = set()
                complete = False
                problem: str | None = None
                rejected: list[RejectedRecord] = []
                while requests < MAX_REQUESTS_PER_SNAPSHOT:
                    try:
                        page = await self.position_page(category, settle_coin=coin, cursor=cursor)
                    except RestError as exc:
                        if exc.ret_code not in CALLER_ERROR_CODES or isinstance(exc, RestUnavailable):
                            raise
                        if cursor is None:
                            self._unsupported(scope, exc)
                            skipped.append(scope)
                        else:  # the exchange refused its own cursor: keep what we read, claim nothing
                            problem = f"the exchange refused its own cursor {cursor[:60]!r}: {exc.ret_msg}"
                        requests += 1
                        break
                    requests += 1
                    if cursor is None and scope in self.unsupported:
                        self._supported_again(scope)
                    for position in page.positions:  # a row seen again (a repeated page) counts once
                        if coin is not None:  # the page does not say; the query does
                            position = attrs.evolve(position, settle_coin=coin)
                        prior = collected.get(position.key)
                        if prior is None or position.version >= prior.version:
                            collected[position.key] = position
                    rejected += page.rejected
                    if page.time_ms is not None:
                        as_of = page.time_ms if as_of is None else min(as_of, page.time_ms)
                    if not page.next_cursor or not (page.positions or page.rejected) or page.next_cursor in seen:
                        complete = True
                        break
                    seen.add(page.next_cursor)
                    cursor = page.next_cursor
                else:
                    problem = (f"the snapshot's bound of {MAX_REQUESTS_PER_SNAPSHOT} requests was reached "
                               + (f"after {len(seen)} page(s) of this scope, the cursor still moving" if seen
                                  else "before this scope was asked"))
                record_problem = None
                if rejected:  # the good records count; the bad ones' positions are not closed
                    record_problem = (f"{len(rejected)} record(s) unusable, so what they say is unknown: "
                                      + "; ".join(r.reason for r in rejected[:5]))
                    if any(r.symbol is None for r in rejected):  # whose? unknown: the scope closes nothing
                        problem = record_problem if problem is None else f"{problem}; and {record_problem}"
                        complete = False
                    elif problem is not None:  # cut short anyway: say both
                        problem = f"{problem}; and {record_problem}"
                    else:
                        uncertain += [(category, r.symbol) for r in rejected if r.symbol is not None]
                if complete:
                    coverage.append(scope)
                    if record_problem is None:
                        self.paging_problems.pop(scope, None)
                    elif self.paging_problems.get(scope) != record_problem:  # said once, shown in health
                        self.paging_problems[scope] = record_problem
                        log.error("GET /v5/position/list %s%s: %s; those symbols' positions are not "
                                  "reconciled while it lasts", category, f"/{coin}" if coin else "", record_problem)
                elif problem is not None:
                    truncated.append(scope)
                    self.paging_problems[scope] = problem
                    log.error("GET /v5/position/list %s%s: %s; positions there are not reconciled this time",
                              category, f"/{coin}" if coin else "", problem)
        return PositionSnapshot(cats, tuple(collected.values()), as_of, requests, tuple(coverage), tuple(skipped),
                                tuple(truncated), tuple(uncertain))

    def _unsupported(self, scope: Scope, exc: RestError) -> None:
        known = scope in self.unsupported
        self.unsupported[scope] = exc.ret_msg or str(exc)
        self._recheck_at[scope] = trio.current_time() + UNSUPPORTED_RECHECK
        if known:  # asked again after the recheck interval: still not there, quietly
            return
        category, coin = scope
        log.warning("GET /v5/position/list category=%s%s answered retCode %s (%s): this account does not "
                    "have it (a Classic account has no USDC contracts and no options); asking again in %.0f s",
                    category, f" settleCoin={coin}" if coin else "", exc.ret_code, exc.ret_msg, UNSUPPORTED_RECHECK)

    def _supported_again(self, scope: Scope) -> None:
        del self.unsupported[scope]
        self._recheck_at.pop(scope, None)
        category, coin = scope
        log.warning("GET /v5/position/list category=%s%s answers now (the account was upgraded?): its positions "
                    "are in the snapshots from now on", category, f" settleCoin={coin}" if coin else "")

    def _recheck_due(self, scope: Scope) -> bool:
        """Whether an unsupported scope's skip has run out (it is then asked again; if it
        answers, it is forgotten here)."""
        return trio.current_time() >= self._recheck_at.get(scope, -math.inf)

    def _require_credentials(self) -> Credentials:
        if self.credentials is None:
            raise RestError("this REST client has no credentials; position/list is a signed endpoint")
        return self.credentials

    def _check_ban(self, path: str) -> None:
        """During an IP ban every call fails at once, without touching the exchange."""
        remaining = self.banned_until - trio.current_time()
        if remaining > 0:
            raise RestUnavailable(f"GET {path}: not calling: IP ban (HTTP 403 / 10009) in force for another "
                                  f"{remaining:.0f}s", path=path, http_status=403, retry_after=remaining)

    async def _call(self, build: Callable[[], RestRequest], parse: _Parser[_R]) -> _R:
        last: RestError | None = None
        attempts = self.attempts
        unauthorized = False  # a signed request of this call got HTTP 401 without Bybit's auth code
        attempt = -1
        while (attempt := attempt + 1) < attempts:
            request = build()
            self._check_ban(request.path)
            pause = self._quota_pause(request.path)
            if pause > 0:  # the last answer said the quota is spent: wait for its reset, not for 10006
                log.debug("GET %s: rate-limit quota spent; waiting %.2fs for its reset", request.path, pause)
                await trio.sleep(pause)
                request = build()  # signed again: the timestamp moved
            try:
                status, body, retry_after = await self._send(request)
                try:
                    return parse(body, http_status=status)
                except RestRateLimited as exc:  # 10006 arrives with HTTP 200 and the reset header
                    if is_ip_ban(exc):
                        self.banned_until = trio.current_time() + IP_BAN_COOLDOWN
                        log.error("%s: Bybit bans this IP for a while; no REST call for %gs", exc, IP_BAN_COOLDOWN)
                        self._check_ban(request.path)
                    exc.retry_after = retry_after
                    raise
            except RestAuthError:
                raise
            except RestClockSkew as exc:
                last = exc
                log.warning("%s; resyncing the clock (attempt %d/%d)", exc, attempt + 1, self.attempts)
                await self.sync_time()
                continue
            except RestRateLimited as exc:
                last = exc
                delay = self.backoff.delay(attempt, self.rng, exc.retry_after)
            except RestUnavailable as exc:
                if exc.http_status == 401 and request.signed:
                    if unauthorized:
                        raise self._rejected_by_401(exc) from exc
                    # Bybit says 401 for missing or invalid auth headers; a gateway's page
                    # leaves a doubt: sign anew with a measured clock, once, whatever the budget
                    unauthorized = True
                    attempts = max(attempts, attempt + 2)
                    self.failures += 1
                    log.warning("%s; measuring the clock and signing once more before calling the "
                                "credentials rejected", exc)
                    await self.sync_time()
                    continue
                last = exc
                delay = self.backoff.delay(attempt, self.rng)
            except RestError as exc:
                if exc.ret_code in CALLER_ERROR_CODES:
                    raise  # our request is wrong: retrying cannot help, a bug to be seen
                last = exc  # an exchange-side error (10000, 10016, ...): an outage, retried
                delay = self.backoff.delay(attempt, self.rng)
            self.failures += 1
            if attempt + 1 < attempts:
                log.warning("%s; retrying in %.2fs (attempt %d/%d)", last, delay, attempt + 1, attempts)
                await trio.sleep(delay)
        assert last is not None
        raise RestUnavailable(f"{last} (gave up after {self.attempts} attempts)", ret_code=last.ret_code,
                              ret_msg=last.ret_msg, path=last.path, http_status=last.http_status,
                              retry_after=last.retry_after) from last

    def _rejected_by_401(self, exc: RestError) -> RestAuthError:
        key = self.credentials.key_hint if self.credentials is not None else "?"
        return RestAuthError(
            f"{exc.path and 'GET ' + exc.path or 'REST'} rejected credentials: HTTP 401 twice, the second "
            f"time signed anew with a freshly measured clock ({exc}). Check the API key {key} and its "
            "secret, and that the key was made for this environment (mainnet / testnet / demo)",
            ret_msg=exc.ret_msg, path=exc.path, http_status=401)

    async def _send(self, request: RestRequest) -> tuple[int, bytes, float | None]:
        """One HTTP GET within the deadline: ``(status, body, seconds until the rate-limit
        window resets)``. Network trouble and timeouts become RestUnavailable."""
        self.calls += 1
        url = f"{self.base_url}{request.target}"
        before = self.wall_clock()
        with trio.move_on_after(self.timeout) as scope:
            try:
                response = await self.http.get(url, headers=dict(request.headers))
                self._last_round_trip = (before, self.wall_clock())
            except httpx.HTTPError as exc:
                tls = _tls_failure(exc)
                if tls is not None:
                    self.tls_error = tls
                    log.error("GET %s: TLS verification failed, not an exchange outage: %s. Check the CA "
                              "bundle (a TLS-intercepting proxy?), the host name and this machine's clock",
                              request.path, tls)
                    raise RestUnavailable(f"GET {request.path}: TLS certificate rejected: {tls}",
                                          path=request.path) from None
                raise RestUnavailable(f"GET {request.path}: {type(exc).__name__}: {exc}",
                                      path=request.path) from None
        if scope.cancelled_caught:
            raise RestUnavailable(f"GET {request.path}: no answer within {self.timeout:g}s", path=request.path)
        self.tls_error = None
        retry_after = self._retry_after(response)
        if response.headers.get("X-Bapi-Limit-Status") == "0" and retry_after is not None:
            self._quota_spent_until[request.path] = trio.current_time() + retry_after
        return response.status_code, response.content, retry_after

    def _quota_pause(self, path: str) -> float:
        until = self._quota_spent_until.pop(path, None)
        return 0.0 if until is None else max(0.0, until - trio.current_time())

    def _retry_after(self, response: httpx.Response) -> float | None:
        reset = response.headers.get("X-Bapi-Limit-Reset-Timestamp")
        if reset and reset.isdigit():
            return min(RETRY_CAP, max(0.0, (int(reset) - self.now_ms()) / 1000))
        return None


def _tls_failure(exc: BaseException) -> str | None:
    """The certificate verification error somewhere in ``exc``'s chain, described; else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return current.verify_message or str(current)
        current = current.__cause__ or current.__context__
    return None


@asynccontextmanager
async def open_rest_client(base_url: str, credentials: Credentials | None, *, recv_window_ms: int = 5000,
                           timeout: float = 10.0, attempts: int = 4, verify_tls: bool = True,
                           wall_clock: Callable[[], float] = time.time,
                           linear_settle_coins: tuple[str, ...] = ("USDT", "USDC"),
                           rng: random.Random | None = None) -> AsyncIterator[RestClient]:
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=4)
    async with httpx.AsyncClient(verify=verify_tls, timeout=None, limits=limits,
                                 headers={"Content-Type": "application/json"}) as http:
        yield RestClient(base_url.rstrip("/"), credentials, http, recv_window_ms=recv_window_ms,
                         timeout=timeout, attempts=attempts, wall_clock=wall_clock,
                         linear_settle_coins=linear_settle_coins, rng=rng or random.Random())
