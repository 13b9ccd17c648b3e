"""Sans-IO REST: signed requests and parsed responses for the endpoints we use.

``GET /v5/position/list`` (signed; cursor pagination; ``avgPrice`` where WS says
``entryPrice``), ``GET /v5/market/tickers`` and ``GET /v5/market/time`` (public).
The I/O lives in :mod:`hybrid_actors.rest`; this module only builds and parses.

Errors come back with HTTP 200 and ``retCode != 0``; they are mapped to the small tree
in :mod:`hybrid_actors.errors`. A body we cannot parse is treated as the exchange being
unavailable (a proxy's HTML error page looks exactly like that) and is retried, except
under HTTP 401 (refused authentication headers), which the client confirms once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

import attrs

from ..errors import RestAuthError, RestClockSkew, RestError, RestRateLimited, RestUnavailable
from ._json import loads
from .fields import FieldError, dec, opt_int, req_str, to_int
from .frames import Position
from .signing import rest_signature

__all__ = ["Scope", "RestRequest", "PositionPage", "RejectedRecord", "TickerRow", "build_query", "signed_headers",
           "position_list_request", "tickers_request", "server_time_request", "Envelope", "parse_envelope",
           "parse_position_page", "parse_tickers", "parse_server_time", "error_for",
           "AUTH_CODES", "RATE_LIMIT_CODES", "IP_BAN_CODES", "CLOCK_SKEW_CODES", "MAX_PAGE_LIMIT",
           "is_ip_ban"]

AUTH_CODES: Final = frozenset({10003, 10004, 10005, 10010})
RATE_LIMIT_CODES: Final = frozenset({10006, 10018})
#: 10009 "IP banned": the same as HTTP 403, stop calling for a long while (BYBIT_V5.md §12)
IP_BAN_CODES: Final = frozenset({10009})
CLOCK_SKEW_CODES: Final = frozenset({10002})
MAX_PAGE_LIMIT: Final = 200
#: what one ``position/list`` query (all its pages) covers: ``(category, settleCoin)``;
#: settle coin None means the whole category (inverse, option)
Scope = tuple[str, str | None]


@attrs.frozen
class RestRequest:
    """A GET request as it goes on the wire: ``path?query`` with these headers.
    ``headers`` may hold a signature: never log them (``repr`` hides them)."""

    path: str
    query: str
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    signed: bool = False

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


@attrs.frozen
class PositionPage:
    category: str
    positions: tuple[Position, ...]
    next_cursor: str
    time_ms: int | None
    #: the records we could not use, dropped (the others are kept): what they said is unknown
    rejected: tuple[RejectedRecord, ...] = ()


@attrs.frozen
class RejectedRecord:
    """A ``position/list`` record the codec refused: its ``symbol`` if it could be read."""

    symbol: str | None
    reason: str


@attrs.frozen
class TickerRow:
    category: str
    symbol: str
    mark_price: Decimal | None
    last_price: Decimal | None
    data: Mapping[str, Any] = attrs.field(repr=False, eq=False)


def build_query(params: Sequence[tuple[str, str | int | None]]) -> str:
    """``k=v&k=v`` in the given order, ``None`` skipped, no re-encoding: the cursor is
    already URL-encoded by the exchange and must go back verbatim, and the signature
    covers exactly this string."""
    return "&".join(f"{k}={v}" for k, v in params if v is not None and v != "")


def signed_headers(api_key: str, api_secret: str, timestamp_ms: int, recv_window_ms: int,
                   payload: str) -> dict[str, str]:
    return {
        "X-BAPI-API-KEY": api_key,
        "X-BAPI-TIMESTAMP": str(int(timestamp_ms)),
        "X-BAPI-RECV-WINDOW": str(int(recv_window_ms)),
        "X-BAPI-SIGN": rest_signature(api_secret, timestamp_ms, api_key, recv_window_ms, payload),
        "X-BAPI-SIGN-TYPE": "2",
    }


def position_list_request(api_key: str, api_secret: str, *, category: str, timestamp_ms: int,
                          recv_window_ms: int = 5000, symbol: str | None = None,
                          settle_coin: str | None = None, limit: int | None = MAX_PAGE_LIMIT,
                          cursor: str | None = None) -> RestRequest:
    if category == "linear" and symbol is None and settle_coin is None:
        raise ValueError("linear position/list needs a symbol or a settleCoin")
    if limit is not None and not 1 <= limit <= MAX_PAGE_LIMIT:
        raise ValueError(f"limit must be within 1..{MAX_PAGE_LIMIT}, got {limit}")
    query = build_query([("category", category), ("symbol", symbol), ("settleCoin", settle_coin),
                         ("limit", limit), ("cursor", cursor)])
    headers = signed_headers(api_key, api_secret, timestamp_ms, recv_window_ms, query)
    return RestRequest("/v5/position/list", query, headers, signed=True)


def tickers_request(category: str, symbol: str | None = None, *, base_coin: str | None = None) -> RestRequest:
    """Public tickers of a category (options need ``symbol`` or ``base_coin``)."""
    return RestRequest("/v5/market/tickers", build_query([("category", category), ("symbol", symbol),
                                                          ("baseCoin", base_coin)]))


def server_time_request() -> RestRequest:
    return RestRequest("/v5/market/time", "")


def error_for(ret_code: int | None, ret_msg: str, *, path: str, http_status: int | None = None,
              retry_after: float | None = None) -> RestError:
    """The exception for a failed call; the message says what to check next."""
    where = f"GET {path}"
    if ret_code in AUTH_CODES:
        hint = {10003: "the API key is invalid or belongs to another environment "
                       "(mainnet / testnet / demo)",
                10004: "the signature was refused: check the API secret",
                10005: "the key lacks permission: enable 'Positions' read access",
                10010: "the key is bound to other IP addresses"}[ret_code]
        return RestAuthError(f"{where} rejected credentials (retCode {ret_code}): {hint}",
                             ret_code=ret_code, ret_msg=_redact(ret_msg), path=path, http_status=http_status)
    if ret_code in CLOCK_SKEW_CODES:
        return RestClockSkew(f"{where}: clock skew (retCode {ret_code}): {ret_msg}", ret_code=ret_code,
                             ret_msg=ret_msg, path=path, http_status=http_status)
    if ret_code in IP_BAN_CODES:
        return RestRateLimited(f"{where}: this IP is banned (retCode {ret_code}): {ret_msg}; "
                               "back off for several minutes", ret_code=ret_code, ret_msg=ret_msg, path=path,
                               http_status=http_status, retry_after=retry_after)
    if ret_code in RATE_LIMIT_CODES:
        return RestRateLimited(f"{where}: rate limited (retCode {ret_code}): {ret_msg}", ret_code=ret_code,
                               ret_msg=ret_msg, path=path, http_status=http_status, retry_after=retry_after)
    return RestError(f"{where} failed (retCode {ret_code}): {ret_msg}", ret_code=ret_code,
                     ret_msg=ret_msg, path=path, http_status=http_status)


def is_ip_ban(exc: RestError) -> bool:
    """HTTP 403 and retCode 10009 both mean: this IP is off the exchange for minutes."""
    return exc.http_status == 403 or exc.ret_code in IP_BAN_CODES


def _redact(ret_msg: str) -> str:
    # 10004 echoes the string the server signed: timestamp+key+recv_window+query. It holds
    # no secret, but it does hold the full API key; keep only what helps debugging.
    return ret_msg.split("origin_string", 1)[0].strip() if "origin_string" in ret_msg else ret_msg


def _unauthorized(body: bytes | str, path: str) -> None:
    """HTTP 401: Bybit's answer to missing or invalid authentication headers. With one of
    its auth retCodes it is that error (:class:`RestAuthError`); otherwise (a gateway's HTML
    page, another code) :class:`RestUnavailable` with ``http_status`` 401, which the client
    confirms with one freshly signed call before calling the credentials rejected."""
    try:
        obj = loads(body)
    except ValueError:
        obj = None
    ret_code: int | None = None
    if isinstance(obj, dict):
        try:
            ret_code = to_int(obj.get("retCode"), "retCode")
        except FieldError:
            ret_code = None
        if ret_code in AUTH_CODES:
            raise error_for(ret_code, str(obj.get("retMsg", "")), path=path, http_status=401)
    what = "a non-JSON body" if obj is None else "no Bybit envelope" if ret_code is None else f"retCode {ret_code}"
    raise RestUnavailable(f"GET {path}: HTTP 401 with {what}: the authentication headers were refused",
                          path=path, http_status=401)


@attrs.frozen
class Envelope:
    result: Mapping[str, Any] = attrs.field(repr=False)
    time_ms: int | None


def parse_envelope(body: bytes | str, *, path: str, http_status: int = 200) -> Envelope:
    """``result`` and ``time`` of a successful call; raises the matching :class:`RestError`
    otherwise."""
    if http_status == 401:
        _unauthorized(body, path)
    if http_status == 403:
        raise RestRateLimited(f"GET {path}: HTTP 403 (IP rate limit or restricted region); "
                              "back off for several minutes", path=path, http_status=403)
    if http_status >= 500 or http_status == 429:
        raise RestUnavailable(f"GET {path}: HTTP {http_status}", path=path, http_status=http_status)
    try:
        obj = loads(body)
    except ValueError:
        raise RestUnavailable(f"GET {path}: HTTP {http_status} with a non-JSON body", path=path,
                              http_status=http_status) from None
    if not isinstance(obj, dict) or "retCode" not in obj:
        raise RestUnavailable(f"GET {path}: HTTP {http_status}, not a Bybit envelope", path=path,
                              http_status=http_status)
    try:
        ret_code = to_int(obj.get("retCode"), "retCode")
    except FieldError:
        raise RestUnavailable(f"GET {path}: retCode is not an integer", path=path) from None
    ret_msg = str(obj.get("retMsg", ""))
    if ret_code != 0:
        raise error_for(ret_code, ret_msg, path=path, http_status=http_status)
    if http_status != 200:
        raise RestUnavailable(f"GET {path}: HTTP {http_status}", path=path, http_status=http_status)
    result = obj.get("result")
    if not isinstance(result, dict):
        raise RestUnavailable(f"GET {path}: result is not an object", path=path)
    try:
        time_ms = opt_int(obj, "time")
    except FieldError:
        time_ms = None
    return Envelope(result, time_ms)


def parse_position_page(body: bytes | str, *, http_status: int = 200) -> PositionPage:
    path = "/v5/position/list"
    envelope = parse_envelope(body, path=path, http_status=http_status)
    result = envelope.result
    try:
        category = req_str(result, "category")
        items = result.get("list")
        if not isinstance(items, list):
            raise FieldError("result.list is not a list")
        cursor = result.get("nextPageCursor") or ""
        if not isinstance(cursor, str):
            raise FieldError("nextPageCursor is not a string")
    except (FieldError, TypeError, ValueError, ArithmeticError) as exc:
        raise RestUnavailable(f"GET {path}: unusable response: {exc}", path=path) from None
    positions: list[Position] = []
    rejected: list[RejectedRecord] = []
    for index, item in enumerate(items):
        try:
            positions.append(Position.from_wire(item, category=category, entry_key="avgPrice"))
        except (FieldError, TypeError, ValueError, ArithmeticError) as exc:  # this record only
            symbol = item.get("symbol") if isinstance(item, dict) else None
            readable = symbol if isinstance(symbol, str) and symbol else None
            rejected.append(RejectedRecord(readable, f"record {index} ({str(symbol)[:40]}): "
                                                     f"{type(exc).__name__}: {exc}"))
    return PositionPage(category, tuple(positions), cursor, envelope.time_ms, tuple(rejected))


def parse_tickers(body: bytes | str, *, http_status: int = 200) -> tuple[TickerRow, ...]:
    path = "/v5/market/tickers"
    result = parse_envelope(body, path=path, http_status=http_status).result
    try:
        category = req_str(result, "category")
        items = result.get("list")
        if not isinstance(items, list):
            raise FieldError("result.list is not a list")
        rows = []
        for item in items:
            if not isinstance(item, dict):
                raise FieldError("ticker row is not an object")
            rows.append(TickerRow(category, req_str(item, "symbol"), dec(item.get("markPrice"), "markPrice"),
                                  dec(item.get("lastPrice"), "lastPrice"), item))
    except (FieldError, TypeError, ValueError, ArithmeticError) as exc:
        raise RestUnavailable(f"GET {path}: unusable response: {exc}", path=path) from None
    return tuple(rows)


def parse_server_time(body: bytes | str, *, http_status: int = 200) -> int:
    """Server time in ms (from ``timeNano`` when present, else ``timeSecond``, else ``time``)."""
    path = "/v5/market/time"
    envelope = parse_envelope(body, path=path, http_status=http_status)
    result = envelope.result
    try:
        nano = to_int(result.get("timeNano"), "timeNano")
        if nano is not None:
            return nano // 1_000_000
        seconds = to_int(result.get("timeSecond"), "timeSecond")
        if seconds is not None:
            return seconds * 1000
    except FieldError as exc:
        raise RestUnavailable(f"GET {path}: unusable response: {exc}", path=path) from None
    if envelope.time_ms is None:
        raise RestUnavailable(f"GET {path}: no time in the response", path=path)
    return envelope.time_ms
