"""REST endpoints: ``/v5/position/list`` (signed), ``/v5/market/tickers``, ``/v5/market/time``,
plus the ``/control/...`` endpoints that let another process steer the simulator.

Errors are HTTP 200 with ``retCode != 0`` (BYBIT_V5.md §8). The signature is checked
byte-for-byte over the raw query string as received.
"""

from __future__ import annotations

import inspect
import logging
from decimal import Decimal
from typing import Any, Callable, Final
from urllib.parse import parse_qsl, quote, unquote

import orjson
import trio

from ...protocol.signing import constant_time_equals, rest_sign_payload, rest_signature
from .account import Paging
from .control import Control
from .exchange import Exchange
from .faults import RestFaultKind
from .instruments import CATEGORIES, POSITION_CATEGORIES
from .positions import Position, rest_record
from .rest_http import HttpRequest, HttpResponse

log = logging.getLogger(__name__)

DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 200
DEFAULT_RECV_WINDOW: Final = "5000"


class RetCodeError(Exception):
    def __init__(self, ret_code: int, ret_msg: str) -> None:
        super().__init__(ret_msg)
        self.ret_code = ret_code
        self.ret_msg = ret_msg


def _canonical_int(raw: str | None) -> int | None:
    return int(raw) if raw is not None and raw.isascii() and raw.isdigit() and str(int(raw)) == raw else None


def encode_cursor(pos: Position) -> str:
    """Opaque and URL-encoded, like Bybit's ``LTCUSDT%2C1701294996731%2C0``."""
    return quote(f"{pos.symbol},{pos.updated_ms},{pos.position_idx}", safe="")


def decode_cursor(raw: str) -> tuple[str, int]:
    text = raw
    for _ in range(3):  # tolerate a client that URL-encoded the (already encoded) cursor again
        if "%" not in text:
            break
        text = unquote(text)
    parts = text.split(",")
    if len(parts) != 3 or not parts[0] or _canonical_int(parts[2]) is None:
        raise RetCodeError(10001, f"params error: cursor {raw!r} is invalid")
    return parts[0], int(parts[2])


def _advance(cursor: str) -> str:
    """A new cursor at the same place (its middle field counts up): paging that never ends."""
    if not cursor:
        return quote("~,1,0", safe="")
    symbol, idx = decode_cursor(cursor)
    middle = unquote(cursor).split(",")[1]
    serial = int(middle) + 1 if middle.isdigit() else 1
    return quote(f"{symbol},{serial},{idx}", safe="")


class RestApi:
    def __init__(self, exchange: Exchange, control: Control) -> None:
        self._ex = exchange
        self._control = control
        self._routes: dict[tuple[str, str], Callable[[HttpRequest, dict[str, str]], dict[str, Any]]] = {
            ("GET", "/v5/position/list"): self._position_list,
            ("GET", "/v5/market/tickers"): self._tickers,
            ("GET", "/v5/market/time"): self._time,
        }

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/control/") or request.path == "/control":
            return self._control_http(request)
        ex = self._ex
        route = self._routes.get((request.method, request.path))
        if route is None:
            return self._record(request, HttpResponse(404, b"404 page not found", "text/plain"), None)
        limit, remaining, reset_in, allowed = ex.account.count_call(request.path, trio.current_time())
        headers = (("X-Bapi-Limit", str(limit)), ("X-Bapi-Limit-Status", str(remaining)),
                   ("X-Bapi-Limit-Reset-Timestamp", str(ex.now_ms() + int(reset_in * 1000))))
        if not allowed:
            return self._envelope(request, 10006, "Too many visits!", {}, headers)
        fault = ex.faults.take_rest(request.path, request.query)
        if fault is not None and fault.kind is RestFaultKind.HANG:
            await trio.sleep(fault.seconds)
        elif fault is not None and fault.kind is RestFaultKind.HTTP_STATUS:
            body = f"<html><body><h1>{fault.status}</h1>simulated outage</body></html>".encode()
            return self._record(request, HttpResponse(fault.status, body, "text/html"), None)
        elif fault is not None:
            return self._envelope(request, fault.ret_code, fault.ret_msg, {}, headers)
        params = dict(parse_qsl(request.query, keep_blank_values=True))
        try:
            result = route(request, params)
        except RetCodeError as exc:
            return self._envelope(request, exc.ret_code, exc.ret_msg, {}, headers)
        return self._envelope(request, 0, "OK", result, headers)

    def _envelope(self, request: HttpRequest, ret_code: int, ret_msg: str, result: dict[str, Any],
                  headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
        body = orjson.dumps({"retCode": ret_code, "retMsg": ret_msg, "result": result, "retExtInfo": {},
                             "time": self._ex.now_ms()})
        return self._record(request, HttpResponse(200, body, headers=headers), ret_code)

    def _record(self, request: HttpRequest, response: HttpResponse, ret_code: int | None) -> HttpResponse:
        self._ex.observer.rest_call(request.method, request.path, request.query, response.status, ret_code)
        return response

    # --- auth ----------------------------------------------------------------------------------
    def _check_signature(self, request: HttpRequest) -> None:
        cfg = self._ex.config
        headers = request.headers
        key = headers.get("x-bapi-api-key", "")
        if not key or not constant_time_equals(key, cfg.api_key):
            raise RetCodeError(10003, "API key is invalid.")
        ts_raw = headers.get("x-bapi-timestamp")
        window_raw = headers.get("x-bapi-recv-window", DEFAULT_RECV_WINDOW)
        timestamp, window = _canonical_int(ts_raw), _canonical_int(window_raw)
        server_time = self._ex.now_ms()
        if timestamp is None or window is None or not server_time - window <= timestamp < server_time + 1000:
            raise RetCodeError(10002, "invalid request, please check your server timestamp or recv_window param. "
                                      f"req_timestamp[{ts_raw}],server_timestamp[{server_time}],"
                                      f"recv_window[{window_raw}]")
        expected = rest_signature(cfg.api_secret, timestamp, key, window, request.query)
        if not constant_time_equals(headers.get("x-bapi-sign", ""), expected):
            origin = rest_sign_payload(timestamp, key, window, request.query)
            raise RetCodeError(10004, f"error sign! origin_string[{origin}]")

    # --- endpoints ---------------------------------------------------------------------------------
    def _position_list(self, request: HttpRequest, params: dict[str, str]) -> dict[str, Any]:
        self._check_signature(request)
        ex = self._ex
        category = params.get("category", "")
        if category not in POSITION_CATEGORIES:
            raise RetCodeError(10001, "Illegal category")
        symbol, settle, base = params.get("symbol"), params.get("settleCoin"), params.get("baseCoin")
        if category == "linear" and not symbol and not settle:
            raise RetCodeError(10001, "Missing some parameters that must be filled in, symbol or settleCoin")
        limit = _canonical_int(params.get("limit", str(DEFAULT_LIMIT)))
        if limit is None or not 1 <= limit <= MAX_LIMIT:
            raise RetCodeError(10001, f"params error: limit must be 1..{MAX_LIMIT}")
        account = ex.account
        if symbol:
            model = ex.market.model(category, symbol)
            if model is None:
                raise RetCodeError(10001, "params error: symbol invalid")
            if account.lacks(category, model.instrument.settle_coin):
                raise RetCodeError(10001, f"params error: {symbol} is not available to a classic account")
            records = [p for p in ex.book.all(category) if p.symbol == symbol] or [
                ex.book.never_traded(category, symbol)]
        else:
            if account.lacks(category, settle):
                what = f"settleCoin {settle}" if settle else f"category {category}"
                raise RetCodeError(10001, f"params error: {what} is not available to a classic account")
            records = [p for p in ex.book.all(category, open_only=True)
                       if self._matches(p, settle, base)]
        cursor = params.get("cursor") or ""
        if cursor:
            after = decode_cursor(cursor)
            before = [p for p in records if (p.symbol, p.position_idx) <= after]
            records = [p for p in records if (p.symbol, p.position_idx) > after]
            if not records and account.paging in (Paging.REPEAT_LAST_PAGE, Paging.ENDLESS):
                records = before[-limit:]  # the same rows again, and the same cursor below
        page = records[:limit]
        items = []
        for pos in page:
            fault = ex.faults.take_rest_record_fault(pos.category, pos.symbol)
            if fault is not None and fault.garble is None:
                continue  # a lagging replica's list (``Control.rest_omit``); the cursor is unchanged
            model = ex.market.require(pos.category, pos.symbol)
            mark = model.instrument.price_of(ex.market.rest_mark_units(model))
            item = rest_record(pos, model.instrument, mark)
            item["side"] = account.side(item["side"])
            if fault is not None and fault.garble is not None:
                item.update(fault.garble)  # ``Control.rest_garble``
            items.append(item)
        if len(records) > limit:
            next_cursor = encode_cursor(page[-1])
        elif account.paging in (Paging.LAST_PAGE_CURSOR, Paging.REPEAT_LAST_PAGE):
            next_cursor = encode_cursor(page[-1]) if page else quote(cursor, safe="")  # as it came
        elif account.paging is Paging.ENDLESS:
            next_cursor = _advance(cursor) if cursor else encode_cursor(page[-1]) if page else _advance("")
        else:
            next_cursor = ""
        return {"list": items, "nextPageCursor": next_cursor, "category": category}

    def _matches(self, pos: Position, settle: str | None, base: str | None) -> bool:
        inst = self._ex.market.require(pos.category, pos.symbol).instrument
        return (not settle or inst.settle_coin == settle) and (not base or inst.base_coin == base)

    def _tickers(self, request: HttpRequest, params: dict[str, str]) -> dict[str, Any]:
        market = self._ex.market
        category = params.get("category", "")
        if category not in CATEGORIES:
            raise RetCodeError(10001, "Illegal category")
        symbol, base = params.get("symbol"), params.get("baseCoin")
        if symbol:
            model = market.model(category, symbol)
            if model is None:
                raise RetCodeError(10001, "Not supported symbols")
            models = [model]
        elif category == "option" and not base:
            raise RetCodeError(10001, "Missing some parameters that must be filled in, symbol or baseCoin")
        else:
            models = [m for m in market.models[category].values() if not base or m.instrument.base_coin == base]
        return {"category": category, "list": [m.rest_item(market.rest_mark_units(m)) for m in models]}

    def _time(self, request: HttpRequest, params: dict[str, str]) -> dict[str, Any]:
        now = self._ex.now_ms()
        return {"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)}

    # --- control over HTTP ------------------------------------------------------------------------
    def _control_http(self, request: HttpRequest) -> HttpResponse:
        name = request.path[len("/control/"):]
        if request.method == "GET" and name == "state":
            return _json(200, self._state())
        method = getattr(self._control, name, None) if not name.startswith("_") else None
        if request.method != "POST" or method is None or name == "run_scenario" or not callable(method):
            return _json(404, {"error": f"no control endpoint {request.method} {request.path}"})
        try:
            kwargs = orjson.loads(request.body or b"{}")
            if not isinstance(kwargs, dict):
                raise TypeError("the body must be a JSON object of keyword arguments")
            inspect.signature(method).bind(**kwargs)
            result = method(**kwargs)
        except (TypeError, ValueError, KeyError, ArithmeticError, orjson.JSONDecodeError) as exc:
            return _json(400, {"error": f"{type(exc).__name__}: {exc}"})
        return _json(200, {"result": _jsonable(result)})

    def _state(self) -> dict[str, Any]:
        observe = self._ex.observer
        return {
            "connections": [_jsonable(c) for c in observe.open_connections()],
            "positions": [_jsonable(p) for p in observe.positions()],
            "opened": {kind: observe.opened_count(kind) for kind in (*CATEGORIES, "private")},
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Position):
        return {"category": value.category, "symbol": value.symbol, "positionIdx": value.position_idx,
                "side": value.side, "size": str(value.size), "entryPrice": str(value.entry_price),
                "seq": value.seq, "updatedTime": value.updated_ms}
    if hasattr(value, "__attrs_attrs__"):
        return {a.name: _jsonable(getattr(value, a.name)) for a in value.__attrs_attrs__}
    if isinstance(value, (list, tuple, frozenset, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    return value


def _json(status: int, obj: Any) -> HttpResponse:
    return HttpResponse(status, orjson.dumps(obj, default=str))
