"""The one backoff policy (hybrid_actors/backoff.py): capped, jittered, overflow-free."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybrid_actors.backoff import RETRY_AFTER_MAX, Backoff
from hybrid_actors.config import RestartPolicy, SubscriptionPolicy
from hybrid_actors.errors import ConfigError

pytestmark = pytest.mark.unit


def test_delays_grow_from_initial_and_cap_at_maximum():
    policy = Backoff(initial=0.25, maximum=4.0, jitter=0.0)
    assert [policy.delay(n, random.Random(0)) for n in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.saturation == 4


@pytest.mark.parametrize("attempt", [1023, 1024, 1025, 10**6, 10**100])
def test_any_attempt_count_gives_the_capped_delay_without_overflow(attempt):
    # ``0.25 * 2 ** 1024`` raises OverflowError: the old formula ended the stream after ~4 h
    with pytest.raises(OverflowError):
        0.25 * 2 ** 1024
    policy = Backoff(initial=0.25, maximum=4.0)
    rng = random.Random(1)
    for _ in range(100):
        assert 2.0 <= policy.delay(attempt, rng) <= 4.0
    assert policy.nominal(attempt) == 4.0


def test_the_counter_stops_growing_at_saturation():
    policy = Backoff(initial=0.25, maximum=4.0)
    attempt = 0
    for _ in range(10**6):
        attempt = policy.next_attempt(attempt)
    assert attempt == policy.saturation == 4


def test_jitter_stays_within_its_band_and_spreads():
    policy = Backoff(initial=1.0, maximum=8.0, jitter=0.5)
    rng = random.Random(7)
    delays = [policy.delay(10, rng) for _ in range(2000)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert max(delays) - min(delays) > 3.5  # really random, not a constant
    assert 5.8 < sum(delays) / len(delays) < 6.2  # mean 0.75 * maximum


def test_retry_after_is_a_floor_and_is_itself_capped():
    policy = Backoff(initial=0.25, maximum=4.0)
    rng = random.Random(3)
    assert policy.delay(0, rng, retry_after=600.0) == 600.0  # Bybit's 10-minute IP ban
    assert policy.delay(10, rng, retry_after=0.1) <= 4.0  # shorter than the backoff: backoff wins
    assert policy.delay(0, rng, retry_after=1e12) == RETRY_AFTER_MAX  # an absurd header is bounded
    for odd in (None, 0.0, -5.0, math.nan, math.inf):
        assert policy.delay(0, rng, retry_after=odd) <= 0.25


def test_a_constant_policy():
    policy = Backoff(initial=2.0, maximum=2.0, jitter=0.0)
    assert policy.saturation == 0
    assert [policy.delay(n, random.Random(0)) for n in (0, 1, 10**6)] == [2.0, 2.0, 2.0]
    assert Backoff(initial=1.0, maximum=5.0, multiplier=1, jitter=0).delay(10**6, random.Random()) == 1.0


@pytest.mark.parametrize("kwargs", [
    {"initial": 0}, {"initial": -1}, {"initial": math.inf}, {"initial": math.nan}, {"maximum": 0.1},
    {"multiplier": 0.5}, {"multiplier": math.inf}, {"jitter": 1.5}, {"jitter": -0.1}, {"initial": True},
])
def test_bad_parameters_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        Backoff(**kwargs)


def test_negative_attempts_are_a_bug():
    with pytest.raises(ValueError, match="attempt"):
        Backoff().delay(-1, random.Random())


def test_the_configs_build_their_policy_and_reject_bad_combinations():
    assert RestartPolicy().backoff == Backoff(0.25, 4.0, jitter=0.5)
    assert SubscriptionPolicy(retry_initial=2, retry_max=30).backoff == Backoff(2, 30)
    with pytest.raises(ConfigError, match="maximum"):
        RestartPolicy(backoff_initial=10.0, backoff_max=1.0)
    with pytest.raises(ConfigError, match="jitter"):
        RestartPolicy(backoff_jitter=2.0)


@given(initial=st.floats(1e-6, 1e3), ratio=st.floats(1.0, 1e6), multiplier=st.floats(1.0, 100.0),
       jitter=st.floats(0.0, 1.0), attempt=st.integers(0, 10**9), seed=st.integers(0, 2**32))
def test_every_delay_is_finite_and_within_bounds(initial, ratio, multiplier, jitter, attempt, seed):
    policy = Backoff(initial=initial, maximum=initial * ratio, multiplier=multiplier, jitter=jitter)
    delay = policy.delay(attempt, random.Random(seed))
    assert math.isfinite(delay)
    assert policy.nominal(attempt) * (1 - jitter) - 1e-9 <= delay <= policy.maximum
    assert 0 <= policy.next_attempt(attempt) <= max(policy.saturation, 0)
