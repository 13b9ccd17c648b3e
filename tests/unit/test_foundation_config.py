"""Configuration and secrets: reprs and error messages never show the secret, endpoints
are chosen as documented, and bad values are ConfigErrors that say what is wrong."""

from __future__ import annotations

import logging
import math

import attrs
import pytest
import trio

from hybrid_actors import errors
from hybrid_actors.config import (DEFAULT_READ_COALESCE, Credentials, Endpoints, RestartPolicy, StreamConfig, SubscriptionPolicy, mask_key,
                                  parse_duration)
from hybrid_actors.errors import ConfigError, LocalProtocolError
from hybrid_actors.protocol.client import auth_frame
from hybrid_actors.protocol.rest import error_for, position_list_request
from hybrid_actors.protocol.session import Session
from hybrid_actors.protocol.signing import ws_auth_signature

pytestmark = pytest.mark.unit

KEY = "AbCdKEYzq8Rw1Xy2"
SECRET = "S3cr3t-ZQX9-never-print-me"
CREDS = Credentials(KEY, SECRET)


def assert_clean(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text, text
        assert KEY not in text, text


# --- secrets ------------------------------------------------------------------------

def test_credentials_repr_and_str_hide_the_secret_and_mask_the_key():
    for text in (repr(CREDS), str(CREDS), f"{CREDS}", f"{CREDS!r}", "%s" % (CREDS,), format(CREDS)):
        assert_clean(text)
        assert "'AbCd…'" in text
    assert CREDS.key_hint == "'AbCd…'" and mask_key("") == "''"


def test_stream_config_repr_and_str_hide_the_secret():
    config = StreamConfig(CREDS, endpoints=Endpoints.testnet(), categories=("linear", "inverse"))
    assert_clean(repr(config), str(config), repr(attrs.evolve(config, max_active_time="60s")))
    assert "AbCd" in repr(config)


def test_logging_credentials_and_config_does_not_leak():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "creds %s config %r", (CREDS, StreamConfig(CREDS)), None)
    assert_clean(logging.Formatter().format(record))


def test_session_and_request_reprs_hold_no_signature():
    session = Session(None)
    frame = session.auth(KEY, SECRET, 1_700_000_000_000)
    signature = ws_auth_signature(SECRET, 1_700_000_000_000)
    assert signature in frame and signature in auth_frame(KEY, SECRET, 1_700_000_000_000)
    assert signature not in repr(session) and SECRET not in repr(session)
    request = position_list_request(KEY, SECRET, category="inverse", timestamp_ms=1)
    assert request.headers["X-BAPI-SIGN"] not in repr(request) and SECRET not in repr(request)


def test_protocol_errors_do_not_quote_credentials():
    session = Session(None)
    session.auth(KEY, SECRET, 1)
    with pytest.raises(LocalProtocolError) as info:
        session.auth(KEY, SECRET, 2)
    assert_clean(str(info.value), repr(info.value))


@pytest.mark.parametrize("code", [10002, 10003, 10004, 10005, 10006, 10010, 10018, 99999])
def test_rest_errors_never_quote_the_key_echoed_in_an_origin_string(code):
    ret_msg = f"error sign! origin_string[1701783394711{KEY}5000category=linear&settleCoin=USDT]"
    error = error_for(code, ret_msg, path="/v5/position/list", http_status=200)
    if code == 10004:
        assert_clean(str(error), repr(error), error.ret_msg, *map(str, error.args))
    assert SECRET not in str(error)


def test_error_messages_built_from_credentials_use_the_hint_only():
    texts = [
        str(errors.AuthRejected(f"auth rejected for key {CREDS.key_hint}: Params Error; check clock skew",
                                key_hint=CREDS.key_hint, ret_msg="Params Error")),
        str(errors.SubscribeRejected("position", "Request not authorized")),
        str(errors.RestartIntensityExceeded("private", 5, 60.0, ValueError(f"bad {CREDS}"))),
        str(errors.ConnectionLost(f"private socket for {CREDS} closed", code=1006)),
    ]
    for text in texts:
        assert_clean(text)


@pytest.mark.parametrize("kwargs", [
    {"heartbeat_interval": -1}, {"categories": ("spot",)}, {"max_active_time": "5s"}, {"rest_attempts": 0},
    {"pong_timeout": 0}, {"categories": ()},
])
def test_config_errors_do_not_quote_credentials(kwargs):
    with pytest.raises(ConfigError) as info:
        StreamConfig(CREDS, **kwargs)
    assert_clean(str(info.value), repr(info.value))


def test_the_error_tree():
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.RestAuthError, errors.AuthRejected) and issubclass(errors.RestAuthError, errors.RestError)
    assert issubclass(errors.RestUnavailable, errors.TransportError)
    assert issubclass(errors.RestRateLimited, errors.RestError)
    assert not issubclass(errors.RestRateLimited, errors.TransportError)
    assert issubclass(errors.RestartIntensityExceeded, errors.SupervisorError)
    for cls in (errors.ConfigError, errors.LocalProtocolError, errors.RemoteProtocolError, errors.HandshakeError,
                errors.HeartbeatTimeout, errors.AuthRejected, errors.SubscribeRejected, errors.RestError):
        assert issubclass(cls, errors.HybridActorsError)
    rejected = errors.SubscribeRejected(None, "args size >10")
    assert "<unnamed topic>" in str(rejected) and rejected.ret_msg == "args size >10"


# --- endpoints ----------------------------------------------------------------------

def test_mainnet_by_default():
    endpoints = Endpoints.choose()
    assert endpoints == Endpoints("wss://stream.bybit.com", "wss://stream.bybit.com/v5/private", "https://api.bybit.com")
    assert endpoints.public_url("linear") == "wss://stream.bybit.com/v5/public/linear"
    assert endpoints.verify_tls


def test_testnet():
    endpoints = Endpoints.choose(testnet=True)
    assert endpoints.public_url("spot") == "wss://stream-testnet.bybit.com/v5/public/spot"
    assert endpoints.ws_private_url == "wss://stream-testnet.bybit.com/v5/private"
    assert endpoints.rest_url == "https://api-testnet.bybit.com"


def test_demo_is_private_only_with_mainnet_public_data():
    endpoints = Endpoints.choose(demo=True)
    assert endpoints.ws_private_url == "wss://stream-demo.bybit.com/v5/private"
    assert endpoints.public_url("inverse") == "wss://stream.bybit.com/v5/public/inverse"
    assert endpoints.rest_url == "https://api-demo.bybit.com"


def test_testnet_and_demo_exclude_each_other():
    with pytest.raises(ConfigError, match="^testnet and demo exclude"):  # a library's errors name arguments
        Endpoints.choose(testnet=True, demo=True)
    with pytest.raises(ConfigError, match="--testnet and --demo"):  # the CLI's name its flags
        Endpoints.choose(testnet=True, demo=True, names={"testnet": "--testnet", "demo": "--demo"})


def test_stream_and_rest_urls_override():
    endpoints = Endpoints.choose(testnet=True, stream_url="ws://127.0.0.1:8765/")
    assert endpoints.public_url("option") == "ws://127.0.0.1:8765/v5/public/option"
    assert endpoints.ws_private_url == "ws://127.0.0.1:8765/v5/private"
    assert endpoints.rest_url == "https://api-testnet.bybit.com"
    endpoints = Endpoints.choose(rest_url="http://127.0.0.1:9000/")
    assert endpoints.rest_url == "http://127.0.0.1:9000" and endpoints.ws_private_url.startswith("wss://stream.bybit")
    assert Endpoints.local("ws://127.0.0.1:1/", "http://127.0.0.1:2/") == Endpoints(
        "ws://127.0.0.1:1", "ws://127.0.0.1:1/v5/private", "http://127.0.0.1:2")


@pytest.mark.parametrize(("flag", "url", "message"), [
    ("stream_url", "http://127.0.0.1:8765", "^stream_url "),
    ("stream_url", "ws://", "with a host"),
    ("stream_url", "127.0.0.1:8765", "^stream_url "),
    ("stream_url", "ws://127.0.0.1:8765/v5/public/linear", "without a path"),
    ("stream_url", "ws://127.0.0.1:8765?x=1", "query"),
    ("stream_url", "ws://127.0.0.1:8765/#top", "query"),
    # empty ones: urlsplit reports no query or fragment, but the appended paths would follow them
    ("stream_url", "ws://127.0.0.1:8765/?", r"must not have a query or fragment \('\?' or '#'\)"),
    ("stream_url", "ws://127.0.0.1:8765/#", "query or fragment"),
    ("stream_url", "ws://127.0.0.1:8765?", "query or fragment"),
    ("rest_url", "http://127.0.0.1:8766/?", "query or fragment"),
    ("rest_url", "http://127.0.0.1:8766#", "query or fragment"),
    ("stream_url", "ws://127.0.0.1:port", "port"),
    ("rest_url", "wss://api.bybit.com", "^rest_url "),
    ("rest_url", "https://api.bybit.com/v5", "without a path"),
    ("rest_url", "https://api.bybit.com?x=1", "query"),
    ("rest_url", "https://api.bybit.com:99999", "port"),
])
def test_bad_urls_are_config_errors(flag, url, message):
    with pytest.raises(ConfigError, match=message) as info:
        Endpoints.choose(**{flag: url})
    assert url in str(info.value)


# --- StreamConfig validation --------------------------------------------------------

def test_defaults():
    config = StreamConfig(CREDS)
    assert config.categories == ("linear",) and config.endpoints == Endpoints.mainnet()
    assert config.effective_pong_timeout == config.heartbeat_interval == 20.0
    assert config.private_url == "wss://stream.bybit.com/v5/private"
    assert config.linear_settle_coins == ("USDT", "USDC")


@pytest.mark.parametrize(("categories", "message"), [
    ((), "at least one category"),
    (("spot",), "'spot' cannot hold positions; choose from linear, inverse, option"),
    (("linear", "Linear"), "'Linear' cannot hold positions"),
    (("linear", "linear"), "listed twice"),
])
def test_bad_categories(categories, message):
    with pytest.raises(ConfigError, match=message):
        StreamConfig(CREDS, categories=categories)


def test_categories_accept_any_iterable_and_a_single_name():
    assert StreamConfig(CREDS, categories=["inverse", "option"]).categories == ("inverse", "option")
    # a bare string is one category, not its letters ("category 'l' cannot hold positions")
    assert StreamConfig(CREDS, categories="inverse").categories == ("inverse",)
    assert StreamConfig(CREDS, linear_settle_coins="USDT").linear_settle_coins == ("USDT",)
    with pytest.raises(ConfigError, match="list of names"):
        StreamConfig(CREDS, categories=5)  # type: ignore[arg-type]


@pytest.mark.parametrize(("coins", "message"), [
    ((), r"linear_settle_coins must name at least one settle coin .* got \(\)"),
    (("usdt",), r"linear_settle_coins: 'usdt' is not a settle coin"),
    (("USDT", " USDC"), r"linear_settle_coins: ' USDC' is not a settle coin"),
    (("US-DT",), r"'US-DT' is not a settle coin"),
    (("",), r"'' is not a settle coin"),
    (("USDT", "USDT"), r"linear_settle_coins: a settle coin is listed twice in \('USDT', 'USDT'\)"),
    (("USTD",), r"linear_settle_coins: 'USTD' is not a settle coin of Bybit's linear contracts; "
                r"choose from USDT, USDC"),
    (("USDC", "BTC"), r"'BTC' is not a settle coin of Bybit's linear contracts"),
])
def test_bad_linear_settle_coins(coins, message):
    """An empty or misspelt list left the REST snapshot without linear positions: the stream
    started 'live' with none of them, silently."""
    with pytest.raises(ConfigError, match=message):
        StreamConfig(CREDS, linear_settle_coins=coins)


def test_settle_coins_are_needed_only_when_linear_is_followed():
    assert StreamConfig(CREDS, categories=("inverse",), linear_settle_coins=()).linear_settle_coins == ()
    assert StreamConfig(CREDS, linear_settle_coins=["USDC", "USDT"]).linear_settle_coins == ("USDC", "USDT")
    with pytest.raises(ConfigError, match="at least one settle coin"):
        StreamConfig(CREDS, categories=("inverse", "linear"), linear_settle_coins=[])


@pytest.mark.parametrize("name", ["heartbeat_interval", "reconcile_interval", "connect_timeout", "auth_timeout",
                                  "rest_timeout"])
@pytest.mark.parametrize("value", [0, -1, -0.5, math.nan, math.inf, "20", None, True])
def test_durations_must_be_positive_numbers(name, value):
    with pytest.raises(ConfigError, match=f"{name} must be a positive number of seconds"):
        StreamConfig(CREDS, **{name: value})


@pytest.mark.parametrize("name", ["rest_attempts", "recv_window_ms", "max_message_size", "event_buffer"])
@pytest.mark.parametrize("value", [0, -3, 1.5, "4", True])
def test_counts_must_be_positive_integers(name, value):
    with pytest.raises(ConfigError, match=f"{name} must be a positive integer"):
        StreamConfig(CREDS, **{name: value})


@pytest.mark.parametrize("name", ["heartbeat_interval", "pong_timeout"])
@pytest.mark.parametrize("value", [0.0001, 0.5, 0.999])
def test_heartbeat_interval_and_pong_timeout_are_at_least_a_second(name, value):
    """0.0001 was accepted and the run died on 'no pong within 0.0001s' (exit 4)."""
    with pytest.raises(ConfigError, match=rf"^{name} must be at least 1 second \(default 20\), got {value!r}$"):
        StreamConfig(CREDS, **{name: value})
    assert getattr(StreamConfig(CREDS, **{name: 1}), name) == 1


def test_pong_timeout():
    assert StreamConfig(CREDS, heartbeat_interval=5, pong_timeout=2.5).effective_pong_timeout == 2.5
    with pytest.raises(ConfigError, match="pong_timeout"):
        StreamConfig(CREDS, pong_timeout=-1)


@pytest.mark.parametrize(("value", "seconds"), [("30s", 30), ("45s", 45), ("1m", 60), ("600s", 600), ("10m", 600)])
def test_max_active_time_in_range(value, seconds):
    assert parse_duration(value) == seconds
    config = StreamConfig(CREDS, endpoints=Endpoints.testnet(), max_active_time=value)
    assert config.private_url == f"wss://stream-testnet.bybit.com/v5/private?max_active_time={value}"


@pytest.mark.parametrize(("value", "message"), [("29s", "between 30s and 600s"), ("11m", "between 30s and 600s"),
                                                ("0s", "between"), ("-45s", "between"), ("45", "'45s' or '2m'"),
                                                ("1.5m", "'45s' or '2m'"), ("s", "'45s' or '2m'"),
                                                ("", "'45s' or '2m'"), ("1h", "'45s' or '2m'")])
def test_max_active_time_out_of_range(value, message):
    with pytest.raises(ConfigError, match=message):
        StreamConfig(CREDS, max_active_time=value)


def test_policies_validate():
    assert SubscriptionPolicy(unsubscribe_grace=0).unsubscribe_grace == 0
    with pytest.raises(ConfigError, match="unsubscribe_grace must be >= 0"):
        SubscriptionPolicy(unsubscribe_grace=-1)
    with pytest.raises(ConfigError, match="chunk_size must be a positive integer"):
        SubscriptionPolicy(chunk_size=0)
    with pytest.raises(ConfigError, match="max_restarts"):
        RestartPolicy(max_restarts=0)
    with pytest.raises(ConfigError, match="backoff_max"):
        RestartPolicy(backoff_max=math.inf)


def test_config_is_frozen():
    config = StreamConfig(CREDS)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.heartbeat_interval = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("bad", [-0.001, 0.051, float("nan"), float("inf"), True, "0.001"])
def test_read_coalesce_is_a_bounded_window_in_seconds(bad):
    credentials = Credentials("k", "s")
    assert StreamConfig(credentials).read_coalesce == DEFAULT_READ_COALESCE
    assert StreamConfig(credentials, read_coalesce=0.002).read_coalesce == 0.002
    assert StreamConfig(credentials, read_coalesce=0).read_coalesce == 0  # off
    with pytest.raises(ConfigError, match="read_coalesce must be between 0 \\(off\\) and 0.05 seconds"):
        StreamConfig(credentials, read_coalesce=bad)


@pytest.mark.parametrize("value", [-1, 0, math.nan, math.inf, -math.inf, "30", True])
async def test_a_bad_start_timeout_is_a_config_error_before_anything_opens(value):
    """Not trio's ValueError from move_on_after (nor a start-up that could never time out);
    nothing is contacted: the endpoints are unroutable on purpose."""
    from hybrid_actors.supervisor import open_hybrid_stream

    config = StreamConfig(CREDS, endpoints=Endpoints.local("ws://127.0.0.1:1", "http://127.0.0.1:1"))
    with trio.fail_after(5), pytest.raises(ConfigError, match=r"start_timeout must be a positive number of "
                                                               r"seconds or None, got "):
        async with open_hybrid_stream(config, start_timeout=value):
            pytest.fail("the stream started")
