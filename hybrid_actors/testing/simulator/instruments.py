"""The instruments the simulated exchange knows, per category.

Prices are integers in units of ``10**-price_decimals`` and move in steps of
``tick_units`` units, so a price is always a multiple of the tick size and renders
with a fixed number of decimals (``"66666.60"``), as Bybit does. Sizes are integers
in units of ``10**-qty_decimals``.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Final

import attrs

CATEGORIES: Final = ("linear", "inverse", "spot", "option")
POSITION_CATEGORIES: Final = ("linear", "inverse", "option")


@attrs.frozen
class Instrument:
    category: str
    symbol: str
    base_coin: str
    settle_coin: str
    price_decimals: int
    tick_units: int
    qty_decimals: int
    #: starting price, in price units
    start_units: int

    @property
    def tick_size(self) -> Decimal:
        return Decimal(self.tick_units).scaleb(-self.price_decimals)

    @property
    def qty_step(self) -> Decimal:
        return Decimal(1).scaleb(-self.qty_decimals)

    def units_of(self, price: Decimal) -> int:
        """Price units of ``price``; :class:`ValueError` unless it is a positive multiple of the tick."""
        scaled = Decimal(price).scaleb(self.price_decimals)
        if scaled != scaled.to_integral_value() or scaled <= 0 or int(scaled) % self.tick_units:
            raise ValueError(f"{price} is not a positive multiple of {self.symbol}'s tick size {self.tick_size}")
        return int(scaled)

    def price_of(self, units: int) -> Decimal:
        return Decimal(units).scaleb(-self.price_decimals)

    def round_units(self, price: Decimal) -> int:
        """The tick-multiple nearest to ``price`` (at least one tick)."""
        ticks = (Decimal(price).scaleb(self.price_decimals) / self.tick_units).to_integral_value()
        return max(1, int(ticks)) * self.tick_units


@attrs.frozen
class _Coin:
    name: str
    price: Decimal
    price_decimals: int
    tick_units: int
    qty_decimals: int


#: major coins first (real-looking symbols), then synthetic SYM001.. instruments
_MAJORS: Final = (
    _Coin("BTC", Decimal("100000.00"), 2, 10, 3),
    _Coin("ETH", Decimal("3500.00"), 2, 1, 2),
    _Coin("SOL", Decimal("150.000"), 3, 10, 1),
    _Coin("XRP", Decimal("0.6000"), 4, 1, 0),
    _Coin("DOGE", Decimal("0.15000"), 5, 1, 0),
)
_OPTION_EXPIRIES: Final = ("26DEC25", "27MAR26", "26JUN26")


def _synthetic_coin(index: int, rng: random.Random) -> _Coin:
    exponent = rng.randint(-2, 4)
    mantissa = Decimal(rng.randint(100, 999)) / 100
    decimals = max(0, 4 - exponent)
    price = (mantissa * Decimal(10) ** exponent).quantize(Decimal(1).scaleb(-decimals))
    return _Coin(f"SYM{index:03d}", price, decimals, 1, max(0, exponent - 1))


def _coins(count: int, rng: random.Random) -> list[_Coin]:
    coins = list(_MAJORS[:count])
    coins += [_synthetic_coin(i, rng) for i in range(1, count - len(coins) + 1)]
    return coins


def _units(coin: _Coin, price: Decimal | None = None) -> int:
    return int((coin.price if price is None else price).scaleb(coin.price_decimals))


def _linear(coins: list[_Coin], count: int) -> list[Instrument]:
    out: list[Instrument] = []
    majors = iter(coins[:2])  # BTCPERP, ETHPERP: USDC-settled linear perpetuals
    for coin in coins:
        if len(out) >= count:
            break
        out.append(Instrument("linear", f"{coin.name}USDT", coin.name, "USDT", coin.price_decimals,
                              coin.tick_units, coin.qty_decimals, _units(coin)))
        if len(out) in (3, 6) and len(out) < count:
            usdc = next(majors, None)
            if usdc is not None:
                out.append(Instrument("linear", f"{usdc.name}PERP", usdc.name, "USDC", usdc.price_decimals,
                                      usdc.tick_units, usdc.qty_decimals, _units(usdc)))
    return out[:count]


def _inverse(coins: list[_Coin], count: int) -> list[Instrument]:
    # inverse contracts are sized in whole USD
    return [Instrument("inverse", f"{c.name}USD", c.name, c.name, c.price_decimals, c.tick_units, 0, _units(c))
            for c in coins[:count]]


def _spot(coins: list[_Coin], count: int) -> list[Instrument]:
    return [Instrument("spot", f"{c.name}USDT", c.name, "USDT", c.price_decimals, c.tick_units,
                       c.qty_decimals, _units(c)) for c in coins[:count]]


def _option(count: int) -> list[Instrument]:
    out: list[Instrument] = []
    underlyings = _MAJORS[:3]
    step = 0
    while len(out) < count:
        for coin in underlyings:
            strike_step = coin.price / 20
            for offset in (step, -step) if step else (0,):
                strike = (coin.price + strike_step * offset).quantize(Decimal(1))
                if strike <= 0:
                    continue
                for expiry in _OPTION_EXPIRIES:
                    for kind in ("C", "P"):
                        intrinsic = max(Decimal(0), coin.price - strike if kind == "C" else strike - coin.price)
                        premium = (intrinsic + coin.price * Decimal("0.02")).quantize(Decimal("0.1"))
                        out.append(Instrument("option", f"{coin.name}-{expiry}-{strike}-{kind}", coin.name, "USDT",
                                              1, 1, 2, int(premium.scaleb(1))))
        step += 1
    return out[:count]


def generate_instruments(count: int, seed: int) -> dict[str, dict[str, Instrument]]:
    """``count`` instruments per category, deterministic for a seed.

    linear: BTCUSDT, ETHUSDT, SOLUSDT, BTCPERP (USDC), XRPUSDT, DOGEUSDT, ETHPERP (USDC), SYM001USDT, ...;
    inverse: BTCUSD, ETHUSD, ...; spot: BTCUSDT, ...; option: BTC-26DEC25-100000-C, ...
    """
    coins = _coins(count, random.Random(seed))
    lists = {"linear": _linear(coins, count), "inverse": _inverse(coins, count),
             "spot": _spot(coins, count), "option": _option(count)}
    return {category: {i.symbol: i for i in items} for category, items in lists.items()}
