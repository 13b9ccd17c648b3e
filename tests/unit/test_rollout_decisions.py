"""Issue 11 pure rollout decisions, with explicit times: modes, cutover hashing, the
comparator, stale marks, each rollback trigger at its threshold and just before it, and
the auto-return gate's hysteresis."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from hybrid_actors import ConfigError, StreamConfig
from hybrid_actors.config import Credentials
from hybrid_actors.rollout import (Comparator, ReturnGate, RolloutPolicy, TriggerInputs, divergence_ratio,
                                   next_check, parse_mode, resolve_mode, rollback_reason, routes_hybrid, stale_symbols)

pytestmark = pytest.mark.unit

CREDS = Credentials("key", "secret")


# --- modes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,mode", [("rest", "rest"), (" Canary ", "canary"), ("PARALLEL", "parallel"),
                                      ("production", "production")])
def test_modes_parse(raw, mode):
    assert parse_mode(raw) == mode


@pytest.mark.parametrize("bad", ["", "prod", "hybrid", None, 3])
def test_a_bad_mode_is_a_config_error_that_lists_the_modes(bad):
    with pytest.raises(ConfigError, match="rest, canary, parallel, production"):
        parse_mode(bad)


def test_mode_precedence_argument_then_environment_then_production():
    assert resolve_mode(None, {}) == "production"
    assert resolve_mode(None, {"HYBRID_MODE": "canary"}) == "canary"
    assert resolve_mode("rest", {"HYBRID_MODE": "canary"}) == "rest"
    with pytest.raises(ConfigError, match="HYBRID_MODE 'bogus'"):
        resolve_mode(None, {"HYBRID_MODE": "bogus"})


def test_stream_config_takes_a_mode_and_a_rollout_policy():
    assert StreamConfig(credentials=CREDS).mode is None
    assert StreamConfig(credentials=CREDS, mode="Parallel").mode == "parallel"
    with pytest.raises(ConfigError):
        StreamConfig(credentials=CREDS, mode="shadow")
    with pytest.raises(ConfigError):
        StreamConfig(credentials=CREDS, rollout={"cutover_percent": 50})  # type: ignore[arg-type]


@pytest.mark.parametrize("field,value", [("rest_interval", 0), ("ticker_interval", -1), ("cutover_percent", 101),
                                         ("cutover_percent", -1), ("divergence_threshold", "0"),
                                         ("divergence_threshold", "1.5"), ("divergence_threshold", "x"),
                                         ("stale_after", math.inf), ("rollback_sub_failures", 0),
                                         ("auto_return", 0), ("rollback_on_crash_loop", "yes")])
def test_bad_rollout_values_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        RolloutPolicy(**{field: value})


@pytest.mark.parametrize("field", ["rest_interval", "ticker_interval"])
@pytest.mark.parametrize("value", [0.0001, 0.5])
def test_rest_polling_is_at_most_once_a_second(field, value):
    """rest_interval=0.0001 polled REST into Bybit's rate limit (10006)."""
    with pytest.raises(ConfigError, match=rf"^{field} must be at least 1 second .*got {value!r}$"):
        RolloutPolicy(**{field: value})
    assert getattr(RolloutPolicy(**{field: 1}), field) == 1


@pytest.mark.parametrize("value", [86_400.5, 1e308, math.inf, math.nan, -1.0])
def test_auto_return_is_at_most_a_day(value):
    """1e308 passed and then failed at run time as 'backoff maximum ... got inf' (64 x 1e308)."""
    with pytest.raises(ConfigError, match=r"auto_return must be a positive number of seconds up to 86400 \(a day\)"):
        RolloutPolicy(auto_return=value)
    assert RolloutPolicy(auto_return=86_400).auto_return == 86_400


def test_rollout_defaults_are_the_plans():
    policy = RolloutPolicy()
    assert (policy.rest_interval, policy.ticker_interval, policy.cutover_percent, policy.stale_after) == (5, 1, 100, 3)
    assert policy.divergence_threshold == Decimal("0.01")
    assert (policy.rollback_after_disconnect, policy.rollback_after_silence, policy.rollback_sub_failures) == (
        300, 300, 10)
    assert policy.auto_return is None and policy.rollback_on_crash_loop


# --- cutover -------------------------------------------------------------------------------------

KEYS = [("linear", f"SYM{i}USDT", i % 3) for i in range(2000)]


def test_cutover_is_stable_monotonic_and_close_to_the_percentage():
    at50 = {k for k in KEYS if routes_hybrid(k, 50)}
    assert at50 == {k for k in KEYS if routes_hybrid(k, 50)}  # same answer every time
    assert 900 < len(at50) < 1100
    at60 = {k for k in KEYS if routes_hybrid(k, 60)}
    assert at50 < at60  # raising the percentage only adds positions
    assert all(routes_hybrid(k, 100) for k in KEYS) and not any(routes_hybrid(k, 0) for k in KEYS)


def test_cutover_hash_does_not_depend_on_python_hash_salt():
    # SHA-256 based: the same answer in every process, whatever PYTHONHASHSEED says
    import hashlib

    digest = hashlib.sha256(b"linear:BTCUSDT:0").digest()
    bucket = int.from_bytes(digest[:8], "big") % 10_000
    assert routes_hybrid(("linear", "BTCUSDT", 0), bucket / 100 + 0.01)
    assert not routes_hybrid(("linear", "BTCUSDT", 0), bucket / 100)


# --- comparator ------------------------------------------------------------------------------------

def test_comparator_flags_two_percent_and_not_a_tenth_of_a_percent():
    comparator = Comparator(Decimal("0.01"))
    assert not comparator.compare("linear", "BTCUSDT", Decimal("100.1"), Decimal("100"))
    assert comparator.compare("linear", "BTCUSDT", Decimal("102"), Decimal("100"))
    assert not comparator.compare("linear", "BTCUSDT", Decimal("101"), Decimal("100"))  # exactly 1%: not over
    assert (comparator.comparisons, comparator.divergences) == (3, 1)
    assert comparator.max_ratio == divergence_ratio(Decimal("102"), Decimal("100"))
    assert comparator.last_divergence[:2] == ("linear", "BTCUSDT")
    assert divergence_ratio(Decimal(0), Decimal(0)) == 0


# --- stale marks -------------------------------------------------------------------------------------

def test_a_mark_is_stale_strictly_after_stale_after_seconds_without_a_tick():
    last = {"BTCUSDT": 100.0, "ETHUSDT": 102.5}
    since = {"BTCUSDT": 0.0, "ETHUSDT": 0.0, "SOLUSDT": 101.0}
    assert stale_symbols(["BTCUSDT", "ETHUSDT", "SOLUSDT"], last, since, 103.0, 3.0) == frozenset()
    assert stale_symbols(["BTCUSDT", "ETHUSDT", "SOLUSDT"], last, since, 103.01, 3.0) == {"BTCUSDT"}
    assert stale_symbols(["BTCUSDT", "ETHUSDT", "SOLUSDT"], last, since, 104.5, 3.0) == {"BTCUSDT", "SOLUSDT"}
    assert stale_symbols(["NEWUSDT"], last, since, 0.0, 3.0) == {"NEWUSDT"}  # never tracked, never ticked


# --- rollback triggers ------------------------------------------------------------------------------

UP = {"private": None, "public:linear": None}


def inputs(now: float, **overrides) -> TriggerInputs:
    values = {"now": now, "sockets_down_since": UP, "last_event_at": now, "open_positions": 0,
              "positions_open_since": None}
    values.update(overrides)
    return TriggerInputs(**values)


def test_disconnect_trigger_needs_every_socket_down_beyond_the_limit():
    policy = RolloutPolicy()
    both = {"private": 10.0, "public:linear": 20.0}
    assert rollback_reason(policy, inputs(320.0, sockets_down_since=both)) is None  # 300 s exactly
    assert "disconnected for 300s" in rollback_reason(policy, inputs(320.5, sockets_down_since=both))
    one = {"private": 10.0, "public:linear": None}
    assert rollback_reason(policy, inputs(10_000.0, sockets_down_since=one)) is None
    off = RolloutPolicy(rollback_after_disconnect=None)
    assert rollback_reason(off, inputs(10_000.0, sockets_down_since=both)) is None


def test_silence_trigger_counts_only_while_positions_are_open():
    policy = RolloutPolicy(rollback_after_silence=60.0)
    quiet = {"last_event_at": 100.0, "open_positions": 2, "positions_open_since": 50.0}
    assert rollback_reason(policy, inputs(160.0, **quiet)) is None
    assert "no events for 60s with 2 position(s)" in rollback_reason(policy, inputs(160.001, **quiet))
    assert rollback_reason(policy, inputs(1000.0, last_event_at=100.0, open_positions=0)) is None
    # no event at all yet: silence counts from when positions were first seen open
    never = {"last_event_at": None, "open_positions": 1, "positions_open_since": 900.0}
    assert rollback_reason(policy, inputs(960.0, **never)) is None
    assert rollback_reason(policy, inputs(961.0, **never)) is not None


def test_the_next_check_is_just_past_the_earliest_threshold_or_the_idle_cap():
    policy = RolloutPolicy(rollback_after_disconnect=120.0, rollback_after_silence=100.0)
    assert next_check(policy, inputs(10.0), idle=30.0) == 40.0  # nothing pending
    down = {"private": 5.0, "public:linear": 8.0}
    assert next_check(policy, inputs(10.0, sockets_down_since=down, last_event_at=0.0), idle=500.0) == 128.001
    quiet = {"last_event_at": 20.0, "open_positions": 1, "positions_open_since": 20.0}
    assert next_check(policy, inputs(30.0, **quiet), idle=500.0) == 120.001
    assert rollback_reason(policy, inputs(120.001, **quiet)) is not None  # and it fires there


def test_subscription_failure_trigger_is_more_than_n_within_an_hour_since_the_last_return():
    policy = RolloutPolicy(rollback_sub_failures=10)
    ten = tuple(float(t) for t in range(100, 110))
    assert rollback_reason(policy, inputs(200.0, subscription_failures=ten)) is None
    eleven = (*ten, 150.0)
    assert "11 subscription failures" in rollback_reason(policy, inputs(200.0, subscription_failures=eleven))
    assert rollback_reason(policy, inputs(3700.5, subscription_failures=eleven)) is None  # 100 s aged out
    assert rollback_reason(policy, inputs(200.0, subscription_failures=eleven), counting_since=120.0) is None


def test_subscription_trigger_also_fires_past_half_of_the_held_symbols_refused():
    """A refused symbol counts once while held: an account holding at most N symbols could
    never pass the count, every ticker refused or not. The share covers it."""
    policy = RolloutPolicy(rollback_sub_failures=10)
    four = tuple(float(t) for t in range(100, 104))
    assert rollback_reason(policy, inputs(200.0, subscription_failures=four, held_symbols=4, refused_symbols=2)) is None
    assert rollback_reason(policy, inputs(200.0, subscription_failures=four, held_symbols=4, refused_symbols=3)) == \
        "3 of 4 held symbols refused a ticker subscription (limit: half)"
    one = inputs(9000.0, subscription_failures=(100.0,), held_symbols=1, refused_symbols=1)  # a current state:
    assert rollback_reason(policy, one) is not None  # no hour ages it out, no return resets it
    assert rollback_reason(policy, one, counting_since=8000.0) is not None
    assert rollback_reason(policy, inputs(200.0, held_symbols=12, refused_symbols=1)) is None
    assert rollback_reason(policy, inputs(200.0)) is None  # nothing held
    assert rollback_reason(RolloutPolicy(rollback_sub_failures=None), one) is None  # off with the count


def test_crash_loop_trigger_and_its_switch():
    assert "crash loop: actor private" in rollback_reason(RolloutPolicy(), inputs(1.0, crash_loop="private"))
    assert rollback_reason(RolloutPolicy(rollback_on_crash_loop=False), inputs(1.0, crash_loop="private")) is None


# --- auto-return ---------------------------------------------------------------------------------------

def test_auto_return_needs_uninterrupted_health_for_its_period():
    gate = ReturnGate(RolloutPolicy(auto_return=60.0))
    gate.rolled_back(0.0)
    assert not gate.observe(10.0, True)
    assert not gate.observe(69.0, True)
    assert not gate.observe(69.5, False)  # one bad sample restarts the wait
    assert not gate.observe(70.0, True)
    assert not gate.observe(129.9, True)
    assert gate.observe(130.0, True)


def test_auto_return_is_off_by_default():
    gate = ReturnGate(RolloutPolicy())
    gate.rolled_back(0.0)
    assert not any(gate.observe(float(t), True) for t in range(0, 100_000, 100))


def test_auto_return_backs_off_after_repeated_rollbacks_so_it_cannot_flap():
    gate = ReturnGate(RolloutPolicy(auto_return=60.0, return_memory=3600.0))
    gate.rolled_back(0.0)
    assert gate.required(0.0) == 60.0
    gate.rolled_back(100.0)
    assert gate.required(100.0) == 120.0
    gate.rolled_back(300.0)
    assert gate.required(300.0) == 240.0
    for t in range(400, 2400, 200):
        gate.rolled_back(float(t))
    assert gate.required(2400.0) == 60.0 * 64  # capped
    assert gate.required(2400.0 + 3600.0) == 60.0  # forgotten after return_memory


def test_a_ticker_frame_is_a_sign_of_life_for_the_silence_trigger():
    from hybrid_actors.rollout import quiet_since, silent_for

    policy = RolloutPolicy(rollback_after_silence=60.0)
    # the last event is old, but frames of an open position's symbol keep coming (a quiet market)
    quiet = {"last_event_at": 100.0, "open_positions": 1, "positions_open_since": 50.0}
    assert rollback_reason(policy, inputs(500.0, last_frame_at=450.0, **quiet)) is None
    assert quiet_since(inputs(500.0, last_frame_at=450.0, **quiet)) == 450.0
    assert next_check(policy, inputs(500.0, last_frame_at=450.0, **quiet), idle=500.0) == 510.001
    assert silent_for(policy, inputs(510.0, last_frame_at=450.0, **quiet)) is None
    assert silent_for(policy, inputs(511.0, last_frame_at=450.0, **quiet)) == 61.0
    # a frame older than the last event does not pull it back
    assert quiet_since(inputs(120.0, last_frame_at=80.0, **quiet)) == 100.0
    # neither yet: from when positions were first seen open
    never = {"last_event_at": None, "last_frame_at": None, "open_positions": 1, "positions_open_since": 900.0}
    assert quiet_since(inputs(950.0, **never)) == 900.0
    assert silent_for(RolloutPolicy(rollback_after_silence=None), inputs(10_000.0, **never)) is None
