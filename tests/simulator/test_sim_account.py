"""Account kinds and REST edges of the simulator (issue 8): Classic accounts ("None" sides,
no USDC / option: 10001), last pages that carry a cursor, endless cursors, X-Bapi-Limit*
headers and 10006, and a handshake refused on one path only."""

from __future__ import annotations

from urllib.parse import unquote

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected

from hybrid_actors.testing.simulator import open_simulator
from sim_support import TEST_TIMEOUT, assert_shape, config, connect, private_session, recv_where, vector
from test_sim_rest import REST_ITEM, get, positions_page, signed

pytestmark = pytest.mark.integration

PUSH_ITEM = vector("position_push.json", 0)["data"][0]


async def test_classic_account_says_None_for_flat_sides_and_lacks_usdc_and_option(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            sim.control.set_account(classic=True)
            with pytest.raises(ValueError, match="Classic"):
                sim.control.open_position("BTCPERP", "Buy", "0.1")  # a USDC perpetual
            async with private_session(sim) as ws, httpx.AsyncClient(base_url=sim.rest_url) as client:
                sim.control.open_position("BTCUSDT", "Buy", "0.5", position_idx=1)
                sim.control.open_position("BTCUSDT", "Sell", "0.2", position_idx=2)
                sim.control.close_position("BTCUSDT", position_idx=2)
                opened = await recv_where(ws, lambda f: f.get("topic") == "position")
                assert opened["data"][0]["side"] == "Buy"
                await recv_where(ws, lambda f: f.get("topic") == "position")
                closed = await recv_where(ws, lambda f: f.get("topic") == "position")
                record = closed["data"][0]
                assert (record["side"], record["size"], record["positionIdx"]) == ("None", "0", 2)
                assert set(record) == set(PUSH_ITEM)  # otherwise the recorded push's shape

                by_symbol = await positions_page(sim, client, "category=linear&symbol=BTCUSDT")
                sides = {item["positionIdx"]: item["side"] for item in by_symbol["result"]["list"]}
                assert sides == {1: "Buy", 2: "None"}
                assert_shape(by_symbol["result"]["list"][1], REST_ITEM)
                never = await positions_page(sim, client, "category=linear&symbol=ETHUSDT")
                assert never["result"]["list"][0]["side"] == "None"

                for query in ("category=linear&settleCoin=USDC", "category=option",
                              "category=linear&symbol=BTCPERP"):
                    refused = await positions_page(sim, client, query)
                    assert refused["retCode"] == 10001, (query, refused)
                    assert_shape(refused, vector("rest_errors.json", 0))
                assert (await positions_page(sim, client, "category=linear&settleCoin=USDT"))["retCode"] == 0
                assert (await positions_page(sim, client, "category=inverse"))["retCode"] == 0

            sim.control.set_account(classic=False)
            sim.control.open_position("BTCPERP", "Buy", "0.1")
            with pytest.raises(ValueError, match="close them first"):
                sim.control.set_account(classic=True)


def _cursor(body: dict) -> str:
    return body["result"]["nextPageCursor"]


def _symbols(body: dict) -> list[str]:
    return [item["symbol"] for item in body["result"]["list"]]


async def test_paging_modes(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
                sim.control.open_position(symbol, "Buy", "1")
            base = "category=linear&settleCoin=USDT&limit=2"
            async with httpx.AsyncClient(base_url=sim.rest_url) as client:
                async def page(cursor: str = "") -> dict:
                    return await positions_page(sim, client, f"{base}&cursor={cursor}" if cursor else base)

                first = await page()
                assert _symbols(first) == ["BTCUSDT", "ETHUSDT"] and _cursor(first)
                last = await page(_cursor(first))
                assert _symbols(last) == ["SOLUSDT"] and _cursor(last) == ""  # normal: "" ends it

                sim.control.set_account(paging="last_page_cursor")
                last = await page(_cursor(first))
                assert _symbols(last) == ["SOLUSDT"]
                assert unquote(_cursor(last)).startswith("SOLUSDT,")  # like the recorded last page
                after = await page(_cursor(last))
                assert _symbols(after) == [] and _cursor(after) == _cursor(last)  # the same cursor again

                sim.control.set_account(paging="repeat_last_page")
                again = await page(_cursor(last))
                assert _symbols(again) == ["ETHUSDT", "SOLUSDT"] and _cursor(again) == _cursor(last)

                sim.control.set_account(paging="endless")
                cursors = {_cursor(last)}
                cursor = _cursor(last)
                for _ in range(5):
                    body = await page(cursor)
                    assert _symbols(body) == ["ETHUSDT", "SOLUSDT"]  # the same rows, a new cursor
                    cursor = _cursor(body)
                    assert cursor and cursor not in cursors  # never the same, never ""
                    cursors.add(cursor)
                empty = await positions_page(sim, client, "category=linear&settleCoin=USDC")
                assert _symbols(empty) == [] and _cursor(empty)
                emptier = await positions_page(sim, client, f"category=linear&settleCoin=USDC&cursor={_cursor(empty)}")
                assert _symbols(emptier) == [] and _cursor(emptier) not in ("", _cursor(empty))


async def test_rest_answers_carry_rate_limit_headers_and_10006_past_the_limit(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            query = "category=linear&settleCoin=USDT"
            async with httpx.AsyncClient(base_url=sim.rest_url) as client:
                statuses = []
                for _ in range(50):
                    response = await client.get(f"/v5/position/list?{query}",
                                                headers=signed(sim, query))
                    assert response.json()["retCode"] == 0
                    assert response.headers["X-Bapi-Limit"] == "50"
                    reset = int(response.headers["X-Bapi-Limit-Reset-Timestamp"])
                    now_ms = int(sim.config.wall_clock() * 1000)
                    assert now_ms <= reset <= now_ms + 1000
                    statuses.append(int(response.headers["X-Bapi-Limit-Status"]))
                assert statuses == list(range(49, -1, -1))
                over = await positions_page(sim, client, query)
                assert (over["retCode"], over["retMsg"]) == (10006, "Too many visits!")
                await trio.sleep(1.0)
                assert (await positions_page(sim, client, query))["retCode"] == 0

                market = await client.get("/v5/market/time")
                assert market.headers["X-Bapi-Limit"] == "600"  # the IP limit: 600 per 5 s
                assert int(market.headers["X-Bapi-Limit-Status"]) == 599
                assert int(market.headers["X-Bapi-Limit-Reset-Timestamp"]) > 0
                assert (await get(client, "/v5/market/time"))["retCode"] == 0


async def test_a_handshake_refused_on_one_path_only(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            sim.control.reject_connections(None, status=403, target="/v5/public/option")
            for _ in range(3):
                with pytest.raises(ConnectionRejected) as refused:
                    async with connect(sim.url("option")):
                        pytest.fail("the option path should refuse")
                assert refused.value.status_code == 403
            for kind in ("linear", "inverse", "spot", "private"):
                async with connect(sim.url(kind)) as ws:
                    assert ws.closed is None
            with pytest.raises(ValueError, match="no WebSocket path"):
                sim.control.reject_connections(target="/v5/public/nope")
            sim.control.clear_faults()
            async with connect(sim.url("option")) as ws:
                assert ws.closed is None


async def test_the_21000_character_args_limit_of_a_public_connection(loopback_clock):
    from hybrid_actors.testing.simulator.public import ARGS_LIMIT_MESSAGE
    from sim_support import recv_control, send
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim, connect(sim.url("linear")) as ws:
            held = ["tickers.BTCUSDT", "tickers.ETHUSDT", "tickers.SOLUSDT"]
            await send(ws, {"op": "subscribe", "args": held, "req_id": "a"})
            assert (await recv_control(ws))["success"] is True
            used = sum(len(t) + 3 for t in held)
            # unknown symbols: each would fail on its own, but the frame is too long first
            filler = [f"tickers.X{i:06d}USDT" for i in range((21_000 - used) // 22 + 1)]
            assert used + sum(len(t) + 3 for t in filler) > 21_000 > sum(len(t) + 3 for t in filler)
            await send(ws, {"op": "subscribe", "args": filler, "req_id": "b"})
            refused = await recv_control(ws)
            assert_shape(refused, vector("subscribe_fail.json", 0))
            assert (refused["success"], refused["ret_msg"], refused["req_id"]) == (False, ARGS_LIMIT_MESSAGE, "b")
            assert sim.observe.subscribed_symbols("linear") == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}  # kept
            # without what the connection holds, the same frame fits (and its topics fail one by one)
            await send(ws, {"op": "unsubscribe", "args": held, "req_id": "c"})
            assert (await recv_control(ws))["success"] is True
            await send(ws, {"op": "subscribe", "args": filler, "req_id": "d"})
            answer = await recv_control(ws)
            assert answer["ret_msg"].startswith("error:handler not found,topic:tickers.X000000USDT")


async def test_usdc_contracts_are_settled_every_8_hours(loopback_clock):
    from decimal import Decimal

    from hybrid_actors.testing.simulator import trio_wall_clock
    wall = trio_wall_clock()
    with trio.fail_after(9 * 3600):
        # no idle cut: this raw socket sends no pings for hours
        async with open_simulator(config(wall_clock=wall, default_max_active_time=10 * 3600)) as sim:
            async with private_session(sim) as ws, httpx.AsyncClient(base_url=sim.rest_url) as client:
                sim.control.open_position("BTCPERP", "Buy", "0.5", entry_price="100000.00")
                sim.control.open_position("BTCUSDT", "Buy", "0.5", entry_price="100000.00")
                opened = (await recv_where(ws, lambda f: f.get("topic") == "position"))["data"][0]
                assert opened["sessionAvgPrice"] == "100000.00"  # a USDC contract's session starts at entry
                usdt = (await recv_where(ws, lambda f: f.get("topic") == "position"))["data"][0]
                assert usdt["sessionAvgPrice"] == "0"  # as in the recorded USDT record
                sim.control.set_mark_price("BTCPERP", "101000.00")
                sim.control.set_mark_price("BTCUSDT", "101000.00")

                settled = (await recv_where(ws, lambda f: f.get("topic") == "position"))["data"][0]
                assert wall() % (8 * 3600) == pytest.approx(0, abs=1e-6)  # at 00:00 / 08:00 / 16:00 UTC
                assert set(settled) == set(PUSH_ITEM)
                assert settled["symbol"] == "BTCPERP"
                assert (settled["sessionAvgPrice"], settled["entryPrice"]) == ("101000.00", "100000")
                assert Decimal(settled["curRealisedPnl"]) == Decimal("500")  # 1000 * 0.5, realised
                assert Decimal(settled["unrealisedPnl"]) == 0
                body = await positions_page(sim, client, "category=linear&settleCoin=USDC")
                [item] = body["result"]["list"]
                assert (item["sessionAvgPrice"], item["avgPrice"]) == ("101000.00", "100000")
                usdt_now = await positions_page(sim, client, "category=linear&symbol=BTCUSDT")
                assert usdt_now["result"]["list"][0]["sessionAvgPrice"] == ""  # as in the recorded REST record
                assert [p.symbol for p in sim.control.settle_usdc()] == ["BTCPERP"]
