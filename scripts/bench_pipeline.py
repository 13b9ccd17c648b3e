#!/usr/bin/env python
"""CPU per ticker frame of our own code on the public path, stage by stage; print ONE JSON object.

Deterministic and in-process: no network, no simulator process. The frames come from the
simulator's market model (``testing/simulator/market.py``: ``--symbols`` linear symbols, the
simulator's default ``mark_move_probability`` / ``trade_probability``, seeded), one tick of
every symbol after another, as the simulator's market task sends them. A position is open on
every symbol (the simulator's position book, decoded from its ``position`` push records).
Each figure is CPU time (``time.process_time``) per tick frame, after a warm-up, the best of
``--repeats`` runs of ``--ticks`` ticks (``--ticks x --symbols`` frames), so it is robust to
load from other processes (it still moves a little with cache pressure).

Stages (``stages_us_per_frame``), each the real code over precomputed inputs:

- ``ws_parse``      websockets' sans-IO ``ClientProtocol.receive_data`` + ``events_received``
  and the lean transport's ``_take`` (UTF-8 decode), one WebSocket frame per read;
- ``decode_hot``    ``protocol.frames.decode_hot`` (orjson + the inline ticker read);
- ``book_mark``     ``TickerBook.apply_fields`` (a marks-only book, as the public actor's) and
  the ``Mark`` made when the mark changed;
- ``public_read``   the real ``PublicStreamActor._read`` over a transport that hands it the
  decoded text of ``--frames-per-read`` frames per ``receive_batch()`` (a checkpoint each):
  decode, book, ``Mark``, the marks mailbox's ``put``/``commit``, the loop's bookkeeping;
  ``reader_loop_rest`` is that minus ``decode_hot`` and ``book_mark``;
- ``mailbox``       ``LatestByKey.put`` per mark, ``commit`` and ``take`` per read;
- ``apply_marks``   ``Combiner.apply_marks`` (view, PnL, dedup, ``PositionUpdate``) on each
  read's marks in chunks of ``emitter.STEP``, plus ``commit``;
- ``emit``          ``CombinerActor._emit`` of those events (the source switch, the
  ``EventQueue``, health counters, ``_measure``'s latency histograms), and the consumer's
  ``drain`` of the queue after each read that made events (what ``stream.batches()`` pops);
  ``measure`` is ``_measure`` alone;
- ``to_json``       the CLI's JSON lines of those events (``event.to_json()`` + orjson).

End to end (``end_to_end``): the real actors in one trio run: ``PublicStreamActor._read``
reading through the lean transport's ``_LeanTransport`` (websockets' core) from an
in-memory byte stream that returns ``--frames-per-read`` WebSocket frames per read, the
``CombinerActor``'s price task, and a consumer task doing what the CLI's ``--output jsonl``
does (``stream.batches()`` = ``EventQueue.get_batch`` and ``JsonlWriter.write_batch``) into a
sink that drops the bytes. ``us_per_frame`` at each frames-per-read value of ``--fit``, and
``fit``: CPU per read = F + n * v by least squares (``v``: the per-frame cost, comparable
to the lead's ~14.5 µs measured on the real socket; ``F``: the in-process per-read part,
without the socket's epoll/recv). ``library``: the same without the JSON output.
``no_events_us_per_frame``: the same frames with no position open (the reader and the
combiner's wake-ups on marks, no event), so ``event_chain_us_per_event`` (and
``library_event_chain_us_per_event``) is what each event costs in place: the combiner's
work, the switch and queue, the consumer's wake-up and pop (and the JSON line).

Idle between reads (``idle_between_reads``): the library end to end at
``--idle-frames-per-read`` (17, what a coalesced read carries at the defaults), back to back
and with the process asleep for each of ``--idle-ms`` before every read (``trio.sleep``: the
reader's tasks finish, then the process waits in ``epoll_wait``, as it does between two reads
of a real socket). ``extra_us_per_wakeup_by_idle_ms`` is the CPU a read costs more after that
sleep than back to back: what waking from idle costs this machine (its caches, and on a VM
the vCPU's halt and resume), an upper bound as it includes the sleep's own timer. It is why
the live stream's CPU per frame is about twice the back-to-back figure, and why it falls
with the frames a read carries.

Usage: python scripts/bench_pipeline.py [--symbols 500] [--ticks 10] [--repeats 5] [--frames-per-read 1]
                                        [--fit 1,2,4,8,48] [--profile N] [--idle-ms 1,3]
                                        [--idle-frames-per-read 17]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import attrs
import orjson
import trio
import trio.testing
import trio_websocket
import wsproto
import wsproto.connection
import wsproto.events
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from hybrid_actors import Credentials, StreamConfig
from hybrid_actors.actors.emitter import STEP, CombinerActor
from hybrid_actors.actors.hub import Hub
from hybrid_actors.actors.links import Link
from hybrid_actors.actors.mailboxes import LatestByKey
from hybrid_actors.actors.public_ws import PublicStreamActor
from hybrid_actors.config import MAX_MESSAGE_SIZE
from hybrid_actors.lean_transport import _LeanTransport
from hybrid_actors.messages import PositionsSnapshot
from hybrid_actors.output import JsonlWriter
from hybrid_actors.protocol.frames import Position, TickerFields, decode_hot
from hybrid_actors.state import Combiner, Mark, TickerBook
from hybrid_actors.testing.simulator import SimulatorConfig
from hybrid_actors.testing.simulator.instruments import generate_instruments
from hybrid_actors.testing.simulator.market import Market
from hybrid_actors.testing.simulator.positions import PositionBook as SimPositions, ws_record

CATEGORY = "linear"
WALL0 = 1_767_225_600.0  # the market model's clock (2026-01-01): fixed, so the frames are too


# --- the workload ---------------------------------------------------------------------------

@attrs.define
class Workload:
    symbols: int
    positions: tuple[Position, ...]
    snapshots: list[str]
    #: every tick frame, tick after tick (each tick: one frame per symbol)
    ticks: list[list[str]]

    def texts(self, first: int, count: int) -> list[str]:
        return [text for tick in self.ticks[first:first + count] for text in tick]


def build_workload(symbols: int, ticks: int, seed: int = 7) -> Workload:
    """The simulator's market model for ``symbols`` linear symbols, a position on each."""
    defaults = SimulatorConfig()
    instruments = {CATEGORY: generate_instruments(symbols, seed)[CATEGORY]}
    wall = [WALL0]
    market = Market(instruments, random.Random(seed + 1), lambda: wall[0], 10.0,
                    defaults.mark_move_probability, defaults.trade_probability)
    book = SimPositions(lambda c, s: market.require(c, s).instrument, market.mark_price, market.now_ms,
                        random.Random(seed + 2))
    models = market.models[CATEGORY]
    positions = []
    for n, (symbol, model) in enumerate(models.items()):
        inst = model.instrument
        size = inst.qty_step * (1 + n % 7)
        record = book.open(CATEGORY, symbol, "Buy" if n % 2 == 0 else "Sell", size, leverage=5 + n % 20)
        positions.append(Position.from_wire(ws_record(record, inst)))
    ts = market.now_ms()
    snapshots = [model.snapshot_frame(ts) for model in models.values()]
    rng = market.rng
    frames = []
    for tick in range(ticks):
        ts += 100  # 10 Hz
        frames.append([model.tick_frame(rng, ts, market.p_mark, market.p_trade) for model in models.values()])
    return Workload(symbols, tuple(positions), snapshots, frames)


def ws_frame(text: str) -> bytes:
    """The server's unmasked WebSocket text frame carrying ``text``."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


def reads(items: Sequence[Any], per_read: int) -> list[list[Any]]:
    return [list(items[i:i + per_read]) for i in range(0, len(items), per_read)]


def open_protocol() -> ClientProtocol:
    return ClientProtocol(parse_uri("ws://bench.invalid/v5/public/linear"), state=State.OPEN,
                          max_size=MAX_MESSAGE_SIZE)


def new_hub() -> Hub:
    return Hub(StreamConfig(credentials=Credentials("benchkey", "benchsecret"), categories=(CATEGORY,)),
               rest=None, rng=random.Random(0))  # type: ignore[arg-type]  # no REST here


def snapshot_message(work: Workload) -> PositionsSnapshot:
    return PositionsSnapshot((CATEGORY,), work.positions, None, int(WALL0 * 1000), "connect")


# --- measuring ------------------------------------------------------------------------------

def best_cpu(run: Callable[[], float], repeats: int) -> float:
    """The smallest CPU seconds ``run`` reports over ``repeats`` runs (it times its own part)."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        best = min(best, run())
    return best


class CpuTimer:
    def __enter__(self) -> CpuTimer:
        self.start = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.process_time() - self.start


def us(seconds: float, frames: int) -> float:
    return round(seconds / frames * 1e6, 3)


# --- stages over precomputed inputs ---------------------------------------------------------

@attrs.define
class Prepared:
    """One measured window's inputs at every stage, computed once (untimed)."""

    wire_reads: list[list[bytes]]
    text_reads: list[list[str]]
    texts: list[str]
    decoded: list[TickerFields]
    #: the marks each read put, by symbol (one combiner take per read)
    takes: list[dict[str, Mark]]
    #: the events ``apply_marks`` made from each take, chunked as the emitter does
    chunks: list[list[tuple[dict[str, Mark], list[Any]]]]
    frames: int
    events: int


def ticker_fields(text: str) -> TickerFields:
    """``decode_hot`` of a ticker frame (every text of the workload is one)."""
    fields = decode_hot(text, category=CATEGORY)
    assert type(fields) is tuple, fields
    return fields


def warm_book(work: Workload, warm_ticks: int) -> TickerBook:
    book = TickerBook(CATEGORY, fields=False)
    for text in [*work.snapshots, *work.texts(0, warm_ticks)]:
        book.apply_fields(*ticker_fields(text))
    return book


def warm_combiner(work: Workload, warm_ticks: int) -> Combiner:
    combiner = Combiner()
    combiner.apply_snapshot(work.positions, categories=(CATEGORY,), as_of_ms=None, received_ts=int(WALL0 * 1000))
    book = TickerBook(CATEGORY, fields=False)
    for text in [*work.snapshots, *work.texts(0, warm_ticks)]:
        fields = ticker_fields(text)
        mark = book.apply_fields(*fields)
        if mark is not None:
            combiner.apply_marks(CATEGORY, {fields[0]: Mark(mark, fields[4], int(WALL0 * 1000), WALL0)})
    return combiner


def prepare(work: Workload, warm_ticks: int, ticks: int, per_read: int) -> Prepared:
    texts = work.texts(warm_ticks, ticks)
    text_reads = reads(texts, per_read)
    book = warm_book(work, warm_ticks)
    combiner = warm_combiner(work, warm_ticks)
    decoded = [ticker_fields(t) for t in texts]
    takes, chunks, events = [], [], 0
    read_at = WALL0 + 10.0
    position = 0
    for batch in text_reads:
        take: dict[str, Mark] = {}
        for fields in decoded[position:position + len(batch)]:
            mark = book.apply_fields(*fields)
            if mark is not None:
                take[fields[0]] = Mark(mark, fields[4], int(read_at * 1000), read_at)
        position += len(batch)
        takes.append(take)
        items = list(take.items())
        per_take = []
        for start in range(0, len(items), STEP):
            chunk = dict(items[start:start + STEP])
            made = combiner.apply_marks(CATEGORY, chunk)
            events += len(made)
            per_take.append((chunk, made))
        chunks.append(per_take)
    wire_reads = [[ws_frame(t) for t in batch] for batch in text_reads]
    wire_reads = [[b"".join(batch)] for batch in wire_reads]  # one read = the frames' bytes together
    return Prepared(wire_reads, text_reads, texts, decoded, takes, chunks, len(texts), events)


def stage_ws_parse(prep: Prepared) -> float:
    async def run() -> float:
        protocol = open_protocol()
        # a stream that is never used: the stage feeds the core and takes its frames directly
        transport = _LeanTransport(trio.testing.memory_stream_pair()[0], protocol, "ws://bench.invalid", "bench", 1.0)
        # an open connection's core returns Frames only (the handshake's Request/Response come before)
        pending = cast("Callable[[], list[Frame]]", protocol.events_received)
        receive, take = protocol.receive_data, transport._take
        with CpuTimer() as timer:
            for (chunk,) in prep.wire_reads:
                receive(chunk)
                take(pending())
                protocol.data_to_send()
                transport._ready = []
        return timer.seconds
    return trio.run(run)


def stage_decode(prep: Prepared) -> float:
    texts = prep.texts
    with CpuTimer() as timer:
        for text in texts:
            decode_hot(text, category=CATEGORY)
    return timer.seconds


def stage_book_mark(work: Workload, prep: Prepared, warm_ticks: int) -> float:
    book = warm_book(work, warm_ticks)
    apply, decoded = book.apply_fields, prep.decoded
    received, read_at = int(WALL0 * 1000), WALL0
    with CpuTimer() as timer:
        for fields in decoded:
            mark = apply(*fields)
            if mark is not None:
                Mark(mark, fields[4], received, read_at)
    return timer.seconds


class _Done(Exception):
    """The scripted input ran out."""


@attrs.define(eq=False)
class TextTransport:
    """A ``Transport`` whose every ``receive_batch()`` hands over the next prepared batch
    of messages (after a checkpoint, as a read does)."""

    batches: list[list[str]]
    url: str = "ws://bench.invalid"
    _next: int = 0

    async def receive_batch(self) -> list[str | bytes]:
        await trio.lowlevel.checkpoint()
        if self._next >= len(self.batches):
            raise _Done
        self._next += 1
        return self.batches[self._next - 1]  # type: ignore[return-value]

    async def send(self, text: str) -> None:
        raise AssertionError("the benchmark sends nothing")

    def abandon(self) -> None:
        pass


def stage_public_read(work: Workload, prep: Prepared, warm_ticks: int, per_read: int) -> float:
    async def run() -> float:
        hub = new_hub()
        actor = PublicStreamActor(hub, CATEGORY)
        send, _recv = trio.open_memory_channel[Any](1000)
        outbox, _out = trio.open_memory_channel[str](1)
        link = Link("public:linear", 1, outbox, opened_at=0.0)
        book = warm_book(work, warm_ticks)
        transport = TextTransport(prep.text_reads)
        with CpuTimer() as timer:
            try:
                await actor._read(transport, link, book, send)
            except _Done:
                pass
        return timer.seconds
    return trio.run(run)


def stage_mailbox(prep: Prepared) -> float:
    async def run() -> float:
        box: LatestByKey[tuple[str, str], Mark] = LatestByKey()
        put, commit, take = box.put, box.commit, box.take
        with CpuTimer() as timer:
            for marks in prep.takes:
                for symbol, mark in marks.items():
                    put((CATEGORY, symbol), mark)
                commit()
                if marks:
                    await take()
        return timer.seconds
    return trio.run(run)


def stage_apply_marks(work: Workload, prep: Prepared, warm_ticks: int) -> float:
    combiner = warm_combiner(work, warm_ticks)
    apply, commit = combiner.apply_marks, combiner.commit
    with CpuTimer() as timer:
        for marks in prep.takes:
            items = list(marks.items())
            for start in range(0, len(items), STEP):
                apply(CATEGORY, dict(items[start:start + STEP]), commit=False)
                commit()
    return timer.seconds


def emit_hub(work: Workload) -> tuple[Hub, CombinerActor]:
    hub = new_hub()
    actor = CombinerActor(hub)
    actor.apply(snapshot_message(work))
    hub.events.drain()
    return hub, actor


def stage_emit(work: Workload, prep: Prepared) -> float:
    async def run() -> float:
        hub, actor = emit_hub(work)
        emit, drain = actor._emit, hub.events.drain
        with CpuTimer() as timer:
            for per_take in prep.chunks:
                made = 0
                for chunk, events in per_take:
                    emit(events, chunk)
                    made += len(events)
                if made:  # the consumer wakes only for events
                    drain()
        return timer.seconds
    return trio.run(run)


def stage_measure(work: Workload, prep: Prepared) -> float:
    async def run() -> float:
        _hub, actor = emit_hub(work)
        measure, now = actor._measure, trio.current_time()
        with CpuTimer() as timer:
            for per_take in prep.chunks:
                for chunk, events in per_take:
                    if events:
                        measure(events, chunk, now)
        return timer.seconds
    return trio.run(run)


def stage_to_json(prep: Prepared) -> float:
    batches = [[e for _chunk, events in per_take for e in events] for per_take in prep.chunks]
    dumps = orjson.dumps
    with CpuTimer() as timer:
        for batch in batches:
            if batch:
                b"".join(dumps(event.to_json()) + b"\n" for event in batch)
    return timer.seconds


# --- end to end: the real actors in one trio run ----------------------------------------------

class ScriptedStream(trio.abc.Stream):
    """A byte stream whose ``receive_some`` returns the next prepared chunk (a read of that
    many WebSocket frames; at most ``max_bytes`` of it, the rest on the next call), after a
    checkpoint, or after ``gap`` seconds of sleep before each new chunk (the process idle
    between two reads, as on a real socket). Past the last chunk it sets ``drained`` and
    waits for more. With ``handshake``, the first bytes sent to it must be a WebSocket
    upgrade request, which wsproto's server side answers (for trio-websocket's client)."""

    def __init__(self, handshake: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.position = 0
        self.gap = 0.0
        self.drained = trio.Event()
        self._more = trio.Event()
        self._rest = b""  # the part of the last chunk past max_bytes
        self._server = wsproto.WSConnection(wsproto.ConnectionType.SERVER) if handshake else None

    def extend(self, chunks: Sequence[bytes]) -> None:
        self.chunks.extend(chunks)
        self.drained = trio.Event()
        self._more.set()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._rest:
            while self.position >= len(self.chunks):
                self.drained.set()
                self._more = trio.Event()
                await self._more.wait()
            if self.gap:
                await trio.sleep(self.gap)  # the reader's tasks finish their work, then the process idles
            else:
                await trio.lowlevel.checkpoint()
            self._rest = self.chunks[self.position]
            self.position += 1
        else:
            await trio.lowlevel.checkpoint()
        limit = len(self._rest) if max_bytes is None else max_bytes
        data, self._rest = self._rest[:limit], self._rest[limit:]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        server = self._server
        if server is None or server.state is not wsproto.connection.ConnectionState.CONNECTING:
            return
        server.receive_data(bytes(data))
        for event in server.events():
            if isinstance(event, wsproto.events.Request):
                self.chunks.insert(self.position, server.send(wsproto.events.AcceptConnection()))
                self._more.set()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class CountingMailbox(LatestByKey[tuple[str, str], Mark]):
    """The marks mailbox, counting what the combiner takes (one call more per take)."""

    marks: int = 0
    takes: int = 0

    async def take(self) -> dict[tuple[str, str], Mark]:
        batch = await super().take()
        self.marks += len(batch)
        self.takes += 1
        return batch


class NullSink:
    """Where the CLI's JSON lines go here: counted, then dropped (never cancelled mid-write)."""

    unsent = b""
    cut = False

    def __init__(self) -> None:
        self.bytes = 0

    async def send_all(self, data: bytes) -> None:
        self.bytes += len(data)


@attrs.define
class EndToEnd:
    cpu_s: float
    frames: int
    reads: int
    events: int
    marks_taken: int
    takes: int
    consumer_batches: int
    json_bytes: int


def end_to_end(work: Workload, warm_ticks: int, ticks: int, repeats: int, per_read: int, output: bool,
               profile: cProfile.Profile | None = None, gap: float = 0.0) -> EndToEnd:
    """One trio run: the warm-up ticks, then ``repeats`` windows of ``ticks`` ticks; the best
    window. ``gap``: seconds the process sleeps before each read of a window (0: back to back)."""
    wire = {text: ws_frame(text) for text in work.snapshots}

    def chunks(texts: list[str]) -> list[bytes]:
        return [b"".join(ws_frame(t) for t in batch) for batch in reads(texts, per_read)]

    windows = [chunks(work.texts(warm_ticks + r * ticks, ticks)) for r in range(repeats)]

    async def main() -> EndToEnd:
        hub = new_hub()
        stream = ScriptedStream()
        transport = _LeanTransport(stream, open_protocol(), "ws://bench.invalid", "bench", 1.0)
        link_send, _link_recv = trio.open_memory_channel[str](1)
        link = Link("public:linear", 1, link_send, opened_at=0.0)
        manager, _manager_recv = trio.open_memory_channel[Any](1000)
        book = TickerBook(CATEGORY, fields=False)
        actor = CombinerActor(hub)
        sink = NullSink()
        writer = JsonlWriter(sink)
        counts = {"events": 0, "batches": 0}
        counting = hub.marks = CountingMailbox()  # before any actor reads it

        async def consume() -> None:
            get_batch = hub.events.get_batch
            while True:
                batch = await get_batch()
                counts["events"] += len(batch)
                counts["batches"] += 1
                if output:
                    await writer.write_batch(batch)

        best: EndToEnd | None = None
        async with trio.open_nursery() as nursery:
            actor.apply(snapshot_message(work))
            nursery.start_soon(consume)
            nursery.start_soon(actor._prices)
            nursery.start_soon(PublicStreamActor(hub, CATEGORY)._read, transport, link, book, manager)
            stream.extend([b"".join(wire[t] for t in batch) for batch in reads(work.snapshots, per_read)])
            stream.extend(chunks(work.texts(0, warm_ticks)))
            await trio.testing.wait_all_tasks_blocked()
            for window in windows:
                gc.collect()
                before = (counts["events"], counts["batches"], counting.marks, counting.takes,
                          sink.bytes)
                if profile is not None:
                    profile.enable()
                start = time.process_time()
                stream.gap = gap
                stream.extend(window)
                await stream.drained.wait()  # every chunk handed over (a sleeping reader is not done)
                await trio.testing.wait_all_tasks_blocked()  # every frame read, every event consumed
                cpu = time.process_time() - start
                stream.gap = 0.0
                if profile is not None:
                    profile.disable()
                result = EndToEnd(cpu, ticks * work.symbols, len(window), counts["events"] - before[0],
                                  counting.marks - before[2], counting.takes - before[3],
                                  counts["batches"] - before[1], sink.bytes - before[4])
                if best is None or result.cpu_s < best.cpu_s:
                    best = result
            nursery.cancel_scope.cancel()
        assert best is not None
        return best

    return trio.run(main)


def bare_client(work: Workload, warm_ticks: int, ticks: int, repeats: int, per_read: int,
                gap: float = 0.0) -> tuple[float, int]:
    """bench_stream's bare client (trio-websocket's ``get_message`` + ``orjson.loads``) over the
    same frames in chunks of ``per_read`` (trio-websocket reads at most its 4 KiB receive
    buffer at a time, as against the simulator), ``gap`` seconds asleep before each chunk:
    (CPU seconds, frames) of the best of ``repeats`` windows."""
    def chunks(texts: list[str]) -> list[bytes]:
        return [b"".join(ws_frame(t) for t in batch) for batch in reads(texts, per_read)]

    windows = [chunks(work.texts(warm_ticks + r * ticks, ticks)) for r in range(repeats)]

    async def main() -> tuple[float, int]:
        stream = ScriptedStream(handshake=True)
        count = 0
        best: tuple[float, int] | None = None
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(nursery, stream, "bench.invalid",  # type: ignore[arg-type]
                                                         "/v5/public/linear", max_message_size=1 << 22)

            async def consume() -> None:
                nonlocal count
                get_message, loads = ws.get_message, orjson.loads
                while True:
                    loads(await get_message())
                    count += 1

            nursery.start_soon(consume)
            stream.extend(chunks(work.texts(0, warm_ticks)))
            await stream.drained.wait()
            await trio.testing.wait_all_tasks_blocked()
            for window in windows:
                gc.collect()
                before = count
                start = time.process_time()
                stream.gap = gap
                stream.extend(window)
                await stream.drained.wait()
                await trio.testing.wait_all_tasks_blocked()
                cpu = time.process_time() - start
                stream.gap = 0.0
                result = (cpu, count - before)
                if best is None or result[0] < best[0]:
                    best = result
            nursery.cancel_scope.cancel()
        assert best is not None
        return best

    return trio.run(main)


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``y = F + v * x``: (F, v)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    v = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - v * mx, v


# --- the run ----------------------------------------------------------------------------------

def run(opts: argparse.Namespace) -> dict[str, Any]:
    warm = max(1, opts.ticks // 2)
    fit_points = sorted({int(x) for x in str(opts.fit).split(",") if x.strip()} | {opts.frames_per_read})
    total_ticks = warm + opts.ticks * opts.repeats
    work = build_workload(opts.symbols, total_ticks)
    prep = prepare(work, warm, opts.ticks, opts.frames_per_read)
    frames = prep.frames
    r = opts.repeats
    stages = {
        "ws_parse": us(best_cpu(lambda: stage_ws_parse(prep), r), frames),
        "decode_hot": us(best_cpu(lambda: stage_decode(prep), r), frames),
        "book_mark": us(best_cpu(lambda: stage_book_mark(work, prep, warm), r), frames),
        "public_read": us(best_cpu(lambda: stage_public_read(work, prep, warm, opts.frames_per_read), r), frames),
        "mailbox": us(best_cpu(lambda: stage_mailbox(prep), r), frames),
        "apply_marks": us(best_cpu(lambda: stage_apply_marks(work, prep, warm), r), frames),
        "emit": us(best_cpu(lambda: stage_emit(work, prep), r), frames),
        "measure": us(best_cpu(lambda: stage_measure(work, prep), r), frames),
        "to_json": us(best_cpu(lambda: stage_to_json(prep), r), frames),
    }
    stages["reader_loop_rest"] = round(stages["public_read"] - stages["decode_hot"] - stages["book_mark"], 3)
    per_event = {name: round(stages[name] * frames / prep.events, 3) if prep.events else None
                 for name in ("apply_marks", "emit", "measure", "to_json")}
    runs = {}
    for per_read in fit_points:
        result = end_to_end(work, warm, opts.ticks, opts.repeats, per_read, output=True)
        runs[per_read] = result
    main_run = runs[opts.frames_per_read]
    library = end_to_end(work, warm, opts.ticks, opts.repeats, opts.frames_per_read, output=False)
    quiet = end_to_end(attrs.evolve(work, positions=()), warm, opts.ticks, opts.repeats, opts.frames_per_read,
                       output=True)
    gaps = sorted({float(x) for x in str(opts.idle_ms).split(",") if x.strip()} | {0.0})
    idle = {f"{ms:g}": end_to_end(work, warm, opts.ticks, opts.repeats, opts.idle_frames_per_read, output=False,
                                  gap=ms / 1000) for ms in gaps}
    bare_idle = {f"{ms:g}": bare_client(work, warm, opts.ticks, opts.repeats, opts.idle_frames_per_read, ms / 1000)
                 for ms in gaps}
    f_read, v_frame = fit([(float(n), res.cpu_s / res.reads) for n, res in runs.items()]) \
        if len(runs) > 1 else (None, None)
    stage_sum = sum(stages[name] for name in ("ws_parse", "public_read", "mailbox", "apply_marks", "emit",
                                              "to_json"))
    e2e_us = us(main_run.cpu_s, main_run.frames)
    out: dict[str, Any] = {
        "symbols": opts.symbols, "ticks": opts.ticks, "repeats": opts.repeats,
        "frames_per_read": opts.frames_per_read, "frames": frames,
        "events_per_frame": round(prep.events / frames, 3),
        "stages_us_per_frame": stages,
        "stages_us_per_event": per_event,
        "end_to_end": {
            "us_per_frame": e2e_us,
            "library_us_per_frame": us(library.cpu_s, library.frames),
            "stages_sum_us_per_frame": round(stage_sum, 3),
            "scheduling_and_rest_us_per_frame": round(e2e_us - stage_sum, 3),
            "no_events_us_per_frame": us(quiet.cpu_s, quiet.frames),
            "event_chain_us_per_event": round((main_run.cpu_s - quiet.cpu_s) / main_run.events * 1e6, 3)
            if main_run.events else None,
            "library_event_chain_us_per_event": round((library.cpu_s - quiet.cpu_s) / library.events * 1e6, 3)
            if library.events else None,
            "events_per_frame": round(main_run.events / main_run.frames, 3),
            "marks_per_take": round(main_run.marks_taken / main_run.takes, 2) if main_run.takes else None,
            "events_per_consumer_batch": round(main_run.events / main_run.consumer_batches, 2)
            if main_run.consumer_batches else None,
            "json_bytes_per_event": round(main_run.json_bytes / main_run.events, 1) if main_run.events else None,
            "us_per_frame_by_frames_per_read": {str(n): us(res.cpu_s, res.frames) for n, res in runs.items()},
            "fit_us": None if f_read is None or v_frame is None else {"per_read_F": round(f_read * 1e6, 3),
                                                                    "per_frame_v": round(v_frame * 1e6, 3)},
        },
        "idle_between_reads": {
            "frames_per_read": opts.idle_frames_per_read,
            "library_us_per_frame_by_idle_ms": {ms: us(res.cpu_s, res.frames) for ms, res in idle.items()},
            "extra_us_per_wakeup_by_idle_ms": {
                ms: round((res.cpu_s - idle["0"].cpu_s) / res.reads * 1e6, 1)
                for ms, res in idle.items() if ms != "0"},
            "bare_client_us_per_frame_by_idle_ms": {ms: us(cpu, frames) for ms, (cpu, frames) in bare_idle.items()},
            "ratio_to_bare_by_idle_ms": {
                ms: round((bare_idle[ms][0] / bare_idle[ms][1]) / (res.cpu_s / res.frames), 2)
                for ms, res in idle.items() if res.cpu_s > 0 and bare_idle[ms][1]},
        },
    }
    if opts.profile:
        profile = cProfile.Profile()
        end_to_end(work, warm, opts.ticks, opts.repeats, opts.frames_per_read, output=True, profile=profile)
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(opts.profile)
        out["profile_top_by_tottime"] = [line for line in text.getvalue().splitlines()
                                         if line.strip() and line.lstrip()[0].isdigit()][:opts.profile]
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--ticks", type=int, default=10, help="ticks per measured window")
    parser.add_argument("--repeats", type=int, default=5, help="windows; the best is reported")
    parser.add_argument("--frames-per-read", type=int, default=1)
    parser.add_argument("--fit", default="1,2,4,8,48", help="frames-per-read values of the F + n*v fit")
    parser.add_argument("--profile", type=int, default=0, help="add cProfile's top N of the end-to-end run")
    parser.add_argument("--idle-ms", default="1,3",
                        help="idle sleeps before each read for idle_between_reads (0, back to back, is always run)")
    parser.add_argument("--idle-frames-per-read", type=int, default=17,
                        help="frames per read of idle_between_reads (17: a coalesced read at the defaults)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(run(parse_args())))
