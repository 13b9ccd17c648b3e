"""Rollout decisions: modes, cutover hashing, the REST/WS comparator, stale marks, rollback
triggers and the auto-return gate. Pure: no trio, no I/O; every time is an argument.

The original plan rolls the hybrid stream out in steps, each reversible:

- ``rest``        a REST poller alone feeds the bot (position/list + tickers);
- ``canary``      the bot gets the REST stream; the hybrid stream runs beside it, monitor-only;
- ``parallel``    as canary, plus a comparator of REST and hybrid mark prices;
- ``production``  the bot gets the hybrid stream (a stable hash-chosen ``cutover_percent`` of
  positions, the rest through REST), with REST marks for any position whose live mark went
  stale, and automatic rollback to REST on the plan's triggers.

The actors (``actors/rollout.py``, ``actors/switch.py``) only gather inputs and apply the
answers given here, so each decision is tested with explicit times.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Final, Literal, TypeGuard, TypeVar, get_args

import attrs

from .backoff import Backoff
from .errors import ConfigError

__all__ = ["Mode", "MODES", "parse_mode", "RolloutPolicy", "routes_hybrid", "Comparator",
           "divergence_ratio", "stale_symbols", "TriggerInputs", "rollback_reason", "refused_share_beyond", "ReturnGate",
           "MODE_ENV", "MAX_AUTO_RETURN", "MIN_POLL_INTERVAL", "resolve_mode", "next_check", "quiet_since", "silent_for", "latest"]

Mode = Literal["rest", "canary", "parallel", "production"]
MODES: Final[tuple[str, ...]] = get_args(Mode)
#: the environment variable that picks the mode when no flag or argument does
MODE_ENV: Final = "HYBRID_MODE"
#: an auto-return waits at most this many times ``auto_return`` however many rollbacks came before
RETURN_WAIT_CAP: Final = 64
#: the longest ``auto_return`` (a day): its doubled waits stay within ``RETURN_WAIT_CAP`` days
MAX_AUTO_RETURN: Final = 86_400.0
#: the shortest REST poll intervals (``rest_interval``, ``ticker_interval``): faster polling
#: only runs into Bybit's rate limit (10006)
MIN_POLL_INTERVAL: Final = 1.0
Source = Literal["hybrid", "rest"]


def _is_mode(name: str) -> TypeGuard[Mode]:
    return name in MODES


def parse_mode(value: object, *, origin: str = "mode") -> Mode:
    """``value`` as a mode (case and surrounding blanks ignored); ConfigError names ``origin``."""
    if isinstance(value, str) and _is_mode(mode := value.strip().lower()):
        return mode
    raise ConfigError(f"{origin} {value!r} is not a mode; choose one of {', '.join(MODES)} "
                      "(rest: REST polling only; canary: REST feeds the bot, hybrid monitored; "
                      "parallel: canary plus REST/WS price comparison; production: the hybrid stream)")


def resolve_mode(mode: str | None, environ: Mapping[str, str]) -> Mode:
    """The mode in force: ``mode`` if given, else ``HYBRID_MODE`` from ``environ``, else production."""
    if mode is not None:
        return parse_mode(mode)
    raw = environ.get(MODE_ENV)
    if raw is None or not raw.strip():
        return "production"
    return parse_mode(raw, origin=MODE_ENV)


# --- policy -------------------------------------------------------------------------------

def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: a field's type, for validators that read only the attribute's name
_Field = TypeVar("_Field")


def _seconds(_inst: object, attribute: attrs.Attribute[_Field], value: float) -> None:
    if not (_number(value) and value > 0):
        raise ConfigError(f"{attribute.name} must be a positive number of seconds, got {value!r}")


def _poll_interval(_inst: object, attribute: attrs.Attribute[_Field], value: float) -> None:
    _seconds(_inst, attribute, value)
    if value < MIN_POLL_INTERVAL:
        raise ConfigError(f"{attribute.name} must be at least {MIN_POLL_INTERVAL:g} second (faster REST polling "
                          f"runs into Bybit's rate limit), got {value!r}")


def _optional_seconds(_inst: object, attribute: attrs.Attribute[_Field], value: float | None) -> None:
    if value is not None:
        _seconds(_inst, attribute, value)


def _auto_return(_inst: object, attribute: attrs.Attribute[_Field], value: float | None) -> None:
    if value is not None and not (_number(value) and 0 < value <= MAX_AUTO_RETURN):
        raise ConfigError(f"{attribute.name} must be a positive number of seconds up to {MAX_AUTO_RETURN:g} "
                          f"(a day), or None: off; got {value!r}")


def _percent(_inst: object, attribute: attrs.Attribute[_Field], value: float) -> None:
    if not (_number(value) and 0 <= value <= 100):
        raise ConfigError(f"{attribute.name} must be a percentage within 0..100, got {value!r}")


def _ratio(value: object) -> Decimal:
    """The divergence threshold as a ratio: ``0.01`` is 1 %. Strings and ints are exact."""
    if isinstance(value, bool):
        raise ConfigError(f"divergence_threshold must be a ratio such as 0.01 (1%), got {value!r}")
    try:
        ratio = value if isinstance(value, Decimal) else Decimal(str(value))
    except ArithmeticError:
        raise ConfigError(f"divergence_threshold must be a ratio such as 0.01 (1%), got {value!r}") from None
    if not ratio.is_finite() or not 0 < ratio < 1:
        raise ConfigError(f"divergence_threshold must be a ratio within (0, 1) such as 0.01 (1%), got {value!r}")
    return ratio


def _optional_count(_inst: object, attribute: attrs.Attribute[_Field], value: int | None) -> None:
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ConfigError(f"{attribute.name} must be a positive integer (or None: off), got {value!r}")


@attrs.frozen
class RolloutPolicy:
    """How the rollout behaves; every rollback trigger can be turned off with ``None``.

    Times are seconds. ``divergence_threshold`` is a ratio (``0.01`` = 1 %);
    ``cutover_percent`` a percentage of positions (by a stable hash of their key).
    """

    #: position/list every this many seconds while REST feeds the consumer
    rest_interval: float = attrs.field(default=5.0, validator=_poll_interval)
    #: /v5/market/tickers (one call per category) every this many seconds
    ticker_interval: float = attrs.field(default=1.0, validator=_poll_interval)
    divergence_threshold: Decimal = attrs.field(default=Decimal("0.01"), converter=_ratio)
    cutover_percent: float = attrs.field(default=100, validator=_percent)
    #: a live mark older than this is replaced by REST ticker marks (None: never)
    stale_after: float | None = attrs.field(default=3.0, validator=_optional_seconds)
    rollback_after_disconnect: float | None = attrs.field(default=300.0, validator=_optional_seconds)
    rollback_after_silence: float | None = attrs.field(default=300.0, validator=_optional_seconds)
    #: more subscription failures than this within an hour roll back
    rollback_sub_failures: int | None = attrs.field(default=10, validator=_optional_count)
    #: a crash loop of a hybrid actor rolls back (instead of ending the stream)
    rollback_on_crash_loop: bool = attrs.field(default=True)
    #: return to hybrid after this many seconds of healthy hybrid (None: stay on REST)
    auto_return: float | None = attrs.field(default=None, validator=_auto_return)
    #: each rollback within ``return_memory`` seconds of another doubles the healthy time
    #: the next return needs (at most ``RETURN_WAIT_CAP`` times ``auto_return``)
    return_memory: float = attrs.field(default=3600.0, validator=_seconds)

    @rollback_on_crash_loop.validator
    def _check_bool(self, attribute: attrs.Attribute[bool], value: object) -> None:
        if not isinstance(value, bool):
            raise ConfigError(f"{attribute.name} must be True or False, got {value!r}")


# --- cutover ----------------------------------------------------------------------------------

def routes_hybrid(key: tuple[str, str, int], percent: float) -> bool:
    """Whether the position ``key`` goes through the hybrid stream at ``percent`` cutover.

    A stable hash (SHA-256 of ``category:symbol:idx``, not Python's salted ``hash``): the same
    positions are chosen in every process and run, and raising the percentage only adds
    positions to the hybrid side (a position at 50 % stays hybrid at 60 %)."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"{key[0]}:{key[1]}:{key[2]}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10_000  # 0.01 % steps
    return bucket < percent * 100


# --- comparator ---------------------------------------------------------------------------------

def divergence_ratio(rest: Decimal, hybrid: Decimal) -> Decimal:
    """``|rest - hybrid| / |rest|`` (0 when both are 0)."""
    if rest == hybrid:
        return Decimal(0)
    base = abs(rest) if rest != 0 else abs(hybrid)
    return abs(rest - hybrid) / base


@attrs.define
class Comparator:
    """Parallel mode: REST ``markPrice`` against the hybrid mark of each open position."""

    threshold: Decimal
    comparisons: int = 0
    divergences: int = 0
    max_ratio: Decimal = Decimal(0)
    #: the last divergent comparison: (category, symbol, rest, hybrid, ratio)
    last_divergence: tuple[str, str, Decimal, Decimal, Decimal] | None = None

    def compare(self, category: str, symbol: str, rest: Decimal, hybrid: Decimal) -> bool:
        """Count one comparison; True if it diverged beyond the threshold."""
        ratio = divergence_ratio(rest, hybrid)
        self.comparisons += 1
        if ratio > self.max_ratio:
            self.max_ratio = ratio
        if ratio > self.threshold:
            self.divergences += 1
            self.last_divergence = (category, symbol, rest, hybrid, ratio)
            return True
        return False


# --- stale marks ----------------------------------------------------------------------------------

def stale_symbols(symbols: Iterable[str], last_tick: Mapping[str, float], tracked_since: Mapping[str, float],
                  now: float, stale_after: float) -> frozenset[str]:
    """The symbols whose live mark is older than ``stale_after``: no ticker frame since
    ``now - stale_after`` (a silent topic, a socket down or refused). A symbol never ticked
    counts from when it was first tracked (``tracked_since``; untracked: stale at once)."""
    out = set()
    for symbol in symbols:
        since = max(last_tick.get(symbol, -math.inf), tracked_since.get(symbol, -math.inf))
        if now - since > stale_after:
            out.add(symbol)
    return frozenset(out)


# --- rollback -------------------------------------------------------------------------------------

@attrs.frozen
class TriggerInputs:
    """What the rollback triggers look at, at trio time ``now``."""

    now: float
    #: per socket: None while connected, else since when it has been down
    sockets_down_since: Mapping[str, float | None]
    #: when the hybrid stream last produced a live event (None: never); a REST fallback mark
    #: is not one (it says the live feed is stale, not that it is alive)
    last_event_at: float | None
    #: open positions, and since when at least one has been open (None: none open)
    open_positions: int
    positions_open_since: float | None
    #: trio times of subscription failures (any order)
    subscription_failures: tuple[float, ...] = ()
    #: the actor whose crash loop was reported, if any
    crash_loop: str | None = None
    #: the latest ticker frame of a symbol with an open position (None: none yet); a frame
    #: with an unchanged mark makes no event but shows the feed is alive
    last_frame_at: float | None = None
    #: symbols with an open position (every category), and how many of them the exchange
    #: refuses a ticker subscription now (refused for good, retried periodically)
    held_symbols: int = 0
    refused_symbols: int = 0


def refused_share_beyond(inputs: TriggerInputs) -> bool:
    """More than half of the held symbols refused a ticker subscription (the subscription
    trigger's second figure: a refused symbol counts once while held, so an account holding
    at most ``rollback_sub_failures`` symbols could never pass the count)."""
    return inputs.held_symbols > 0 and 2 * inputs.refused_symbols > inputs.held_symbols


def all_down_since(sockets_down_since: Mapping[str, float | None]) -> float | None:
    """Since when every socket has been down (None if any is up, or there are none)."""
    if not sockets_down_since or any(v is None for v in sockets_down_since.values()):
        return None
    return max(v for v in sockets_down_since.values() if v is not None)


def rollback_reason(policy: RolloutPolicy, inputs: TriggerInputs, *, counting_since: float = -math.inf) -> str | None:
    """The first trigger that fires, as a sentence for the ``stream.rollback`` notice, or None.

    A trigger fires when its figure is strictly beyond its threshold. Subscription failures
    count only those after ``counting_since`` (the last return to hybrid), so failures that
    caused a rollback cannot cause the next one. The same trigger (off with
    ``rollback_sub_failures=None``) also fires while more than half of the held symbols are
    refused (:func:`refused_share_beyond`): a current state, which the return gate waits
    out too."""
    now = inputs.now
    if inputs.crash_loop is not None and policy.rollback_on_crash_loop:
        return f"crash loop: actor {inputs.crash_loop} keeps crashing"
    limit = policy.rollback_after_disconnect
    down = all_down_since(inputs.sockets_down_since)
    if limit is not None and down is not None and now - down > limit:
        return f"every socket disconnected for {now - down:.0f}s (limit {limit:g}s)"
    quiet = silent_for(policy, inputs)
    if quiet is not None:
        # the wording predates ticker frames counting as signs of life; kept for log searches
        return (f"no events for {quiet:.0f}s with {inputs.open_positions} position(s) open "
                f"(limit {policy.rollback_after_silence:g}s)")
    count_limit = policy.rollback_sub_failures
    if count_limit is not None:
        start = max(now - 3600.0, counting_since)
        failures = sum(1 for at in inputs.subscription_failures if start < at <= now)
        if failures > count_limit:
            return f"{failures} subscription failures within an hour (limit {count_limit})"
        if refused_share_beyond(inputs):
            return (f"{inputs.refused_symbols} of {inputs.held_symbols} held symbols refused a ticker "
                    "subscription (limit: half)")
    return None


def latest(*times: float | None) -> float | None:
    """The latest of ``times`` (None: all None)."""
    known = [t for t in times if t is not None]
    return max(known) if known else None


def quiet_since(inputs: TriggerInputs) -> float | None:
    """Since when the hybrid stream has been silent with positions open (None: no positions):
    neither a live event nor a ticker frame of an open position's symbol since then. A quiet
    market still sends frames (an unchanged mark makes none of our events), a frozen feed
    does not. Opening a position is itself an event; the open time only stands in when there
    has been neither an event nor a frame at all."""
    if not inputs.open_positions:
        return None
    last = latest(inputs.last_event_at, inputs.last_frame_at)
    return last if last is not None else inputs.positions_open_since


def silent_for(policy: RolloutPolicy, inputs: TriggerInputs) -> float | None:
    """How long the stream has been silent, if that is beyond ``rollback_after_silence``
    (the silence trigger's condition); None otherwise or when the trigger is off."""
    limit = policy.rollback_after_silence
    since = quiet_since(inputs)
    if limit is None or since is None or inputs.now - since <= limit:
        return None
    return inputs.now - since


#: how far past a threshold the next check is scheduled ("beyond", not "at")
_PAST: Final = 0.001


def next_check(policy: RolloutPolicy, inputs: TriggerInputs, *, idle: float = 30.0) -> float:
    """When to evaluate the triggers next if nothing else happens: just past the earliest
    threshold the current figures would cross, and at most ``idle`` seconds from now (new
    figures, such as a first open position or subscription failures, are seen by then)."""
    now = inputs.now
    candidates = [now + idle]
    down = all_down_since(inputs.sockets_down_since)
    if policy.rollback_after_disconnect is not None and down is not None:
        candidates.append(down + policy.rollback_after_disconnect + _PAST)
    quiet = quiet_since(inputs)
    if policy.rollback_after_silence is not None and quiet is not None:
        candidates.append(quiet + policy.rollback_after_silence + _PAST)
    return max(now, min(candidates))


@attrs.define
class ReturnGate:
    """When to go back to hybrid after a rollback: ``auto_return`` seconds of uninterrupted
    health, doubled for each earlier rollback within ``return_memory`` seconds (up to 64x).

    Hysteresis both ways: a single unhealthy sample restarts the wait, and a stream that
    keeps failing right after each return needs ever longer to be trusted again.
    """

    policy: RolloutPolicy
    rollbacks: list[float] = attrs.Factory(list)
    healthy_since: float | None = None
    #: the waits come from the one capped backoff policy (no jitter): doubling, at most 64x
    _waits: Backoff | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        base = self.policy.auto_return
        if base is not None:
            self._waits = Backoff(initial=base, maximum=base * RETURN_WAIT_CAP, multiplier=2.0, jitter=0.0)

    def rolled_back(self, now: float) -> None:
        self.rollbacks = [t for t in self.rollbacks if now - t < self.policy.return_memory]
        self.rollbacks.append(now)
        self.healthy_since = None

    def required(self, now: float) -> float | None:
        """Seconds of health the next return needs (None: auto-return is off)."""
        if self._waits is None:
            return None
        earlier = sum(1 for t in self.rollbacks if now - t < self.policy.return_memory) - 1
        return self._waits.nominal(max(0, earlier))

    def observe(self, now: float, healthy: bool) -> bool:
        """Record one health sample; True when it is time to return."""
        required = self.required(now)
        if not healthy or required is None:
            self.healthy_since = None
            return False
        if self.healthy_since is None:
            self.healthy_since = now
        return now - self.healthy_since >= required
