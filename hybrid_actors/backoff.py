"""The one backoff policy every retry loop uses. Pure: no trio, no clock; randomness is an argument.

Who uses it: the supervisor (an actor's restarts after an outage or a crash), the private
actor's REST snapshot retry, the subscription manager's per-symbol retry and the REST
client's retries within one call. Each holds a small attempt counter and asks
:meth:`Backoff.delay` how long to wait before the next try.

The delay for attempt ``n`` (0 = the first retry) is the *nominal* delay
``min(maximum, initial * multiplier ** n)`` scaled by a random factor in ``[1 - jitter, 1]``:

- capped: never more than ``maximum`` (unless the exchange asked for longer, see below);
- jittered: sockets that failed together do not come back in lock-step;
- overflow-free for any attempt count: past :attr:`Backoff.saturation` the nominal delay is
  ``maximum`` without computing a power, and :meth:`Backoff.next_attempt` stops counting
  there, so a counter kept for days stays a small integer;
- ``retry_after`` (an exchange's cool-down: HTTP 403 ban, 429 / 10006 rate limit, 10009 IP
  ban) is a floor: the delay is at least that long, up to ``retry_after_max``.
"""

from __future__ import annotations

import math
import random
from typing import Final

import attrs

from .errors import ConfigError

__all__ = ["Backoff", "RETRY_AFTER_MAX"]

#: the longest cool-down an exchange answer can impose on us (Bybit's IP ban is 10 minutes)
RETRY_AFTER_MAX: Final = 1800.0


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (_finite_number(value) and value > 0):
        raise ConfigError(f"backoff {attribute.name} must be a positive number of seconds, got {value!r}")


@attrs.frozen
class Backoff:
    """Capped exponential backoff with bounded jitter; see the module docstring."""

    initial: float = attrs.field(default=0.25, validator=_positive)
    maximum: float = attrs.field(default=4.0, validator=_positive)
    multiplier: float = attrs.field(default=2.0)
    #: the random share of each delay: it falls in ``[nominal * (1 - jitter), nominal]``
    jitter: float = attrs.field(default=0.5)
    retry_after_max: float = attrs.field(default=RETRY_AFTER_MAX, validator=_positive)
    #: the first attempt whose nominal delay is ``maximum`` (derived)
    saturation: int = attrs.field(init=False, default=0)

    @maximum.validator
    def _check_maximum(self, attribute: attrs.Attribute[float], value: float) -> None:
        _positive(self, attribute, value)
        if _finite_number(self.initial) and value < self.initial:
            raise ConfigError(f"backoff maximum ({value!r}s) must be >= initial ({self.initial!r}s)")

    @multiplier.validator
    def _check_multiplier(self, _attribute: attrs.Attribute[float], value: float) -> None:
        if not (_finite_number(value) and value >= 1):
            raise ConfigError(f"backoff multiplier must be a number >= 1, got {value!r}")

    @jitter.validator
    def _check_jitter(self, _attribute: attrs.Attribute[float], value: float) -> None:
        if not (_finite_number(value) and 0 <= value <= 1):
            raise ConfigError(f"backoff jitter must be within 0..1, got {value!r}")

    def __attrs_post_init__(self) -> None:  # after the validators: the inputs are sane here
        if self.initial >= self.maximum or self.multiplier == 1:
            saturation = 0  # a constant delay (see nominal)
        else:
            # the smallest n with initial * multiplier ** n >= maximum, computed with logarithms
            saturation = max(0, math.ceil(math.log(self.maximum / self.initial) / math.log(self.multiplier)))
        object.__setattr__(self, "saturation", saturation)

    def nominal(self, attempt: int) -> float:
        """The delay before jitter for attempt ``attempt`` (0-based); any int >= 0."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt!r}")
        if self.multiplier == 1:
            return self.initial
        if attempt >= self.saturation:
            return self.maximum
        # attempt < saturation: the power stays below maximum / initial * multiplier, never an overflow
        return min(self.maximum, self.initial * self.multiplier ** attempt)

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based), at least ``retry_after``."""
        nominal = self.nominal(attempt)
        delay = nominal * (1 - self.jitter * rng.random())
        if retry_after is not None and _finite_number(retry_after) and retry_after > 0:
            delay = max(delay, min(retry_after, self.retry_after_max))
        return delay

    def next_attempt(self, attempt: int) -> int:
        """The counter after one more failure; it stops growing at :attr:`saturation`."""
        return min(attempt + 1, self.saturation)

    @property
    def longest(self) -> float:
        """The longest delay without a cool-down: the worst wait after the exchange is back."""
        return self.maximum

    @property
    def shortest_saturated(self) -> float:
        """The shortest delay once saturated: bounds the retry rate of a long outage."""
        return self.maximum * (1 - self.jitter)
