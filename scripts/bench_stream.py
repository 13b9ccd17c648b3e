#!/usr/bin/env python
"""Benchmark the hybrid stream end to end against the simulator; print ONE JSON object.

The simulator runs in a subprocess (``python -m hybrid_actors simulator --json``) so its
CPU is not counted in ours; it is steered through its ``POST /control/<method>`` HTTP
endpoints. Everything is measured in the same run, on the real clock, in this order:

1. **Raw ceiling** (``raw_ceiling_msgs_per_cpu_s``): a bare trio-websocket client on one
   connection subscribes all ``--symbols`` linear tickers and does only ``get_message()``
   + ``orjson.loads`` per message. Messages per CPU-second of this process
   (``resource.getrusage(RUSAGE_SELF)`` user+system) over ``--seconds`` after a warm-up.
   It also records, per message, wall time now minus the frame's ``ts`` (the simulator
   stamps ``ts`` when its market tick starts): the tick-to-receive lag of the bare client.
   Then ``details.transport``: the same with the public sockets' transport (``--transport``:
   ``trio-websocket`` is ``transport.open_transport``, ``lean`` is
   ``lean_transport.open_lean_transport``; by default whichever
   ``actors.connection.choose_transport`` picks for ``public:linear``) + ``receive_batch()``
   + ``orjson.loads`` over ``--transport-seconds``, the stream's socket cost without the
   actors (``details.ratio_to_transport_ceiling`` splits transport from actor cost).
2. **Positions**: ``--symbols`` positions are opened on the first ``--symbols`` linear
   symbols (``/control/open_position``), so the stream subscribes all of their tickers;
   ``--opens`` more symbols are listed by the simulator and kept free for step 6.
3. **Stream throughput** (``stream_msgs_per_cpu_s``, ``ratio_to_ceiling``):
   ``open_hybrid_stream`` with every actor, its public sockets on the ``--transport`` chosen
   (the private socket keeps its own); one consumer task drains ``stream.batches()``
   and counts events. Public frames received (the public link's frame counter) per
   CPU-second of this process, measured the same way, with no instrumentation installed.
4. **Frame-to-event overhead** (``frame_to_event_overhead_ms``), a separate window of
   ``--latency-seconds`` with benchmark-only instrumentation patched in by this script
   (production code is not changed and pays nothing outside this window):

   - the live public socket's byte stream is wrapped: it reads with ``recvmsg`` and
     ``SO_TIMESTAMPNS``, so each read carries the kernel's receive time of its newest TCP
     segment (the moment the last bytes of the read reached our socket), and the time the
     read returned to the transport (``time.time_ns()``, the same clock);
   - each complete message keeps the stamps of the read that completed it: with
     trio-websocket, its message queue is wrapped; with the lean transport, every message
     of a ``receive_batch()`` was completed by that call's last read;
   - ``public_ws.decode_hot`` is wrapped so each ticker frame that carries a mark price
     records ``(symbol, ts) -> stamps``;
   - when ``stream.batches()`` returns, each ``source == "ticker"`` event is matched on
     ``(symbol, exchange_ts)`` and ``time.time_ns()`` minus the kernel stamp is the figure.

   So it covers waiting in the socket buffer while the process is busy (for the read's
   newest segment), frame parsing, queue hand-over (trio-websocket), decode, merge, combiner, output
   queue and scheduling. For a frame that is not the newest of its read it is a lower
   bound (its bytes arrived earlier than the stamp). ``frame_to_event_from_read_return_ms``
   is the in-process part alone (from the read's return). Cross-check:
   ``tick_to_event_ms`` (wall time at event-out minus the frame's ``ts``, ms resolution)
   minus the bare client's ``tick_to_receive_ms`` from step 1
   (``overhead_by_subtraction_ms``; noisy: both include the simulator's send spread).
   For a conflated event the latency is that of the frame whose price it carries.
5. **Public drop → fresh price** (``public_drop_to_fresh_price_s``), ``--drops`` times:
   ``/control/drop_public`` (mode ``reset``), then the time from just before that request
   until the first ``ticker`` event whose frame ``ts`` is not older than the drop and that
   arrives after the public link's generation changed (a price from the new connection).
   Also the time until every desired symbol is confirmed again on the new connection.
   The supervisor's jitter comes from ``random.Random(--seed)``, so runs draw the same
   delays. Drops are spaced by more than ``RestartPolicy.stable_after``, which this
   benchmark sets to ``DROP_STABLE_AFTER`` seconds (default 60), so each drop is an
   isolated outage and the supervisor's first retry applies (full jitter within
   ``backoff_initial``), as it would for drops a minute apart in production.
6. **Open → first mark** (``open_to_first_mark_ms``), ``--opens`` times on fresh symbols:
   from just before ``/control/open_position`` until the first event for that position
   with ``source == "ticker"``. Breakdown: ``open_to_open_event_ms`` (the private push's
   lifecycle event) and ``open_to_ticker_mark_applied_ms`` (the combiner received the
   first mark of the new subscription; a benchmark-only wrap of ``Combiner.apply_marks``).
   The combiner deduplicates: when the subscription snapshot's mark equals the mark the
   position record already carried, no event is emitted until the mark next moves.

7. **Latest prices delivered** (``latest_prices``): the simulator's market is stopped
   (``set_rate 0``), and after ``SETTLE_S`` every position's mark in ``stream.positions()``
   is compared with the simulator's current mark (REST tickers): must be all of them.
8. **Comparison** (``comparison``, one row per client on the same simulator stream): the
   bare client of step 1; the stream of steps 3-4; the stream again on the old hand-written
   RFC 6455 parser (``legacy``: lean_transport.py as it was before the websockets core,
   kept in this script only, ``details.legacy_stream``) and on the lean transport with
   adaptive coalescing windows ``--coalesce-ms`` (``details.coalesced_streams``), each
   with throughput, latency and latest prices; and pybit's ``WebSocket.ticker_stream``
   (``details.pybit``; the ``bench`` extra; see ``PYBIT_NOTE`` for how it is pointed at the
   simulator). ``details.read_floor`` is the CPU of a bare read (``receive_some`` with
   nothing parsed), the floor under every per-read design.

The HTTP control calls of steps 2, 5 and 6 run in this process but outside the CPU
windows. Each window also reports ``client_runqueue_wait_ms`` (time this process was
ready to run but had no CPU, from ``/proc/thread-self/schedstat``) and involuntary
context switches, to tell how much of a latency tail a shared machine added.

Usage: python scripts/bench_stream.py [--symbols 500] [--rate 10] [--seconds 15]
                                     [--transport {lean,legacy,trio-websocket}]
                                     [--no-legacy] [--no-pybit] [--coalesce-ms 1,2]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import platform
import random
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from decimal import Decimal
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import h11
import httpx
import orjson
import trio
import trio_websocket

from hybrid_actors import lean_transport
from hybrid_actors import transport as transport_module
from hybrid_actors.actors import connection, public_ws
from hybrid_actors.config import CLOSE_TIMEOUT, MAX_MESSAGE_SIZE, Credentials, Endpoints, RestartPolicy, StreamConfig
from hybrid_actors.errors import ConnectionLost, HandshakeError
from hybrid_actors.transport import (
    CANCELLED_CLOSE_WAIT, HANDSHAKE_COOLDOWN, RECEIVE_BYTES, Transport, _is_cancellation, _ssl_context,
)
from hybrid_actors.state import Combiner, Event, PositionEvent
from hybrid_actors.supervisor import HybridStream, open_hybrid_stream

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
CATEGORY: Final = "linear"
PUBLIC_LINK: Final = f"public:{CATEGORY}"
#: RestartPolicy.stable_after for the benchmark's stream (see step 5 of the docstring)
DROP_STABLE_AFTER: Final = 2.0
#: upper bound of one wait (a subscription round, a fresh price, a first mark)
WAIT_LIMIT: Final = 20.0
POLL: Final = 0.005
#: ``--transport`` choices: the public sockets' transport
TRANSPORTS: Final[dict[str, Callable[..., Any]]] = {
    "trio-websocket": transport_module.open_transport,
    "lean": lean_transport.open_lean_transport,
    "legacy": lambda *args, **kwargs: open_legacy_transport(*args, **kwargs),  # defined below
}


def coalescing(ms: float) -> str:
    """The TRANSPORTS key of the lean transport with a coalescing window of ``ms`` (added on use)."""
    name = f"lean-coalesce-{ms:g}ms"
    if name not in TRANSPORTS:
        TRANSPORTS[name] = partial(lean_transport.open_lean_transport, coalesce=ms / 1000)
    return name


@attrs.frozen
class Options:
    symbols: int = 500
    rate: float = 10.0
    seconds: float = 15.0
    warmup: float = 2.0
    transport_seconds: float = 6.0
    latency_seconds: float = 6.0
    drops: int = 5
    opens: int = 20
    seed: int = 1
    #: the public sockets' transport (a key of TRANSPORTS); None: what choose_transport picks
    transport: str | None = None
    #: also run the stream on the old hand-written parser (throughput + latency windows)
    compare_legacy: bool = True
    #: also measure pybit's ticker_stream (needs the ``bench`` extra)
    pybit: bool = True
    #: also run the stream on the lean transport with adaptive coalescing, per window (ms)
    coalesce_ms: tuple[float, ...] = (1.0, 2.0)


# --- small helpers --------------------------------------------------------------------------

def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU of ``pid`` (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@attrs.frozen
class Sample:
    """CPU, wall and scheduler counters of this process (and the simulator's CPU) at one moment."""

    wall: float
    cpu: float
    sim_cpu: float
    #: time this thread was runnable but waiting for a CPU (/proc/thread-self/schedstat), seconds
    runqueue_wait: float | None
    involuntary_switches: int

    @classmethod
    def take(cls, sim_pid: int) -> Sample:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        try:
            with open("/proc/thread-self/schedstat", encoding="ascii") as f:
                waited: float | None = int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            waited = None
        return cls(time.perf_counter(), usage.ru_utime + usage.ru_stime, process_cpu_seconds(sim_pid),
                   waited, usage.ru_nivcsw)

    def since(self, start: Sample) -> dict[str, Any]:
        wall = self.wall - start.wall
        waited = (None if self.runqueue_wait is None or start.runqueue_wait is None
                  else round((self.runqueue_wait - start.runqueue_wait) * 1000, 1))
        return {"duration_s": round(wall, 3), "client_cpu_s": round(self.cpu - start.cpu, 3),
                "sim_cpu_s": round(self.sim_cpu - start.sim_cpu, 3), "client_runqueue_wait_ms": waited,
                "client_involuntary_switches": self.involuntary_switches - start.involuntary_switches}


def percentiles(values: list[float], digits: int = 3) -> dict[str, float | int | None]:
    """Nearest-rank p50/p99/max of ``values`` (None when empty) and the sample count."""
    if not values:
        return {"p50": None, "p99": None, "max": None, "samples": 0}
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: float) -> float:
        return round(ordered[min(n - 1, max(0, int(p * n + 0.999999) - 1))], digits)

    return {"p50": rank(0.50), "p99": rank(0.99), "max": round(ordered[-1], digits), "samples": n}


def median_max(values: list[float], digits: int = 3) -> dict[str, Any]:
    if not values:
        return {"median": None, "max": None, "samples": []}
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"median": round(median, digits), "max": round(ordered[-1], digits),
            "samples": [round(v, digits) for v in values]}


async def wait_until(predicate: Callable[[], bool], what: str, limit: float = WAIT_LIMIT) -> float:
    """Poll ``predicate`` (real clock; this is a benchmark, not a test); seconds waited."""
    start = time.perf_counter()
    try:
        with trio.fail_after(limit):
            while not predicate():
                await trio.sleep(POLL)
    except trio.TooSlowError:
        raise RuntimeError(f"no {what} within {limit:g}s") from None
    return time.perf_counter() - start


# --- the simulator in a subprocess ----------------------------------------------------------

@attrs.define(eq=False)
class SimProcess:
    pid: int
    info: dict[str, Any]
    http: httpx.AsyncClient

    @property
    def ws_url(self) -> str:
        return str(self.info["ws_url"])

    @property
    def rest_url(self) -> str:
        return str(self.info["rest_url"])

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    async def control(self, method: str, **kwargs: Any) -> Any:
        response = await self.http.post(f"/control/{method}", content=orjson.dumps(kwargs))
        if response.status_code != 200:
            raise RuntimeError(f"simulator /control/{method} answered {response.status_code}: {response.text}")
        return response.json()["result"]

    async def linear_symbols(self) -> list[str]:
        response = await self.http.get("/v5/market/tickers", params={"category": CATEGORY})
        return [item["symbol"] for item in response.json()["result"]["list"]]


@asynccontextmanager
async def simulator_process(symbols: int, rate: float, seed: int) -> AsyncIterator[SimProcess]:
    argv = [sys.executable, "-m", "hybrid_actors", "simulator", "--json", "--symbols", str(symbols),
            "--positions", "0", "--rate", str(rate), "--seed", str(seed)]
    process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError(f"the simulator exited before announcing itself: {line!r}")
                line += chunk
        info = json.loads(line)
        async with httpx.AsyncClient(base_url=info["rest_url"], timeout=10.0) as http:
            yield SimProcess(process.pid, info, http)
    finally:
        process.send_signal(2)  # SIGINT: the CLI closes its sockets and exits 0
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- 1. the raw trio-websocket ceiling ------------------------------------------------------

async def measure_raw_ceiling(sim: SimProcess, symbols: list[str], opts: Options) -> dict[str, Any]:
    url = f"{sim.ws_url}/v5/public/{CATEGORY}"
    topics = [f"tickers.{s}" for s in symbols]
    counting = False
    frames = 0
    lags: list[float] = []
    async with trio_websocket.open_websocket_url(url, max_message_size=1 << 22) as ws:
        for start in range(0, len(topics), 100):
            await ws.send_message(orjson.dumps({"op": "subscribe", "args": topics[start:start + 100]}).decode())
        async with trio.open_nursery() as nursery:

            async def consume() -> None:
                nonlocal frames
                get_message, loads, wall_ns, append = ws.get_message, orjson.loads, time.time_ns, lags.append
                while True:
                    frame = loads(await get_message())
                    if counting:
                        frames += 1
                        ts = frame.get("ts")
                        if ts is not None:
                            append(wall_ns() / 1e6 - ts)

            nursery.start_soon(consume)
            await trio.sleep(opts.warmup)
            counting = True
            start = Sample.take(sim.pid)
            await trio.sleep(opts.seconds)
            counting = False
            end = Sample.take(sim.pid)
            nursery.cancel_scope.cancel()
    return {**_rates(frames, start, end), "tick_to_receive_ms": percentiles(lags, 2)}


def _rates(frames: int, start: Sample, end: Sample) -> dict[str, Any]:
    window = end.since(start)
    cpu = end.cpu - start.cpu
    return {**window, "frames": frames, "frames_per_s": round(frames / (end.wall - start.wall), 1),
            "msgs_per_cpu_s": round(frames / cpu) if cpu > 0 else None}


# --- 1b. our transport + JSON parse, without the actors ---------------------------------------

async def measure_transport_ceiling(sim: SimProcess, symbols: list[str], opts: Options,
                                    open_public: Callable[..., Any]) -> dict[str, Any]:
    """The public transport + ``receive_batch()`` + ``orjson.loads`` per message: the cost floor
    of the stream's own socket handling, to split the stream's cost into transport vs actors."""
    url = f"{sim.ws_url}/v5/public/{CATEGORY}"
    topics = [f"tickers.{s}" for s in symbols]
    counting = False
    frames = batches = 0
    async with open_public(url, label="bench") as transport:
        for start_at in range(0, len(topics), 100):
            await transport.send(orjson.dumps({"op": "subscribe", "args": topics[start_at:start_at + 100]}).decode())
        async with trio.open_nursery() as nursery:

            async def consume() -> None:
                nonlocal frames, batches
                receive_batch, loads = transport.receive_batch, orjson.loads
                while True:
                    batch = await receive_batch()
                    for message in batch:
                        loads(message)
                    if counting:
                        frames += len(batch)
                        batches += 1

            nursery.start_soon(consume)
            await trio.sleep(opts.warmup)
            counting = True
            start = Sample.take(sim.pid)
            await trio.sleep(opts.transport_seconds)
            counting = False
            end = Sample.take(sim.pid)
            nursery.cancel_scope.cancel()
    return {**_rates(frames, start, end), "frames_per_batch": round(frames / batches, 2) if batches else None}


# --- the old hand-written parser, kept here only to compare against -------------------------
# This is lean_transport.py as it was before the websockets core replaced its framing
# (commit 6d0ab5e): h11 for the upgrade, our own RFC 6455 frame parser. Nothing in the
# library uses it; ``--transport legacy`` and the comparison phase run the stream on it.

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
#: RFC 6455 §1.3: appended to Sec-WebSocket-Key before hashing it into Sec-WebSocket-Accept
ACCEPT_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_NAMES: Final = {
    1000: "NORMAL_CLOSURE", 1001: "GOING_AWAY", 1002: "PROTOCOL_ERROR", 1003: "UNSUPPORTED_DATA",
    1005: "NO_STATUS_RCVD", 1006: "ABNORMAL_CLOSURE", 1007: "INVALID_FRAME_PAYLOAD_DATA",
    1008: "POLICY_VIOLATION", 1009: "MESSAGE_TOO_BIG", 1010: "MANDATORY_EXT", 1011: "INTERNAL_ERROR",
    1012: "SERVICE_RESTART", 1013: "TRY_AGAIN_LATER", 1014: "BAD_GATEWAY",
}
#: close codes a peer may put on the wire (RFC 6455 §7.4.1; 3000-4999 are registered/private)
WIRE_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def mask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the 4-byte ``key`` repeated (RFC 6455 §5.3), as one big-integer XOR."""
    size = len(payload)
    if not size:
        return b""
    keys = (key * ((size >> 2) + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(size, "big")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame: masked with a fresh random key, as a client's must be."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    key = os.urandom(4)
    return header + key + mask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload; 1005 ("no code") sends none. The reason fits in 123 bytes."""
    if code == 1005:
        return b""
    return code.to_bytes(2, "big") + reason.encode()[:123].decode(errors="ignore").encode()


def _frame_length(data: bytes) -> int:
    """Bytes the frame at the start of ``data`` needs: its whole length once its header is
    complete, else the length of its header so far known."""
    if len(data) < 2:
        return 2
    size = data[1] & 0x7F
    if size < 126:
        return 2 + size
    header = 4 if size == 126 else 10
    if len(data) < header:
        return header
    return header + int.from_bytes(data[2:header], "big")


class LegacyFrameParser:
    """Server-to-client WebSocket frames (RFC 6455 §5), sans-IO.

    ``feed(data)`` returns the messages that ``data`` completes, in order (text as ``str``,
    binary as ``bytes``); the bytes of an unfinished frame wait for the next call, which does
    not parse them again until enough have arrived. For the caller to act on: ``pings``
    (payloads to answer with a pong), ``close`` (the peer's close code and reason; 1005 when
    it gave none) and ``failure`` (the close code we must send, and why). After a close or a
    failure, nothing more is parsed.
    """

    __slots__ = ("max_message_size", "pings", "close", "failure",
                 "_tail", "_tail_size", "_need", "_opcode", "_parts", "_size")

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self.pings: list[bytes] = []
        self.close: tuple[int, str] | None = None
        self.failure: tuple[int, str] | None = None
        self._tail: list[bytes] = []  # an unfinished frame, as received
        self._tail_size = 0
        self._need = 0  # bytes the unfinished frame needs before parsing can go on
        self._opcode = 0  # of the fragmented message in progress (0: none)
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def ended(self) -> bool:
        return self.close is not None or self.failure is not None

    def feed(self, data: bytes) -> list[str | bytes]:
        if self.close is not None or self.failure is not None:
            return []
        if self._tail:
            self._tail.append(data)
            self._tail_size += len(data)
            if self._tail_size < self._need:
                return []
            data = b"".join(self._tail)
            self._tail.clear()
        messages: list[str | bytes] = []
        append = messages.append
        limit = self.max_message_size
        continuing = self._opcode
        end = len(data)
        pos = 0
        while True:
            start = pos + 2
            if start > end:
                break
            first = data[pos]
            size = data[pos + 1]  # >= 128: the mask bit is set
            if size >= 126:
                if size == 126:
                    start = pos + 4
                    if start > end:
                        break
                    size = data[pos + 2] << 8 | data[pos + 3]
                elif size == 127:
                    start = pos + 10
                    if start > end:
                        break
                    size = int.from_bytes(data[pos + 2:start], "big")
                else:
                    self._fail(1002, "the server masked a frame")
                    return messages
            stop = start + size
            if first == 0x81 and size <= limit and not continuing:  # the hot path: one whole text message
                if stop > end:
                    break
                try:
                    append(data[start:stop].decode())
                except UnicodeDecodeError:
                    self._fail(1007, "invalid UTF-8 in a text message")
                    return messages
            else:
                refusal = self._refusal(first, size)
                if refusal is not None:
                    self._fail(*refusal)
                    return messages
                if stop > end:
                    break
                self._frame(first, data[start:stop], append)
                if self.close is not None or self.failure is not None:
                    return messages
                continuing = self._opcode
            pos = stop
        if pos < end:
            rest = data[pos:] if pos else data
            self._tail.append(rest)
            self._tail_size = end - pos
            self._need = _frame_length(rest)
        return messages

    def _refusal(self, first: int, size: int) -> tuple[int, str] | None:
        """Why a frame with this first byte and payload size is refused, if it is (from the header alone)."""
        if first & 0x70:
            return 1002, "RSV bits set, but no extension was agreed"
        opcode = first & 0x0F
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                return 1002, f"unknown opcode {opcode:#x}"
            if not first & 0x80:
                return 1002, "a fragmented control frame"
            if size > 125:
                return 1002, f"a control frame of {size} bytes (at most 125)"
            return None
        if opcode == OP_CONTINUATION:
            if not self._opcode:
                return 1002, "a continuation frame outside a fragmented message"
            size += self._size
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._opcode:
                return 1002, "a new message inside a fragmented one"
        else:
            return 1002, f"unknown opcode {opcode:#x}"
        if size > self.max_message_size:
            return 1009, f"a message of at least {size} bytes, over the limit of {self.max_message_size}"
        return None

    def _frame(self, first: int, payload: bytes, append: Callable[[str | bytes], None]) -> None:
        """A frame that passed :meth:`_refusal`, payload complete."""
        opcode = first & 0x0F
        if opcode == OP_PING:
            self.pings.append(payload)
        elif opcode == OP_CLOSE:
            self._closed(payload)
        elif opcode != OP_PONG:  # a data frame: the start of a message or a continuation
            if opcode:
                self._opcode = opcode
            self._parts.append(payload)
            self._size += len(payload)
            if first & 0x80:
                parts, kind = self._parts, self._opcode
                body = parts[0] if len(parts) == 1 else b"".join(parts)
                self._parts, self._opcode, self._size = [], 0, 0
                if kind == OP_BINARY:
                    append(body)
                    return
                try:
                    append(body.decode())
                except UnicodeDecodeError:
                    self._fail(1007, "invalid UTF-8 in a text message")

    def _closed(self, payload: bytes) -> None:
        if not payload:
            self.close = (1005, "")
            return
        if len(payload) == 1:
            self._fail(1002, "a close frame with a one-byte payload")
            return
        code = int.from_bytes(payload[:2], "big")
        if code not in WIRE_CLOSE_CODES and not 3000 <= code <= 4999:
            self._fail(1002, f"close code {code} may not be sent")
            return
        try:
            self.close = (code, payload[2:].decode())
        except UnicodeDecodeError:
            self._fail(1007, "invalid UTF-8 in a close reason")

    def _fail(self, code: int, detail: str) -> None:
        self.failure = (code, detail)
        self._tail.clear()
        self._parts = []


class _LegacyTransport:
    """One connected WebSocket; the reader is whoever calls ``receive_batch()``."""

    __slots__ = ("url", "abandoned", "_label", "_stream", "_parser", "_send_lock", "_close_timeout",
                 "_pending", "_lost", "_close_sent", "_send_broken")

    def __init__(self, stream: trio.abc.Stream, url: str, label: str, max_message_size: int,
                 close_timeout: float, pending: bytes) -> None:
        self.url = url
        self.abandoned = False
        self._label = label
        self._stream = stream
        self._parser = LegacyFrameParser(max_message_size)
        self._send_lock = trio.StrictFIFOLock()
        self._close_timeout = close_timeout
        self._pending = pending  # frame bytes that came with the handshake's answer
        #: how the connection ended (message, code, reason); from then on, send/receive raise
        self._lost: tuple[str, int, str | None] | None = None
        self._close_sent = False
        #: a write was interrupted: the stream may hold half a frame, so nothing more is written
        self._send_broken = False

    def abandon(self) -> None:
        self.abandoned = True

    # --- receiving ------------------------------------------------------------------------

    async def receive_batch(self) -> list[str | bytes]:
        parser = self._parser
        data, self._pending = self._pending, b""
        while True:
            if self._lost is not None:
                raise self._error()
            if not data:
                data = await self._read()
            messages = parser.feed(data)
            data = b""
            if parser.pings or parser.close is not None or parser.failure is not None:
                await self._answer(parser)
            if messages:
                return messages

    async def _read(self) -> bytes:
        try:
            data = await self._stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._end(1006, f"connection lost: {exc!r}")
            raise self._error() from exc
        if not data:
            self._end(1006, "the peer ended the TCP connection without a close frame")
            raise self._error()
        return data

    async def _answer(self, parser: LegacyFrameParser) -> None:
        """Pong every ping; answer a close frame or a violation with our close frame."""
        pings, parser.pings = parser.pings, []
        for payload in pings:
            if self._lost is None:
                try:
                    await self._write(client_frame(OP_PONG, payload))
                except ConnectionLost as exc:
                    self._end(1006, str(exc))
        if parser.failure is not None:
            code, detail = parser.failure
            self._end(code, detail)
            await self._send_close(code, CLOSE_NAMES[code].lower().replace("_", " "))
        elif parser.close is not None:
            code, reason = parser.close
            self._end(code, reason, reason)
            await self._send_close(code)  # echo it (the parser let only sendable codes and 1005 through)

    # --- sending --------------------------------------------------------------------------

    async def send(self, text: str) -> None:
        if self._lost is not None:
            raise self._error()
        await self._write(client_frame(OP_TEXT, text.encode()))

    async def _write(self, frame: bytes) -> None:
        async with self._send_lock:
            if self._send_broken:
                raise ConnectionLost(f"{self._label}: an earlier send broke off; the socket is unusable",
                                     code=1006)
            try:
                await self._stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._send_broken = True
                raise ConnectionLost(f"{self._label}: send failed: {exc!r}", code=1006) from exc
            except BaseException:  # cancelled: part of the frame may be on the wire
                self._send_broken = True
                raise

    async def _send_close(self, code: int, reason: str = "") -> bool:
        """Our close frame, once, within ``close_timeout``; True when it went out."""
        if self._close_sent or self._send_broken:
            return False
        self._close_sent = True
        with trio.move_on_after(self._close_timeout):
            try:
                await self._write(client_frame(OP_CLOSE, close_payload(code, reason)))
            except ConnectionLost:
                return False
            return True
        return False

    # --- the end --------------------------------------------------------------------------

    def _end(self, code: int, detail: str, reason: str | None = None) -> None:
        """Record how the connection ended; the first cause wins."""
        if self._lost is None:
            name = CLOSE_NAMES.get(code)
            text = f"{self._label}: closed with code {code}" + (f" {name}" if name else "")
            self._lost = (text + (f" ({detail})" if detail else ""), code, reason)

    def _error(self) -> ConnectionLost:
        assert self._lost is not None
        text, code, reason = self._lost
        return ConnectionLost(text, code=code, reason=reason)

    async def _shut(self, close_timeout: float, *, cancelled: bool) -> bool:
        """Close politely unless the connection already ended or the peer is known dead, then
        release the socket. True when the peer's close frame did not come in time."""
        try:
            if self.abandoned or self._lost is not None:
                return False
            self._end(1000, "closed by this side")  # send() refuses from here on
            with trio.move_on_after(CANCELLED_CLOSE_WAIT if cancelled else close_timeout, shield=True) as scope:
                if await self._send_close(1000) and not cancelled:
                    await self._await_peer_close()
            return scope.cancelled_caught and not cancelled
        finally:
            await trio.aclose_forcefully(self._stream)

    async def _await_peer_close(self) -> None:
        """Read (and drop) whatever still comes until the peer's close frame or EOF."""
        parser = self._parser
        data, self._pending = self._pending, b""
        while not parser.ended:
            if data:
                parser.feed(data)
                data = b""
                continue
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not data:
                return


def _accept_token(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest())


def _upgrade_problem(response: h11.InformationalResponse, key: bytes) -> str | None:
    """What is wrong with a ``101`` answer to our upgrade request, if anything."""
    connection: list[bytes] = []
    upgrade = accept = None
    for name, value in response.headers:  # h11 gives lower-case names
        if name == b"connection":
            connection += (token.strip().lower() for token in value.split(b","))
        elif name == b"upgrade":
            upgrade = value.strip().lower()
        elif name == b"sec-websocket-accept":
            accept = value.strip()
        elif name in (b"sec-websocket-extensions", b"sec-websocket-protocol"):
            return f"it chose {name.decode()} {value.decode(errors='replace')!r}, which we did not offer"
    if b"upgrade" not in connection:
        return "no 'Connection: upgrade' header"
    if upgrade != b"websocket":
        return "no 'Upgrade: websocket' header"
    if accept != _accept_token(key):
        return "a wrong Sec-WebSocket-Accept"
    return None


async def _legacy_upgrade(stream: trio.abc.Stream, host: str, target: str, label: str, url: str) -> bytes:
    """The HTTP upgrade; returns the bytes that followed the ``101`` answer (frames already)."""
    key = base64.b64encode(os.urandom(16))
    http = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=target, headers=[
        ("Host", host), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13"),
    ])
    await stream.send_all(http.send(request) + (http.send(h11.EndOfMessage()) or b""))
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as exc:
            raise HandshakeError(f"{label}: {url} answered the WebSocket upgrade with broken HTTP: {exc}") from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise HandshakeError(f"{label}: {url} closed the connection during the WebSocket handshake")
            http.receive_data(data)
        elif isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            problem = _upgrade_problem(event, key)
            if problem is not None:
                raise HandshakeError(f"{label}: {url} accepted the WebSocket upgrade with {problem}")
            return bytes(http.trailing_data[0])
        elif isinstance(event, h11.Response):
            status = event.status_code
            wait = HANDSHAKE_COOLDOWN.get(status)
            advice = f"; backing off {wait:g}s as the exchange asks" if wait else ""
            raise HandshakeError(f"{label}: {url} refused the WebSocket upgrade with HTTP {status}{advice}",
                                 status=status, retry_after=wait)
        # any other 1xx answer: wait for the real one


async def _legacy_connect(url: str, label: str, connect_timeout: float, verify_tls: bool) -> tuple[trio.abc.Stream, bytes]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("ws", "wss") or not parts.hostname or port == -1:
        raise HandshakeError(f"{label}: {url} is not a ws:// or wss:// URL")
    host = parts.hostname
    secure = parts.scheme == "wss"
    default_port = 443 if secure else 80
    port = port or default_port
    name = f"[{host}]" if ":" in host else host
    host_header = name if port == default_port else f"{name}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    context = _ssl_context(url, verify_tls)
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(host, port)
            if context is not None:
                stream = trio.SSLStream(stream, context, server_hostname=host, https_compatible=True)
                await stream.do_handshake()
            return stream, await _legacy_upgrade(stream, host_header, target, label, url)
    except BaseException as exc:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        if isinstance(exc, trio.TooSlowError):
            raise HandshakeError(f"{label}: no WebSocket handshake from {url} within {connect_timeout:g}s") from None
        if isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
            raise HandshakeError(f"{label}: cannot connect to {url}: {exc!r}") from None
        raise


@asynccontextmanager
async def open_legacy_transport(url: str, *, label: str = "ws", max_message_size: int = MAX_MESSAGE_SIZE,
                              connect_timeout: float = 10.0, close_timeout: float = CLOSE_TIMEOUT,
                              verify_tls: bool = True) -> AsyncIterator[Transport]:
    """The pre-websockets public transport (hand-written RFC 6455 parser), as it was."""
    stream, pending = await _legacy_connect(url, label, connect_timeout, verify_tls)
    transport = _LegacyTransport(stream, url, label, max_message_size, close_timeout, pending)
    try:
        yield transport
    except BaseException as exc:
        await transport._shut(close_timeout, cancelled=_is_cancellation(exc))
        raise
    if await transport._shut(close_timeout, cancelled=False):
        raise ConnectionLost(f"{label}: close handshake with {url} timed out")


# --- 1c. the per-read floor -------------------------------------------------------------------

async def measure_read_floor(sim: SimProcess, symbols: list[str], opts: Options) -> dict[str, Any]:
    """The cost of a read itself: the lean transport's socket, subscribed like the stream's,
    read in a loop (``receive_some(65536)``: wakeup, epoll, recv) with the bytes thrown away,
    nothing parsed. CPU per read here is the floor under any per-read design; the frames a
    read carries share it."""
    url = f"{sim.ws_url}/v5/public/{CATEGORY}"
    topics = [f"tickers.{s}" for s in symbols]
    counting = False
    reads = received = 0
    async with lean_transport.open_lean_transport(url, label="bench") as transport:
        for start_at in range(0, len(topics), 100):
            await transport.send(orjson.dumps({"op": "subscribe", "args": topics[start_at:start_at + 100]}).decode())
        stream = transport._stream  # benchmark-only: below the WebSocket layer on purpose
        async with trio.open_nursery() as nursery:

            async def consume() -> None:
                nonlocal reads, received
                receive_some = stream.receive_some
                while True:
                    data = await receive_some(65536)
                    if counting:
                        reads += 1
                        received += len(data)

            nursery.start_soon(consume)
            await trio.sleep(opts.warmup)
            counting = True
            start = Sample.take(sim.pid)
            await trio.sleep(opts.transport_seconds)
            counting = False
            end = Sample.take(sim.pid)
            nursery.cancel_scope.cancel()
        transport.abandon()
    cpu = end.cpu - start.cpu
    return {**end.since(start), "reads": reads, "reads_per_s": round(reads / (end.wall - start.wall), 1),
            "bytes_per_read": round(received / reads, 1) if reads else None,
            "cpu_per_read_us": round(cpu / reads * 1e6, 2) if reads and cpu > 0 else None}


# --- the consumer and its watchers ----------------------------------------------------------

Watcher = Callable[[list[Event], int], None]


@attrs.define(eq=False)
class Consumer:
    """Drains ``stream.batches()``; phase-specific watchers see each batch with its out-stamp."""

    stream: HybridStream
    events: int = 0
    batches: int = 0
    watchers: list[Watcher] = attrs.Factory(list)

    async def run(self) -> None:
        batches = self.stream.batches
        clock = time.perf_counter_ns
        while True:
            out = await batches()
            self.events += len(out)
            self.batches += 1
            if self.watchers:
                stamp = clock()
                positions = [e for e in out if isinstance(e, PositionEvent)]  # not the stream.* notices
                for watcher in list(self.watchers):
                    watcher(positions, stamp)

    @contextmanager
    def watching(self, watcher: Watcher) -> Iterator[None]:
        self.watchers.append(watcher)
        try:
            yield
        finally:
            self.watchers.remove(watcher)


# --- 3. stream throughput -------------------------------------------------------------------

async def measure_stream_throughput(stream: HybridStream, consumer: Consumer, sim: SimProcess,
                                    opts: Options) -> dict[str, Any]:
    hub = stream.hub
    link = hub.health.link(PUBLIC_LINK)
    await trio.sleep(opts.warmup)
    frames0, batches0, events0, conflated0 = link.frames, link.batches, consumer.events, hub.events.conflated
    start = Sample.take(sim.pid)
    await trio.sleep(opts.seconds)
    end = Sample.take(sim.pid)
    frames, batches = link.frames - frames0, link.batches - batches0
    return {**_rates(frames, start, end),
            "batches": batches, "frames_per_batch": round(frames / batches, 2) if batches else None,
            "events": consumer.events - events0, "conflated": hub.events.conflated - conflated0}


# --- 4. frame-to-event overhead (benchmark-only instrumentation) ----------------------------

#: Linux SO_TIMESTAMPNS (= SCM_TIMESTAMPNS): the kernel stamps each received segment (realtime)
SO_TIMESTAMPNS: Final = 35


class _StampingStream:
    """Wraps a connection's byte stream: each read records when it returned and, where the
    kernel supports SO_TIMESTAMPNS, when the read's newest segment reached the socket."""

    def __init__(self, inner: Any, probe: LatencyProbe) -> None:
        self._inner = inner
        self._probe = probe
        self._socket = getattr(inner, "socket", None)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # type: ignore[union-attr]
        except (AttributeError, OSError):
            self._socket = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        probe = self._probe
        if self._socket is None:
            data = await self._inner.receive_some(max_bytes)
            probe.read_ns = probe.kernel_ns = time.time_ns()
            return data
        try:
            data, ancillary, _flags, _address = await self._socket.recvmsg(max_bytes or 65536,
                                                                           socket.CMSG_SPACE(16))
        except OSError as exc:  # as trio's SocketStream.receive_some reports it
            raise trio.BrokenResourceError(exc) from exc
        probe.read_ns = time.time_ns()
        probe.kernel_ns = probe.read_ns
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                seconds, nanos = struct.unpack("qq", payload[:16])
                probe.kernel_ns = seconds * 1_000_000_000 + nanos
                probe.kernel_stamped += 1
        probe.reads += 1
        probe.read_bytes.append(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@attrs.define(eq=False)
class LatencyProbe:
    #: time.time_ns() when the current read returned / when the kernel received its newest segment
    read_ns: int = 0
    kernel_ns: int = 0
    reads: int = 0
    kernel_stamped: int = 0
    read_bytes: list[int] = attrs.Factory(list)
    #: message text → stamps of the read that completed it (until decoded)
    read_of: dict[str | bytes, tuple[int, int]] = attrs.Factory(dict)
    #: (symbol, frame ts) → stamps, for ticker frames carrying a mark price
    arrivals: dict[tuple[str, int], tuple[int, int]] = attrs.Factory(dict)
    overhead_ms: list[float] = attrs.Factory(list)
    from_read_ms: list[float] = attrs.Factory(list)
    tick_to_event_ms: list[float] = attrs.Factory(list)
    unmatched: int = 0
    _wrapped: list[Any] = attrs.Factory(list)

    def _wrap(self, owner: Any) -> None:
        """Stamp the reads of ``owner``'s byte stream: the lean transport's ``_stream``, or the
        stream under trio-websocket (``_guard.inner``, our own wrapper's)."""
        if any(w is owner for w in self._wrapped):
            return
        if isinstance(owner, transport_module._GuardedStream):
            owner.inner = _StampingStream(owner.inner, self)
        else:
            owner._stream = _StampingStream(owner._stream, self)
        self._wrapped.append(owner)

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Patch the public socket's transport (either kind) and the public actor's decode; undo on exit."""
        probe = self
        ws_batch = transport_module._WsTransport.receive_batch
        original_decode = public_ws.decode_hot

        async def receive_batch(transport: Any) -> list[str | bytes]:
            if transport._label != PUBLIC_LINK:
                return await ws_batch(transport)
            probe._wrap(transport._guard)
            batch = await ws_batch(transport)
            stamps = (probe.kernel_ns, probe.read_ns)  # the newest read: a lower bound for queued messages
            for message in batch:
                probe.read_of[message] = stamps
            return batch

        def batch_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
            async def receive_read_batch(transport: Any) -> list[str | bytes]:
                if transport._label != PUBLIC_LINK:
                    return await original(transport)
                probe._wrap(transport)
                batch = await original(transport)
                stamps = (probe.kernel_ns, probe.read_ns)  # the read that completed them all
                for message in batch:
                    probe.read_of[message] = stamps
                return batch
            return receive_read_batch

        read_batch_classes = (lean_transport._LeanTransport, _LegacyTransport)
        originals = [cls.receive_batch for cls in read_batch_classes]

        def decode(raw: str | bytes, *, category: str | None = None) -> Any:
            frame = original_decode(raw, category=category)
            stamps = probe.read_of.pop(raw, None)
            if stamps is not None and type(frame) is tuple and frame[3] is not None:  # TickerFields with a mark
                probe.arrivals[(frame[0], frame[4])] = stamps
            return frame

        transport_module._WsTransport.receive_batch = receive_batch  # type: ignore[method-assign]
        for cls, original in zip(read_batch_classes, originals):
            cls.receive_batch = batch_wrapper(original)  # type: ignore[method-assign]
        public_ws.decode_hot = decode  # type: ignore[assignment]
        try:
            yield
        finally:
            transport_module._WsTransport.receive_batch = ws_batch  # type: ignore[method-assign]
            for cls, original in zip(read_batch_classes, originals):
                cls.receive_batch = original  # type: ignore[method-assign]
            public_ws.decode_hot = original_decode
            for owner in self._wrapped:
                if isinstance(owner, transport_module._GuardedStream):
                    owner.inner = owner.inner._inner
                else:
                    owner._stream = owner._stream._inner

    def watcher(self, events: list[Event], stamp: int) -> None:
        out_ns = time.time_ns()
        for event in events:
            if event.source != "ticker" or event.exchange_ts is None:
                continue
            stamps = self.arrivals.pop((event.symbol, event.exchange_ts), None)
            if stamps is None:
                self.unmatched += 1
                continue
            kernel_ns, read_ns = stamps
            self.overhead_ms.append((out_ns - kernel_ns) / 1e6)
            self.from_read_ms.append((out_ns - read_ns) / 1e6)
            self.tick_to_event_ms.append(out_ns / 1e6 - event.exchange_ts)


async def measure_latency(consumer: Consumer, sim: SimProcess, opts: Options) -> tuple[LatencyProbe, dict[str, Any]]:
    probe = LatencyProbe()
    with probe.installed():
        await trio.sleep(min(0.5, opts.latency_seconds / 4))  # the socket gets wrapped on its next batch
        with consumer.watching(probe.watcher):
            start = Sample.take(sim.pid)
            await trio.sleep(opts.latency_seconds)
            end = Sample.take(sim.pid)
    return probe, end.since(start)


# --- 5. public drop → fresh price -----------------------------------------------------------

def _all_confirmed(stream: HybridStream) -> bool:
    hub = stream.hub
    subs = hub.subscriptions[CATEGORY]
    desired = hub.desired.value.get(CATEGORY, frozenset())
    link = hub.links.get(PUBLIC_LINK)
    return link is not None and subs.link is link and desired <= subs.confirmed


async def measure_drops(stream: HybridStream, consumer: Consumer, sim: SimProcess,
                        opts: Options) -> tuple[list[float], list[float]]:
    hub = stream.hub
    fresh: list[float] = []
    resubscribed: list[float] = []
    for _ in range(opts.drops):
        await wait_until(lambda: _all_confirmed(stream), "all tickers subscribed")
        # isolated outages: the public actor has been up longer than stable_after
        link = hub.links.get(PUBLIC_LINK)
        assert link is not None
        stable_at = link.opened_at + DROP_STABLE_AFTER + 0.25
        await trio.sleep(max(0.0, stable_at - trio.current_time()))
        generation = hub.links.generation(PUBLIC_LINK)
        got_fresh = trio.Event()
        seen: list[float] = []
        drop_ms = time.time_ns() // 1_000_000

        def watcher(events: list[Event], stamp: int) -> None:
            if got_fresh.is_set() or hub.links.generation(PUBLIC_LINK) == generation:
                return
            for event in events:
                if event.source == "ticker" and event.exchange_ts is not None and event.exchange_ts >= drop_ms:
                    seen.append(stamp / 1e9)
                    got_fresh.set()
                    return

        with consumer.watching(watcher):
            start = time.perf_counter()
            await sim.control("drop_public", category=CATEGORY, mode="reset")
            with trio.fail_after(WAIT_LIMIT):
                await got_fresh.wait()
        fresh.append(seen[0] - start)
        await wait_until(lambda: hub.links.generation(PUBLIC_LINK) > generation and _all_confirmed(stream),
                         "resubscribed after a drop")
        resubscribed.append(time.perf_counter() - start)
    return fresh, resubscribed


# --- 6. open → first mark -------------------------------------------------------------------

@contextmanager
def marks_applied(stamps: dict[str, float]) -> Iterator[None]:
    """Benchmark-only: note when the combiner first gets a ticker mark for a watched symbol."""
    original = Combiner.apply_marks

    def apply_marks(self: Combiner, category: str, marks: Any, **kwargs: Any) -> list[Event]:
        now = time.perf_counter()
        for symbol in marks:
            if stamps.get(symbol) == 0.0:
                stamps[symbol] = now
        return original(self, category, marks, **kwargs)

    Combiner.apply_marks = apply_marks  # type: ignore[method-assign]
    try:
        yield
    finally:
        Combiner.apply_marks = original  # type: ignore[method-assign]


async def measure_opens(stream: HybridStream, consumer: Consumer, sim: SimProcess, fresh_symbols: list[str],
                        opts: Options) -> dict[str, list[float]]:
    result: dict[str, list[float]] = {"first_mark": [], "open_event": [], "mark_applied": [], "deduplicated": []}
    applied: dict[str, float] = {}
    with marks_applied(applied):
        for symbol in fresh_symbols[:opts.opens]:
            await wait_until(lambda: _all_confirmed(stream), "subscriptions settled")
            first: dict[str, float] = {}
            done = trio.Event()

            def watcher(events: list[Event], stamp: int, symbol: str = symbol) -> None:
                for event in events:
                    if event.symbol != symbol or event.category != CATEGORY:
                        continue
                    first.setdefault(event.source, stamp / 1e9)
                    if event.source == "ticker" and event.mark_price is not None:
                        done.set()

            applied[symbol] = 0.0
            with consumer.watching(watcher):
                start = time.perf_counter()
                await sim.control("open_position", symbol=symbol, side="Buy", size="1")
                with trio.fail_after(WAIT_LIMIT):
                    await done.wait()
            result["first_mark"].append((first["ticker"] - start) * 1000)
            opened = first.get("position", first.get("rest"))
            if opened is not None:
                result["open_event"].append((opened - start) * 1000)
            if applied[symbol]:
                result["mark_applied"].append((applied[symbol] - start) * 1000)
                # an event well after the mark arrived: the snapshot's mark equalled the push's
                result["deduplicated"].append(1.0 if first["ticker"] - applied[symbol] > 0.02 else 0.0)
    return result


# --- 7. latest prices delivered -------------------------------------------------------------

#: after the market stops, time for the last ticks to travel (real clock)
SETTLE_S: Final = 0.5


async def measure_latest_prices(stream: HybridStream, sim: SimProcess, symbols: list[str],
                                opts: Options) -> dict[str, Any]:
    """Stop the simulator's market, let the last ticks arrive, then compare each position's
    mark in ``stream.positions()`` with the simulator's current mark (REST tickers): the
    conflating path must never leave a stale price behind."""
    await sim.control("set_rate", rate=0.0)
    try:
        await trio.sleep(SETTLE_S)
        response = await sim.http.get("/v5/market/tickers", params={"category": CATEGORY})
        truth = {item["symbol"]: Decimal(item["markPrice"]) for item in response.json()["result"]["list"]}
        marks = {p.symbol: p.mark_price for p in stream.positions() if p.category == CATEGORY}
        stale = sorted(s for s in symbols if marks.get(s) != truth.get(s))
    finally:
        await sim.control("set_rate", rate=opts.rate)
    return {"symbols": len(symbols), "latest_delivered": len(symbols) - len(stale),
            "ratio": round((len(symbols) - len(stale)) / len(symbols), 4) if symbols else None,
            "stale_examples": stale[:5]}


# --- 8. pybit, Bybit's official SDK, on the same simulator stream -----------------------------

PYBIT_NOTE: Final = (
    "pybit builds its URL from 'wss://{SUBDOMAIN}.{DOMAIN}.com/v5/public/{CHANNEL_TYPE}' and "
    "its public options (testnet, demo, domain, tld) cannot point it at a loopback ws:// server; "
    "this benchmark sets pybit.unified_trading.PUBLIC_WSS to the simulator's URL for the phase "
    "and restores it. Everything else is pybit's public API: WebSocket(channel_type=...), "
    "ticker_stream(symbol=[...], callback), exit(). Its callbacks run on websocket-client's "
    "thread; CPU is this process's (all threads), with the trio side idle during the window.")


def _pybit_phase(url: str, symbols: list[str], opts: Options, sim_pid: int) -> dict[str, Any]:
    from pybit import unified_trading

    state = {"counting": False, "frames": 0}
    lags: list[float] = []
    lock = threading.Lock()

    delivering = threading.Event()

    def callback(message: dict[str, Any]) -> None:
        delivering.set()
        if state["counting"]:
            with lock:
                state["frames"] += 1
                ts = message.get("ts")
                if ts is not None:
                    lags.append(time.time_ns() / 1e6 - ts)

    original = unified_trading.PUBLIC_WSS
    unified_trading.PUBLIC_WSS = url
    try:
        ws = unified_trading.WebSocket(channel_type=CATEGORY, testnet=False, retries=3)
    finally:
        unified_trading.PUBLIC_WSS = original
    try:
        for start_at in range(0, len(symbols), 100):
            ws.ticker_stream(symbol=symbols[start_at:start_at + 100], callback=callback)
        if not delivering.wait(WAIT_LIMIT):  # the window starts once pybit delivers
            raise RuntimeError(f"pybit delivered no ticker within {WAIT_LIMIT:g}s")
        time.sleep(opts.warmup)
        state["counting"] = True
        start = Sample.take(sim_pid)
        time.sleep(opts.seconds)
        state["counting"] = False
        end = Sample.take(sim_pid)
    finally:
        ws.exit()
    with lock:
        frames, lag_values = state["frames"], list(lags)
    return {**_rates(frames, start, end), "tick_to_callback_ms": percentiles(lag_values, 2),
            "pybit_version": _version("pybit"), "how": PYBIT_NOTE}


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(package)
    except Exception:  # noqa: BLE001 - only a label in the output
        return None


async def measure_pybit(sim: SimProcess, symbols: list[str], opts: Options) -> dict[str, Any]:
    try:
        import pybit  # noqa: F401
    except ImportError:
        return {"skipped": "pybit is not installed: pip install -e '.[bench]'"}
    url = f"{sim.ws_url}/v5/public/{{CHANNEL_TYPE}}"
    return await trio.to_thread.run_sync(_pybit_phase, url, symbols, opts, sim.pid)


# --- a second stream on another public transport (throughput, latency, latest prices) ----------

async def measure_stream_on(choice: str, sim: SimProcess, symbols: list[str], opts: Options) -> dict[str, Any]:
    with public_transport(choice):
        async with open_hybrid_stream(stream_config(sim), rng=random.Random(opts.seed)) as stream:
            consumer = Consumer(stream)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consumer.run)
                await wait_until(lambda: _all_confirmed(stream)
                                 and len(stream.hub.subscriptions[CATEGORY].confirmed) >= len(symbols),
                                 "the initial subscriptions", limit=60)
                throughput = await measure_stream_throughput(stream, consumer, sim, opts)
                probe, window = await measure_latency(consumer, sim, opts)
                latest = await measure_latest_prices(stream, sim, symbols, opts)
                nursery.cancel_scope.cancel()
    return {"stream": throughput, "frame_to_event_ms": percentiles(probe.overhead_ms),
            "frame_to_event_from_read_return_ms": percentiles(probe.from_read_ms),
            "tick_to_event_ms": percentiles(probe.tick_to_event_ms, 2), "latency_window": window,
            "public_reads": {"reads": probe.reads,
                             "bytes_per_read": percentiles([float(b) for b in probe.read_bytes], 0)},
            "latest_prices": latest}


# --- the whole run --------------------------------------------------------------------------

def comparison(raw: dict[str, Any], stream: dict[str, Any], overhead: dict[str, Any], tick_to_event: dict[str, Any],
               latest: dict[str, Any], name: str, legacy: dict[str, Any] | None,
               pybit: dict[str, Any], coalesced: dict[str, Any]) -> dict[str, Any]:
    """One row per client on the same simulator stream: frames per CPU-second (and the ratio to
    the bare client), and receive latency. ``tick_to_*`` is wall time at receipt minus the
    frame's ``ts`` (ms resolution, includes the simulator's send spread), comparable across
    rows; ``frame_to_event_ms`` (streams only) is kernel receive → event out."""
    bare = raw["msgs_per_cpu_s"]

    def ratio(value: Any) -> float | None:
        return round(value / bare, 3) if bare and value else None

    def latency(figure: dict[str, Any]) -> dict[str, Any]:
        return {"p50": figure["p50"], "p99": figure["p99"]}

    rows: dict[str, Any] = {
        "bare trio-websocket + orjson": {"frames_per_cpu_s": bare, "ratio_to_bare": 1.0,
                                         "tick_to_receive_ms": latency(raw["tick_to_receive_ms"])},
        f"stream ({name} transport)": {"frames_per_cpu_s": stream["msgs_per_cpu_s"],
                                       "ratio_to_bare": ratio(stream["msgs_per_cpu_s"]),
                                       "frames_per_batch": stream["frames_per_batch"],
                                       "tick_to_event_ms": latency(tick_to_event),
                                       "frame_to_event_ms": latency(overhead),
                                       "latest_prices_delivered": latest["ratio"]},
    }
    if legacy is not None:
        rows["stream (legacy hand-written parser)"] = {
            "frames_per_cpu_s": legacy["stream"]["msgs_per_cpu_s"],
            "ratio_to_bare": ratio(legacy["stream"]["msgs_per_cpu_s"]),
            "frames_per_batch": legacy["stream"]["frames_per_batch"],
            "tick_to_event_ms": latency(legacy["tick_to_event_ms"]),
            "frame_to_event_ms": latency(legacy["frame_to_event_ms"]),
            "latest_prices_delivered": legacy["latest_prices"]["ratio"]}
    for ms, figures in coalesced.items():
        rows[f"stream (lean, adaptive coalescing <= {ms} ms)"] = {
            "frames_per_cpu_s": figures["stream"]["msgs_per_cpu_s"],
            "ratio_to_bare": ratio(figures["stream"]["msgs_per_cpu_s"]),
            "frames_per_batch": figures["stream"]["frames_per_batch"],
            "tick_to_event_ms": latency(figures["tick_to_event_ms"]),
            "frame_to_event_ms": latency(figures["frame_to_event_ms"]),
            "latest_prices_delivered": figures["latest_prices"]["ratio"]}
    if "skipped" not in pybit:
        rows["pybit WebSocket.ticker_stream"] = {"frames_per_cpu_s": pybit["msgs_per_cpu_s"],
                                                 "ratio_to_bare": ratio(pybit["msgs_per_cpu_s"]),
                                                 "tick_to_callback_ms": latency(pybit["tick_to_callback_ms"])}
    return rows


def transport_name(opener: Callable[..., Any]) -> str:
    return next(name for name, known in TRANSPORTS.items() if known is opener)


@contextmanager
def public_transport(choice: str | None) -> Iterator[Callable[..., Any]]:
    """Open the public sockets with ``choice`` (None: as ``choose_transport`` does); yields that opener."""
    original = connection.choose_transport
    if choice is None:
        yield original(PUBLIC_LINK)
        return
    chosen = TRANSPORTS[choice]

    def choose_transport(name: str) -> Callable[..., Any]:
        return chosen if name.startswith("public:") else original(name)

    connection.choose_transport = choose_transport  # type: ignore[assignment]
    try:
        yield chosen
    finally:
        connection.choose_transport = original


def stream_config(sim: SimProcess) -> StreamConfig:
    return StreamConfig(credentials=Credentials(str(sim.info["api_key"]), str(sim.info["api_secret"])),
                        endpoints=Endpoints.local(sim.ws_url, sim.rest_url),
                        restart=RestartPolicy(stable_after=DROP_STABLE_AFTER))


async def run_benchmark(opts: Options) -> dict[str, Any]:
    with public_transport(opts.transport) as open_public:
        return await _run_benchmark(opts, open_public)


async def _run_benchmark(opts: Options, open_public: Callable[..., Any]) -> dict[str, Any]:
    started = time.perf_counter()
    cpu_start = self_cpu_seconds()
    load_start = os.getloadavg()
    durations: dict[str, float] = {}
    async with simulator_process(opts.symbols + opts.opens, opts.rate, opts.seed) as sim:
        sim_cpu_start = sim.cpu_seconds()
        listed = await sim.linear_symbols()
        if len(listed) < opts.symbols + opts.opens:
            raise RuntimeError(f"the simulator lists {len(listed)} linear symbols, "
                               f"{opts.symbols + opts.opens} needed")
        symbols, fresh = listed[:opts.symbols], listed[opts.symbols:opts.symbols + opts.opens]

        mark = time.perf_counter()
        raw = await measure_raw_ceiling(sim, symbols, opts)
        durations["raw_phase_s"] = time.perf_counter() - mark

        mark = time.perf_counter()
        transport = await measure_transport_ceiling(sim, symbols, opts, open_public)
        durations["transport_phase_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        read_floor = await measure_read_floor(sim, symbols, opts)
        durations["read_floor_phase_s"] = time.perf_counter() - mark
        legacy_transport = None
        if opts.compare_legacy:
            mark = time.perf_counter()
            legacy_transport = await measure_transport_ceiling(sim, symbols, opts, TRANSPORTS["legacy"])
            durations["legacy_transport_phase_s"] = time.perf_counter() - mark

        mark = time.perf_counter()
        for symbol in symbols:
            await sim.control("open_position", symbol=symbol, side="Buy", size="1")
        durations["open_positions_s"] = time.perf_counter() - mark

        mark = time.perf_counter()
        async with open_hybrid_stream(stream_config(sim), rng=random.Random(opts.seed)) as stream:
            consumer = Consumer(stream)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consumer.run)
                await wait_until(lambda: _all_confirmed(stream)
                                 and len(stream.hub.subscriptions[CATEGORY].confirmed) >= opts.symbols,
                                 "the initial subscriptions", limit=60)
                durations["stream_start_to_subscribed_s"] = time.perf_counter() - mark

                mark = time.perf_counter()
                throughput = await measure_stream_throughput(stream, consumer, sim, opts)
                durations["stream_phase_s"] = time.perf_counter() - mark

                mark = time.perf_counter()
                probe, latency_window = await measure_latency(consumer, sim, opts)
                durations["latency_phase_s"] = time.perf_counter() - mark

                mark = time.perf_counter()
                latest = await measure_latest_prices(stream, sim, symbols, opts)
                durations["latest_prices_phase_s"] = time.perf_counter() - mark

                mark = time.perf_counter()
                fresh_s, resubscribed_s = await measure_drops(stream, consumer, sim, opts)
                durations["drop_phase_s"] = time.perf_counter() - mark

                mark = time.perf_counter()
                opens = await measure_opens(stream, consumer, sim, fresh, opts)
                durations["open_phase_s"] = time.perf_counter() - mark

                health = stream.health()
                totals = {"frames": health.connections[PUBLIC_LINK]["frames"], "events": consumer.events,
                          "batches_out": consumer.batches, "conflated": health.events["conflated"],
                          "public_connects": health.connections[PUBLIC_LINK]["connects"],
                          "actor_restarts": {n: a["restarts"] for n, a in health.actors.items() if a["restarts"]}}
                nursery.cancel_scope.cancel()
        legacy = None
        if opts.compare_legacy and transport_name(open_public) != "legacy":
            mark = time.perf_counter()
            legacy = await measure_stream_on("legacy", sim, symbols, opts)
            durations["legacy_stream_phase_s"] = time.perf_counter() - mark
        coalesced: dict[str, Any] = {}
        for ms in opts.coalesce_ms:
            mark = time.perf_counter()
            coalesced[f"{ms:g}"] = await measure_stream_on(coalescing(ms), sim, symbols, opts)
            durations[f"coalesce_{ms:g}ms_stream_phase_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        pybit = await measure_pybit(sim, symbols, opts) if opts.pybit else {"skipped": "--no-pybit"}
        durations["pybit_phase_s"] = time.perf_counter() - mark
        sim_cpu_total = sim.cpu_seconds() - sim_cpu_start
    total = time.perf_counter() - started

    ceiling = raw["msgs_per_cpu_s"]
    streamed = throughput["msgs_per_cpu_s"]
    overhead = percentiles(probe.overhead_ms)
    raw_lag = raw["tick_to_receive_ms"]
    tick_to_event = percentiles(probe.tick_to_event_ms, 2)
    opens_first = percentiles(opens["first_mark"], 1)
    drops = median_max(fresh_s)
    return {
        "raw_ceiling_msgs_per_cpu_s": ceiling,
        "stream_msgs_per_cpu_s": streamed,
        "ratio_to_ceiling": round(streamed / ceiling, 3) if ceiling and streamed else None,
        "frame_to_event_overhead_ms": {**overhead, "unmatched_events": probe.unmatched},
        "public_drop_to_fresh_price_s": drops,
        "open_to_first_mark_ms": opens_first,
        "latest_prices": latest,
        "comparison": comparison(raw, throughput, overhead, tick_to_event, latest, transport_name(open_public),
                                 legacy, pybit, coalesced),
        "targets": {
            "ratio_to_ceiling>=1.5": bool(ceiling and streamed and streamed / ceiling >= 1.5),
            "frame_to_event_p99<3ms": overhead["p99"] is not None and overhead["p99"] < 3.0,
            "latest_prices_delivered=100%": latest["ratio"] == 1.0,
            "public_drop_to_fresh_price_max<1s": drops["max"] is not None and drops["max"] < 1.0,
            "open_to_first_mark_p99<300ms": opens_first["p99"] is not None and opens_first["p99"] < 300.0,
        },
        "details": {
            "raw": raw,
            "transport": transport,
            "stream": throughput,
            "legacy_transport": legacy_transport,
            "legacy_stream": legacy,
            "coalesced_streams": coalesced,
            "read_floor": read_floor,
            "stream_cpu_per_frame_us": (round(throughput["client_cpu_s"] / throughput["frames"] * 1e6, 2)
                                        if throughput["frames"] else None),
            "pybit": pybit,
            "ratio_to_transport_ceiling": (round(streamed / transport["msgs_per_cpu_s"], 3)
                                           if streamed and transport["msgs_per_cpu_s"] else None),
            "latency_window": latency_window,
            "frame_to_event_from_read_return_ms": percentiles(probe.from_read_ms),
            "public_reads": {"reads": probe.reads, "kernel_stamped": probe.kernel_stamped,
                             "bytes_per_read": percentiles([float(b) for b in probe.read_bytes], 0)},
            "tick_to_event_ms": tick_to_event,
            "overhead_by_subtraction_ms": {
                k: round(tick_to_event[k] - raw_lag[k], 2) if tick_to_event[k] is not None
                and raw_lag[k] is not None else None for k in ("p50", "p99")},
            "public_drop_to_all_resubscribed_s": median_max(resubscribed_s),
            "open_to_open_event_ms": percentiles(opens["open_event"], 1),
            "open_to_ticker_mark_applied_ms": percentiles(opens["mark_applied"], 1),
            "open_samples_ms": {"first_mark": [round(v, 1) for v in opens["first_mark"]],
                                "ticker_mark_applied": [round(v, 1) for v in opens["mark_applied"]]},
            "open_ticker_event_deduplicated": int(sum(opens["deduplicated"])),
        },
        "totals": {**totals, "client_cpu_s": round(self_cpu_seconds() - cpu_start, 3),
                   "sim_cpu_s": round(sim_cpu_total, 3)},
        "durations_s": {k: round(v, 2) for k, v in {**durations, "total_s": total}.items()},
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "implementation": platform.python_implementation(), "platform": platform.platform(),
                    "loadavg_at_start": [round(x, 2) for x in load_start],
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "config": {**attrs.asdict(opts), "transport": transport_name(open_public), "category": CATEGORY,
                   "stable_after_s": DROP_STABLE_AFTER},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Options()
    parser.add_argument("--symbols", type=int, default=defaults.symbols, help="open positions = tickers streamed")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="ticker pushes per second per symbol")
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="each CPU measurement window")
    parser.add_argument("--warmup", type=float, default=defaults.warmup)
    parser.add_argument("--transport-seconds", type=float, default=defaults.transport_seconds)
    parser.add_argument("--latency-seconds", type=float, default=defaults.latency_seconds)
    parser.add_argument("--drops", type=int, default=defaults.drops)
    parser.add_argument("--opens", type=int, default=defaults.opens)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--transport", choices=sorted(TRANSPORTS), default=None,
                        help="the public sockets' transport (default: what the stream uses)")
    parser.add_argument("--no-legacy", action="store_true", help="skip the old parser's stream phase")
    parser.add_argument("--no-pybit", action="store_true", help="skip pybit's ticker_stream phase")
    parser.add_argument("--coalesce-ms", default=",".join(f"{v:g}" for v in defaults.coalesce_ms),
                        help="coalescing windows to compare, comma-separated ms ('' for none)")
    args = parser.parse_args()
    opts = Options(args.symbols, args.rate, args.seconds, args.warmup, args.transport_seconds,
                   args.latency_seconds, args.drops, args.opens, args.seed, args.transport,
                   not args.no_legacy, not args.no_pybit,
                   tuple(float(v) for v in args.coalesce_ms.split(",") if v.strip()))
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(json.dumps(trio.run(partial(run_benchmark, opts))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
