"""Both worked signature examples of BYBIT_V5.md (§2 WebSocket auth, §8 REST) reproduce,
and every ``requests`` entry of the vector files is checked against our encoders."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest

from foundation_helpers import load_vector, vector_names
from hybrid_actors.protocol import client, signing
from hybrid_actors.protocol.rest import (position_list_request, server_time_request, signed_headers,
                                         tickers_request)
from hybrid_actors.protocol.session import Session

pytestmark = pytest.mark.unit

KEY, SECRET, TS, RECV = "test_key", "test_secret", 1700000000000, 5000
WS_SIGNATURE = "bacffe7500499eb829bb58c45d36d1b3e5ac67c14eaeba91df5e99ccee013925"
REST_SIGNATURES = {
    "category=linear&symbol=BTCUSDT": "8246a593895fdfbe234404b5964466f60c219ba371d95e4cb691394e078f2346",
    "category=linear&settleCoin=USDT&limit=200": "403ab3e982aa278790cf6d898f5eea3def390ac8cecb40c5e747366179065e75",
    '{"category": "linear"}': "63c611c4bbc79c374a67547f4e3c0e8e5d31288d2d3517f47f20494b9d12a7d5",
}
#: what we send besides the four documented headers (pybit sends it too; BYBIT_V5.md §8)
EXTRA_HEADERS = {"X-BAPI-SIGN-TYPE": "2"}


# --- §2: WebSocket auth -------------------------------------------------------------

def test_ws_auth_payload_and_signature():
    assert signing.ws_auth_payload(TS) == "GET/realtime1700000000000"
    assert signing.ws_auth_signature(SECRET, TS) == WS_SIGNATURE


def test_ws_auth_frame_equals_the_vector_frame():
    worked = load_vector("auth_ok")["requests"][1]
    assert worked["signed_string"] == signing.ws_auth_payload(TS)
    assert json.loads(client.auth_frame(KEY, SECRET, TS)) == worked["frame"]
    assert json.loads(client.auth_frame(KEY, SECRET, TS)) == {"op": "auth", "args": [KEY, TS, WS_SIGNATURE]}


def test_session_auth_frame_is_the_worked_frame_plus_its_req_id():
    session = Session(None, id_prefix="a")
    frame = json.loads(session.auth(KEY, SECRET, TS))
    assert frame.pop("req_id") == "a1"
    assert frame == load_vector("auth_ok")["requests"][1]["frame"]


def test_ws_signature_matches_an_independent_hmac():
    for expires in (0, 1, 1662350400000, 9999999999999):
        expected = hmac.new(b"other secret", f"GET/realtime{expires}".encode(), hashlib.sha256).hexdigest()
        assert signing.ws_auth_signature("other secret", expires) == expected


# --- §8: REST -----------------------------------------------------------------------

@pytest.mark.parametrize("payload", sorted(REST_SIGNATURES))
def test_rest_signatures(payload):
    assert signing.rest_sign_payload(TS, KEY, RECV, payload) == f"1700000000000test_key5000{payload}"
    assert signing.rest_signature(SECRET, TS, KEY, RECV, payload) == REST_SIGNATURES[payload]


def test_post_body_signed_string_is_the_documented_one():
    assert (signing.rest_sign_payload(TS, KEY, RECV, '{"category": "linear"}')
            == '1700000000000test_key5000{"category": "linear"}')


@pytest.mark.parametrize("index", [1, 2])
def test_signed_headers_for_the_two_get_vectors(index):
    vector = load_vector("rest_position_list")["requests"][index]
    query = vector["signed_string"].removeprefix("1700000000000test_key5000")
    assert signing.rest_sign_payload(TS, KEY, RECV, query) == vector["signed_string"]
    headers = signed_headers(KEY, SECRET, TS, RECV, query)
    assert headers == {**vector["headers"], **EXTRA_HEADERS}


def test_position_list_request_for_the_settle_coin_vector():
    vector = load_vector("rest_position_list")["requests"][2]
    request = position_list_request(KEY, SECRET, category="linear", settle_coin="USDT", timestamp_ms=TS,
                                    recv_window_ms=RECV)
    assert request.query == "category=linear&settleCoin=USDT&limit=200"
    assert request.target == "/v5/position/list?category=linear&settleCoin=USDT&limit=200"
    assert request.signed
    assert dict(request.headers) == {**vector["headers"], **EXTRA_HEADERS}


def test_position_list_request_by_symbol_signs_exactly_the_query_it_sends():
    """By symbol we also send ``limit=200``, so the docs' signature cannot match; what must
    hold is that the signature covers exactly the query on the wire."""
    request = position_list_request(KEY, SECRET, category="linear", symbol="BTCUSDT", timestamp_ms=TS)
    assert request.query == "category=linear&symbol=BTCUSDT&limit=200"
    assert request.headers["X-BAPI-SIGN"] == signing.rest_signature(SECRET, TS, KEY, RECV, request.query)


def test_position_list_request_keeps_the_cursor_verbatim_and_signs_it():
    cursor = "LTCUSDT%2C1699948800031%2C0"
    request = position_list_request(KEY, SECRET, category="linear", settle_coin="USDT", timestamp_ms=TS,
                                    cursor=cursor)
    assert request.query == f"category=linear&settleCoin=USDT&limit=200&cursor={cursor}"
    assert request.headers["X-BAPI-SIGN"] == signing.rest_signature(SECRET, TS, KEY, RECV, request.query)


@pytest.mark.parametrize("kwargs", [dict(category="linear"), dict(category="linear", settle_coin="USDT", limit=0),
                                    dict(category="inverse", limit=201)])
def test_position_list_request_refuses_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        position_list_request(KEY, SECRET, timestamp_ms=TS, **kwargs)


def test_signed_request_repr_hides_the_signature():
    request = position_list_request(KEY, SECRET, category="inverse", timestamp_ms=TS)
    assert request.headers["X-BAPI-SIGN"] not in repr(request)


# --- every `requests` entry of the vector files is checked ------------------------------

REQUEST_CHECKS: dict[tuple[str, int], Callable[[Any], None]] = {}


def request_check(name: str, index: int):
    def register(check: Callable[[Any], None]) -> Callable[[Any], None]:
        REQUEST_CHECKS[(name, index)] = check
        return check
    return register


@request_check("auth_ok", 0)
def _docs_auth(entry: Any) -> None:
    frame = entry["frame"]
    ours = json.loads(client.auth_frame(frame["args"][0], "secret", frame["args"][1], req_id=frame["req_id"]))
    assert ours.keys() == frame.keys() and ours["args"][:2] == frame["args"][:2]


@request_check("auth_ok", 1)
def _worked_auth(entry: Any) -> None:
    assert json.loads(client.auth_frame(KEY, SECRET, entry["frame"]["args"][1])) == entry["frame"]


@request_check("pong_public", 0)
def _ping_with_id(entry: Any) -> None:
    assert json.loads(client.ping_frame(entry["frame"]["req_id"])) == entry["frame"]


@request_check("pong_public", 1)
def _ping_without_id(entry: Any) -> None:
    assert json.loads(client.ping_frame()) == entry["frame"]


@request_check("subscribe_ok", 0)
@request_check("subscribe_ok", 1)
@request_check("subscribe_ok", 2)
def _subscribe(entry: Any) -> None:
    frame = entry["frame"]
    assert json.loads(client.request_frame(frame["op"], frame["args"], frame.get("req_id"))) == frame


@request_check("rest_position_list", 0)
def _docs_position_list(entry: Any) -> None:
    first_line, *header_lines = entry["http"].splitlines()
    method, target = first_line.split(" ")
    request = position_list_request("xxxxxxxxxxxxxxxxxx", SECRET, category="inverse", symbol="BTCUSD",
                                     timestamp_ms=1672280218882, recv_window_ms=5000)
    assert method == "GET" and target.startswith(request.path + "?category=inverse&symbol=BTCUSD")
    documented = dict(line.split(": ", 1) for line in header_lines)
    assert documented.keys() <= request.headers.keys()
    assert {k: v for k, v in documented.items() if k != "X-BAPI-SIGN"} == {
        k: request.headers[k] for k in documented if k != "X-BAPI-SIGN"}


@request_check("rest_position_list", 1)
@request_check("rest_position_list", 2)
def _worked_position_list(entry: Any) -> None:
    query = entry["signed_string"].removeprefix(f"{TS}{KEY}{RECV}")
    assert signed_headers(KEY, SECRET, TS, RECV, query) == {**entry["headers"], **EXTRA_HEADERS}


@request_check("rest_tickers", 0)
def _tickers(entry: Any) -> None:
    request = tickers_request("inverse", "BTCUSD")
    assert f"GET {request.target}" == entry["http"]
    assert not request.signed and not request.headers


def test_every_vector_request_is_covered():
    present = {(name, i) for name in vector_names() for i, _ in enumerate(load_vector(name).get("requests") or [])}
    assert present == REQUEST_CHECKS.keys()


@pytest.mark.parametrize(("name", "index"), sorted(REQUEST_CHECKS))
def test_vector_request(name, index):
    REQUEST_CHECKS[(name, index)](load_vector(name)["requests"][index])


def test_public_requests_are_unsigned():
    assert tickers_request("linear").target == "/v5/market/tickers?category=linear"
    assert server_time_request().target == "/v5/market/time"
