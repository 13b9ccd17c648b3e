"""Issue 11: /metrics and /health of a running stream on the simulator, and the server itself."""

from __future__ import annotations

import json
from contextlib import suppress
from functools import partial
from decimal import Decimal
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from hybrid_actors import Credentials, StreamConfig
from hybrid_actors.errors import ConfigError
from hybrid_actors.http_endpoint import MAX_CONNECTIONS, REQUEST_TIMEOUT, HttpFetchError, Response, fetch_json, serve_http
from hybrid_actors.supervisor import build_health_report
from hybrid_actors.metrics import FAMILIES
from hybrid_actors.observability import health_json
from conftest import CUSHION_AUTOJUMP
from stack import TEST_TIMEOUT, running

pytestmark = pytest.mark.integration

#: the families issue 11 names (counters as the parser names them: without ``_total``)
ISSUE_FAMILIES = {
    "hybrid_connected": "gauge", "hybrid_reconnects": "counter", "hybrid_events": "counter",
    "hybrid_last_event_timestamp_seconds": "gauge", "hybrid_open_positions": "gauge",
    "hybrid_subscriptions": "gauge", "hybrid_subscription_failures": "counter",
    "hybrid_event_latency_seconds": "histogram", "hybrid_frame_to_event_seconds": "histogram",
    "hybrid_ping_rtt_seconds": "gauge", "hybrid_divergence_max_ratio": "gauge", "hybrid_divergences": "counter",
    "hybrid_mode": "gauge", "hybrid_rollbacks": "counter", "hybrid_conflated_updates": "counter",
    "hybrid_handler_errors": "counter", "hybrid_alerts_firing": "gauge",
}


async def http_get(url: str, path: str, method: str = "GET", raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.0-style client (not ours): send, read to EOF, split."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        request = raw or f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], metric: str, **labels: str) -> float:
    for family in fams.values():
        for s in family.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError((metric, labels))


async def open_two_positions(s) -> None:  # type: ignore[no-untyped-def]
    sim = s.sim
    sim.control.open_position("BTCUSDT", "Buy", "0.5", entry_price="60000.0")
    sim.control.open_position("ETHUSDT", "Sell", "2", entry_price="3000.00")
    await sim.observe.wait_subscribed("linear", ["BTCUSDT", "ETHUSDT"])
    sim.control.set_mark_price("BTCUSDT", "60100.0")
    await s.log.wait_for(lambda e: e.symbol == "BTCUSDT" and e.mark_price == Decimal("60100.0"))


async def test_metrics_parse_and_carry_every_family_of_the_running_stream(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running(metrics_port=0) as s:
            await open_two_positions(s)
            status, headers, body = await http_get(s.stream.metrics_url, "/metrics")
            assert status == 200 and headers["content-type"].startswith("text/plain")
            fams = families(body.decode())
            for name, kind in ISSUE_FAMILIES.items():
                assert name in fams, f"{name} missing from /metrics"
                assert fams[name].type == kind, (name, fams[name].type)
            assert {name for name, _ in FAMILIES} == set(ISSUE_FAMILIES)
            assert "process_resident_memory_bytes" in fams and "process_cpu_seconds" in fams
            # the values are the stream's
            health = s.stream.health()
            assert sample(fams, "hybrid_connected", socket="private") == 1
            assert sample(fams, "hybrid_connected", socket="public:linear") == 1
            assert sample(fams, "hybrid_open_positions", category="linear") == 2
            assert sample(fams, "hybrid_subscriptions", category="linear") == 2
            by_kind = s.hub.switch.by_kind  # what the consumer was handed
            assert sample(fams, "hybrid_events_total", event="position.update", source="ticker") \
                == by_kind[("position.update", "ticker")]
            assert sample(fams, "hybrid_event_latency_seconds_count") == s.hub.latency.exchange_to_event.count > 0
            assert sample(fams, "hybrid_frame_to_event_seconds_count") == s.hub.latency.frame_to_event.count
            assert sample(fams, "hybrid_mode", mode="production") == 1
            assert sample(fams, "hybrid_mode", mode="rest") == 0
            assert sample(fams, "hybrid_last_event_timestamp_seconds") == health.events["last_event_ms"] / 1000
            assert sample(fams, "hybrid_reconnects_total", socket="private") == 0
            key, secret = s.sim.credentials.api_key, s.sim.credentials.api_secret
            assert key.encode() not in body and secret.encode() not in body


def without_ages(value: Any) -> Any:
    """The report minus what moves with the clock between two reads."""
    if isinstance(value, dict):
        return {k: without_ages(v) for k, v in value.items()
                if not k.endswith(("_s", "age_s")) and k not in ("latency", "rtt_ms")}
    if isinstance(value, (list, tuple)):
        return [without_ages(v) for v in value]
    return value


async def test_health_matches_the_stream_and_lists_positions(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with running(metrics_port=0) as s:
            await open_two_positions(s)
            status, headers, body = await http_get(s.stream.metrics_url, "/health")
            assert status == 200 and headers["content-type"] == "application/json"
            served = json.loads(body)
            assert without_ages(served) == without_ages(json.loads(health_json(s.stream.health())))
            rows = {row["symbol"]: row for row in served["open_positions"]}
            btc = rows["BTCUSDT"]
            assert Decimal(btc["mark_price"]) == Decimal("60100") and btc["side"] == "Buy"
            assert Decimal(btc["unrealized_pnl"]) == Decimal("50") and Decimal(btc["entry_price"]) == 60000
            [view] = [v for v in s.stream.positions() if v.symbol == "BTCUSDT"]
            assert btc["mark_price"] == format(view.mark_price, "f")  # exactly the stream's, as a string
            assert rows["ETHUSDT"]["size"] == "2" and rows["ETHUSDT"]["category"] == "linear"
            assert served["positions"] == 2 and served["status"] == "ok"
            assert served["latency"]["exchange_to_event_ms"]["count"] >= 1
            assert set(served["latency"]["history"]) == {"slot_s", "exchange_to_event_p99_ms", "frame_to_event_p99_ms"}
            # our own client reads the same thing
            fetched = await fetch_json(s.stream.metrics_url + "/health")
            assert fetched["open_positions"] == served["open_positions"]
            # the alert actor's report (evaluated every second) skips the rows, and only them
            for_alerts = build_health_report(s.stream.hub, rows=False).as_dict()
            assert not for_alerts["open_positions"] and served["open_positions"]
            assert without_ages({**for_alerts, "open_positions": served["open_positions"]}) == without_ages(served)
            key = s.sim.credentials.api_key
            assert key not in body.decode() and s.sim.credentials.api_secret not in body.decode()


async def test_the_server_binds_loopback_by_default_and_stops_with_the_stream(loopback_clock):
    assert StreamConfig.__attrs_attrs__.metrics_host.default == "127.0.0.1"
    with trio.fail_after(TEST_TIMEOUT):
        async with running(metrics_port=0) as s:
            url = s.stream.metrics_url
            assert url is not None and url.startswith("http://127.0.0.1:")
        with pytest.raises(HttpFetchError):
            await fetch_json(url + "/health", timeout=2)
    async with running() as s:
        assert s.stream.metrics_url is None


async def test_a_taken_port_is_a_clear_configuration_error(loopback_clock):
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(serve_http, {})
            # the simulator's nursery around the stream groups the error
            with pytest.RaisesGroup(pytest.RaisesExc(ConfigError, match=rf"cannot listen on 127.0.0.1:{port}"),
                                    flatten_subgroups=True):
                async with running(metrics_port=port):
                    pass
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("bad", [0.5, -1, 70000, True, "9100"])
def test_metrics_port_must_be_a_port(bad):
    with pytest.raises(ConfigError, match="metrics_port"):
        StreamConfig(credentials=Credentials("abcdkey", "secret"), metrics_port=bad)


async def test_the_server_answers_errors_and_keeps_serving():
    calls = []

    def ok() -> Response:
        calls.append(1)
        return Response(200, "text/plain", b"fine")

    def broken() -> Response:
        raise RuntimeError("bug in a render")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_http, {"/ok": ok, "/broken": broken})
            url = f"http://{host}:{port}"
            assert (await http_get(url, "/nope"))[0] == 404
            assert (await http_get(url, "/ok", method="POST"))[0] == 405
            status, headers, body = await http_get(url, "/ok", method="HEAD")
            assert (status, headers["content-length"], body) == (200, "4", b"")
            assert (await http_get(url, "/broken"))[0] == 500
            assert (await http_get(url, "/", raw=b"NOT HTTP\r\n\r\n"))[0] == 400
            status, _, body = await http_get(url, "/ok?x=1")
            assert (status, body) == (200, b"fine")
            # keep-alive: two requests on one connection
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\n"
                                      b"Connection: close\r\n\r\n")
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
            assert data.count(b"HTTP/1.1 200") == 2
            nursery.cancel_scope.cancel()


async def test_idle_and_dribbling_clients_cannot_starve_a_real_request(loopback_clock):
    """One local client holding every slot (connections left idle, or sending a request a
    byte at a time) must not lock the scraper out: a new connection takes the slot of the
    one that has waited longest for its request, and is answered at once."""
    def ok() -> Response:
        return Response(200, "text/plain", b"fine")

    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_http, {"/ok": ok})
        url = f"http://{host}:{port}"
        idle = [await trio.open_tcp_stream(host, port) for _ in range(MAX_CONNECTIONS // 2)]
        dribbling = [await trio.open_tcp_stream(host, port) for _ in range(MAX_CONNECTIONS - len(idle))]
        for stream in dribbling:
            await stream.send_all(b"G")
        await trio.testing.wait_all_tasks_blocked()
        for n in range(3 * MAX_CONNECTIONS):  # more scrapes than slots: each evicts a squatter
            if n % 4 == 0:
                for stream in dribbling:  # they keep sending (a byte each)
                    with suppress(trio.BrokenResourceError):
                        await stream.send_all(b"E")
            asked_at = trio.current_time()
            with trio.fail_after(1):
                status, _, body = await http_get(url, "/ok")
            assert (status, body) == (200, b"fine"), n
            assert trio.current_time() - asked_at < 0.5
            idle.append(await trio.open_tcp_stream(host, port))  # the squatter takes the slot back
            await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(REQUEST_TIMEOUT + 1)
        for stream in idle + dribbling:  # evicted to make room, or closed at the request deadline
            with trio.fail_after(1):
                assert await stream.receive_some(10) == b""
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_silent_clients_time_out_and_a_cap_of_busy_connections_answers_503(loopback_clock):
    def ok() -> Response:
        return Response(200, "text/plain", b"fine")

    big = Response(200, "application/octet-stream", bytes(32 * 1024 * 1024))  # more than the socket buffers
    loopback_clock.autojump_threshold = CUSHION_AUTOJUMP  # megabytes through loopback: see conftest
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(partial(serve_http, {"/ok": ok, "/big": lambda: big}, max_connections=2))
        url = f"http://{host}:{port}"
        # a silent client is closed at the request deadline
        silent = await trio.open_tcp_stream(host, port)
        await trio.sleep(11)
        assert await silent.receive_some(10) == b""
        await silent.aclose()
        # two clients that ask for a large answer and never read it: both slots are busy
        # sending, none waits for a request, so a newcomer is refused rather than evicting
        stuck = [await trio.open_tcp_stream(host, port) for _ in range(2)]
        for stream in stuck:
            await stream.send_all(f"GET /big HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await trio.testing.wait_all_tasks_blocked()
        status, _, body = await http_get(url, "/ok")
        assert (status, body) == (503, b"too many connections\n")
        # A request the refusal leaves unread (a body larger than the socket buffers) still
        # gets its answer: the server drains it instead of resetting the connection.
        size = 8 * 1024 * 1024
        raw = f"POST /ok HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n\r\n".encode() + bytes(size)
        status, _, body = await http_get(url, "/ok", raw=raw)
        assert (status, body) == (503, b"too many connections\n")
        for stream in stuck:
            await stream.aclose()
        await trio.sleep(11)  # their sends hit the send deadline and free the slots
        assert (await http_get(url, "/ok"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_the_dashboard_command_renders_the_running_stream(loopback_clock):
    import io

    from rich.console import Console

    from hybrid_actors.dashboard import run_dashboard

    with trio.fail_after(TEST_TIMEOUT):
        async with running(metrics_port=0) as s:
            await open_two_positions(s)
            console = Console(record=True, width=200, file=io.StringIO(), color_system=None)
            await run_dashboard(s.stream.metrics_url, once=True, console=console)
            lines = console.export_text().splitlines()
            assert "OK" in lines[0] and "positions 2" in lines[0] and "mode production" in lines[0]
            [btc] = [line.split() for line in lines if line.split()[:1] == ["BTCUSDT"]]
            assert btc[:4] == ["BTCUSDT", "linear", "0", "Buy"]
            assert Decimal(btc[6]) == 60100 and Decimal(btc[7]) == 50 and btc[9] == "ticker"
            [eth] = [line.split() for line in lines if line.split()[:1] == ["ETHUSDT"]]
            assert eth[3] == "Sell"
            assert any(line.split()[:2] == ["public:linear", "up"] for line in lines)
            assert any(line.split()[:3] == ["linear", "2", "2"] for line in lines)
        with pytest.raises(HttpFetchError):  # the stream is gone
            await run_dashboard(s.stream.metrics_url, once=True, console=console)


async def test_a_non_loopback_bind_is_served_and_logged_as_reachable(loopback_clock, caplog):
    with trio.fail_after(TEST_TIMEOUT):
        async with running(metrics_port=0, metrics_host="0.0.0.0") as s:
            assert s.stream.metrics_url.startswith("http://0.0.0.0:")
            port = s.stream.metrics_url.rsplit(":", 1)[1]
            assert (await http_get(f"http://127.0.0.1:{port}", "/health"))[0] == 200
    assert any("other machines can read it" in r.getMessage() for r in caplog.records)
