"""The one owner of the HTTP client: signed ``position/list`` (all pages), tickers, time sync.

httpx runs on trio through anyio. Deadlines are trio cancel scopes. Retries, with
exponential backoff and full jitter, cover what an outage looks like: network errors,
timeouts, HTTP 5xx/429/403, 10006/10018 rate limits (waiting for the reset header when
given) and 10002 clock skew (after resyncing with ``/v5/market/time``). Credential
errors (10003/10004/10005/10010) are raised at once: retrying cannot fix them. When the
attempts run out the call raises :class:`~hybrid_actors.errors.RestUnavailable`, which
the supervisor treats as an outage (retried forever, with backoff).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Final

import attrs
import httpx
import trio

from .config import Credentials
from .errors import RestAuthError, RestClockSkew, RestError, RestRateLimited, RestUnavailable
from .protocol.frames import Position
from .protocol.rest import (
    PositionPage,
    RestRequest,
    TickerRow,
    parse_position_page,
    parse_server_time,
    parse_tickers,
    position_list_request,
    server_time_request,
    tickers_request,
)

__all__ = ["RestClient", "open_rest_client", "PositionSnapshot"]

log = logging.getLogger(__name__)

MAX_PAGES: Final = 1000  # 200 positions a page: far beyond any real account
RETRY_BASE: Final = 0.5
RETRY_CAP: Final = 8.0
#: Bybit: after HTTP 403 "stop everything and wait >= 10 min"
IP_BAN_COOLDOWN: Final = 600.0
#: retCodes that mean the request itself is wrong (10001 params error): not retried
CALLER_ERROR_CODES: Final = frozenset({10001})


@attrs.frozen
class PositionSnapshot:
    """Every position of ``categories`` as REST saw it. ``as_of_ms`` is the earliest
    server time among the pages (conservative: pushes after it win)."""

    categories: tuple[str, ...]
    positions: tuple[Position, ...]
    as_of_ms: int | None
    requests: int


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
    offset_ms: int = 0
    synced: bool = False
    calls: int = 0
    failures: int = 0
    #: trio time until which an HTTP 403 IP ban keeps us off the exchange
    banned_until: float = -math.inf
    _last_round_trip: tuple[float, float] = (0.0, 0.0)

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
        """Every open position of ``categories`` (all settle coins, all pages)."""
        if not self.synced:
            await self.sync_time()
        cats = tuple(categories)
        collected: list[Position] = []
        as_of: int | None = None
        requests = 0
        for category in cats:
            coins: tuple[str | None, ...] = self.linear_settle_coins if category == "linear" else (None,)
            for coin in coins:
                cursor: str | None = None
                for _ in range(MAX_PAGES):
                    page = await self.position_page(category, settle_coin=coin, cursor=cursor)
                    requests += 1
                    collected.extend(page.positions)
                    if page.time_ms is not None:
                        as_of = page.time_ms if as_of is None else min(as_of, page.time_ms)
                    if not page.next_cursor:
                        break
                    cursor = page.next_cursor
                else:
                    raise RestUnavailable(f"GET /v5/position/list: more than {MAX_PAGES} pages for "
                                          f"{category}; the cursor does not advance", path="/v5/position/list")
        return PositionSnapshot(cats, tuple(collected), as_of, requests)

    def _require_credentials(self) -> Credentials:
        if self.credentials is None:
            raise RestError("this REST client has no credentials; position/list is a signed endpoint")
        return self.credentials

    def _check_ban(self, path: str) -> None:
        """During an IP ban every call fails at once, without touching the exchange."""
        remaining = self.banned_until - trio.current_time()
        if remaining > 0:
            raise RestUnavailable(f"GET {path}: not calling: HTTP 403 IP ban in force for another "
                                  f"{remaining:.0f}s", path=path, http_status=403, retry_after=remaining)

    async def _call(self, build: Callable[[], RestRequest], parse: Callable[..., object]):  # type: ignore[no-untyped-def]
        last: RestError | None = None
        for attempt in range(self.attempts):
            request = build()
            self._check_ban(request.path)
            try:
                status, body, retry_after = await self._send(request)
                try:
                    return parse(body, http_status=status)
                except RestRateLimited as exc:  # 10006 arrives with HTTP 200 and the reset header
                    if exc.http_status == 403:
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
                delay = exc.retry_after if exc.retry_after is not None else self._backoff(attempt)
            except RestUnavailable as exc:
                last = exc
                delay = self._backoff(attempt)
            except RestError as exc:
                if exc.ret_code in CALLER_ERROR_CODES:
                    raise  # our request is wrong: retrying cannot help, a bug to be seen
                last = exc  # an exchange-side error (10000, 10016, ...): an outage, retried
                delay = self._backoff(attempt)
            self.failures += 1
            if attempt + 1 < self.attempts:
                log.warning("%s; retrying in %.2fs (attempt %d/%d)", last, delay, attempt + 1, self.attempts)
                await trio.sleep(delay)
        assert last is not None
        raise RestUnavailable(f"{last} (gave up after {self.attempts} attempts)", ret_code=last.ret_code,
                              ret_msg=last.ret_msg, path=last.path, http_status=last.http_status,
                              retry_after=last.retry_after) from last

    def _backoff(self, attempt: int) -> float:
        return self.rng.uniform(0, min(RETRY_CAP, RETRY_BASE * 2 ** attempt))

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
                raise RestUnavailable(f"GET {request.path}: {type(exc).__name__}: {exc}",
                                      path=request.path) from None
        if scope.cancelled_caught:
            raise RestUnavailable(f"GET {request.path}: no answer within {self.timeout:g}s", path=request.path)
        return response.status_code, response.content, self._retry_after(response)

    def _retry_after(self, response: httpx.Response) -> float | None:
        reset = response.headers.get("X-Bapi-Limit-Reset-Timestamp")
        if reset and reset.isdigit():
            return min(RETRY_CAP, max(0.0, (int(reset) - self.now_ms()) / 1000))
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
