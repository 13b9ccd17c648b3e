"""Prices: one seeded random walk per symbol, one task ticking every active symbol.

A symbol is *active* while it has subscribers and its ticker is not stopped. Each tick
the market task advances every active symbol once, renders that symbol's frame once
(a partial delta on linear/inverse, a full snapshot on spot/option) and hands the same
``str`` to every subscribed connection: no task per symbol, no per-subscriber encoding.
The same model answers REST ``/v5/market/tickers`` and the ``markPrice`` of positions,
so the WebSocket stream and REST agree unless a divergence is configured.
"""

from __future__ import annotations

import abc
import random
from decimal import Decimal
from typing import Any, Callable, Final, Protocol

import attrs
import trio

from .instruments import Instrument
from .wire import dumps, fmt_units

_MOVES: Final = (-3, -2, -1, 1, 2, 3)
#: yield to the scheduler this often inside one tick so a big tick cannot starve pongs
_CHECKPOINT_EVERY: Final = 256
_EIGHT_HOURS_MS: Final = 8 * 3600 * 1000


class Subscriber(Protocol):
    def push(self, frame: str) -> None: ...


def _rescale(value: int, from_decimals: int, to_decimals: int) -> int:
    # annotated: typeshed types int ** int as Any (a negative exponent makes a float); here it is >= 0
    scale: int = 10 ** abs(from_decimals - to_decimals)
    return value // scale if from_decimals >= to_decimals else value * scale


def _pcnt(now: int, before: int) -> str:
    """(now - before) / before to 6 decimals, truncated toward zero."""
    change = abs(now - before) * 10**6 // before
    if change == 0:
        return "0"
    return fmt_units(-change if now < before else change, 6)


@attrs.define(eq=False)
class TickerModel(abc.ABC):
    """One symbol's state; ``fields`` holds the current WebSocket field strings."""

    instrument: Instrument
    topic: str
    mark: int
    index: int
    last: int
    bid: int
    ask: int
    bid_size: int
    ask_size: int
    high: int
    low: int
    prev24h: int
    prev1h: int
    open_interest: int
    volume: int
    turnover: int
    cs: int
    ts: int
    next_funding_ms: int
    fields: dict[str, str] = attrs.Factory(dict)
    subscribers: dict[Any, None] = attrs.Factory(dict)
    #: subscribed while the ticker was stopped: their snapshot is still owed
    owed: dict[Any, None] = attrs.Factory(dict)
    #: field changes made while stopped, pushed as one delta on restart
    stale: dict[str, str] = attrs.Factory(dict)
    stopped: bool = False

    # --- rendering helpers -------------------------------------------------------------
    def p(self, units: int) -> str:
        return fmt_units(units, self.instrument.price_decimals)

    def q(self, units: int) -> str:
        return fmt_units(units, self.instrument.qty_decimals)

    def _set(self, changes: dict[str, str], key: str, value: str) -> None:
        if self.fields.get(key) != value:
            self.fields[key] = value
            changes[key] = value

    @property
    def mark_price(self) -> Decimal:
        return self.instrument.price_of(self.mark)

    # --- the random walk ----------------------------------------------------------------
    def _move_mark(self, rng: random.Random, changes: dict[str, str]) -> None:
        tick = self.instrument.tick_units
        self.mark = max(tick, self.mark + tick * rng.choice(_MOVES))
        self.index = max(tick, self.mark + tick * rng.randint(-3, 3))
        self._mark_changed(changes)

    def _mark_changed(self, changes: dict[str, str]) -> None:
        self._set(changes, "markPrice", self.p(self.mark))
        self._set(changes, "indexPrice", self.p(self.index))

    def _trade(self, rng: random.Random, changes: dict[str, str]) -> None:
        tick = self.instrument.tick_units
        price = max(tick, self.mark + tick * rng.randint(-2, 2))
        qty = rng.randint(1, 50)
        direction = "PlusTick" if price > self.last else "MinusTick" if price < self.last else (
            "ZeroPlusTick" if self.fields.get("tickDirection", "").endswith("PlusTick") else "ZeroMinusTick")
        self.last = price
        self.volume += qty
        self.turnover += qty * price
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self._trade_fields(direction, changes)

    def _trade_fields(self, direction: str, changes: dict[str, str]) -> None:
        self._set(changes, "lastPrice", self.p(self.last))
        self._set(changes, "tickDirection", direction)
        self._set(changes, "price24hPcnt", _pcnt(self.last, self.prev24h))
        self._set(changes, "highPrice24h", self.p(self.high))
        self._set(changes, "lowPrice24h", self.p(self.low))
        self._set(changes, "volume24h", self.q(self.volume))
        self._set(changes, "turnover24h", self._turnover_text())

    def _turnover_text(self) -> str:
        inst = self.instrument
        return fmt_units(_rescale(self.turnover, inst.qty_decimals + inst.price_decimals, 4), 4)

    def _quote(self, rng: random.Random) -> None:
        tick = self.instrument.tick_units
        side = rng.random()
        if side < 0.5:
            self.bid = max(tick, self.last - tick * rng.randint(0, 1))
            self.ask = self.bid + tick * rng.randint(1, 2)
            self.bid_size = rng.randint(1, 5000)
            self.ask_size = rng.randint(1, 5000)
        elif side < 0.75:
            self.bid = max(tick, self.last - tick * rng.randint(0, 2))
            self.bid_size = rng.randint(1, 5000)
            if self.ask <= self.bid:
                self.ask = self.bid + tick
        else:
            self.ask = max(2 * tick, self.last + tick * rng.randint(0, 2))
            self.ask_size = rng.randint(1, 5000)
            if self.bid >= self.ask:
                self.bid = self.ask - tick

    # --- per-category behaviour -------------------------------------------------------------
    @abc.abstractmethod
    def render_all(self) -> None:
        """Fill ``fields`` from the numeric state."""

    @abc.abstractmethod
    def snapshot_frame(self, ts: int) -> str:
        """The full snapshot frame a new subscriber gets."""

    @abc.abstractmethod
    def tick_frame(self, rng: random.Random, ts: int, p_mark: float, p_trade: float) -> str:
        """Advance one step; the frame every subscriber gets."""

    @abc.abstractmethod
    def set_mark(self, units: int, ts: int) -> str | None:
        """Move the mark to ``units``; the frame to broadcast (None while stopped)."""

    @abc.abstractmethod
    def restart_frame(self, ts: int) -> str | None:
        """After a stop: what to tell subscribers that already had a snapshot (None: nothing)."""

    @abc.abstractmethod
    def rest_item(self, mark_units: int) -> dict[str, str]:
        """The ``/v5/market/tickers`` list item, with ``markPrice`` at ``mark_units``."""


@attrs.define(eq=False)
class DerivativeModel(TickerModel):
    """linear / inverse: snapshot on subscribe, then partial deltas."""

    def _oi_value(self) -> str:
        inst = self.instrument
        if inst.category == "inverse":  # contracts are USD: value in coin
            return fmt_units(self.open_interest * 10 ** (inst.price_decimals + 2) // self.mark, 2)
        return fmt_units(_rescale(self.open_interest * self.mark, inst.qty_decimals + inst.price_decimals, 2), 2)

    def render_all(self) -> None:
        self.fields = {
            "symbol": self.instrument.symbol, "tickDirection": "ZeroPlusTick",
            "price24hPcnt": _pcnt(self.last, self.prev24h), "lastPrice": self.p(self.last),
            "prevPrice24h": self.p(self.prev24h), "highPrice24h": self.p(self.high),
            "lowPrice24h": self.p(self.low), "prevPrice1h": self.p(self.prev1h),
            "markPrice": self.p(self.mark), "indexPrice": self.p(self.index),
            "openInterest": self.q(self.open_interest), "openInterestValue": self._oi_value(),
            "turnover24h": self._turnover_text(), "volume24h": self.q(self.volume),
            "fundingIntervalHour": "8", "fundingCap": "0.005", "nextFundingTime": str(self.next_funding_ms),
            "fundingRate": "0.0001", "bid1Price": self.p(self.bid), "bid1Size": self.q(self.bid_size),
            "ask1Price": self.p(self.ask), "ask1Size": self.q(self.ask_size),
            "preOpenPrice": "", "preQty": "", "curPreListingPhase": "",
        }

    def snapshot_frame(self, ts: int) -> str:
        return dumps({"topic": self.topic, "type": "snapshot", "data": self.fields, "cs": self.cs, "ts": ts})

    def _delta(self, changes: dict[str, str], ts: int) -> str:
        self.cs += 1
        self.ts = ts
        return dumps({"topic": self.topic, "type": "delta", "data": changes, "cs": self.cs, "ts": ts})

    def _quote_fields(self, changes: dict[str, str]) -> None:
        self._set(changes, "bid1Price", self.p(self.bid))
        self._set(changes, "bid1Size", self.q(self.bid_size))
        self._set(changes, "ask1Price", self.p(self.ask))
        self._set(changes, "ask1Size", self.q(self.ask_size))

    def tick_frame(self, rng: random.Random, ts: int, p_mark: float, p_trade: float) -> str:
        changes = {"symbol": self.instrument.symbol}
        if rng.random() < p_mark:
            self._move_mark(rng, changes)
            self._set(changes, "openInterestValue", self._oi_value())
        if rng.random() < p_trade:
            self._trade(rng, changes)
        self._quote(rng)
        self._quote_fields(changes)
        return self._delta(changes, ts)

    def set_mark(self, units: int, ts: int) -> str | None:
        self.mark = units
        self.index = units
        changes = {"symbol": self.instrument.symbol}
        self._mark_changed(changes)
        self._set(changes, "openInterestValue", self._oi_value())
        if self.stopped:
            self.stale.update(changes)
            return None
        return self._delta(changes, ts)

    def restart_frame(self, ts: int) -> str | None:
        """After a stop: one delta carrying what changed meanwhile (None if nothing did)."""
        if not self.stale:
            return None
        changes, self.stale = self.stale, {}
        return self._delta(changes, ts)

    def rest_item(self, mark_units: int) -> dict[str, str]:
        f = self.fields
        return {
            "symbol": f["symbol"], "lastPrice": f["lastPrice"], "indexPrice": f["indexPrice"],
            "markPrice": self.p(mark_units), "prevPrice24h": f["prevPrice24h"], "price24hPcnt": f["price24hPcnt"],
            "highPrice24h": f["highPrice24h"], "lowPrice24h": f["lowPrice24h"], "prevPrice1h": f["prevPrice1h"],
            "openInterest": f["openInterest"], "openInterestValue": f["openInterestValue"],
            "turnover24h": f["turnover24h"], "volume24h": f["volume24h"], "fundingRate": f["fundingRate"],
            "nextFundingTime": f["nextFundingTime"], "predictedDeliveryPrice": "", "basisRate": "",
            "deliveryFeeRate": "", "deliveryTime": "0", "ask1Size": f["ask1Size"], "bid1Price": f["bid1Price"],
            "ask1Price": f["ask1Price"], "bid1Size": f["bid1Size"], "basis": "", "preOpenPrice": "",
            "preQty": "", "curPreListingPhase": "", "fundingIntervalHour": f["fundingIntervalHour"],
            "basisRateYear": "", "fundingCap": f["fundingCap"],
        }


@attrs.define(eq=False)
class SnapshotOnlyModel(TickerModel):
    """spot / option: every push is a full snapshot of the current fields."""

    def _quote_fields(self) -> None:
        """Copy the book into ``fields`` (only where the WebSocket ticker carries it)."""

    def tick_frame(self, rng: random.Random, ts: int, p_mark: float, p_trade: float) -> str:
        changes: dict[str, str] = {}
        if rng.random() < p_mark:
            self._move_mark(rng, changes)
        if rng.random() < p_trade:
            self._trade(rng, changes)
        self._quote(rng)
        self._quote_fields()
        self.cs += 1
        self.ts = ts
        return self.snapshot_frame(ts)

    def restart_frame(self, ts: int) -> str | None:
        return self.snapshot_frame(ts)

    def _changed_snapshot(self, ts: int) -> str | None:
        """The full snapshot that carries a commanded change; None while the topic is stopped
        (its restart snapshot carries the change then)."""
        if self.stopped:
            return None
        self.cs += 1
        return self.snapshot_frame(ts)


@attrs.define(eq=False)
class SpotModel(SnapshotOnlyModel):
    """spot: no markPrice and no book on the WebSocket (REST has the book)."""

    def render_all(self) -> None:
        self.fields = {
            "symbol": self.instrument.symbol, "lastPrice": self.p(self.last), "highPrice24h": self.p(self.high),
            "lowPrice24h": self.p(self.low), "prevPrice24h": self.p(self.prev24h), "volume24h": self.q(self.volume),
            "turnover24h": self._turnover_text(), "price24hPcnt": _pcnt(self.last, self.prev24h),
            "usdIndexPrice": self.p(self.mark),
        }

    def _trade_fields(self, direction: str, changes: dict[str, str]) -> None:
        self._set(changes, "lastPrice", self.p(self.last))
        self._set(changes, "price24hPcnt", _pcnt(self.last, self.prev24h))
        self._set(changes, "highPrice24h", self.p(self.high))
        self._set(changes, "lowPrice24h", self.p(self.low))
        self._set(changes, "volume24h", self.q(self.volume))
        self._set(changes, "turnover24h", self._turnover_text())

    def _mark_changed(self, changes: dict[str, str]) -> None:
        self._set(changes, "usdIndexPrice", self.p(self.mark))

    def snapshot_frame(self, ts: int) -> str:
        return dumps({"topic": self.topic, "ts": ts, "type": "snapshot", "cs": self.cs, "data": self.fields})

    def set_mark(self, units: int, ts: int) -> str | None:
        self.mark = self.index = self.last = units
        self.high = max(self.high, units)
        self.low = min(self.low, units)
        changes: dict[str, str] = {}
        self._mark_changed(changes)
        self._trade_fields("ZeroPlusTick", changes)
        return self._changed_snapshot(ts)

    def rest_item(self, mark_units: int) -> dict[str, str]:
        f = self.fields
        return {
            "symbol": f["symbol"], "bid1Price": self.p(self.bid), "bid1Size": self.q(self.bid_size),
            "ask1Price": self.p(self.ask), "ask1Size": self.q(self.ask_size), "lastPrice": f["lastPrice"],
            "prevPrice24h": f["prevPrice24h"], "price24hPcnt": f["price24hPcnt"], "highPrice24h": f["highPrice24h"],
            "lowPrice24h": f["lowPrice24h"], "turnover24h": f["turnover24h"], "volume24h": f["volume24h"],
            "usdIndexPrice": f["usdIndexPrice"],
        }


@attrs.define(eq=False)
class OptionModel(SnapshotOnlyModel):
    """option: envelope with ``id`` and without ``cs``; WS field names differ from REST."""

    greeks: dict[str, str] = attrs.Factory(dict)

    def render_all(self) -> None:
        g = self.greeks
        self.fields = {
            "symbol": self.instrument.symbol, "bidPrice": self.p(self.bid), "bidSize": self.q(self.bid_size),
            "bidIv": g["bidIv"], "askPrice": self.p(self.ask), "askSize": self.q(self.ask_size),
            "askIv": g["askIv"], "lastPrice": self.p(self.last), "highPrice24h": self.p(self.high),
            "lowPrice24h": self.p(self.low), "markPrice": self.p(self.mark), "indexPrice": g["indexPrice"],
            "markPriceIv": g["markPriceIv"], "underlyingPrice": g["underlyingPrice"],
            "openInterest": self.q(self.open_interest), "turnover24h": self._turnover_text(),
            "volume24h": self.q(self.volume), "totalVolume": str(self.volume // 10**self.instrument.qty_decimals),
            "totalTurnover": fmt_units(self.turnover // 10 ** (self.instrument.qty_decimals + 1), 0),
            "delta": g["delta"], "gamma": g["gamma"], "vega": g["vega"], "theta": g["theta"],
            "predictedDeliveryPrice": "0", "change24h": _pcnt(self.last, self.prev24h),
        }

    def _mark_changed(self, changes: dict[str, str]) -> None:
        self._set(changes, "markPrice", self.p(self.mark))

    def _trade_fields(self, direction: str, changes: dict[str, str]) -> None:
        self._set(changes, "lastPrice", self.p(self.last))
        self._set(changes, "highPrice24h", self.p(self.high))
        self._set(changes, "lowPrice24h", self.p(self.low))
        self._set(changes, "volume24h", self.q(self.volume))
        self._set(changes, "turnover24h", self._turnover_text())
        self._set(changes, "change24h", _pcnt(self.last, self.prev24h))

    def _quote_fields(self) -> None:
        self.fields["bidPrice"] = self.p(self.bid)
        self.fields["bidSize"] = self.q(self.bid_size)
        self.fields["askPrice"] = self.p(self.ask)
        self.fields["askSize"] = self.q(self.ask_size)

    def snapshot_frame(self, ts: int) -> str:
        return dumps({"id": f"{self.topic}-{self.cs}-{ts}", "topic": self.topic, "ts": ts,
                      "data": self.fields, "type": "snapshot"})

    def set_mark(self, units: int, ts: int) -> str | None:
        self.mark = units
        self._mark_changed({})
        return self._changed_snapshot(ts)

    def rest_item(self, mark_units: int) -> dict[str, str]:
        f = self.fields
        return {
            "symbol": f["symbol"], "bid1Price": f["bidPrice"], "bid1Size": f["bidSize"], "bid1Iv": f["bidIv"],
            "ask1Price": f["askPrice"], "ask1Size": f["askSize"], "ask1Iv": f["askIv"],
            "lastPrice": f["lastPrice"], "highPrice24h": f["highPrice24h"], "lowPrice24h": f["lowPrice24h"],
            "markPrice": self.p(mark_units), "indexPrice": f["indexPrice"], "markIv": f["markPriceIv"],
            "underlyingPrice": f["underlyingPrice"], "openInterest": f["openInterest"],
            "turnover24h": f["turnover24h"], "volume24h": f["volume24h"], "totalVolume": f["totalVolume"],
            "totalTurnover": f["totalTurnover"], "delta": f["delta"], "gamma": f["gamma"], "vega": f["vega"],
            "theta": f["theta"], "predictedDeliveryPrice": f["predictedDeliveryPrice"], "change24h": f["change24h"],
        }


_MODEL_TYPES: Final[dict[str, type[TickerModel]]] = {
    "linear": DerivativeModel, "inverse": DerivativeModel, "spot": SpotModel, "option": OptionModel}


def _new_model(inst: Instrument, rng: random.Random, now_ms: int) -> TickerModel:
    tick = inst.tick_units
    start = inst.start_units
    drift = max(tick, start // 50 // tick * tick)
    prev24h = max(tick, start + rng.randint(-1, 1) * drift)
    kwargs: dict[str, Any] = dict(
        instrument=inst, topic=f"tickers.{inst.symbol}", mark=start, index=start, last=start,
        bid=max(tick, start - tick), ask=start + tick, bid_size=rng.randint(1, 5000), ask_size=rng.randint(1, 5000),
        high=max(start, prev24h) + drift, low=max(tick, min(start, prev24h) - drift), prev24h=prev24h,
        prev1h=start, open_interest=rng.randint(10**3, 10**7), volume=rng.randint(10**3, 10**7), turnover=0,
        cs=rng.randint(10**9, 10**11), ts=now_ms, next_funding_ms=(now_ms // _EIGHT_HOURS_MS + 1) * _EIGHT_HOURS_MS,
    )
    kwargs["turnover"] = kwargs["volume"] * start
    if inst.category == "option":
        underlying = {"BTC": "100000.00", "ETH": "3500.00", "SOL": "150.000"}.get(inst.base_coin, "100.00")
        kwargs["greeks"] = {
            "bidIv": "0", "askIv": f"0.{rng.randint(300, 900)}", "markPriceIv": f"0.{rng.randint(300, 900)}",
            "indexPrice": underlying, "underlyingPrice": underlying,
            "delta": f"{'-' if inst.symbol.endswith('-P') else ''}0.{rng.randint(100000, 999999)}",
            "gamma": f"0.0000{rng.randint(1000, 9999)}", "vega": f"{rng.randint(1, 300)}.{rng.randint(10, 99)}",
            "theta": f"-{rng.randint(1, 300)}.{rng.randint(10, 99)}",
        }
    model = _MODEL_TYPES[inst.category](**kwargs)
    model.render_all()
    return model


@attrs.define(eq=False)
class Market:
    """Every symbol's model plus the one task that ticks the active ones."""

    instruments: dict[str, dict[str, Instrument]]
    rng: random.Random
    wall_clock: Callable[[], float]
    rate: float
    p_mark: float
    p_trade: float
    on_change: Callable[[], None] = lambda: None
    models: dict[str, dict[str, TickerModel]] = attrs.field(init=False)
    _active: dict[TickerModel, None] = attrs.Factory(dict)
    _wake: trio.Event = attrs.Factory(trio.Event)
    _replan: trio.Event = attrs.Factory(trio.Event)
    _last_ms: int = 0
    #: REST markPrice = model mark * (1 + percent / 100), per (category, symbol) or for all (None)
    divergence: dict[tuple[str, str] | None, Decimal] = attrs.Factory(dict)
    ticks: int = 0

    def __attrs_post_init__(self) -> None:
        now = self.now_ms()
        self.models = {cat: {sym: _new_model(inst, self.rng, now) for sym, inst in insts.items()}
                       for cat, insts in self.instruments.items()}

    # --- queries ------------------------------------------------------------------------
    def now_ms(self) -> int:
        """Epoch milliseconds from the injected wall clock, never going backwards."""
        self._last_ms = max(self._last_ms, int(self.wall_clock() * 1000))
        return self._last_ms

    def model(self, category: str, symbol: str) -> TickerModel | None:
        return self.models.get(category, {}).get(symbol)

    def require(self, category: str, symbol: str) -> TickerModel:
        model = self.model(category, symbol)
        if model is None:
            known = ", ".join(list(self.models.get(category, {}))[:5])
            raise KeyError(f"{symbol!r} is not a known {category} instrument (known: {known}, ...)")
        return model

    def mark_price(self, category: str, symbol: str) -> Decimal:
        return self.require(category, symbol).mark_price

    def rest_mark_units(self, model: TickerModel) -> int:
        inst = model.instrument
        percent = self.divergence.get((inst.category, inst.symbol), self.divergence.get(None))
        if not percent:
            return model.mark
        return inst.round_units(model.mark_price * (1 + percent / 100))

    @property
    def active_symbols(self) -> int:
        return len(self._active)

    # --- subscriptions --------------------------------------------------------------------
    def subscribe(self, model: TickerModel, subscriber: Subscriber) -> str | None:
        """Add a subscriber; the snapshot it must get next (None while the ticker is stopped)."""
        model.subscribers[subscriber] = None
        self._refresh(model)
        if model.stopped:
            model.owed[subscriber] = None
            return None
        return model.snapshot_frame(self.now_ms())

    def unsubscribe(self, model: TickerModel, subscriber: Subscriber) -> None:
        model.subscribers.pop(subscriber, None)
        model.owed.pop(subscriber, None)
        self._refresh(model)

    def _refresh(self, model: TickerModel) -> None:
        if model.subscribers and not model.stopped:
            if model not in self._active:
                self._active[model] = None
                self._wake.set()
        else:
            self._active.pop(model, None)

    # --- control ------------------------------------------------------------------------------
    def set_rate(self, rate: float) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate!r}")
        self.rate = rate
        self._wake.set()
        self._replan.set()

    def set_mark(self, category: str, symbol: str, price: Decimal) -> None:
        """Move the mark price now and push the change at once to every subscriber."""
        model = self.require(category, symbol)
        frame = model.set_mark(model.instrument.units_of(price), self.now_ms())
        if frame is not None:
            for subscriber in model.subscribers:
                subscriber.push(frame)
        self.on_change()

    def stop(self, category: str, symbol: str) -> None:
        model = self.require(category, symbol)
        model.stopped = True
        self._refresh(model)
        self.on_change()

    def start(self, category: str, symbol: str) -> None:
        model = self.require(category, symbol)
        if not model.stopped:
            return
        model.stopped = False
        now = self.now_ms()
        owed, model.owed = model.owed, {}
        if owed:
            snapshot = model.snapshot_frame(now)
            for subscriber in owed:
                subscriber.push(snapshot)
        catch_up = model.restart_frame(now)
        if catch_up is not None:
            for subscriber in model.subscribers:
                if subscriber not in owed:
                    subscriber.push(catch_up)
        self._refresh(model)
        self.on_change()

    # --- the market task --------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        next_at = trio.current_time()
        while True:
            if not self._active or self.rate <= 0:
                # idle: no timer at all, so a MockClock can jump freely
                wake = self._wake = trio.Event()
                await wake.wait()
                next_at = trio.current_time()
                continue
            interval = 1 / self.rate
            next_at += interval
            now = trio.current_time()
            if next_at < now - interval:  # fell behind: skip ticks rather than burst
                next_at = now
            replan = self._replan = trio.Event()
            with trio.move_on_at(next_at):
                await replan.wait()  # only a rate change re-plans the next tick
            if replan.is_set():
                next_at = trio.current_time()
                continue
            await self.tick()

    async def tick(self) -> None:
        """Advance every active symbol once and broadcast its frame."""
        ts = self.now_ms()
        rng, p_mark, p_trade, active = self.rng, self.p_mark, self.p_trade, self._active
        for n, model in enumerate(list(active)):
            if n and n % _CHECKPOINT_EVERY == 0:
                await trio.lowlevel.checkpoint()
                if model not in active:
                    continue
            frame = model.tick_frame(rng, ts, p_mark, p_trade)
            for subscriber in model.subscribers:
                subscriber.push(frame)
        self.ticks += 1
