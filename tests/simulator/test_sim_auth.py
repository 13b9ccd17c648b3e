"""Private auth is checked for real: key, HMAC signature and expiry by the injected wall clock."""

from __future__ import annotations

import pytest
import trio

from conftest import load_vector
from hybrid_actors.testing.simulator import open_simulator
from sim_support import TEST_TIMEOUT, auth_args, config, connect, future_ms, recv, send

pytestmark = pytest.mark.integration

WORKED_FRAME = load_vector("auth_ok.json")["requests"][1]["frame"]


async def test_the_worked_example_authenticates_before_its_expiry(loopback_clock):
    assert WORKED_FRAME["args"][0] == "test_key"
    with trio.fail_after(TEST_TIMEOUT):
        cfg = config(api_key="test_key", api_secret="test_secret", wall_clock=lambda: 1_699_999_990.0)
        async with open_simulator(cfg) as sim:
            async with connect(sim.url("private")) as ws:
                await send(ws, WORKED_FRAME)
                reply = await recv(ws)
                assert reply["success"] is True and reply["op"] == "auth"
            attempt = await sim.observe.wait_auth(1)
            assert attempt.ok and attempt.reason == "ok"


async def test_expires_as_a_digit_string_is_accepted(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config(wall_clock=lambda: 1_699_999_990.0)) as sim:
            async with connect(sim.url("private")) as ws:
                await send(ws, {"op": "auth", "args": ["test_key", "1700000000000", WORKED_FRAME["args"][2]]})
                assert (await recv(ws))["success"] is True


@pytest.mark.parametrize("reason, mutate", [
    ("expired", lambda args: args),
    ("bad signature", lambda args: [args[0], args[1], "f" * 64]),
    ("unknown key", lambda args: ["other_key", args[1], args[2]]),
    ("malformed", lambda args: [args[0], 1.5, args[2]]),
    ("malformed", lambda args: args[:2]),
])
async def test_bad_auth_gets_params_error_and_the_socket_stays_usable(loopback_clock, reason, mutate):
    with trio.fail_after(TEST_TIMEOUT):
        # the wall clock is past the worked example's expiry, so the unchanged frame is expired
        async with open_simulator(config(wall_clock=lambda: 1_700_000_000.0)) as sim:
            async with connect(sim.url("private")) as ws:
                await send(ws, {"op": "auth", "args": mutate(list(WORKED_FRAME["args"]))})
                reply = await recv(ws)
                assert (reply["success"], reply["ret_msg"]) == (False, "Params Error")
                await send(ws, {"op": "subscribe", "args": ["position"], "req_id": "s"})
                refused = await recv(ws)
                assert (refused["success"], refused["ret_msg"], refused["req_id"]) == (
                    False, "Request not authorized", "s")
                await send(ws, {"op": "ping", "req_id": "p"})
                assert (await recv(ws))["op"] == "pong"  # still open and answering
                # a correct auth afterwards works on the same socket
                await send(ws, {"op": "auth", "args": auth_args(sim, future_ms(sim))})
                assert (await recv(ws))["success"] is True
            attempts = sim.observe.auth_attempts()
            assert [(a.ok, a.reason) for a in attempts] == [(False, reason), (True, "ok")]


async def test_subscribe_before_auth_is_not_authorized(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with connect(sim.url("private")) as ws:
                await send(ws, {"op": "subscribe", "args": ["position"]})
                assert (await recv(ws))["ret_msg"] == "Request not authorized"
                await send(ws, {"op": "auth", "args": auth_args(sim, future_ms(sim))})
                assert (await recv(ws))["success"] is True
                await send(ws, {"op": "subscribe", "args": ["position"]})
                assert (await recv(ws))["success"] is True
            assert sim.observe.requests("private", op="subscribe")[0].ret_msg == "Request not authorized"
