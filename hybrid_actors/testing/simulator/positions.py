"""The position book: full records keyed by (category, symbol, positionIdx), and their wire forms.

Every change bumps the cross sequence ``seq`` and ``updatedTime``. The WebSocket record
uses ``entryPrice`` and carries ``category``; the REST record uses ``avgPrice`` and does
not (``result.category`` names it). Flat = ``side ""``, ``size "0"``.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any, Callable, Final

import attrs

from .instruments import POSITION_CATEGORIES, Instrument
from .wire import fmt_decimal

SIDES: Final = ("Buy", "Sell")
_MMR: Final = Decimal("0.005")
_FEE: Final = Decimal("0.00055")
_EIGHT: Final = Decimal("1e-8")
_ZERO: Final = Decimal(0)

PositionKey = tuple[str, str, int]


@attrs.frozen
class Position:
    """One position record as the exchange holds it (Decimal throughout)."""

    category: str
    symbol: str
    position_idx: int
    side: str
    size: Decimal
    entry_price: Decimal
    leverage: Decimal
    #: the mark price at the time of the last event (what a push carries)
    mark_price: Decimal
    seq: int
    created_ms: int
    updated_ms: int
    cur_realised_pnl: Decimal = _ZERO
    cum_realised_pnl: Decimal = _ZERO
    take_profit: Decimal = _ZERO
    stop_loss: Decimal = _ZERO
    #: USDC contracts: the entry since the last 8-hourly settlement (0: not a USDC contract
    #: or flat); their unrealised PnL is measured from it, as Bybit's UI shows
    session_avg_price: Decimal = _ZERO

    @property
    def key(self) -> PositionKey:
        return (self.category, self.symbol, self.position_idx)

    @property
    def is_open(self) -> bool:
        return self.size > 0

    @property
    def direction(self) -> int:
        return 1 if self.side == "Buy" else -1 if self.side == "Sell" else 0

    def unrealised_pnl(self, mark: Decimal) -> Decimal:
        """Linear/option: (mark - entry) * size * dir; inverse: size * (1/entry - 1/mark) * dir."""
        if not self.is_open:
            return _ZERO
        if self.category == "inverse":
            return (self.size * (1 / self.entry_price - 1 / mark) * self.direction).quantize(_EIGHT)
        entry = self.session_avg_price or self.entry_price
        return ((mark - entry) * self.size * self.direction).quantize(_EIGHT)

    def value(self) -> Decimal:
        if not self.is_open:
            return _ZERO
        if self.category == "inverse":
            return (self.size / self.entry_price).quantize(_EIGHT)
        return self.size * self.entry_price


def _money(value: Decimal) -> str:
    return fmt_decimal(value.quantize(_EIGHT).normalize())


def _plain(value: Decimal) -> str:
    return fmt_decimal(value.normalize())


def _price(inst: Instrument, value: Decimal) -> str:
    return fmt_decimal(value, inst.price_decimals)


def _liq_price(pos: Position, inst: Instrument) -> str:
    if inst.category == "option":
        return ""
    factor = 1 - pos.direction * (1 / pos.leverage - _MMR)
    return _price(inst, inst.price_of(inst.round_units(pos.entry_price * factor)))


def _common(pos: Position, inst: Instrument, mark: Decimal) -> dict[str, str]:
    """The numeric fields both wire forms share, at mark price ``mark``."""
    if not pos.is_open:
        return {"positionValue": "0", "unrealisedPnl": "0", "positionIM": "0", "positionIMByMp": "0",
                "positionMM": "0", "positionMMByMp": "0", "liqPrice": "0", "breakEvenPrice": "0"}
    value = pos.value()
    value_by_mark = pos.size / mark if inst.category == "inverse" else pos.size * mark
    breakeven = pos.entry_price * (1 + 2 * _FEE * pos.direction)
    return {
        "positionValue": _money(value), "unrealisedPnl": _money(pos.unrealised_pnl(mark)),
        "positionIM": _money(value / pos.leverage), "positionIMByMp": _money(value_by_mark / pos.leverage),
        "positionMM": _money(value * _MMR), "positionMMByMp": _money(value_by_mark * _MMR),
        "liqPrice": _liq_price(pos, inst),
        "breakEvenPrice": "" if inst.category == "option" else _money(breakeven),
    }


def _greeks(pos: Position) -> dict[str, str]:
    if pos.category != "option":
        return {}
    if not pos.is_open:
        return {"delta": "0", "gamma": "0", "vega": "0", "theta": "0"}
    d = pos.direction
    return {"delta": _money(Decimal("0.5") * pos.size * d), "gamma": _money(Decimal("0.00001") * pos.size * d),
            "vega": _money(Decimal("10") * pos.size * d), "theta": _money(Decimal("-5") * pos.size * d)}


def ws_record(pos: Position, inst: Instrument) -> dict[str, Any]:
    """The record inside a ``position`` push (key order of the docs' current example)."""
    c = _common(pos, inst, pos.mark_price)
    record: dict[str, Any] = {
        "positionIdx": pos.position_idx, "tradeMode": 0, "riskId": 1, "riskLimitValue": "2000000",
        "symbol": pos.symbol, "side": pos.side, "size": _plain(pos.size),
        "entryPrice": _plain(pos.entry_price) if pos.is_open else "0", "leverage": _plain(pos.leverage),
        "breakEvenPrice": c["breakEvenPrice"], "positionValue": c["positionValue"], "positionBalance": "0",
        "markPrice": _price(inst, pos.mark_price), "positionIM": c["positionIM"],
        "positionIMByMp": c["positionIMByMp"], "positionMM": c["positionMM"], "positionMMByMp": c["positionMMByMp"],
        "takeProfit": _plain(pos.take_profit), "stopLoss": _plain(pos.stop_loss), "trailingStop": "0",
        "unrealisedPnl": c["unrealisedPnl"], "curRealisedPnl": _money(pos.cur_realised_pnl),
        "cumRealisedPnl": _money(pos.cum_realised_pnl),
        "sessionAvgPrice": _price(inst, pos.session_avg_price) if pos.session_avg_price else "0",
        "createdTime": str(pos.created_ms), "updatedTime": str(pos.updated_ms), "tpslMode": "Full",
        "liqPrice": c["liqPrice"], "bustPrice": "", "category": pos.category, "positionStatus": "Normal",
        "adlRankIndicator": 2 if pos.is_open else 0, "autoAddMargin": 0, "leverageSysUpdatedTime": "",
        "mmrSysUpdatedTime": "", "seq": pos.seq, "isReduceOnly": False,
    }
    record.update(_greeks(pos))
    return record


def rest_record(pos: Position, inst: Instrument, mark: Decimal) -> dict[str, Any]:
    """An item of ``/v5/position/list`` ``result.list``, valued at the current (REST) mark."""
    c = _common(pos, inst, mark)
    flat = not pos.is_open
    record: dict[str, Any] = {
        "positionIdx": pos.position_idx, "riskId": 1, "riskLimitValue": "2000000", "symbol": pos.symbol,
        "side": pos.side, "size": _plain(pos.size), "avgPrice": "0" if flat else _plain(pos.entry_price),
        "positionValue": "" if flat else c["positionValue"], "tradeMode": 0, "positionStatus": "Normal",
        "autoAddMargin": 0, "adlRankIndicator": 0 if flat else 2, "leverage": _plain(pos.leverage),
        "breakEvenPrice": c["breakEvenPrice"], "positionBalance": "0", "markPrice": _price(inst, mark),
        "liqPrice": "" if flat else c["liqPrice"], "bustPrice": "", "positionMM": c["positionMM"],
        "positionMMByMp": c["positionMMByMp"], "positionIM": c["positionIM"], "positionIMByMp": c["positionIMByMp"],
        "tpslMode": "Full", "takeProfit": _plain(pos.take_profit), "stopLoss": _plain(pos.stop_loss),
        "trailingStop": "0", "unrealisedPnl": "" if flat else c["unrealisedPnl"],
        "curRealisedPnl": _money(pos.cur_realised_pnl), "cumRealisedPnl": _money(pos.cum_realised_pnl),
        "seq": pos.seq, "isReduceOnly": False, "mmrSysUpdatedTime": "", "leverageSysUpdatedTime": "",
        "sessionAvgPrice": _price(inst, pos.session_avg_price) if pos.session_avg_price else "",
        "createdTime": str(pos.created_ms), "updatedTime": str(pos.updated_ms),
    }
    record.update(_greeks(pos))
    return record


#: Bybit settles USDC perpetuals and futures every 8 hours (00:00, 08:00, 16:00 UTC)
SETTLEMENT_INTERVAL: Final = 8 * 3600


def is_session_settled(inst: Instrument) -> bool:
    """USDC-settled linear contracts carry a session (settled every 8 hours)."""
    return inst.category == "linear" and inst.settle_coin == "USDC"


def to_decimal(value: Any, name: str) -> Decimal:
    """A Decimal from a Decimal, int or numeric string; floats are refused (prices are never floats)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, (float, bool)) or not isinstance(value, (int, str)):
        raise ValueError(f"{name} must be a Decimal, int or numeric string, not {type(value).__name__}")
    try:
        result = Decimal(value)
    except ArithmeticError as exc:
        raise ValueError(f"{name} {value!r} is not a number") from exc
    if not result.is_finite():
        raise ValueError(f"{name} {value!r} is not a finite number")
    return result


@attrs.define(eq=False)
class PositionBook:
    """Positions by key. Pure state: the exchange pushes and notifies around each change."""

    instrument: Callable[[str, str], Instrument]
    mark: Callable[[str, str], Decimal]
    now_ms: Callable[[], int]
    rng: random.Random
    seq: int = 0
    _positions: dict[PositionKey, Position] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        if not self.seq:
            self.seq = self.rng.randint(10**9, 10**10)

    # --- queries ----------------------------------------------------------------------------
    def get(self, category: str, symbol: str, position_idx: int = 0) -> Position | None:
        return self._positions.get((category, symbol, position_idx))

    def all(self, category: str | None = None, *, open_only: bool = False) -> list[Position]:
        """Sorted by (category, symbol, positionIdx): the order REST pages through."""
        return [p for k, p in sorted(self._positions.items())
                if (category is None or k[0] == category) and (p.is_open or not open_only)]

    def never_traded(self, category: str, symbol: str) -> Position:
        """The flat record REST shows for a known symbol that never held a position (seq -1)."""
        return Position(category, symbol, 0, "", _ZERO, _ZERO, Decimal(10), self.mark(category, symbol),
                        -1, 0, 0)

    # --- changes ----------------------------------------------------------------------------
    def _check(self, category: str, symbol: str, position_idx: int) -> Instrument:
        if category not in POSITION_CATEGORIES:
            raise ValueError(f"category {category!r} holds no positions; use one of {', '.join(POSITION_CATEGORIES)}")
        if position_idx not in (0, 1, 2):
            raise ValueError(f"positionIdx must be 0 (one-way), 1 (hedge buy) or 2 (hedge sell), got {position_idx!r}")
        return self.instrument(category, symbol)

    def _size(self, inst: Instrument, value: Any) -> Decimal:
        size = to_decimal(value, "size")
        if size <= 0 or size % inst.qty_step:
            raise ValueError(f"size {size} must be a positive multiple of {inst.symbol}'s qty step {inst.qty_step}")
        return size

    def _stamp(self, pos: Position, **changes: Any) -> Position:
        self.seq += self.rng.randint(1, 64)
        updated = max(self.now_ms(), pos.updated_ms + 1)
        new = attrs.evolve(pos, seq=self.seq, updated_ms=updated,
                           mark_price=self.mark(pos.category, pos.symbol), **changes)
        self._positions[new.key] = new
        return new

    def open(self, category: str, symbol: str, side: str, size: Any, *, entry_price: Any = None,
             position_idx: int = 0, leverage: Any = 10) -> Position:
        inst = self._check(category, symbol, position_idx)
        if side not in SIDES or (position_idx == 1 and side != "Buy") or (position_idx == 2 and side != "Sell"):
            raise ValueError(f"side {side!r} is not valid for positionIdx {position_idx} (Buy/Sell; hedge 1=Buy, 2=Sell)")
        old = self.get(category, symbol, position_idx)
        if old is not None and old.is_open:
            raise ValueError(f"{category} {symbol} idx {position_idx} is already open ({old.side} {old.size}); "
                             "use modify_position or close_position")
        mark = self.mark(category, symbol)
        entry = mark if entry_price is None else to_decimal(entry_price, "entry_price")
        lev = to_decimal(leverage, "leverage")
        if entry <= 0 or lev <= 0:
            raise ValueError("entry_price and leverage must be > 0")
        now = self.now_ms()
        base = old if old is not None else Position(category, symbol, position_idx, "", _ZERO, _ZERO, lev,
                                                    mark, 0, now, 0)
        return self._stamp(base, side=side, size=self._size(inst, size), entry_price=entry, leverage=lev,
                           cur_realised_pnl=_ZERO, session_avg_price=entry if is_session_settled(inst) else _ZERO)

    def _require_open(self, category: str, symbol: str, position_idx: int) -> tuple[Instrument, Position]:
        inst = self._check(category, symbol, position_idx)
        pos = self.get(category, symbol, position_idx)
        if pos is None or not pos.is_open:
            raise ValueError(f"no open {category} position {symbol} idx {position_idx}")
        return inst, pos

    def _realise(self, pos: Position, size: Decimal) -> dict[str, Decimal]:
        """PnL of closing ``size`` of ``pos`` at the current mark."""
        part = attrs.evolve(pos, size=size)
        pnl = part.unrealised_pnl(self.mark(pos.category, pos.symbol))
        return {"cur_realised_pnl": pos.cur_realised_pnl + pnl, "cum_realised_pnl": pos.cum_realised_pnl + pnl}

    def modify(self, category: str, symbol: str, *, position_idx: int = 0, size: Any = None,
               side: str | None = None, entry_price: Any = None, leverage: Any = None,
               take_profit: Any = None, stop_loss: Any = None) -> Position:
        """Change an open position; with no arguments it is re-pushed unchanged (new seq),
        as Bybit does on every order create/amend/cancel. ``size=0`` closes it."""
        inst, pos = self._require_open(category, symbol, position_idx)
        changes: dict[str, Any] = {}
        if size is not None and to_decimal(size, "size") == 0:
            return self.close(category, symbol, position_idx)
        if side is not None and side != pos.side:
            if side not in SIDES or position_idx != 0:
                raise ValueError(f"side {side!r}: only a one-way (idx 0) position can flip between Buy and Sell")
            changes.update(self._realise(pos, pos.size), side=side, cur_realised_pnl=_ZERO,
                           entry_price=self.mark(category, symbol))
            if pos.session_avg_price:
                changes["session_avg_price"] = changes["entry_price"]
        if size is not None:
            new_size = self._size(inst, size)
            if new_size < pos.size and "side" not in changes:
                changes.update(self._realise(pos, pos.size - new_size))
            changes["size"] = new_size
        if entry_price is not None:
            changes["entry_price"] = to_decimal(entry_price, "entry_price")
            if pos.session_avg_price and pos.session_avg_price == pos.entry_price:  # no settlement yet
                changes["session_avg_price"] = changes["entry_price"]
        for name, value in (("leverage", leverage), ("take_profit", take_profit), ("stop_loss", stop_loss)):
            if value is not None:
                changes[name] = to_decimal(value, name)
        return self._stamp(pos, **changes)

    def close(self, category: str, symbol: str, position_idx: int = 0) -> Position:
        _inst, pos = self._require_open(category, symbol, position_idx)
        return self._stamp(pos, side="", size=_ZERO, entry_price=_ZERO, session_avg_price=_ZERO,
                           **self._realise(pos, pos.size))

    def settle(self) -> list[Position]:
        """Bybit's 8-hourly settlement of USDC perpetuals and futures: the PnL since the last
        one is realised and ``sessionAvgPrice`` moves to the mark. The changed records."""
        settled = []
        for pos in self.all(open_only=True):
            if not pos.session_avg_price:
                continue
            mark = self.mark(pos.category, pos.symbol)
            pnl = pos.unrealised_pnl(mark)
            settled.append(self._stamp(pos, session_avg_price=mark, cur_realised_pnl=pos.cur_realised_pnl + pnl,
                                       cum_realised_pnl=pos.cum_realised_pnl + pnl))
        return settled
