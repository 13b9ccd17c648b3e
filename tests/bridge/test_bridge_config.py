"""BybitHybridStream's arguments: checked at construction, with messages that say what to do;
the secret never shows; extra StreamConfig options pass through; the lazy export works.
No event loop is needed for any of this."""

from __future__ import annotations

import pytest

import hybrid_actors
from hybrid_actors import BybitHybridStream, ConfigError, Endpoints, SubscriptionPolicy
from hybrid_actors.bridge import BybitHybridStream as FromModule

pytestmark = pytest.mark.system

SECRET = "another-secret-never-to-print-9876"


async def handler(event_name: str, data: dict) -> None:
    return None


def make(**kwargs):
    args = {"api_key": "abcdEFGH1234", "api_secret": SECRET, "event_handler": handler, **kwargs}
    return BybitHybridStream(**args)


def test_the_package_exports_the_class_lazily():
    assert hybrid_actors.BybitHybridStream is FromModule
    assert "BybitHybridStream" in hybrid_actors.__all__


def test_the_original_plans_call_works_and_defaults_to_mainnet():
    stream = BybitHybridStream(api_key="abcdEFGH1234", api_secret=SECRET, event_handler=handler, testnet=False)
    config = stream.config
    assert config.endpoints.ws_private_url == "wss://stream.bybit.com/v5/private"
    assert config.endpoints.rest_url == "https://api.bybit.com"
    assert config.categories == ("linear",) and stream.mode == "production" and stream.state == "new"
    assert BybitHybridStream("k", SECRET, handler, True).config.endpoints.rest_url == "https://api-testnet.bybit.com"


def test_repr_and_config_never_show_the_secret():
    stream = make()
    for text in (repr(stream), str(stream), repr(stream.config)):
        assert SECRET not in text
    assert "abcd" in repr(stream) and "EFGH1234" not in repr(stream)


def test_extra_stream_config_options_pass_through():
    policy = SubscriptionPolicy(unsubscribe_grace=0.5)
    stream = make(categories=["linear", "inverse"], stream_url="ws://127.0.0.1:9", rest_url="http://127.0.0.1:9",
                  heartbeat_interval=5, subscriptions=policy, event_buffer=64)
    config = stream.config
    assert config.categories == ("linear", "inverse") and config.heartbeat_interval == 5
    assert config.subscriptions is policy and config.event_buffer == 64
    assert config.endpoints.ws_private_url == "ws://127.0.0.1:9/v5/private"
    assert config.endpoints.public_url("inverse") == "ws://127.0.0.1:9/v5/public/inverse"


@pytest.mark.parametrize("mode", ["production", "canary", "parallel", "rest", "PRODUCTION"])
def test_every_rollout_mode_is_accepted(mode, monkeypatch):
    monkeypatch.delenv("HYBRID_MODE", raising=False)
    stream = make(mode=mode)
    assert stream.mode == mode.lower() and stream.config.mode == mode.lower()


def test_mode_none_takes_hybrid_mode_from_the_environment(monkeypatch):
    monkeypatch.delenv("HYBRID_MODE", raising=False)
    assert make(mode=None).mode == "production"
    monkeypatch.setenv("HYBRID_MODE", "canary")
    assert make(mode=None).mode == "canary"
    assert make(mode="rest").mode == "rest"  # the argument wins
    monkeypatch.setenv("HYBRID_MODE", "shadow")
    with pytest.raises(ConfigError, match="HYBRID_MODE 'shadow' is not a mode"):
        make(mode=None)


@pytest.mark.parametrize("mode", ["shadow", "hybrid", ""])
def test_unknown_modes_are_refused_naming_the_modes(mode):
    with pytest.raises(ConfigError, match="choose one of rest, canary, parallel, production"):
        make(mode=mode)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"api_key": ""}, "api_key must be a non-empty string"),
    ({"api_secret": "  "}, "api_secret must be a non-empty string"),
    ({"api_secret": None}, "api_secret must be a non-empty string"),
    ({"event_handler": "not callable"}, "event_handler must be a callable handler"),
    ({"demo": "yes"}, "demo must be True or False"),
    ({"demo": True, "testnet": True}, "^testnet and demo exclude each other"),
    ({"endpoints": "wss://x"}, "endpoints must be a hybrid_actors.Endpoints"),
    ({"endpoints": Endpoints.demo(), "rest_url": "http://127.0.0.1:1"}, "endpoints= already says.*drop rest_url"),
    ({"stall_threshold": 0}, "stall_threshold must be a positive number"),
    ({"testnet": 1}, "testnet must be True or False"),
    ({"start_timeout": 0}, "start_timeout must be a positive number of seconds or None"),
    ({"stop_timeout": None}, "stop_timeout must be a positive number of seconds"),
    ({"credentials": object()}, "pass api_key and api_secret as arguments"),
    ({"heartbeat_intervl": 5}, "unknown option heartbeat_intervl=.*heartbeat_interval"),
    ({"heartbeat_interval": -1}, "heartbeat_interval must be a positive number"),
    ({"categories": ["spot"]}, "category 'spot' cannot hold positions"),
    ({"stream_url": "http://x"}, "^stream_url 'http://x' is not a ws/wss:// URL"),
])
def test_bad_arguments_raise_config_error_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message) as caught:
        make(**kwargs)
    assert SECRET not in str(caught.value)


def test_stop_before_start_is_a_no_op_and_the_stream_cannot_start_afterwards():
    import asyncio

    async def main() -> None:
        stream = make()
        await stream.stop()
        await stream.stop()
        assert stream.state == "stopped"
        with pytest.raises(RuntimeError, match="already called"):
            await stream.start()

    asyncio.run(main())
