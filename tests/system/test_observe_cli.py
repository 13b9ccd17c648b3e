"""Issue 11 from the command line: `demo --metrics-port 0` serves /metrics and /health on
127.0.0.1, and `dashboard --url … --once` renders that running stream."""

from __future__ import annotations

import re
import subprocess

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from hybrid_actors.http_endpoint import fetch_json
from procs import LineReader, cli_env, interrupt, run_cli, start_cli

pytestmark = pytest.mark.system


async def test_demo_serves_metrics_and_the_dashboard_command_shows_it():
    async with trio.open_nursery() as nursery:
        proc = await start_cli(nursery, "demo", "--positions", "4", "--metrics-port", "0", "--output", "jsonl",
                               "--seconds", "60", "--log-level", "INFO", env=cli_env(None, None),
                               stdout=subprocess.DEVNULL)
        try:
            reader = LineReader(proc.stderr)
            with trio.fail_after(30):
                while True:
                    line = await reader.readline()
                    assert line is not None, "the demo ended before announcing its metrics server"
                    found = re.search(rb"metrics at (http://127\.0\.0\.1:\d+)/metrics", line)
                    if found:
                        url = found.group(1).decode()
                        break
            nursery.start_soon(reader.lines)  # keep reading the log: a full pipe would stall the demo
            with trio.fail_after(30):
                health = await fetch_json(url + "/health")
                while not health["open_positions"]:
                    await trio.sleep(0.2)  # the demo is another process on the real clock: poll its /health
                    health = await fetch_json(url + "/health")
                result = await run_cli("dashboard", "--url", url, "--once", "--rows", "50")
            assert result.returncode == 0, result.stderr.decode()[-2000:]
            out = result.stdout.decode()
            assert "hybrid_actors" in out and "public:linear" in out and "exchange → event" in out
            symbols = {row["symbol"] for row in health["open_positions"]}
            assert any(symbol in out for symbol in symbols)
            text = await _get_text(url + "/metrics")
            names = {family.name for family in text_string_to_metric_families(text)}
            assert {"hybrid_connected", "hybrid_events", "hybrid_event_latency_seconds",
                    "process_resident_memory_bytes"} <= names
        finally:
            await interrupt(proc)


async def _get_text(url: str) -> str:
    host, port = url.removeprefix("http://").split("/", 1)[0].rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    return body.decode()


async def test_dashboard_says_clearly_when_the_stream_is_unreachable():
    result = await run_cli("dashboard", "--url", "http://127.0.0.1:9", "--once")
    assert result.returncode == 1
    assert b"http://127.0.0.1:9/health" in result.stderr
    result = await run_cli("dashboard", "--url", "127.0.0.1:9100", "--once")
    assert result.returncode == 2 and b"is not an http://HOST:PORT/ URL" in result.stderr
