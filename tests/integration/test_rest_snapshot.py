"""Issue 8, defects 4 and 5: the REST snapshot against the simulator.

Paging stops on an empty page or a repeated cursor and is bounded per snapshot; a Classic
account's missing scopes (10001) are remembered and skipped; 10009 bans like HTTP 403.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from hybrid_actors import AuthRejected, StreamConfig
from hybrid_actors.errors import RestAuthError, RestUnavailable
from hybrid_actors.rest import IP_BAN_COOLDOWN, MAX_REQUESTS_PER_SNAPSHOT, UNSUPPORTED_RECHECK, RestClient, \
    open_rest_client
from hybrid_actors.supervisor import open_hybrid_stream
from hybrid_actors.testing.simulator import Simulator, open_simulator, trio_wall_clock
from stack import TEST_TIMEOUT, sim_config

pytestmark = pytest.mark.integration
LIST = "/v5/position/list"


@asynccontextmanager
async def rest_against_sim(coins: tuple[str, ...] = ("USDT", "USDC"),
                           **sim: Any) -> AsyncIterator[tuple[Simulator, RestClient]]:
    wall = trio_wall_clock()
    async with open_simulator(attrs.evolve(sim_config(**sim), wall_clock=wall)) as simulator, \
            open_rest_client(simulator.rest_url, simulator.credentials, wall_clock=wall,
                             linear_settle_coins=coins, rng=random.Random(3)) as rest:
        yield simulator, rest


def list_calls(sim: Simulator) -> int:
    return len(sim.observe.rest_calls(LIST))


@pytest.mark.parametrize("paging", ["last_page_cursor", "repeat_last_page"])
async def test_a_last_page_with_a_cursor_ends_the_paging(loopback_clock, paging):
    with trio.fail_after(TEST_TIMEOUT):
        async with rest_against_sim() as (sim, rest):
            for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
                sim.control.open_position(symbol, "Buy", "1")
            sim.control.open_position("BTCPERP", "Sell", "0.5")
            sim.control.set_account(paging=paging)
            snapshot = await rest.positions(["linear"])
            assert {p.symbol for p in snapshot.positions} == {"BTCUSDT", "ETHUSDT", "SOLUSDT", "BTCPERP"}
            # one page of data and one answer to its cursor per settle coin: no storm
            assert snapshot.requests == list_calls(sim) == 4
            assert snapshot.coverage == (("linear", "USDT"), ("linear", "USDC"))
            assert snapshot.truncated == () and rest.paging_problems == {}
            assert {p.symbol: p.settle_coin for p in snapshot.positions}["BTCPERP"] == "USDC"


async def test_paging_that_never_ends_is_bounded_and_reported(loopback_clock, caplog):
    with trio.fail_after(TEST_TIMEOUT):
        async with rest_against_sim(coins=("USDT",)) as (sim, rest):
            sim.control.open_position("BTCUSDT", "Buy", "1")
            sim.control.set_account(paging="endless")
            snapshot = await rest.positions(["linear", "inverse"])
            assert list_calls(sim) == snapshot.requests == MAX_REQUESTS_PER_SNAPSHOT
            assert [p.symbol for p in snapshot.positions] == ["BTCUSDT"]  # what was read is kept
            assert ("linear", "USDT") in snapshot.truncated and ("linear", "USDT") not in snapshot.coverage
            assert "bound of 50 requests" in rest.paging_problems[("linear", "USDT")]
            assert any("not reconciled" in r.getMessage() for r in caplog.records)

            sim.control.set_account(paging="normal")  # the exchange behaves again: so do we
            before = list_calls(sim)
            start = trio.current_time()
            healed = await rest.positions(["linear", "inverse"])
            # the 50th answer said X-Bapi-Limit-Status 0: the client waited for the window's reset
            # (X-Bapi-Limit-Reset-Timestamp) instead of drawing a 10006
            codes = [c.ret_code for c in sim.observe.rest_calls(LIST)][before:]
            assert codes == [0, 0] and healed.requests == 2 and rest.failures == 0
            assert 0 < trio.current_time() - start <= 1.0
            assert healed.coverage == (("linear", "USDT"), ("inverse", None)) and rest.paging_problems == {}


async def test_a_classic_account_skips_what_it_does_not_have_and_remembers(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with rest_against_sim() as (sim, rest):
            sim.control.set_account(classic=True)
            sim.control.open_position("BTCUSDT", "Buy", "1")
            sim.control.open_position("BTCUSD", "Sell", "100", category="inverse")
            snapshot = await rest.positions(["linear", "inverse", "option"])
            assert {p.symbol for p in snapshot.positions} == {"BTCUSDT", "BTCUSD"}
            assert snapshot.skipped == (("linear", "USDC"), ("option", None))
            assert snapshot.coverage == (("linear", "USDT"), ("inverse", None))
            assert set(rest.unsupported) == {("linear", "USDC"), ("option", None)}
            asked = [c.query for c in sim.observe.rest_calls(LIST)]
            assert sum("settleCoin=USDC" in q for q in asked) == 1 and sum("option" in q for q in asked) == 1

            again = await rest.positions(["linear", "inverse", "option"])
            assert again.skipped == snapshot.skipped and again.requests == 2  # not asked again
            assert [c.query for c in sim.observe.rest_calls(LIST)][len(asked):] == [
                "category=linear&settleCoin=USDT&limit=200", "category=inverse&limit=200"]


async def test_a_skipped_scope_is_asked_again_after_the_recheck_interval_and_covered_once_it_answers(
        loopback_clock, caplog):
    """A Classic account upgraded to Unified gains USDC contracts: within UNSUPPORTED_RECHECK
    the client asks again and covers them, where it used to skip them for its whole life."""
    with trio.fail_after(2 * UNSUPPORTED_RECHECK + TEST_TIMEOUT):
        async with rest_against_sim() as (sim, rest):
            sim.control.set_account(classic=True)
            first = await rest.positions(["linear"])
            assert first.skipped == (("linear", "USDC"),)

            await trio.sleep(UNSUPPORTED_RECHECK / 2)
            assert (await rest.positions(["linear"])).skipped == (("linear", "USDC"),)  # not yet asked
            usdc_asks = sum("settleCoin=USDC" in c.query for c in sim.observe.rest_calls(LIST))
            assert usdc_asks == 1

            await trio.sleep(UNSUPPORTED_RECHECK / 2)  # still Classic: asked again, skipped again
            assert (await rest.positions(["linear"])).skipped == (("linear", "USDC"),)
            assert sum("settleCoin=USDC" in c.query for c in sim.observe.rest_calls(LIST)) == 2
            warnings = [r for r in caplog.records if "does not have it" in r.getMessage()]
            assert len(warnings) == 1  # said once, not every hour

            sim.control.set_account(classic=False)  # upgraded to Unified
            sim.control.open_position("BTCPERP", "Buy", "0.2")
            assert (await rest.positions(["linear"])).skipped == (("linear", "USDC"),)  # within the hour
            await trio.sleep(UNSUPPORTED_RECHECK)
            upgraded = await rest.positions(["linear"])
            assert upgraded.skipped == () and ("linear", "USDC") in upgraded.coverage
            assert {p.symbol: p.settle_coin for p in upgraded.positions}["BTCPERP"] == "USDC"
            assert rest.unsupported == {}
            assert any("answers now" in r.getMessage() for r in caplog.records)


async def test_10009_ip_banned_cools_down_like_http_403(loopback_clock):
    with trio.fail_after(IP_BAN_COOLDOWN + TEST_TIMEOUT):
        async with rest_against_sim() as (sim, rest):
            await rest.sync_time()
            sim.control.rest_error(10009, "IP is banned", count=1, path=LIST)
            start = trio.current_time()
            with pytest.raises(RestUnavailable, match="IP ban") as banned:
                await rest.positions(["linear"])
            assert rest.banned_until == pytest.approx(start + IP_BAN_COOLDOWN, abs=1.0)
            assert banned.value.retry_after is not None and banned.value.retry_after > IP_BAN_COOLDOWN - 5
            assert list_calls(sim) == 1  # nothing more while banned
            with pytest.raises(RestUnavailable, match="IP ban"):
                await rest.positions(["linear"])
            assert list_calls(sim) == 1
            await trio.sleep_until(rest.banned_until + 0.001)
            snapshot = await rest.positions(["linear"])
            assert snapshot.coverage == (("linear", "USDT"), ("linear", "USDC"))


async def test_an_unusable_record_costs_its_symbol_the_closes_not_the_snapshot(loopback_clock, caplog):
    with trio.fail_after(TEST_TIMEOUT):
        async with rest_against_sim() as (sim, rest):
            for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
                sim.control.open_position(symbol, "Buy", "1")
            sim.control.open_position("BTCPERP", "Sell", "0.5")
            sim.control.rest_garble("ETHUSDT", {"size": "0.0.1"})
            snapshot = await rest.positions(["linear"])
            # the other records are there and both scopes are covered; ETHUSDT is uncertain
            assert {p.symbol for p in snapshot.positions} == {"BTCUSDT", "SOLUSDT", "BTCPERP"}
            assert snapshot.coverage == (("linear", "USDT"), ("linear", "USDC")) and snapshot.truncated == ()
            assert snapshot.uncertain == (("linear", "ETHUSDT"),)
            problem = rest.paging_problems[("linear", "USDT")]
            assert "1 record(s) unusable" in problem and "ETHUSDT" in problem and "0.0.1" in problem
            assert "those symbols' positions are not reconciled" in caplog.text
            # the next list is clean: nothing uncertain, the problem gone
            again = await rest.positions(["linear"])
            assert again.uncertain == () and rest.paging_problems == {}
            assert {p.symbol for p in again.positions} == {"BTCUSDT", "ETHUSDT", "SOLUSDT", "BTCPERP"}


async def test_an_unusable_record_without_a_symbol_costs_its_scope_the_closes(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with rest_against_sim() as (sim, rest):
            sim.control.open_position("BTCUSDT", "Buy", "1")
            sim.control.open_position("BTCPERP", "Sell", "0.5")
            sim.control.rest_garble("BTCUSDT", {"symbol": 7})
            snapshot = await rest.positions(["linear"])
            assert {p.symbol for p in snapshot.positions} == {"BTCPERP"}
            assert snapshot.coverage == (("linear", "USDC"),) and snapshot.truncated == (("linear", "USDT"),)


@pytest.mark.parametrize("garbled", [{"symbol": 7}, {"size": "0.0.1"}])
async def test_a_scope_cut_short_with_an_unusable_record_reports_both(loopback_clock, garbled):
    with trio.fail_after(TEST_TIMEOUT):
        async with rest_against_sim(coins=("USDT",)) as (sim, rest):
            sim.control.open_position("BTCUSDT", "Buy", "1")
            sim.control.open_position("ETHUSDT", "Buy", "1")
            sim.control.set_account(paging="endless")
            sim.control.rest_garble("BTCUSDT", garbled)
            snapshot = await rest.positions(["linear"])
            assert snapshot.truncated == (("linear", "USDT"),) and snapshot.coverage == ()
            problem = rest.paging_problems[("linear", "USDT")]
            assert "bound of 50 requests" in problem and "1 record(s) unusable" in problem, problem


# --- HTTP 401: Bybit's answer to missing or invalid authentication headers (BYBIT_V5.md §8) ---

async def test_a_401_with_a_gateway_page_twice_is_rejected_credentials_not_an_endless_outage(loopback_clock):
    """A 401 whose body is not Bybit's envelope (a gateway's HTML page) used to be retried as
    an outage forever. It is one signed call away from the verdict: signed anew with a freshly
    measured clock, a second 401 means the exchange refuses our headers, like 10003/10004."""
    with trio.fail_after(TEST_TIMEOUT):
        async with rest_against_sim() as (sim, rest):
            await rest.sync_time()
            sim.control.rest_http_error(401, count=None, path=LIST)
            start = trio.current_time()
            with pytest.raises(RestAuthError) as caught:
                await rest.positions(["linear"])
            assert isinstance(caught.value, AuthRejected) and caught.value.http_status == 401
            assert "HTTP 401" in str(caught.value) and "API key" in str(caught.value)
            assert sim.credentials.api_secret not in str(caught.value)
            assert list_calls(sim) == 2  # the call and its one confirmation
            assert len(sim.observe.rest_calls("/v5/market/time")) == 2  # the clock measured before confirming
            assert trio.current_time() - start < 1.0


async def test_a_401_with_bybits_auth_code_is_rejected_at_once(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with rest_against_sim() as (sim, rest):
            await rest.sync_time()
            await rest.positions(["linear"])
            before = list_calls(sim)
            sim.control.rest_error(10003, "API key is invalid.", count=None, path=LIST)
            with pytest.raises(RestAuthError, match="10003"):
                await rest.positions(["linear"])
            assert list_calls(sim) == before + 1


async def test_a_single_401_is_confirmed_once_and_the_snapshot_goes_on(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with rest_against_sim(coins=("USDT",)) as (sim, rest):
            sim.control.open_position("BTCUSDT", "Buy", "1")
            sim.control.rest_http_error(401, count=1, path=LIST)
            snapshot = await rest.positions(["linear"])
            assert [p.symbol for p in snapshot.positions] == ["BTCUSDT"]
            assert [c.status for c in sim.observe.rest_calls(LIST)] == [401, 200]


async def test_a_401_on_a_public_endpoint_is_an_outage_not_a_verdict_on_the_keys(loopback_clock):
    # /v5/market/time carries no credentials: whatever refused it, it was not our keys
    with trio.fail_after(TEST_TIMEOUT):
        async with rest_against_sim() as (sim, rest):
            sim.control.rest_http_error(401, count=None, path="/v5/market/time")
            with pytest.raises(RestUnavailable, match="401"):
                await rest.sync_time()
            assert len(sim.observe.rest_calls("/v5/market/time")) == rest.attempts


async def test_a_401_gateway_page_ends_the_stream_loudly_instead_of_retrying_forever(loopback_clock):
    wall = trio_wall_clock()
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(sim_config(wall_clock=wall)) as sim:
            sim.control.rest_http_error(401, count=None, path=LIST)
            config = StreamConfig(credentials=sim.credentials, endpoints=sim.endpoints)
            with pytest.raises(AuthRejected, match="HTTP 401"):
                async with open_hybrid_stream(config, wall_clock=wall):
                    pytest.fail("the stream must not start")
            assert trio.current_time() < 10.0
