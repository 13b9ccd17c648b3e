"""What the benchmark scripts share: the simulator in a subprocess, CPU and scheduler
samples, percentiles, a counting window around a consumer task, and the pure bookkeeping
behind per-frame arrival stamps (:class:`FrameEnds`, :class:`ReadStamper`) and GC pauses
(:class:`GcPauses`).

A script in ``scripts/`` imports it as ``bench_support`` (the script's folder is on
``sys.path`` when it runs; a script loaded another way puts it there first).
"""

from __future__ import annotations

import array
import bisect
import gc
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from functools import partial
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, ClassVar, Final

import attrs
import httpx
import orjson
import trio

__all__ = ["self_cpu_seconds", "process_cpu_seconds", "Sample", "percentiles", "median_max", "SimProcess",
           "simulator_process", "subscribe_tickers", "Window", "counting_window", "rates", "FrameEnds", "Arrival",
           "ReadStamper", "GcPauses"]

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
#: how long the simulator may take to announce itself, and to exit after SIGINT
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 5.0


# --- CPU, scheduler and percentiles -----------------------------------------------------------

def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU of ``pid`` (fields 14 and 15 of /proc/<pid>/stat, after the comm field)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _runqueue_wait() -> float | None:
    """Seconds this thread was runnable but waiting for a CPU (/proc/thread-self/schedstat)."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def _machine_times(stat: str) -> list[int] | None:
    """``/proc/stat``'s first line (all CPUs, clock ticks): user, nice, system, idle, iowait,
    irq, softirq[, steal, ...]; None without it."""
    try:
        with open(stat, encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 8 or fields[0] != "cpu":
        return None
    return [int(v) for v in fields[1:]]


def machine_busy_seconds(stat: str = "/proc/stat") -> float | None:
    """CPU time the whole machine spent busy, all CPUs (``/proc/stat``'s first line: user,
    nice, system, irq and softirq; not idle, iowait or steal), in seconds; None without it."""
    times = _machine_times(stat)
    if times is None:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = times[:7]
    return (user + nice + system + irq + softirq) / CLK_TCK


def machine_steal_seconds(stat: str = "/proc/stat") -> float | None:
    """Time the hypervisor ran something else while this VM's vCPUs wanted to run, all
    vCPUs (``/proc/stat``'s steal field), in seconds; None where the kernel does not say."""
    times = _machine_times(stat)
    return None if times is None or len(times) < 8 else times[7] / CLK_TCK


#: the kernel settings that decide what an idle vCPU does between reads (``idle_settings``)
IDLE_SETTINGS: Final = {
    "cpuidle_driver": "/sys/devices/system/cpu/cpuidle/current_driver",
    "cpuidle_governor": "/sys/devices/system/cpu/cpuidle/current_governor_ro",
    "guest_halt_poll_ns": "/sys/module/haltpoll/parameters/guest_halt_poll_ns",
}


def idle_settings(paths: Mapping[str, str] = IDLE_SETTINGS) -> dict[str, str | None]:
    """What this machine's idle vCPU does, as the kernel says (None where it does not): the
    cpuidle driver and governor, and the guest's halt-poll time. On a VM whose idle vCPU halts
    at once (``haltpoll`` with ``guest_halt_poll_ns`` 0) every wake-up between two reads costs
    more than where it polls first, so runs on differently set machines are not comparable
    (stop 21's VM polled for up to 50 µs before halting, stop 20's and stop 23's not at all)."""
    settings: dict[str, str | None] = {}
    for name, path in paths.items():
        try:
            with open(path, encoding="ascii") as f:
                settings[name] = f.read().strip() or None
        except (OSError, UnicodeDecodeError):
            settings[name] = None
    return settings


@attrs.frozen
class Sample:
    """CPU, wall and scheduler counters of this process (and the simulator's CPU, and the
    whole machine's busy time) at one moment."""

    wall: float
    cpu: float
    sim_cpu: float
    runqueue_wait: float | None
    involuntary_switches: int
    machine_busy: float | None = None
    machine_steal: float | None = None

    @classmethod
    def take(cls, sim_pid: int) -> Sample:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(time.perf_counter(), usage.ru_utime + usage.ru_stime, process_cpu_seconds(sim_pid),
                   _runqueue_wait(), usage.ru_nivcsw, machine_busy_seconds(), machine_steal_seconds())

    def since(self, start: Sample) -> dict[str, Any]:
        """The window's counters. ``others_cpu_s``: CPU the rest of the machine used meanwhile
        (its busy time minus this process's and the simulator's; ±1 clock tick per CPU): on this
        VM a process that keeps a vCPU busy makes ours run faster (README, Benchmarks), so a
        window with others_cpu_s well above 0 is not comparable with one on a quiet machine.
        ``steal_ms``: time the hypervisor gave this VM's vCPUs to someone else meanwhile (all
        vCPUs; 10 ms clock ticks): a frame that arrives then waits for it, so it lands in a
        latency tail that is not ours."""
        waited = (None if self.runqueue_wait is None or start.runqueue_wait is None
                  else round((self.runqueue_wait - start.runqueue_wait) * 1000, 1))
        cpu, sim_cpu = self.cpu - start.cpu, self.sim_cpu - start.sim_cpu
        others = (None if self.machine_busy is None or start.machine_busy is None
                  else round(self.machine_busy - start.machine_busy - cpu - sim_cpu, 2))
        steal = (None if self.machine_steal is None or start.machine_steal is None
                 else round((self.machine_steal - start.machine_steal) * 1000))
        return {"duration_s": round(self.wall - start.wall, 3), "client_cpu_s": round(cpu, 3),
                "sim_cpu_s": round(sim_cpu, 3), "others_cpu_s": others, "steal_ms": steal,
                "client_runqueue_wait_ms": waited,
                "client_involuntary_switches": self.involuntary_switches - start.involuntary_switches}


#: a window whose other processes used more than this share of one CPU is flagged (see
#: Sample.since): a stray busy loop shows as ~1.0, a quiet machine as ~0.0-0.05
BUSY_MACHINE_SHARE: Final = 0.2


def _flagged(windows: dict[str, dict[str, Any]], key: str, unit: float, share: float,
             digits: int) -> dict[str, float]:
    """The windows (name → a ``Sample.since`` dict) whose ``key`` (in ``unit`` seconds) was
    more than ``share`` of one CPU: name → ``key`` per second."""
    out: dict[str, float] = {}
    for name, window in windows.items():
        value, duration = window.get(key), window.get("duration_s")
        if value is not None and duration and value * unit / duration > share:
            out[name] = round(value / duration, digits)
    return out


def busy_windows(windows: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The windows in which other processes used more than BUSY_MACHINE_SHARE of a CPU:
    name → their CPU-seconds per second."""
    return _flagged(windows, "others_cpu_s", 1.0, BUSY_MACHINE_SHARE, 2)


#: a window in which the hypervisor took more than this share of one vCPU is flagged (see
#: Sample.since): 0-2 ms a second on a quiet host, 15-30 on a busy one (stop 21)
STOLEN_SHARE: Final = 0.005


def stolen_windows(windows: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The windows in which the hypervisor took more than STOLEN_SHARE of a vCPU from this
    VM: name → ms stolen per second."""
    return _flagged(windows, "steal_ms", 1e-3, STOLEN_SHARE, 1)


def rates(frames: int, start: Sample, end: Sample) -> dict[str, Any]:
    """The window's counters plus frames per wall second and per CPU-second of this process."""
    cpu = end.cpu - start.cpu
    return {**end.since(start), "frames": frames, "frames_per_s": round(frames / (end.wall - start.wall), 1),
            "msgs_per_cpu_s": round(frames / cpu) if cpu > 0 else None}


def percentiles(values: Sequence[float], digits: int = 3) -> dict[str, float | int | None]:
    """Nearest-rank p50/p99/max of ``values`` (None when empty) and the sample count."""
    if not values:
        return {"p50": None, "p99": None, "max": None, "samples": 0}
    ordered = sorted(values)
    return {"p50": round(nearest_rank(ordered, 0.50), digits), "p99": round(nearest_rank(ordered, 0.99), digits),
            "max": round(ordered[-1], digits), "samples": len(ordered)}


def nearest_rank(ordered: Sequence[float], p: float) -> float:
    """The nearest-rank ``p`` quantile of ``ordered`` (sorted, not empty), unrounded: the one
    definition behind ``percentiles`` and every count of the events at or above a p99."""
    n = len(ordered)
    return ordered[min(n - 1, max(0, math.ceil(p * n - 1e-9) - 1))]


def median_max(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    if not values:
        return {"median": None, "max": None, "samples": []}
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"median": round(median, digits), "max": round(ordered[-1], digits),
            "samples": [round(v, digits) for v in values]}


#: two frames whose kernel stamps are further apart than this belong to different bursts
#: (the simulator sends every symbol's tick in one burst per 1/rate s: 100 ms at 10 Hz)
BURST_GAP_NS: Final = 20_000_000
#: a burst's frames in this many parts, in arrival order, for ``burst_profile``
BURST_PARTS: Final = 5


def burst_profile(intervals: Sequence[tuple[int, int]], gap_ns: int = BURST_GAP_NS) -> dict[str, Any]:
    """Where in a burst a frame's latency is made. ``intervals``: per event, its frame's
    kernel stamp and the event's delivery (ns). Events are grouped into bursts (a gap of more
    than ``gap_ns`` between two kernel stamps starts a new one: keep it well under the
    simulator's tick interval), and each burst cut into
    ``BURST_PARTS`` parts in arrival order: ``frame_to_event_ms_by_part`` (p50/p99 of each
    part), ``tail_events_by_part`` (where the events at or above the overall p99 sit: in the
    last parts when the reader falls behind during a burst and catches up after it),
    ``arrival_span_ms`` (first to last frame of a burst) and ``events_per_burst``."""
    ordered = sorted(intervals)
    if not ordered:
        return {"bursts": 0, "events_per_burst": percentiles([]), "arrival_span_ms": percentiles([]),
                "frame_to_event_ms_by_part": [], "tail_events_by_part": []}
    latency = [(out - kernel) / 1e6 for kernel, out in ordered]
    # unrounded (``percentiles`` rounds): the events at or above it are those
    # ``latency_gc.p99_tail_events`` counts
    p99 = nearest_rank(sorted(latency), 0.99)
    bursts: list[tuple[int, int]] = []  # (first index, end index)
    first = 0
    for index in range(1, len(ordered)):
        if ordered[index][0] - ordered[index - 1][0] > gap_ns:
            bursts.append((first, index))
            first = index
    bursts.append((first, len(ordered)))
    parts: list[list[float]] = [[] for _ in range(BURST_PARTS)]
    tail = [0] * BURST_PARTS
    for first, end in bursts:
        size = end - first
        for offset in range(size):
            part = offset * BURST_PARTS // size
            value = latency[first + offset]
            parts[part].append(value)
            if value >= p99:
                tail[part] += 1
    return {"bursts": len(bursts), "events_per_burst": percentiles([end - first for first, end in bursts], 0),
            "arrival_span_ms": percentiles([(ordered[end - 1][0] - ordered[first][0]) / 1e6
                                            for first, end in bursts], 2),
            "frame_to_event_ms_by_part": [{key: figures[key] for key in ("p50", "p99")}
                                          for figures in map(percentiles, parts)],
            "tail_events_by_part": tail}


# --- the simulator in a subprocess ------------------------------------------------------------

@attrs.define(eq=False)
class SimProcess:
    """The running simulator: its pid (for its CPU), what it announced, an HTTP client on its REST port."""

    pid: int
    info: dict[str, Any]
    http: httpx.AsyncClient
    #: the simulator's exit code, once it was stopped
    exit_code: int | None = None

    @property
    def ws_url(self) -> str:
        return str(self.info["ws_url"])

    @property
    def rest_url(self) -> str:
        return str(self.info["rest_url"])

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    async def control(self, method: str, **kwargs: Any) -> Any:
        """``POST /control/<method>`` with ``kwargs`` as its JSON body; the call's result."""
        response = await self.http.post(f"/control/{method}", content=orjson.dumps(kwargs))
        if response.status_code != 200:
            raise RuntimeError(f"simulator /control/{method} answered {response.status_code}: {response.text}")
        return response.json()["result"]

    async def symbols(self, category: str) -> list[str]:
        """Every symbol the simulator lists in ``category``, in its order."""
        response = await self.http.get("/v5/market/tickers", params={"category": category})
        return [item["symbol"] for item in response.json()["result"]["list"]]


async def _announcement(process: trio.Process) -> dict[str, Any]:
    """The JSON line the simulator prints once it serves."""
    assert process.stdout is not None
    received = bytearray()
    with trio.fail_after(START_TIMEOUT):
        while not received.endswith(b"\n"):
            data = await process.stdout.receive_some(4096)
            if not data:
                raise RuntimeError(f"the simulator exited before announcing itself: {bytes(received)!r}")
            received += data
    return dict(json.loads(received))


async def _interrupt(process: trio.Process) -> None:
    """SIGINT (the simulator closes its sockets and exits 0); a kill if it is not gone in time."""
    process.send_signal(signal.SIGINT)
    with trio.move_on_after(STOP_TIMEOUT):
        await process.wait()
        return
    process.kill()
    await process.wait()


@asynccontextmanager
async def simulator_process(symbols: int, rate: float, seed: int, *,
                            module: str = "hybrid_actors simulator",
                            extra_args: Sequence[str] = ()) -> AsyncIterator[SimProcess]:
    """``python -m <module> --json`` with ``symbols`` instruments per category, no position
    open, tickers at ``rate`` Hz (and ``extra_args``); stopped on exit."""
    argv = [sys.executable, "-m", *module.split(), "--json", "--symbols", str(symbols), "--positions", "0",
            "--rate", str(rate), "--seed", str(seed), *extra_args]
    process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
    sim: SimProcess | None = None
    try:
        info = await _announcement(process)
        async with httpx.AsyncClient(base_url=info["rest_url"], timeout=10.0) as http:
            sim = SimProcess(process.pid, info, http)
            yield sim
    finally:
        await _interrupt(process)
        if sim is not None:
            sim.exit_code = process.returncode


# --- subscribing and counting -----------------------------------------------------------------

async def subscribe_tickers(send: Callable[[str], Awaitable[None]], symbols: Sequence[str], chunk: int = 100) -> None:
    """Subscribe ``tickers.<symbol>`` for every symbol, ``chunk`` topics per request."""
    topics = [f"tickers.{symbol}" for symbol in symbols]
    for start in range(0, len(topics), chunk):
        await send(orjson.dumps({"op": "subscribe", "args": topics[start:start + chunk]}).decode())


@attrs.define(eq=False)
class Window:
    """Whether the measurement window is open: a consumer counts only while ``counting``."""

    counting: bool = False


async def counting_window(sim_pid: int, consume: Callable[[Window], Awaitable[Any]], warmup: float,
                          seconds: float) -> tuple[Sample, Sample]:
    """Run ``consume(window)`` for a warm-up, then open the window for ``seconds`` and return
    the samples taken at its start and end; the consumer is cancelled after."""
    window = Window()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume, window)
        await trio.sleep(warmup)
        window.counting = True
        start = Sample.take(sim_pid)
        await trio.sleep(seconds)
        window.counting = False
        end = Sample.take(sim_pid)
        nursery.cancel_scope.cancel()
    return start, end


# --- per-frame arrival stamps: which slice of a read holds each message's last byte -----------

class FrameEnds:
    """A WebSocket frame-boundary scanner over the bytes a client receives (RFC 6455 headers
    only, payloads skipped): fed chunk by chunk, it returns where each data message ends.

    Offsets are absolute (bytes since the scanner's origin); it starts at a frame boundary
    (``start``). A message ends at the end of its FIN frame (text, binary or continuation);
    control frames (ping, pong, close) end none. Each end comes with the message's payload
    length (the sum over its fragments), so a caller can check it against the message."""

    __slots__ = ("next", "received", "_head", "_length", "_due")

    def __init__(self, start: int = 0) -> None:
        #: absolute offset of the next frame's first byte (past ``received``: inside a payload)
        self.next = start
        #: absolute offset just past the bytes fed so far
        self.received = start
        self._head = b""  # the start of a header that straddles two chunks
        self._length = 0  # payload bytes of the data message in progress
        self._due: tuple[int, int] | None = None  # a message whose last frame's payload is still coming

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, int]]:
        """The (end offset, payload length) of every data message these bytes complete."""
        ends: list[tuple[int, int]] = []
        base = self.received
        self.received += len(data)
        if self._due is not None:
            if self._due[0] > self.received:
                return ends
            ends.append(self._due)
            self._due = None
        if self._head:
            data = self._head + bytes(data)
            base -= len(self._head)
            self._head = b""
        i, n = self.next - base, len(data)
        while i < n:
            if n - i < 2:
                break
            b0, b1 = data[i], data[i + 1]
            length, header = b1 & 0x7F, 2
            if length == 126:
                header = 4
            elif length == 127:
                header = 10
            if b1 & 0x80:  # masked (a client's frame; never from a server, counted anyway)
                header += 4
            if n - i < header:
                break
            if length >= 126:
                length = int.from_bytes(data[i + 2:i + (4 if length == 126 else 10)], "big")
            end = i + header + length
            if b0 & 0x0F < 8:  # continuation, text, binary
                self._length += length
                if b0 & 0x80:
                    if end <= n:
                        ends.append((base + end, self._length))
                    else:
                        self._due = (base + end, self._length)
                    self._length = 0
            i = end
        self.next = base + i
        if i < n:
            self._head = bytes(data[i:])
        return ends


#: one message's arrival, time.time_ns() clock: (kernel receive stamp of the slice holding its
#: last byte, kernel stamp of the newest segment of the read that completed it, when that slice's
#: recv returned, when the read returned to the transport)
Arrival = tuple[int, int, int, int]


@attrs.define(eq=False)
class ReadStamper:
    """Bookkeeping of a byte stream read in slices, each slice one recv with its own kernel
    receive stamp: which slice holds each message's last byte.

    While the window runs, only what must be noted in the frames' path is noted: the reader
    reports each read with :meth:`add_read` (the bytes it returned, where each of its slices
    ended and their stamps), and the transport's consumer reports each message it hands over
    with :meth:`deliver`, in the transport's order (both of ours keep the wire order), which
    returns the message's number. :meth:`resolve` does the rest afterwards, off the frames'
    path: the :data:`Arrival` of every delivered message, by number.

    The stream is usually wrapped mid-connection, so frame boundaries are unknown at first: the
    first delivered message found in the bytes read (its payload's bytes) fixes the boundary
    just past it; from there :class:`FrameEnds` finds where every later message ends, the n-th
    end belonging to the n-th message delivered after it. Messages delivered before it
    (completed by reads before the wrap) are ``unstamped``. A slice's stamp is that of the
    last segment it touched, so a message whose slice goes on into later messages' bytes is
    stamped as late as those (optimistic for it: it is counted from a later segment)."""

    #: how many of the first delivered messages are looked for in the bytes (each miss is a
    #: search of every byte read)
    SYNC_TRIES: ClassVar[int] = 64

    #: per read, in parallel lists of ints and bytes (nothing the garbage collector tracks:
    #: a container kept per read for the whole window would make it collect in the window)
    _called: array.array[int] = attrs.Factory(partial(array.array, "q"))
    _data: list[bytes | bytearray] = attrs.Factory(list)
    _returned: array.array[int] = attrs.Factory(partial(array.array, "q"))
    #: every read's slices, flat (see add_read), and where each read's run of them ends
    _slices: array.array[int] = attrs.Factory(partial(array.array, "q"))
    _slices_end: array.array[int] = attrs.Factory(partial(array.array, "q"))
    #: this process's CPU time (``time.process_time_ns``) at each read's call and return (0: not taken)
    _cpu_called: array.array[int] = attrs.Factory(partial(array.array, "q"))
    _cpu_returned: array.array[int] = attrs.Factory(partial(array.array, "q"))
    _delivered: list[str | bytes] = attrs.Factory(list)
    #: filled by resolve(), per read: when it was called, the time from the previous read's
    #: return to its call (ns; None for the first), its bytes, slices and the messages it
    #: completed (None up to the read where the boundary was found)
    read_called_ns: list[int] = attrs.Factory(list)
    waits_ns: list[int | None] = attrs.Factory(list)
    read_bytes: list[int] = attrs.Factory(list)
    read_slices: list[int] = attrs.Factory(list)
    read_frames: list[int | None] = attrs.Factory(list)
    #: per read, the CPU this process used from the previous read's return to this read's
    #: call (ns; None for the first, or where a stamp was not taken): a long wait with little
    #: CPU in it is time the process did not run (asleep, or its vCPU not scheduled)
    cpu_waits_ns: list[int | None] = attrs.Factory(list)
    #: delivered messages with an arrival / without (completed before the wrap, or not found)
    stamped: int = 0
    unstamped: int = 0
    #: messages whose length differs from the frame found for them (0 unless out of step)
    length_mismatches: int = 0
    #: slices that carried a kernel stamp
    kernel_stamped: int = 0

    def add_read(self, called_ns: int, data: bytes | bytearray, slices: Sequence[int], returned_ns: int,
                 cpu_called_ns: int = 0, cpu_returned_ns: int = 0) -> None:
        """One read: called at ``called_ns``, returned ``data`` at ``returned_ns``; ``slices``:
        per recv, in order, three ints: its end offset in ``data``, its kernel stamp (0: none)
        and when the recv returned. (Flat ints, not a tuple per slice: objects kept for the
        whole window that the garbage collector tracks would make it collect more often.)
        ``cpu_called_ns`` / ``cpu_returned_ns``: the process's CPU time then (0: not taken)."""
        self._cpu_called.append(cpu_called_ns)
        self._cpu_returned.append(cpu_returned_ns)
        self._called.append(called_ns)
        self._data.append(data)
        self._returned.append(returned_ns)
        self._slices.extend(slices)
        self._slices_end.append(len(self._slices))

    def deliver(self, message: str | bytes) -> int:
        """The transport handed ``message`` over (the next in its order): its number."""
        self._delivered.append(message)
        return len(self._delivered) - 1

    def resolve(self) -> list[Arrival | None]:
        """The arrival of every delivered message, by number (None: unknown); fills the
        per-read figures and the counters, and lets go of the bytes (call it once)."""
        flat, bounds = self._slices, self._slices_end
        reads = [(called, data, flat[start:end].tolist(), returned) for called, data, start, end, returned
                 in zip(self._called, self._data, [0, *bounds], bounds, self._returned)]
        delivered = self._delivered
        self.read_called_ns = [called for called, _, _, _ in reads]
        self.waits_ns = [None] + [called - previous[3] for previous, (called, *_) in zip(reads, reads[1:])]
        cpu_called, cpu_returned = self._cpu_called, self._cpu_returned
        cpu_waits: list[int | None] = [None]
        cpu_waits += [called - returned if called and returned else None
                      for returned, called in zip(cpu_returned, cpu_called[1:])]
        self.cpu_waits_ns = cpu_waits
        self.read_bytes = [len(data) for _, data, _, _ in reads]
        self.read_slices = [len(slices) // 3 for _, _, slices, _ in reads]
        raw = b"".join(data for _, data, _, _ in reads)
        # every slice: (absolute end offset, kernel stamp, recv returned, read index)
        table: list[tuple[int, int, int, int]] = []
        newest: list[int] = []
        offset = 0
        for index, (_, data, slices, returned) in enumerate(reads):
            latest = 0
            for end, kernel, done in zip(slices[::3], slices[1::3], slices[2::3]):
                if kernel:
                    self.kernel_stamped += 1
                else:
                    kernel = done
                latest = max(latest, kernel)
                table.append((offset + end, kernel, done, index))
            newest.append(latest or returned)
            offset += len(data)
        arrivals: list[Arrival | None] = [None] * len(delivered)
        first = at = -1
        for first, message in enumerate(delivered[:self.SYNC_TRIES]):
            payload = message if isinstance(message, bytes) else message.encode()
            at = raw.find(payload) if payload else -1
            if at >= 0:
                break
        if at < 0:
            self.unstamped, self.stamped, self.read_frames = len(delivered), 0, [None] * len(reads)
            return arrivals
        boundary = at + len(payload)
        ends = [(boundary, len(payload))] + FrameEnds(boundary).feed(raw[boundary:])
        frames = [0] * len(reads)
        found: list[tuple[Arrival, int]] = []
        row = 0
        for end, length in ends:
            while table[row][0] < end:  # the slice holding the message's last byte
                row += 1
            _, kernel, done, read = table[row]
            frames[read] += 1
            found.append(((kernel, newest[read], done, reads[read][3]), length))
        for number, (message, (arrival, length)) in enumerate(zip(delivered[first:], found), first):
            arrivals[number] = arrival
            size = len(message) if isinstance(message, bytes) or message.isascii() else len(message.encode())
            if size != length:
                self.length_mismatches += 1
        sync_read = table[next(i for i, entry in enumerate(table) if entry[0] >= boundary)][3]
        self.read_frames = [None] * (sync_read + 1) + frames[sync_read + 1:]  # whole reads after the boundary's
        self.stamped = sum(a is not None for a in arrivals)
        self.unstamped = len(delivered) - self.stamped
        self._called, self._returned = array.array("q"), array.array("q")
        self._slices, self._slices_end, self._data = array.array("q"), array.array("q"), []
        self._delivered = []  # the bytes are no longer needed
        return arrivals


# --- garbage collection pauses ------------------------------------------------------------------

@attrs.define(eq=False)
class GcPauses:
    """The garbage collector's pauses while :meth:`recording` (``gc.callbacks``): per pause,
    its start and end (time.time_ns(), the clock of the latency stamps) and generation."""

    pauses: list[tuple[int, int, int]] = attrs.Factory(list)
    _started: int = 0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.time_ns()
        elif self._started:
            self.pauses.append((self._started, time.time_ns(), int(info.get("generation", -1))))
            self._started = 0

    @contextmanager
    def recording(self) -> Iterator[GcPauses]:
        gc.callbacks.append(self._callback)
        try:
            yield self
        finally:
            gc.callbacks.remove(self._callback)

    def summary(self) -> dict[str, Any]:
        """Count, total and longest pause (ms), overall and per generation."""
        def figures(durations: list[float]) -> dict[str, Any]:
            return {"count": len(durations), "total_ms": round(sum(durations), 3),
                    "max_ms": round(max(durations), 3) if durations else None}

        by_generation: dict[int, list[float]] = {}
        for start, end, generation in self.pauses:
            by_generation.setdefault(generation, []).append((end - start) / 1e6)
        return {**figures([(end - start) / 1e6 for start, end, _ in self.pauses]),
                "by_generation": {str(g): figures(d) for g, d in sorted(by_generation.items())}}

    def overlapping(self, intervals: Sequence[tuple[int, int]]) -> int:
        """How many of ``intervals`` (start, end in time.time_ns()) contain part of a pause."""
        pauses = sorted(self.pauses)
        starts = [start for start, _end, _gen in pauses]
        hit = 0
        for start, end in intervals:
            # pauses never overlap each other: only the last one starting before ``end`` can reach ``start``
            i = bisect.bisect_left(starts, end)
            if i and pauses[i - 1][1] > start:
                hit += 1
        return hit
