#!/usr/bin/env python
"""What the public sockets' TLS layer buys over ``wss://``; print ONE JSON object.

Bybit is ``wss://`` only, and the exchange writes each WebSocket frame in a TLS record of
its own. ``trio.SSLStream.receive_some()`` returns at most one record, so a transport on it
reads one frame per call whatever the socket holds; ``hybrid_actors.tls.TlsStream`` (the lean
transport's TLS) decrypts every record a TCP read brought. This script measures both on the
same stream, as ``bench_stream.py`` does on ``ws://``:

- a TLS WebSocket server (trio-websocket, a trustme certificate; the ``dev`` extra) runs in a
  subprocess, so its CPU is not ours, and sends ``--symbols`` ticker-shaped frames (~240
  bytes, one ``send_message`` each) in one burst ``--rate`` times a second, like the
  simulator's market task;
- each client connects, subscribes to nothing, and for ``--seconds`` (after ``--warmup``)
  does ``receive_batch()`` + ``orjson.loads`` per message: frames per CPU-second of this
  process (user + system) and frames per ``receive_batch()``.

Clients: the lean transport on ``TlsStream`` (today's public sockets) without coalescing and
with the stream's default window, the lean transport on ``trio.SSLStream`` (the public
sockets before ``tls.py``: patched in for this phase only), and trio-websocket
(``transport.open_transport``, the private socket's transport).

Usage: python scripts/bench_tls.py [--symbols 500] [--rate 10] [--seconds 6] [--warmup 1]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import orjson
import trio

from hybrid_actors import lean_transport
from hybrid_actors.config import DEFAULT_READ_COALESCE
from hybrid_actors.transport import open_transport

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_support import self_cpu_seconds  # noqa: E402


def ticker_frame(symbol: str, n: int) -> str:
    """A linear ticker delta the size of Bybit's (~240 bytes)."""
    price = f"{60000 + n % 500}.{n % 10}0"
    return orjson.dumps({
        "topic": f"tickers.{symbol}", "type": "delta", "cs": 10_000_000 + n, "ts": 1_700_000_000_000 + n,
        "data": {"symbol": symbol, "markPrice": price, "indexPrice": price, "bid1Price": price,
                 "bid1Size": "1.25", "ask1Price": price, "ask1Size": "0.75", "openInterestValue": "1234567.89"},
    }).decode()


# --- the server (a subprocess) ------------------------------------------------------------------

async def serve(certdir: pathlib.Path, symbols: int, rate: float) -> None:
    from trio_websocket import ConnectionClosed, serve_websocket

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certdir / "server.pem")
    names = [f"SYM{i:04d}USDT" for i in range(symbols)]

    async def handler(request: Any) -> None:
        ws = await request.accept()
        n = 0
        try:
            while True:
                for name in names:
                    n += 1
                    await ws.send_message(ticker_frame(name, n))
                await trio.sleep(1 / rate)
        except ConnectionClosed:
            return

    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, context))
        print(json.dumps({"port": server.port}), flush=True)


@asynccontextmanager
async def server_process(symbols: int, rate: float) -> AsyncIterator[tuple[str, ssl.SSLContext]]:
    import trustme  # the dev extra: a throw-away CA

    ca = trustme.CA()
    client = ssl.create_default_context()
    ca.configure_trust(client)
    with tempfile.TemporaryDirectory() as tmp:
        certdir = pathlib.Path(tmp)
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(certdir / "server.pem"))
        process = subprocess.Popen([sys.executable, __file__, "--serve", str(certdir), "--symbols", str(symbols),
                                    "--rate", str(rate)], stdout=subprocess.PIPE)
        try:
            assert process.stdout is not None
            line = await trio.to_thread.run_sync(process.stdout.readline)
            port = json.loads(line)["port"]
            yield f"wss://127.0.0.1:{port}/v5/public/linear", client
        finally:
            process.terminate()
            process.wait(timeout=10)


# --- the clients ---------------------------------------------------------------------------------

def _trio_sslstream(transport_stream: trio.abc.Stream, context: ssl.SSLContext,
                    server_hostname: str) -> trio.SSLStream[trio.abc.Stream]:
    """trio.SSLStream behind TlsStream's constructor: the public sockets before tls.py (only
    with coalescing off: the lean transport looks for the TCP socket of a TlsStream only)."""
    return trio.SSLStream(transport_stream, context, server_hostname=server_hostname, https_compatible=True)


@asynccontextmanager
async def with_trio_sslstream() -> AsyncIterator[None]:
    original = getattr(lean_transport, "TlsStream")
    setattr(lean_transport, "TlsStream", _trio_sslstream)  # bench-only: the transport's TLS class
    try:
        yield
    finally:
        setattr(lean_transport, "TlsStream", original)


async def measure(opener: Callable[..., Any], url: str, client: ssl.SSLContext, seconds: float,
                  warmup: float) -> dict[str, Any]:
    async with opener(url, ssl_context=client) as transport:
        loads = orjson.loads
        with trio.move_on_after(warmup):
            while True:
                for message in await transport.receive_batch():
                    loads(message)
        frames = batches = 0
        cpu = self_cpu_seconds()
        with trio.move_on_after(seconds):
            while True:
                batch = await transport.receive_batch()
                batches += 1
                frames += len(batch)
                for message in batch:
                    loads(message)
        cpu = self_cpu_seconds() - cpu
        transport.abandon()  # no close handshake: the server bursts on regardless
    return {"frames": frames, "frames_per_s": round(frames / seconds, 1), "cpu_s": round(cpu, 3),
            "frames_per_cpu_s": round(frames / cpu) if cpu else None,
            "frames_per_batch": round(frames / batches, 2) if batches else None}


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    window = DEFAULT_READ_COALESCE
    clients: list[tuple[str, Callable[..., Any], bool]] = [
        ("lean transport, TlsStream (public sockets), no coalescing",
         partial(lean_transport.open_lean_transport, coalesce=0.0), False),
        (f"lean transport, TlsStream (public sockets), coalescing <= {window * 1000:g} ms (default)",
         partial(lean_transport.open_lean_transport, coalesce=window), False),
        ("lean transport, trio.SSLStream (before tls.py), no coalescing",
         partial(lean_transport.open_lean_transport, coalesce=0.0), True),
        ("trio-websocket (private socket's transport)", open_transport, False),
    ]
    results: dict[str, Any] = {}
    async with server_process(opts.symbols, opts.rate) as (url, client):
        for name, opener, patched in clients:
            if patched:
                async with with_trio_sslstream():
                    results[name] = await measure(opener, url, client, opts.seconds, opts.warmup)
            else:
                results[name] = await measure(opener, url, client, opts.seconds, opts.warmup)
    base = results["lean transport, trio.SSLStream (before tls.py), no coalescing"]["frames_per_cpu_s"]
    for figures in results.values():
        value = figures["frames_per_cpu_s"]
        figures["x_trio_sslstream"] = round(value / base, 2) if value and base else None
    return {"clients": results, "config": {"symbols": opts.symbols, "rate": opts.rate, "seconds": opts.seconds,
                                           "warmup": opts.warmup},
            "machine": {"cpu_count": os.cpu_count(), "loadavg": os.getloadavg(), "python": sys.version.split()[0],
                        "openssl": ssl.OPENSSL_VERSION}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--rate", type=float, default=10.0, help="bursts per second")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--serve", type=pathlib.Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> int:
    opts = parse_args()
    if opts.serve is not None:
        trio.run(serve, opts.serve, opts.symbols, opts.rate)
        return 0
    print(json.dumps(trio.run(run, opts), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
