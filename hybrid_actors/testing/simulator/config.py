"""What a simulator run looks like: frozen attrs values, validated on construction."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Callable, Final, TypeVar

import attrs

from ...errors import ConfigError

#: the worked example of BYBIT_V5.md §2 and §8; a local test exchange prints them on purpose
DEFAULT_API_KEY: Final = "test_key"
DEFAULT_API_SECRET: Final = "test_secret"

#: the field type of a numeric validator shared by int and float fields
_Number = TypeVar("_Number", bound=float)


def _non_negative(_inst: object, attribute: attrs.Attribute[_Number], value: _Number) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _positive(_inst: object, attribute: attrs.Attribute[_Number], value: _Number) -> None:
    _non_negative(_inst, attribute, value)
    if value == 0:
        raise ConfigError(f"{attribute.name} must be > 0, got {value!r}")


def _count(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{attribute.name} must be an integer >= 0, got {value!r}")


def _probability(_inst: object, attribute: attrs.Attribute[_Number], value: _Number) -> None:
    _non_negative(_inst, attribute, value)
    if value > 1:
        raise ConfigError(f"{attribute.name} must be within [0, 1], got {value!r}")


def _port(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{attribute.name} must be a TCP port (0 = any free port), got {value!r}")


def _categories(value: Iterable[str]) -> tuple[str, ...]:
    """``tuple``, typed: with ``converter=tuple`` mypy's attrs plugin leaves the parameter
    ``Iterable[_T_co]``, which no typed argument (``categories=("linear",)``) satisfies."""
    return tuple(value)


@attrs.frozen
class ScenarioConfig:
    """A seeded random life of positions: opens, resizes and closes at random intervals."""

    #: None: derived from the simulator's seed
    seed: int | None = None
    #: virtual seconds between two actions, drawn uniformly from [min_interval, max_interval]
    min_interval: float = attrs.field(default=0.5, validator=_positive)
    max_interval: float = attrs.field(default=2.0, validator=_positive)
    #: never more open positions than this
    max_open: int = attrs.field(default=8, validator=_count)
    categories: tuple[str, ...] = attrs.field(default=("linear",), converter=_categories)
    #: only the first N known symbols of each category take part (None: all)
    symbols: int | None = None

    @max_interval.validator
    def _check_interval(self, _attribute: attrs.Attribute[float], value: float) -> None:
        if value < self.min_interval:
            raise ConfigError(f"max_interval {value!r} is below min_interval {self.min_interval!r}")

    @categories.validator
    def _check_categories(self, _attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
        _check_position_categories("scenario categories", value)


def _check_position_categories(what: str, value: tuple[str, ...]) -> None:
    bad = [c for c in value if c not in ("linear", "inverse", "option")]
    if not value or bad:
        raise ConfigError(f"{what} must be among linear/inverse/option, got {value!r}")


@attrs.frozen
class SimulatorConfig:
    """Everything :func:`open_simulator` needs.

    ``rate`` is ticker pushes per second per subscribed symbol; ``0`` means prices move
    only when the control API says so (each change is pushed at once). Under
    ``trio.testing.MockClock(autojump_threshold=0.1)`` every periodic tick costs 0.1 s
    of real time, so actor tests that do not need a live stream are faster with ``rate=0``.
    """

    #: known instruments per category (linear, inverse, spot, option)
    symbols: int = attrs.field(default=50, validator=_count)
    #: random open positions at start (seeded), in ``position_categories``
    positions: int = attrs.field(default=5, validator=_count)
    #: where the positions open at start go (the ``demo`` command passes the ones it follows)
    position_categories: tuple[str, ...] = attrs.field(default=("linear", "inverse"), converter=_categories)
    rate: float = attrs.field(default=10.0, validator=_non_negative)
    #: None: a random seed (visible as ``Simulator.seed``)
    seed: int | None = None
    #: epoch seconds; auth expiry, REST timestamps, ``ts``/``creationTime``/``updatedTime``
    wall_clock: Callable[[], float] = attrs.field(default=time.time, repr=False)
    host: str = "127.0.0.1"
    ws_port: int = attrs.field(default=0, validator=_port)
    rest_port: int = attrs.field(default=0, validator=_port)
    api_key: str = attrs.field(default=DEFAULT_API_KEY)
    api_secret: str = attrs.field(default=DEFAULT_API_SECRET, repr=False)
    #: handshake refusal past this many new connections per window per IP (Bybit: 500 / 5 min)
    max_connections_per_window: int = attrs.field(default=500, validator=_count)
    connection_window: float = attrs.field(default=300.0, validator=_positive)
    #: HTTP status of a refused handshake (429 or 403)
    connection_limit_status: int = attrs.field(default=429)
    #: idle cut of a private socket without ``max_active_time`` (Bybit: ~10 min)
    default_max_active_time: float = attrs.field(default=600.0, validator=_positive)
    #: 0: cut exactly at the deadline; > 0: check on a sweep of this period (Bybit: ~30 s)
    idle_sweep_interval: float = attrs.field(default=0.0, validator=_non_negative)
    #: a half-open socket is reset after this many seconds unless dropped earlier
    half_open_timeout: float = attrs.field(default=300.0, validator=_positive)
    #: frames queued for one connection; a consumer this far behind is cut (TCP reset)
    outbox_limit: int = attrs.field(default=20_000, validator=_positive)
    #: records kept per observation log (pings, auth attempts, REST calls, connections)
    history_limit: int = attrs.field(default=10_000, validator=_positive)
    #: sent-frame log size for latency measurement; 0 = off
    record_frames: int = attrs.field(default=0, validator=_count)
    #: largest frame a client may send us
    max_message_size: int = attrs.field(default=1 << 20, validator=_positive)
    #: per tick and symbol: chance the mark price moves / a trade prints
    mark_move_probability: float = attrs.field(default=0.3, validator=_probability)
    trade_probability: float = attrs.field(default=0.3, validator=_probability)
    #: start :func:`run_scenario` with the simulator
    scenario: ScenarioConfig | None = None
    #: settle USDC contracts every 8 hours of the wall clock (00:00, 08:00, 16:00 UTC)
    usdc_settlement: bool = True

    @position_categories.validator
    def _check_position_categories(self, _attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
        _check_position_categories("position_categories", value)

    @connection_limit_status.validator
    def _check_status(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or not 400 <= value <= 599:
            raise ConfigError(f"connection_limit_status must be an HTTP error status, got {value!r}")

    @api_key.validator
    def _check_key(self, _attribute: attrs.Attribute[str], value: str) -> None:
        if not value or not isinstance(value, str):
            raise ConfigError("api_key must be a non-empty string")
