"""Issue 11 through the CLI: ``--mode rest`` as a process against the simulator process, and
bad rollout flags (or a bad ``HYBRID_MODE``) exit 2 with a message naming them."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from procs import cli_env, run_cli, simulator

pytestmark = pytest.mark.system


async def test_mode_rest_streams_rest_events_without_any_websocket():
    async with simulator("--positions", "3", "--rate", "0", "--seed", "5") as sim:
        result = await run_cli("run", "--mode", "rest", "--stream-url", sim["ws_url"], "--rest-url",
                               sim["rest_url"], "--output", "jsonl", "--seconds", "4", "--log-level", "WARNING",
                               "--rest-interval", "2", env=cli_env(sim["api_key"], sim["api_secret"]), timeout=60)
        state = await _state(sim["rest_url"])
    assert result.returncode == 0, result.stderr.decode()
    lines = [json.loads(line) for line in result.stdout.splitlines() if line]
    events = [e for e in lines if e["event"].startswith("position.")]
    assert {e["event"] for e in lines} <= {"position.update", "stream.state"}
    linear = {p["symbol"] for p in state["positions"] if p["category"] == "linear" and p["size"] != "0"}
    assert linear and {e["symbol"] for e in events} == linear  # every open linear position, from REST
    assert {e["source"] for e in events} == {"rest"}
    assert {e["event"] for e in events} == {"position.update"}
    for event in events:
        Decimal(event["mark_price"])
    assert state["opened"]["private"] == 0 and state["opened"]["linear"] == 0  # no socket was opened


async def _state(rest_url: str) -> dict:
    import httpx

    async with httpx.AsyncClient() as client:
        return (await client.get(f"{rest_url}/control/state")).json()


async def test_hybrid_mode_from_the_environment_and_bad_rollout_flags_exit_2():
    env = cli_env("k", "s")
    env["HYBRID_MODE"] = "shadow"
    result = await run_cli("run", "--stream-url", "ws://127.0.0.1:1", env=env)
    assert result.returncode == 2 and b"HYBRID_MODE 'shadow' is not a mode" in result.stderr
    for flags, words in ((["--mode", "prod"], b"rest, canary, parallel, production"),
                         (["--cutover-percent", "150"], b"--cutover-percent"),
                         (["--divergence-threshold", "abc"], b"--divergence-threshold"),
                         (["--divergence-threshold", "0%"], b"--divergence-threshold"),
                         (["--stale-after", "-1"], b"--stale-after"),
                         (["--rollback-sub-failures", "-2"], b"--rollback-sub-failures"),
                         (["--rollback-after-silence", "nan"], b"--rollback-after-silence"),
                         (["--auto-return", "soon"], b"--auto-return"),
                         # not "backoff maximum must be a positive number of seconds, got inf"
                         (["--auto-return", "1e308"], b"--auto-return must be at most 86400 seconds"),
                         (["--auto-return", "inf"], b"--auto-return must be at most 86400 seconds"),
                         (["--rest-interval", "0.0001"], b"--rest-interval must be at least 1 second")):
        result = await run_cli("run", *flags, env=cli_env("k", "s"))
        assert result.returncode == 2, (flags, result.stderr)
        assert words in result.stderr, (flags, result.stderr)
