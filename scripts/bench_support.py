"""What the benchmark scripts share: the simulator in a subprocess, CPU and scheduler
samples, percentiles, and a counting window around a consumer task.

A script in ``scripts/`` imports it as ``bench_support`` (the script's folder is on
``sys.path`` when it runs; a script loaded another way puts it there first).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import httpx
import orjson
import trio

__all__ = ["self_cpu_seconds", "process_cpu_seconds", "Sample", "percentiles", "median_max", "SimProcess",
           "simulator_process", "subscribe_tickers", "Window", "counting_window", "rates"]

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


@attrs.frozen
class Sample:
    """CPU, wall and scheduler counters of this process (and the simulator's CPU) at one moment."""

    wall: float
    cpu: float
    sim_cpu: float
    runqueue_wait: float | None
    involuntary_switches: int

    @classmethod
    def take(cls, sim_pid: int) -> Sample:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(time.perf_counter(), usage.ru_utime + usage.ru_stime, process_cpu_seconds(sim_pid),
                   _runqueue_wait(), usage.ru_nivcsw)

    def since(self, start: Sample) -> dict[str, Any]:
        waited = (None if self.runqueue_wait is None or start.runqueue_wait is None
                  else round((self.runqueue_wait - start.runqueue_wait) * 1000, 1))
        return {"duration_s": round(self.wall - start.wall, 3), "client_cpu_s": round(self.cpu - start.cpu, 3),
                "sim_cpu_s": round(self.sim_cpu - start.sim_cpu, 3), "client_runqueue_wait_ms": waited,
                "client_involuntary_switches": self.involuntary_switches - start.involuntary_switches}


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
    n = len(ordered)

    def rank(p: float) -> float:
        return round(ordered[min(n - 1, max(0, int(p * n + 0.999999) - 1))], digits)

    return {"p50": rank(0.50), "p99": rank(0.99), "max": round(ordered[-1], digits), "samples": n}


def median_max(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    if not values:
        return {"median": None, "max": None, "samples": []}
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"median": round(median, digits), "max": round(ordered[-1], digits),
            "samples": [round(v, digits) for v in values]}


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
