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
   - ``public_ws.decode`` is wrapped so each ticker frame that carries a mark price
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

The HTTP control calls of steps 2, 5 and 6 run in this process but outside the CPU
windows. Each window also reports ``client_runqueue_wait_ms`` (time this process was
ready to run but had no CPU, from ``/proc/thread-self/schedstat``) and involuntary
context switches, to tell how much of a latency tail a shared machine added.

Usage: python scripts/bench_stream.py [--symbols 500] [--rate 10] [--seconds 15]
                                     [--transport {lean,trio-websocket}]
"""

from __future__ import annotations

import argparse
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
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any, Final

import attrs
import httpx
import orjson
import trio
import trio_websocket

from hybrid_actors import lean_transport
from hybrid_actors import transport as transport_module
from hybrid_actors.actors import connection, public_ws
from hybrid_actors.config import Credentials, Endpoints, RestartPolicy, StreamConfig
from hybrid_actors.protocol.frames import TickerFrame
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
}


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


class _StampingSend:
    """Wraps trio-websocket's message queue: each message keeps the stamps of its read."""

    def __init__(self, inner: Any, probe: LatencyProbe) -> None:
        self._inner = inner
        self._probe = probe

    async def send(self, message: str | bytes) -> None:
        probe = self._probe
        probe.read_of[message] = (probe.kernel_ns, probe.read_ns)
        await self._inner.send(message)

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
        """Stamp the reads of ``owner._stream``: a trio-websocket connection (whose message
        queue is wrapped too) or a lean transport."""
        if any(w is owner for w in self._wrapped):
            return
        owner._stream = _StampingStream(owner._stream, self)
        if isinstance(owner, trio_websocket.WebSocketConnection):
            owner._send_channel = _StampingSend(owner._send_channel, self)  # type: ignore[attr-defined]
        self._wrapped.append(owner)

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Patch the public socket's transport (either kind) and the public actor's decode; undo on exit."""
        probe = self
        ws_batch = transport_module._WsTransport.receive_batch
        lean_batch = lean_transport._LeanTransport.receive_batch
        original_decode = public_ws.decode

        async def receive_batch(transport: Any) -> list[str | bytes]:
            if transport._label == PUBLIC_LINK:
                probe._wrap(transport._ws)
            return await ws_batch(transport)

        async def receive_lean_batch(transport: Any) -> list[str | bytes]:
            if transport._label != PUBLIC_LINK:
                return await lean_batch(transport)
            probe._wrap(transport)
            batch = await lean_batch(transport)
            stamps = (probe.kernel_ns, probe.read_ns)  # the read that completed them all
            for message in batch:
                probe.read_of[message] = stamps
            return batch

        def decode(raw: str | bytes, *, category: str | None = None) -> Any:
            frame = original_decode(raw, category=category)
            stamps = probe.read_of.pop(raw, None)
            if stamps is not None and isinstance(frame, TickerFrame) and frame.mark_price is not None:
                probe.arrivals[(frame.symbol, frame.ts)] = stamps
            return frame

        transport_module._WsTransport.receive_batch = receive_batch  # type: ignore[method-assign]
        lean_transport._LeanTransport.receive_batch = receive_lean_batch  # type: ignore[method-assign]
        public_ws.decode = decode  # type: ignore[assignment]
        try:
            yield
        finally:
            transport_module._WsTransport.receive_batch = ws_batch  # type: ignore[method-assign]
            lean_transport._LeanTransport.receive_batch = lean_batch  # type: ignore[method-assign]
            public_ws.decode = original_decode
            for owner in self._wrapped:
                owner._stream = owner._stream._inner
                if isinstance(owner, trio_websocket.WebSocketConnection):
                    owner._send_channel = owner._send_channel._inner  # type: ignore[attr-defined]

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


# --- the whole run --------------------------------------------------------------------------

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
        "targets": {
            "ratio_to_ceiling>=0.60": bool(ceiling and streamed and streamed / ceiling >= 0.60),
            "frame_to_event_p99<5ms": overhead["p99"] is not None and overhead["p99"] < 5.0,
            "public_drop_to_fresh_price_max<1s": drops["max"] is not None and drops["max"] < 1.0,
            "open_to_first_mark_p99<300ms": opens_first["p99"] is not None and opens_first["p99"] < 300.0,
        },
        "details": {
            "raw": raw,
            "transport": transport,
            "stream": throughput,
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
    args = parser.parse_args()
    opts = Options(args.symbols, args.rate, args.seconds, args.warmup, args.transport_seconds,
                   args.latency_seconds, args.drops, args.opens, args.seed, args.transport)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(json.dumps(trio.run(partial(run_benchmark, opts))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
