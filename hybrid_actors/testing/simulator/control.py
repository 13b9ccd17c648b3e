"""Steering the simulated exchange: positions, prices, tickers and every fault knob.

In-process tests call the methods directly (all synchronous except :meth:`Control.run_scenario`;
await the effects with ``sim.observe.wait_*``). Other processes use
``POST /control/<method>`` on the REST port with a JSON object of keyword arguments
(numbers as strings), e.g. ``{"symbol": "BTCUSDT", "side": "Buy", "size": "0.5"}``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

import trio

from .account import CLASSIC_MISSING_CATEGORIES, CLASSIC_MISSING_COINS, Paging
from .config import ScenarioConfig
from .exchange import Exchange
from .faults import DropMode, InjectKind, RestFaultKind, check_target
from .positions import Position, to_decimal
from .public import DEFAULT_REJECTION
from .scenario import run_scenario
from . import wire
from .wire import PRIVATE, PUBLIC_KINDS, dumps

#: the size of an OVERSIZED injection unless given: just over the usual 1 MiB client limit
OVERSIZED_DEFAULT: Final = (1 << 20) + 1024


def _mode(mode: DropMode | str) -> DropMode:
    return mode if isinstance(mode, DropMode) else DropMode(mode)


class Control:
    def __init__(self, exchange: Exchange) -> None:
        self._ex = exchange

    # --- positions --------------------------------------------------------------------------
    def open_position(self, symbol: str, side: str, size: Decimal | int | str, *, category: str = "linear",
                      entry_price: Decimal | int | str | None = None, position_idx: int = 0,
                      leverage: Decimal | int | str = 10) -> Position:
        """Open a position (entry at the current mark unless given) and push it."""
        return self._ex.open_position(category, symbol, side, size, entry_price=entry_price,
                                      position_idx=position_idx, leverage=leverage)

    def modify_position(self, symbol: str, *, category: str = "linear", position_idx: int = 0,
                        size: Decimal | int | str | None = None, side: str | None = None,
                        entry_price: Decimal | int | str | None = None, leverage: Decimal | int | str | None = None,
                        take_profit: Decimal | int | str | None = None,
                        stop_loss: Decimal | int | str | None = None) -> Position:
        """Change an open position and push it; no arguments re-pushes it with a new ``seq``."""
        return self._ex.modify_position(category, symbol, position_idx=position_idx, size=size, side=side,
                                        entry_price=entry_price, leverage=leverage, take_profit=take_profit,
                                        stop_loss=stop_loss)

    def close_position(self, symbol: str, *, category: str = "linear", position_idx: int = 0) -> Position:
        """Close (side "", size "0") and push the flat record."""
        return self._ex.close_position(category, symbol, position_idx)

    def settle_usdc(self) -> list[Position]:
        """Run Bybit's 8-hourly USDC settlement now: each open USDC contract's PnL so far is
        realised, its ``sessionAvgPrice`` moves to the mark, and the record is pushed."""
        return self._ex.settle_usdc()

    # --- prices -----------------------------------------------------------------------------
    def set_mark_price(self, symbol: str, price: Decimal | int | str, *, category: str = "linear") -> None:
        """Move the mark to ``price`` (a multiple of the tick) and push a frame carrying it now."""
        self._ex.market.set_mark(category, symbol, to_decimal(price, "price"))

    def stop_ticker(self, symbol: str, *, category: str = "linear") -> None:
        """The symbol goes silent: no deltas, and new subscribers get no snapshot until restarted."""
        self._ex.market.stop(category, symbol)

    def start_ticker(self, symbol: str, *, category: str = "linear") -> None:
        self._ex.market.start(category, symbol)

    async def tick(self, count: int = 1) -> None:
        """Advance every active symbol ``count`` times now, as the market task would (handy with rate=0)."""
        for _ in range(count):
            await self._ex.market.tick()

    def set_rate(self, rate: float) -> None:
        """Ticker pushes per second per subscribed symbol (0: only on control changes)."""
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise ValueError(f"rate must be a number of pushes per second, got {rate!r}")
        self._ex.market.set_rate(rate)
        self._ex.changed()

    def set_rest_divergence(self, percent: Decimal | int | str, *, symbol: str | None = None,
                            category: str = "linear") -> None:
        """REST ``markPrice`` = stream mark * (1 + percent/100), for one symbol or all; 0 clears."""
        key = None if symbol is None else (category, symbol)
        if symbol is not None:
            self._ex.market.require(category, symbol)
        value = to_decimal(percent, "percent")
        if value:
            self._ex.market.divergence[key] = value
        else:
            self._ex.market.divergence.pop(key, None)
        self._ex.changed()

    # --- sockets ----------------------------------------------------------------------------
    def drop(self, target: str = "all", mode: DropMode | str = DropMode.CLOSE, *, code: int = 1000,
             reason: str | None = None) -> list[str]:
        """End (or freeze, ``HALF_OPEN``) the open sockets matching ``target``; their conn_ids."""
        mode = _mode(mode)
        dropped = []
        for conn in self._ex.connections(check_target(target)):
            conn.request_drop(mode, code=code, reason=reason)
            dropped.append(conn.conn_id)
        self._ex.changed()
        return dropped

    def drop_public(self, category: str | None = None, mode: DropMode | str = DropMode.CLOSE, *,
                    code: int = 1000, reason: str | None = None) -> list[str]:
        if category is not None and category not in PUBLIC_KINDS:
            raise ValueError(f"category must be one of {', '.join(PUBLIC_KINDS)}, got {category!r}")
        return self.drop(category or "public", mode, code=code, reason=reason)

    def drop_private(self, mode: DropMode | str = DropMode.CLOSE, *, code: int = 1000,
                     reason: str | None = None) -> list[str]:
        return self.drop(PRIVATE, mode, code=code, reason=reason)

    def half_open(self, target: str = "all") -> list[str]:
        """Stop sending and reading on the matching sockets, keeping TCP open (a dead peer)."""
        return self.drop(target, DropMode.HALF_OPEN)

    def inject(self, kind: InjectKind | str, target: str = "all", *, text: str | None = None,
               size: int = OVERSIZED_DEFAULT) -> list[str]:
        """Push garbage into the matching open sockets, in order with their other frames."""
        kind = kind if isinstance(kind, InjectKind) else InjectKind(kind)
        frame = self._garbage(kind, text, size)
        hit = []
        for conn in self._ex.connections(check_target(target)):
            conn.push(frame)
            hit.append(conn.conn_id)
        self._ex.changed()
        return hit

    def _garbage(self, kind: InjectKind, text: str | None, size: int) -> str | bytes:
        if kind is InjectKind.RAW:
            if text is None:
                raise ValueError("inject(RAW) needs text=")
            return text
        if kind is InjectKind.MALFORMED:
            return '{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","markPrice":'
        if kind is InjectKind.NON_JSON:
            return "this is not JSON"
        if kind is InjectKind.BINARY:
            return b"\x00\x01\x02binary frame"
        if kind is InjectKind.UNKNOWN_TOPIC:
            return dumps({"topic": "mystery.BTCUSDT", "type": "snapshot", "data": {"symbol": "BTCUSDT"},
                          "ts": self._ex.now_ms()})
        head = '{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","pad":"'
        tail = f'"}},"cs":1,"ts":{self._ex.now_ms()}}}'
        return head + "x" * max(0, size - len(head) - len(tail)) + tail

    def withhold_pongs(self, target: str = "all", count: int | None = None) -> None:
        """Answer no ping (JSON ``op: ping``) on matching sockets, present and future; count=None: until resumed."""
        self._ex.faults.withhold_pongs(target, count)
        self._ex.changed()

    def resume_pongs(self) -> None:
        self._ex.faults.pongs.clear()
        self._ex.changed()

    def reject_connections(self, count: int | None = 1, *, status: int = 502, target: str = "all") -> None:
        """Refuse the next ``count`` WebSocket handshakes on matching paths with HTTP ``status``.
        ``target`` is a group, a socket kind, or a path (``/v5/public/option``: only that one,
        e.g. a 403 ban on one endpoint while the others accept)."""
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status, got {status!r}")
        if target.startswith("/"):
            kind = wire.kind_of_path(target)
            if kind is None:
                raise ValueError(f"no WebSocket path {target!r}; use /v5/public/<category> or /v5/private")
            target = kind
        self._ex.faults.reject_handshakes(target, count, status)
        self._ex.changed()

    def set_connection_limit(self, max_new: int, window: float = 300.0, status: int = 429) -> None:
        """At most ``max_new`` accepted connections per ``window`` seconds per IP; then HTTP ``status``."""
        faults = self._ex.faults
        faults.max_connections, faults.connection_window, faults.connection_limit_status = max_new, window, status
        self._ex.changed()

    # --- subscribe and auth ------------------------------------------------------------------
    def reject_subscribes(self, symbol: str, count: int | None = 1, *, category: str = "linear",
                          ret_msg: str = DEFAULT_REJECTION) -> None:
        """The next ``count`` subscribes to this symbol fail with ``ret_msg`` (``{topic}`` is filled in)."""
        self._ex.market.require(category, symbol)
        self._ex.faults.reject_subscribes(category, symbol, count, ret_msg)
        self._ex.changed()

    def fail_auth(self, count: int | None = 1, *, ret_msg: str = "Params Error") -> None:
        """The next ``count`` auth attempts fail with ``ret_msg`` however correct (None: all of
        them). ``Params Error`` is the only v5 refusal text on record (bad keys and an expired
        ``expires`` alike); another text stands for an answer that is not about the keys (a
        server error, a rate limit) or one nobody has documented."""
        self._ex.faults.fail_auth(count, ret_msg)
        self._ex.changed()

    def close_on_failed_auth(self, enabled: bool = True) -> None:
        """A refused auth is answered by closing the socket (code 1008), not ``success:false``:
        Bybit's docs leave open what its gateway does after a failed auth."""
        self._ex.faults.failed_auth_closes = enabled
        self._ex.changed()

    def clear_auth_failures(self) -> None:
        self._ex.faults.clear_auth_failures()
        self._ex.changed()

    # --- REST ----------------------------------------------------------------------------------
    def rest_error(self, ret_code: int, ret_msg: str, *, count: int | None = 1, path: str | None = None,
                   query: str | None = None) -> None:
        """The next ``count`` REST calls (to ``path`` or any; with ``query``, only those whose
        raw query string contains it, e.g. one settle coin's page) answer HTTP 200 with this retCode."""
        self._ex.faults.add_rest(RestFaultKind.RET_CODE, count, path, ret_code=ret_code, ret_msg=ret_msg, query=query)
        self._ex.changed()

    def rest_http_error(self, status: int = 503, *, count: int | None = 1, path: str | None = None,
                        query: str | None = None) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status, got {status!r}")
        self._ex.faults.add_rest(RestFaultKind.HTTP_STATUS, count, path, status=status, query=query)
        self._ex.changed()

    def rest_hang(self, seconds: float, *, count: int | None = 1, path: str | None = None,
                  query: str | None = None) -> None:
        """The next ``count`` REST calls wait ``seconds`` (trio time) before answering normally."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self._ex.faults.add_rest(RestFaultKind.HANG, count, path, seconds=seconds, query=query)
        self._ex.changed()

    def rest_omit(self, symbol: str, *, category: str = "linear", count: int | None = 1) -> None:
        """The next ``count`` records of ``symbol`` that position lists would show are left out,
        whatever their state: a REST replica lagging the matching engine (the push stream is
        unaffected). Counted per record: a hedge-mode symbol shows two per list."""
        self._ex.market.require(category, symbol)
        self._ex.faults.fault_rest_record(category, symbol, count, None)
        self._ex.changed()

    def rest_garble(self, symbol: str, fields: dict[str, Any], *, category: str = "linear",
                    count: int | None = 1) -> None:
        """The next ``count`` records of ``symbol`` that position lists show carry ``fields``
        overwritten (e.g. ``{"size": "0.0.1"}``): a record the client cannot use. Counted per
        record, as :meth:`rest_omit`."""
        if not fields:
            raise ValueError("rest_garble needs at least one field to overwrite")
        self._ex.market.require(category, symbol)
        self._ex.faults.fault_rest_record(category, symbol, count, dict(fields))
        self._ex.changed()

    def set_account(self, *, classic: bool | None = None, paging: Paging | str | None = None,
                    enforce_rate_limits: bool | None = None) -> None:
        """Classic account (``"None"`` sides, no USDC/option: 10001), REST paging mode
        (``normal`` / ``last_page_cursor`` / ``endless``) and 10006 past the per-UID limit."""
        account = self._ex.account
        if classic:
            market = self._ex.market
            held = [p.key for p in self._ex.book.all(open_only=True)
                    if p.category in CLASSIC_MISSING_CATEGORIES
                    or market.require(p.category, p.symbol).instrument.settle_coin in CLASSIC_MISSING_COINS]
            if held:
                raise ValueError(f"a Classic account cannot hold {held[:5]}: close them first")
        if classic is not None:
            account.classic = bool(classic)
        if paging is not None:
            account.paging = paging if isinstance(paging, Paging) else Paging(paging)
        if enforce_rate_limits is not None:
            account.enforce_rate_limits = bool(enforce_rate_limits)
        self._ex.changed()

    def clear_faults(self) -> None:
        """Disarm every fault rule (auth, subscribe, REST, handshake, pong)."""
        self._ex.faults.clear()
        self._ex.changed()

    # --- observation switches and scenario ---------------------------------------------------
    def record_frames(self, limit: int) -> None:
        """Keep the last ``limit`` sent frames with timestamps (0 stops recording)."""
        self._ex.observer.record_frames(limit)

    def stamp_sends(self, limit: int) -> int:
        """Stamp (``time.time_ns()``) each frame just before it goes to its socket, at most
        ``limit`` frames from now (0 stops and forgets): another process's frame-to-event
        latency without instrumenting its reads (``scripts/bench_stream.py``). Returns how many
        frames the log this call ends had stamped."""
        return self._ex.observer.stamp_sends(limit)

    def ticker_send_stamps(self, category: str = "linear") -> list[tuple[str, int, int]]:
        """The stamped ticker frames of ``category``: ``[symbol, ts, send time_ns]`` each."""
        return self._ex.observer.ticker_send_stamps(category)

    async def run_scenario(self, config: ScenarioConfig | None = None, *,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open, resize and close positions at random (seeded) until cancelled; start it in a nursery."""
        await run_scenario(self._ex, config or ScenarioConfig(), task_status=task_status)

