"""REST: signed /v5/position/list (signature vectors, 10002/10003/10004, pagination),
/v5/market/tickers (shapes, agreement with the stream, divergence knob), /v5/market/time."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import unquote

import httpx
import orjson
import pytest
import trio

from conftest import load_vector
from hybrid_actors.protocol.signing import rest_signature
from hybrid_actors.testing.simulator import open_simulator
from sim_support import TEST_TIMEOUT, assert_shape, config, connect, recv, send, vector

pytestmark = pytest.mark.integration

VECTOR_CLOCK = 1_700_000_000.5  # the signature vectors are signed at 1700000000000 ms
REST_ITEM = dict(vector("rest_position_list.json", 0)["result"]["list"][0])
# the docs example spells it mmrSysUpdateTime; real captures (ccxt) and the WS use mmrSysUpdatedTime
REST_ITEM["mmrSysUpdatedTime"] = REST_ITEM.pop("mmrSysUpdateTime")


def signed(sim, query: str, *, ts: int | None = None, recv_window: int = 5000, secret: str | None = None,
           key: str | None = None) -> dict[str, str]:
    ts = int(sim.config.wall_clock() * 1000) if ts is None else ts
    key = sim.api_key if key is None else key
    return {"X-BAPI-API-KEY": key, "X-BAPI-TIMESTAMP": str(ts), "X-BAPI-RECV-WINDOW": str(recv_window),
            "X-BAPI-SIGN": rest_signature(secret or sim.api_secret, ts, key, recv_window, query),
            "X-BAPI-SIGN-TYPE": "2"}


async def get(client: httpx.AsyncClient, path: str, query: str = "", headers: dict | None = None) -> dict:
    response = await client.get(f"{path}?{query}" if query else path, headers=headers)
    assert response.status_code == 200, response.text
    return orjson.loads(response.content)


async def positions_page(sim, client, query: str) -> dict:
    return await get(client, "/v5/position/list", query, signed(sim, query))


async def test_signature_vectors_verify(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config(wall_clock=lambda: VECTOR_CLOCK)) as sim:
            async with httpx.AsyncClient(base_url=sim.rest_url) as client:
                for request in load_vector("rest_position_list.json")["requests"][1:]:
                    query = request["signed_string"][len("1700000000000test_key5000"):]
                    body = await get(client, "/v5/position/list", query, request["headers"])
                    assert body["retCode"] == 0, body
                    assert body["result"]["category"] == "linear"
            assert [c.ret_code for c in sim.observe.rest_calls("/v5/position/list")] == [0, 0]


async def test_auth_errors_have_the_documented_bodies(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config(wall_clock=lambda: VECTOR_CLOCK)) as sim:
            query = "category=linear&symbol=BTCUSDT"
            async with httpx.AsyncClient(base_url=sim.rest_url) as client:
                bad_key = await get(client, "/v5/position/list", query, signed(sim, query, key="nope"))
                assert_shape(bad_key, vector("rest_errors.json", 0))
                assert (bad_key["retCode"], bad_key["retMsg"]) == (10003, "API key is invalid.")

                bad_sign = await get(client, "/v5/position/list", query, signed(sim, query, secret="wrong"))
                assert_shape(bad_sign, vector("rest_errors.json", 1))
                assert bad_sign["retCode"] == 10004
                assert bad_sign["retMsg"] == f"error sign! origin_string[1700000000500test_key5000{query}]"

                # the query on the wire differs from the signed one (e.g. re-ordered): refused
                reordered = await get(client, "/v5/position/list", "symbol=BTCUSDT&category=linear",
                                      signed(sim, query))
                assert reordered["retCode"] == 10004

                server_ms = 1_700_000_000_500
                for ts, window, ok in ((server_ms - 5000, 5000, True), (server_ms - 5001, 5000, False),
                                       (server_ms + 999, 5000, True), (server_ms + 1000, 50_000, False)):
                    body = await get(client, "/v5/position/list", query, signed(sim, query, ts=ts, recv_window=window))
                    if ok:
                        assert body["retCode"] == 0, (ts, body)
                    else:
                        assert_shape(body, vector("rest_errors.json", 2))
                        assert body["retCode"] == 10002
                        assert body["retMsg"] == (
                            "invalid request, please check your server timestamp or recv_window param. "
                            f"req_timestamp[{ts}],server_timestamp[{server_ms}],recv_window[{window}]")
                missing = await get(client, "/v5/position/list", query)
                assert missing["retCode"] == 10003


async def test_parameter_rules(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            async with httpx.AsyncClient(base_url=sim.rest_url) as client:
                for query, ok in (("", False), ("category=spot&symbol=BTCUSDT", False),
                                  ("category=linear", False), ("category=linear&settleCoin=USDT", True),
                                  ("category=linear&symbol=BTCUSDT", True), ("category=inverse", True),
                                  ("category=option", True), ("category=linear&settleCoin=USDT&limit=201", False),
                                  ("category=linear&settleCoin=USDT&limit=0", False),
                                  ("category=linear&symbol=NOPEUSDT", False)):
                    body = await positions_page(sim, client, query)
                    assert (body["retCode"] == 0) is ok, (query, body)
                    if not ok:
                        assert body["retCode"] == 10001 and body["result"] == {}


async def test_pagination_returns_every_position_exactly_once(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config(symbols=60)) as sim:
            for symbol in sim.symbols("linear")[:47]:
                inst = sim.exchange.market.require("linear", symbol).instrument
                sim.control.open_position(symbol, "Buy", inst.qty_step * 3)
            sim.control.open_position("BTCUSDT", "Sell", "0.001", position_idx=2)  # a hedge leg: 48 USDT+USDC
            sim.control.close_position(sim.symbols("linear")[5])  # flat: not listed without symbol
            expected = {(p.symbol, p.position_idx) for p in sim.observe.positions("linear", open_only=True)}
            async with httpx.AsyncClient(base_url=sim.rest_url) as client:
                for settle in ("USDT", "USDC"):
                    seen: list[tuple[str, int]] = []
                    cursor, pages = "", 0
                    while True:
                        query = f"category=linear&settleCoin={settle}" + (f"&cursor={cursor}" if cursor else "")
                        result = (await positions_page(sim, client, query))["result"]
                        pages += 1
                        assert len(result["list"]) <= 20
                        seen += [(item["symbol"], item["positionIdx"]) for item in result["list"]]
                        cursor = result["nextPageCursor"]
                        if not cursor:
                            break
                        assert "," not in cursor and "," in unquote(cursor)  # opaque, URL-encoded
                    assert len(seen) == len(set(seen))
                    settled = {k for k in expected
                               if sim.exchange.market.require("linear", k[0]).instrument.settle_coin == settle}
                    assert set(seen) == settled
                    if settle == "USDT":
                        assert len(seen) > 40 and pages == 3
                big = (await positions_page(sim, client, "category=linear&settleCoin=USDT&limit=200"))["result"]
                assert big["nextPageCursor"] == "" and len(big["list"]) > 40


async def test_records_by_symbol_include_flat_ones_and_match_the_recorded_shape(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            sim.control.open_position("ETHUSDT", "Buy", "1", entry_price="3000")
            sim.control.open_position("SOLUSDT", "Sell", "5")
            sim.control.close_position("SOLUSDT")
            async with httpx.AsyncClient(base_url=sim.rest_url) as client:
                body = await positions_page(sim, client, "category=linear&symbol=ETHUSDT")
                assert_shape(body, vector("rest_position_list.json", 0) | {"result": {
                    "list": [REST_ITEM], "nextPageCursor": "", "category": "linear"}})
                item = body["result"]["list"][0]
                assert (item["avgPrice"], item["side"], item["size"]) == ("3000", "Buy", "1")
                assert "entryPrice" not in item and "category" not in item
                mark = sim.observe.mark_price("linear", "ETHUSDT")
                assert Decimal(item["markPrice"]) == mark
                assert Decimal(item["unrealisedPnl"]) == mark - 3000

                flat = (await positions_page(sim, client, "category=linear&symbol=SOLUSDT"))["result"]["list"]
                assert [(i["side"], i["size"], i["avgPrice"]) for i in flat] == [("", "0", "0")]
                never = (await positions_page(sim, client, "category=linear&symbol=XRPUSDT"))["result"]["list"]
                assert [(i["side"], i["size"], i["seq"]) for i in never] == [("", "0", -1)]
                listed = (await positions_page(sim, client, "category=linear&settleCoin=USDT"))["result"]["list"]
                assert [i["symbol"] for i in listed] == ["ETHUSDT"]
                empty = await positions_page(sim, client, "category=inverse")
                assert_shape(empty, vector("rest_position_list.json", 3) | {"result": {
                    "list": [], "nextPageCursor": "", "category": "inverse"}})


async def test_tickers_shapes_and_agreement_with_the_stream(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            shapes = {"linear": 0, "inverse": 0, "option": 1, "spot": 2}
            async with httpx.AsyncClient(base_url=sim.rest_url) as client:
                for category, index in shapes.items():
                    symbol = sim.symbols(category)[0]
                    body = await get(client, "/v5/market/tickers", f"category={category}&symbol={symbol}")
                    recorded = vector("rest_tickers.json", index)
                    assert_shape(body, recorded | {"result": recorded["result"] | {"category": category}})
                everything = await get(client, "/v5/market/tickers", "category=linear")
                assert [i["symbol"] for i in everything["result"]["list"]] == sim.symbols("linear")
                for query in ("", "category=futures", "category=linear&symbol=NOPE", "category=option"):
                    assert (await get(client, "/v5/market/tickers", query))["retCode"] == 10001
                by_base = await get(client, "/v5/market/tickers", "category=option&baseCoin=ETH")
                assert {i["symbol"].split("-")[0] for i in by_base["result"]["list"]} == {"ETH"}

                async with connect(sim.url("linear")) as ws:
                    await send(ws, {"op": "subscribe", "args": ["tickers.BTCUSDT"]})
                    await recv(ws)
                    merged = (await recv(ws))["data"]
                    for _ in range(20):
                        await sim.control.tick()
                        merged.update((await recv(ws))["data"])
                    rest = (await get(client, "/v5/market/tickers", "category=linear&symbol=BTCUSDT"))
                    assert rest["result"]["list"][0]["markPrice"] == merged["markPrice"]

                    sim.control.set_rest_divergence("1.5")
                    rest = (await get(client, "/v5/market/tickers", "category=linear&symbol=BTCUSDT"))
                    diverged = Decimal(rest["result"]["list"][0]["markPrice"])
                    stream = Decimal(merged["markPrice"])
                    assert diverged == (stream * Decimal("1.015")).quantize(Decimal("0.1"))
                    assert sim.observe.mark_price("linear", "BTCUSDT") == stream  # the stream is unchanged
                    sim.control.set_rest_divergence(0)
                    rest = (await get(client, "/v5/market/tickers", "category=linear&symbol=BTCUSDT"))
                    assert rest["result"]["list"][0]["markPrice"] == merged["markPrice"]


async def test_server_time(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config(wall_clock=lambda: 1_700_000_000.25)) as sim:
            async with httpx.AsyncClient(base_url=sim.rest_url) as client:
                body = await get(client, "/v5/market/time")
                assert body == {"retCode": 0, "retMsg": "OK", "result": {
                    "timeSecond": "1700000000", "timeNano": "1700000000250000000"},
                    "retExtInfo": {}, "time": 1700000000250}
                assert (await client.get("/v5/nothing/here")).status_code == 404


async def test_keep_alive_serves_several_requests_on_one_connection(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            host, port = sim.rest_url.removeprefix("http://").split(":")
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                request = b"GET /v5/market/time HTTP/1.1\r\nHost: sim\r\n\r\n"
                await stream.send_all(request * 3)
                received = b""
                while received.count(b"HTTP/1.1 200") < 3 or not received.endswith(b"}"):
                    received += await stream.receive_some(65536)
                assert received.count(b'"retCode":0') == 3
            assert len(sim.observe.rest_calls("/v5/market/time")) == 3


async def test_http_garbage_gets_400_and_the_server_keeps_serving(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with open_simulator(config()) as sim:
            host, port = sim.rest_url.removeprefix("http://").split(":")
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
                answer = b""
                while chunk := await stream.receive_some(65536):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 400")
            async with httpx.AsyncClient(base_url=sim.rest_url) as client:
                assert (await get(client, "/v5/market/time"))["retCode"] == 0
