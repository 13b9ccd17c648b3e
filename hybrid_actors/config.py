"""Configuration: credentials, endpoints, timing. Frozen attrs values; no I/O, no trio.

The API secret never appears in a repr; the API key shows only its first four
characters. ``attrs.asdict()`` would still include the secret: never log it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import attrs

from .backoff import Backoff
from .errors import ConfigError
from .rollout import Mode, RolloutPolicy, parse_mode

Category = Literal["linear", "inverse", "spot", "option"]
CATEGORIES: Final[tuple[str, ...]] = ("linear", "inverse", "spot", "option")
#: categories that can hold positions (GET /v5/position/list accepts only these)
POSITION_CATEGORIES: Final[tuple[str, ...]] = ("linear", "inverse", "option")

# --- protocol limits (BYBIT_V5.md §3, §4, §8) -------------------------------------------
SPOT_MAX_ARGS_PER_REQUEST: Final = 10
PUBLIC_ARGS_CHAR_BUDGET: Final = 21_000
OPTION_MAX_ARGS_PER_CONNECTION: Final = 2_000
DEFAULT_HEARTBEAT_INTERVAL: Final = 20.0
#: the shortest heartbeat interval and pong timeout accepted: less is no heartbeat but a
#: flood of pings, and a pong over the internet easily takes more ("no pong within 0.0001s")
MIN_HEARTBEAT_INTERVAL: Final = 1.0
DEFAULT_RECV_WINDOW_MS: Final = 5_000
#: auth ``expires`` margin; the docs' +1 s fails on small clock skew (pybit #152)
AUTH_EXPIRY_MARGIN_MS: Final = 10_000
MAX_MESSAGE_SIZE: Final = 1 << 20  # Bybit frames are a few KiB; refuse anything over 1 MiB
CLOSE_TIMEOUT: Final = 2.0
#: the public sockets' adaptive coalescing window (``StreamConfig.read_coalesce``), seconds
DEFAULT_READ_COALESCE: Final = 0.001
#: the largest window accepted: more would hold marks back for no further saving
MAX_READ_COALESCE: Final = 0.05


def mask_key(key: str) -> str:
    """``'abcd…'``: enough to tell keys apart in logs, useless to an attacker."""
    return f"'{key[:4]}…'" if key else "''"


@attrs.frozen
class Credentials:
    """An API key pair. ``repr`` shows ``api_key`` masked and never the secret."""

    api_key: str = attrs.field(repr=mask_key)
    api_secret: str = attrs.field(repr=False)

    @property
    def key_hint(self) -> str:
        return mask_key(self.api_key)

    def __str__(self) -> str:  # str() of a frozen attrs class is its repr; make it explicit
        return f"Credentials(api_key={self.key_hint})"


@attrs.frozen
class Endpoints:
    """Where to connect. ``ws_public_base`` gets ``/v5/public/{category}`` appended."""

    ws_public_base: str
    ws_private_url: str
    rest_url: str
    verify_tls: bool = True

    def public_url(self, category: str) -> str:
        return f"{self.ws_public_base.rstrip('/')}/v5/public/{category}"

    @classmethod
    def mainnet(cls) -> Endpoints:
        return cls("wss://stream.bybit.com", "wss://stream.bybit.com/v5/private", "https://api.bybit.com")

    @classmethod
    def testnet(cls) -> Endpoints:
        return cls("wss://stream-testnet.bybit.com", "wss://stream-testnet.bybit.com/v5/private",
                   "https://api-testnet.bybit.com")

    @classmethod
    def demo(cls) -> Endpoints:
        # The demo host serves only private streams; public data comes from mainnet.
        return cls("wss://stream.bybit.com", "wss://stream-demo.bybit.com/v5/private",
                   "https://api-demo.bybit.com")

    @classmethod
    def local(cls, stream_url: str, rest_url: str) -> Endpoints:
        """A base like ``ws://127.0.0.1:8765`` (our simulator, or a relay)."""
        return cls(stream_url.rstrip("/"), f"{stream_url.rstrip('/')}/v5/private", rest_url.rstrip("/"))

    @classmethod
    def choose(cls, *, testnet: bool = False, demo: bool = False, stream_url: str | None = None,
               rest_url: str | None = None, names: Mapping[str, str] | None = None) -> Endpoints:
        """Mainnet, testnet or demo trading, with the base URLs overridden when given.

        ``names``: how the caller spells these four options in error messages (the CLI passes
        its flags, e.g. ``{"stream_url": "--stream-url"}``); by default the argument names."""
        spell = {"testnet": "testnet", "demo": "demo", "stream_url": "stream_url", "rest_url": "rest_url",
                 **(names or {})}
        if testnet and demo:
            raise ConfigError(f"{spell['testnet']} and {spell['demo']} exclude each other: demo trading is a "
                              "mainnet account mode")
        base = cls.testnet() if testnet else cls.demo() if demo else cls.mainnet()
        if stream_url is not None:
            _check_url(stream_url, ("ws", "wss"), spell["stream_url"])
            base = attrs.evolve(base, ws_public_base=stream_url.rstrip("/"),
                                ws_private_url=f"{stream_url.rstrip('/')}/v5/private")
        if rest_url is not None:
            _check_url(rest_url, ("http", "https"), spell["rest_url"])
            base = attrs.evolve(base, rest_url=rest_url.rstrip("/"))
        return base


#: a settle coin as Bybit spells it (``USDT``, ``USDC``)
_SETTLE_COIN: Final = re.compile(r"[A-Z0-9]{1,20}")
#: the settle coins of Bybit's linear contracts (USDT and USDC perpetuals and futures,
#: BYBIT_V5.md §1): ``position/list`` is asked once per coin listed, and a coin outside these
#: would be asked for positions that cannot exist, while the real ones go unlisted
LINEAR_SETTLE_COINS: Final = ("USDT", "USDC")


def _check_url(url: str, schemes: tuple[str, ...], flag: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{flag} {url!r} is not a {'/'.join(schemes)}:// URL with a host")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ConfigError(f"{flag} {url!r} has an invalid port") from None
    if "?" in url or "#" in url:
        # the paths are appended to this text: "ws://h?x=1" would become "ws://h?x=1/v5/private";
        # an empty query or fragment ("ws://h/?") is no better, though urlsplit reports none
        raise ConfigError(f"{flag} {url!r} must not have a query or fragment ('?' or '#')")
    if parts.path not in ("", "/"):
        raise ConfigError(f"{flag} {url!r} must be a base URL without a path; "
                          "/v5/public/<category> and /v5/private are appended")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # True is not 1 second


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{attribute.name} must be a positive number of seconds, got {value!r}")


def _heartbeat_seconds(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    _positive(_inst, attribute, value)
    if value < MIN_HEARTBEAT_INTERVAL:
        raise ConfigError(f"{attribute.name} must be at least {MIN_HEARTBEAT_INTERVAL:g} second "
                          f"(default {DEFAULT_HEARTBEAT_INTERVAL:g}), got {value!r}")


def _non_negative(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{attribute.name} must be >= 0, got {value!r}")


def _coalesce_window(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (_is_number(value) and math.isfinite(value) and 0 <= value <= MAX_READ_COALESCE):
        raise ConfigError(f"{attribute.name} must be between 0 (off) and {MAX_READ_COALESCE:g} seconds, "
                          f"got {value!r}")


def _positive_int(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ConfigError(f"{attribute.name} must be a positive integer, got {value!r}")


def _names(value: str | Iterable[str]) -> tuple[str, ...]:
    """A tuple of names; a bare string is one name (``tuple("linear")`` would be its letters)."""
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ConfigError(f"expected a list of names, got {value!r}") from None


@attrs.frozen
class RestartPolicy:
    """One-for-one restarts.

    Outages (``TransportError``) are retried forever through :attr:`backoff` (capped,
    jittered, overflow-free; see :mod:`hybrid_actors.backoff`); the first retry is fast.
    Crashes (any other exception) are retried the same way but also counted:
    ``max_restarts`` crashes within ``window`` seconds end the stream with
    :class:`~hybrid_actors.errors.RestartIntensityExceeded`.

    The defaults bound both sides of a refused-connection outage: a socket retries at
    most every ``backoff_max * (1 - backoff_jitter)`` = 2 s once the delay has grown
    (about 0.33 attempts per second on average: four sockets stay under Bybit's 500 new
    connections per 5 minutes per IP), and is back at most ``backoff_max`` = 4 s (plus
    its handshake) after the exchange accepts again. An exchange's cool-down (403 ban,
    429 / 10006 rate limit) is honoured on top: the wait is never shorter than it asked.
    """

    backoff_initial: float = attrs.field(default=0.25, validator=_positive)
    backoff_max: float = attrs.field(default=4.0, validator=_positive)
    #: the random share of each delay (delay within ``[nominal * (1 - jitter), nominal]``)
    backoff_jitter: float = attrs.field(default=0.5, validator=_non_negative)
    #: an actor that ran this long without failing starts again from ``backoff_initial``
    stable_after: float = attrs.field(default=60.0, validator=_positive)
    max_restarts: int = attrs.field(default=5, validator=_positive_int)
    window: float = attrs.field(default=60.0, validator=_positive)
    #: the policy itself, built from the fields above (invalid combinations fail here)
    backoff: Backoff = attrs.field(init=False, repr=False, eq=False, default=None)

    def __attrs_post_init__(self) -> None:  # after the validators
        object.__setattr__(self, "backoff", Backoff(self.backoff_initial, self.backoff_max,
                                                    jitter=self.backoff_jitter))


@attrs.frozen
class SubscriptionPolicy:
    """How the subscription manager talks to the public sockets."""

    #: topics per subscribe frame (spot is always capped at 10 by the exchange; linear and
    #: inverse take 50 in one request). A burst of 10 frames resubscribes 500 symbols at once.
    chunk_size: int = attrs.field(default=50, validator=_positive_int)
    #: subscribe/unsubscribe frames per second per socket (token bucket)
    requests_per_second: float = attrs.field(default=20.0, validator=_positive)
    burst: int = attrs.field(default=10, validator=_positive_int)
    #: wait this long after a position closes before unsubscribing its ticker
    unsubscribe_grace: float = attrs.field(default=2.0, validator=_non_negative)
    ack_timeout: float = attrs.field(default=10.0, validator=_positive)
    retry_initial: float = attrs.field(default=1.0, validator=_positive)
    retry_max: float = attrs.field(default=60.0, validator=_positive)
    #: ``handler not found`` (unknown symbol) is retried this rarely
    unknown_symbol_retry: float = attrs.field(default=300.0, validator=_positive)
    #: a confirmed topic with no data for this long is resubscribed
    silence_timeout: float = attrs.field(default=60.0, validator=_positive)
    #: per-symbol retries of a subscribe that got no clear answer (``retry_initial`` .. ``retry_max``)
    backoff: Backoff = attrs.field(init=False, repr=False, eq=False, default=None)

    def __attrs_post_init__(self) -> None:  # after the validators
        object.__setattr__(self, "backoff", Backoff(self.retry_initial, self.retry_max))


@attrs.frozen
class AlertPolicy:
    """When ``stream.alert`` notices fire (the rollout plan's thresholds; see ``alerts.py``).
    Latency is the p95 of exchange timestamp -> event over the last minute."""

    disconnected_warning: float = attrs.field(default=30.0, validator=_positive)
    disconnected_critical: float = attrs.field(default=120.0, validator=_positive)
    latency_warning_ms: float = attrs.field(default=500.0, validator=_positive)
    latency_critical_ms: float = attrs.field(default=1000.0, validator=_positive)
    #: the plan's manual rollback condition: latency over the critical level this long
    latency_rollback_after: float = attrs.field(default=300.0, validator=_positive)
    no_events_critical: float = attrs.field(default=300.0, validator=_positive)
    #: REST vs hybrid mark divergence (ratio, 0.01 = 1%) that says "consider rollback"
    divergence_ratio: float = attrs.field(default=0.01, validator=_positive)
    #: a divergence keeps its alert firing this long after the comparator counted it
    divergence_hold: float = attrs.field(default=300.0, validator=_positive)
    #: ``stale_fallback`` warns when a symbol has been priced from the REST fallback this long
    stale_fallback_warning: float = attrs.field(default=60.0, validator=_positive)
    #: ``loop_stalled`` fires while the host's asyncio loop (the bridge) had a stall this recently
    loop_stall_window: float = attrs.field(default=60.0, validator=_positive)
    #: a firing alert resolves once its condition has been false this long (no flapping)
    resolve_after: float = attrs.field(default=10.0, validator=_non_negative)
    #: how often the alert actor evaluates
    interval: float = attrs.field(default=1.0, validator=_positive)


def _optional_mode(value: object) -> Mode | None:
    return None if value is None else parse_mode(value)


@attrs.frozen
class StreamConfig:
    """Everything :func:`hybrid_actors.open_hybrid_stream` needs. Immutable; secret masked."""

    credentials: Credentials
    endpoints: Endpoints = attrs.field(factory=Endpoints.mainnet)
    categories: tuple[str, ...] = attrs.field(default=("linear",), converter=_names)
    heartbeat_interval: float = attrs.field(default=DEFAULT_HEARTBEAT_INTERVAL, validator=_heartbeat_seconds)
    #: a ping unanswered this long marks the socket dead; default: one interval
    pong_timeout: float | None = attrs.field(default=None)
    reconcile_interval: float = attrs.field(default=300.0, validator=_positive)
    #: the exchange's clock is measured again this often, in the background
    clock_resync_interval: float = attrs.field(default=600.0, validator=_positive)
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    auth_timeout: float = attrs.field(default=10.0, validator=_positive)
    rest_timeout: float = attrs.field(default=10.0, validator=_positive)
    rest_attempts: int = attrs.field(default=4, validator=_positive_int)
    recv_window_ms: int = attrs.field(default=DEFAULT_RECV_WINDOW_MS, validator=_positive_int)
    max_message_size: int = attrs.field(default=MAX_MESSAGE_SIZE, validator=_positive_int)
    #: public sockets' adaptive coalescing window, seconds (0: off). While ticker frames
    #: stream in (a burst), a read waits until the kernel holds the bytes three quarters of
    #: the window bring (``SO_RCVLOWAT``), so one read carries ~15-20 frames, not one or two;
    #: the window bounds the wait when fewer come (at least 1 ms in practice, epoll's
    #: granularity). A quiet socket reads at once. See ``lean_transport._wait_for_more``.
    read_coalesce: float = attrs.field(default=DEFAULT_READ_COALESCE, validator=_coalesce_window)
    #: private socket idle cut (``max_active_time`` URL parameter), e.g. "60s"; None = server default
    max_active_time: str | None = attrs.field(default=None)
    restart: RestartPolicy = attrs.field(factory=RestartPolicy)
    subscriptions: SubscriptionPolicy = attrs.field(factory=SubscriptionPolicy)
    #: lifecycle events buffered for a slow consumer before the producers wait
    event_buffer: int = attrs.field(default=4096, validator=_positive_int)
    #: settle coins queried for linear positions (GET /v5/position/list needs one)
    linear_settle_coins: tuple[str, ...] = attrs.field(default=("USDT", "USDC"), converter=_names)
    #: which source feeds the consumer: rest, canary, parallel or production (see rollout.py);
    #: None: the ``HYBRID_MODE`` environment variable, else production
    mode: Mode | None = attrs.field(default=None, converter=_optional_mode)
    rollout: RolloutPolicy = attrs.field(factory=RolloutPolicy)

    @rollout.validator
    def _check_rollout(self, _attribute: attrs.Attribute[RolloutPolicy], value: object) -> None:
        if not isinstance(value, RolloutPolicy):
            raise ConfigError(f"rollout must be a RolloutPolicy, got {type(value).__name__}")
    #: serve Prometheus text at ``/metrics`` and JSON at ``/health`` on this port (0: any free
    #: port, see ``HybridStream.metrics_url``); None: no server
    metrics_port: int | None = attrs.field(default=None)
    #: the address the metrics server binds; loopback unless you say otherwise
    metrics_host: str = attrs.field(default="127.0.0.1")
    alerts: AlertPolicy = attrs.field(factory=AlertPolicy)

    @categories.validator
    def _check_categories(self, _attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        if not value:
            raise ConfigError("at least one category is needed")
        for category in value:
            if category not in POSITION_CATEGORIES:
                raise ConfigError(f"category {category!r} cannot hold positions; choose from "
                                  f"{', '.join(POSITION_CATEGORIES)}")
        if len(set(value)) != len(value):
            raise ConfigError(f"category listed twice in {value!r}")

    @linear_settle_coins.validator
    def _check_settle_coins(self, _attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        # an empty list or a lowercase coin would leave the REST snapshot without the linear
        # positions: the stream would start "live" with none of them, silently
        if "linear" in self.categories and not value:
            raise ConfigError("linear_settle_coins must name at least one settle coin (e.g. 'USDT') "
                              "when 'linear' is among the categories; GET /v5/position/list needs one, got ()")
        for coin in value:
            if not (isinstance(coin, str) and _SETTLE_COIN.fullmatch(coin)):
                raise ConfigError(f"linear_settle_coins: {coin!r} is not a settle coin: uppercase letters and "
                                  f"digits, such as 'USDT' or 'USDC' (got {value!r})")
        if len(set(value)) != len(value):
            raise ConfigError(f"linear_settle_coins: a settle coin is listed twice in {value!r}")
        unknown = [coin for coin in value if coin not in LINEAR_SETTLE_COINS]
        if unknown:
            raise ConfigError(f"linear_settle_coins: {', '.join(map(repr, unknown))} is not a settle coin of Bybit's "
                              f"linear contracts; choose from {', '.join(LINEAR_SETTLE_COINS)} (got {value!r}). "
                              "Its positions would never be listed, and the stream would start without them")

    @pong_timeout.validator
    def _check_pong_timeout(self, attribute: attrs.Attribute[Any], value: float | None) -> None:
        if value is not None:
            _heartbeat_seconds(self, attribute, value)

    @max_active_time.validator
    def _check_max_active_time(self, _attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is None:
            return
        seconds = parse_duration(value)
        if not 30 <= seconds <= 600:
            raise ConfigError(f"max_active_time {value!r} must be between 30s and 600s (Bybit's range)")

    @metrics_port.validator
    def _check_metrics_port(self, _attribute: attrs.Attribute[Any], value: int | None) -> None:
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535):
            raise ConfigError(f"metrics_port must be a TCP port number (0-65535; 0 picks a free one), got {value!r}")

    @metrics_host.validator
    def _check_metrics_host(self, _attribute: attrs.Attribute[Any], value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"metrics_host must be an address to bind, got {value!r}")

    @property
    def effective_pong_timeout(self) -> float:
        return self.pong_timeout if self.pong_timeout is not None else self.heartbeat_interval

    @property
    def private_url(self) -> str:
        url = self.endpoints.ws_private_url
        if self.max_active_time is not None:
            url += f"?max_active_time={self.max_active_time}"
        return url


def parse_duration(text: str) -> int:
    """``"45s"`` → 45, ``"2m"`` → 120 seconds (Bybit's ``max_active_time`` forms)."""
    raw = text.strip()
    number, unit = raw[:-1], raw[-1:]
    try:
        value = int(number)
    except ValueError:
        value = None
    if unit in ("s", "m") and value is not None:
        return value * (60 if unit == "m" else 1)
    raise ConfigError(f"duration {text!r} must look like '45s' or '2m'")
