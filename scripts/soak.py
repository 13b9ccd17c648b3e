#!/usr/bin/env python
"""Soak the hybrid stream against the simulator with churn and random faults; print ONE JSON object.

Real time, real sockets, seeded. The simulator runs in a subprocess (``python -m
hybrid_actors simulator --json``), so the memory and tasks measured are the stream's own;
this process steers it through ``POST /control/<method>``:

- **churn**: every ``--churn-interval`` seconds one open, close or resize of a linear
  position among the first ``--symbols`` symbols (at most ``--max-open`` open at once),
  so ticker subscriptions come and go all the time;
- **faults**: every ``--fault-interval`` seconds on average (exponential), one fault drawn
  from the fault matrix (``FAULTS``): sockets closed, reset, cut, half-open or refused for a
  few seconds, garbage frames, refused subscribes, REST errors and hangs, one refused auth;
- **samples**: at ``--sample-at`` minutes (default 5) and at the end the driver stops
  faults and churn (waiting for an action in flight), brings the open positions to
  ``--sample-open`` (default 20: every sample at the same count, so like is compared with
  like), clears every armed fault, waits until the stream has converged (every socket up,
  the client's positions equal to the simulator's, ticker subscriptions equal to the open
  symbols) and records the trio task count (the whole task tree), this process's RSS
  (``/proc/self/statm``, after ``gc.collect()``) and where it sits (anonymous memory,
  pymalloc's arenas, glibc's heap), with the open positions, subscribed symbols and
  per-symbol tables beside it. ``rss_growth_pct`` is end over the first sample;
  ``rss_trace`` reads RSS every ``--trace-every`` seconds without pausing anything.
- ``--tracemalloc N`` adds allocation tracing (N frames): the growth sites between the two
  samples by file and line, by package, and the object counts by type (it costs memory
  itself: a diagnostic run, not the figure).

``mismatches`` counts, at each sample, the positions whose side or size differ between the
client and the simulator after convergence (or a timeout of ``--converge-timeout``), ticker
subscriptions that differ from the open symbols then, plus
lifecycle anomalies in the event stream (a position closed or opened twice in a row). It
must be 0. Opens and closes that happened entirely while the private socket was down are
not anomalies: the exchange's REST snapshot no longer shows them either.

    python scripts/soak.py --minutes 30 > soak.json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import pathlib
import random
import re
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from decimal import Decimal
from typing import Any, Callable

import attrs
import trio

from hybrid_actors import StreamConfig
from hybrid_actors.actors.mailboxes import StreamClosed
from hybrid_actors.config import Credentials, Endpoints
from hybrid_actors.state import PositionClosed, PositionUpdate
from hybrid_actors.supervisor import HybridStream, open_hybrid_stream
from hybrid_actors.testing.invariants import position_mismatches, task_names

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_support, also when loaded by path
from bench_support import SimProcess, simulator_process  # noqa: E402

log = logging.getLogger("soak")
CATEGORY = "linear"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# --- the simulator in a subprocess (bench_support's) ------------------------------------------

async def sim_positions(sim: SimProcess) -> dict[tuple[str, str, int], tuple[str, Decimal]]:
    """The simulator's open linear positions: key → (side, size)."""
    response = await sim.http.get("/control/state")
    return {(p["category"], p["symbol"], int(p["positionIdx"])): (p["side"], Decimal(p["size"]))
            for p in response.json()["positions"] if p["category"] == CATEGORY and Decimal(p["size"]) != 0}


# --- faults: a sample of the fault matrix, each undone by clear_faults or by itself ----------

Fault = Callable[[SimProcess, random.Random, list[str]], Any]


async def _drop(sim: SimProcess, target: str, mode: str) -> None:
    await sim.control("drop", target=target, mode=mode)


async def _refuse(sim: SimProcess, rng: random.Random, target: str) -> None:
    await sim.control("reject_connections", count=rng.randint(2, 6), status=503, target=target)
    await sim.control("drop", target=target, mode="reset")


FAULTS: dict[str, Fault] = {
    "private_close": lambda sim, rng, syms: _drop(sim, "private", "close"),
    "private_reset": lambda sim, rng, syms: _drop(sim, "private", "reset"),
    "private_eof": lambda sim, rng, syms: _drop(sim, "private", "eof"),
    "private_half_open": lambda sim, rng, syms: _drop(sim, "private", "half_open"),
    "public_close": lambda sim, rng, syms: _drop(sim, CATEGORY, "close"),
    "public_reset": lambda sim, rng, syms: _drop(sim, CATEGORY, "reset"),
    "public_eof": lambda sim, rng, syms: _drop(sim, CATEGORY, "eof"),
    "public_half_open": lambda sim, rng, syms: _drop(sim, CATEGORY, "half_open"),
    "both_reset": lambda sim, rng, syms: _drop(sim, "all", "reset"),
    "private_refused": lambda sim, rng, syms: _refuse(sim, rng, "private"),
    "public_refused": lambda sim, rng, syms: _refuse(sim, rng, CATEGORY),
    "malformed": lambda sim, rng, syms: sim.control("inject", kind="malformed", target="all"),
    "non_json": lambda sim, rng, syms: sim.control("inject", kind="non_json", target="all"),
    "binary": lambda sim, rng, syms: sim.control("inject", kind="binary", target="all"),
    "unknown_topic": lambda sim, rng, syms: sim.control("inject", kind="unknown_topic", target="all"),
    "oversized": lambda sim, rng, syms: sim.control("inject", kind="oversized", target=rng.choice(["private", CATEGORY])),
    "subscribe_refused": lambda sim, rng, syms: sim.control("reject_subscribes", symbol=rng.choice(syms), count=1),
    "already_subscribed": lambda sim, rng, syms: sim.control(
        "reject_subscribes", symbol=rng.choice(syms), count=1, ret_msg="error:already subscribed,topic:{topic}"),
    "rest_5xx_on_reconnect": lambda sim, rng, syms: _rest_then_drop(sim, "rest_http_error", status=502, count=2),
    "rest_10006_on_reconnect": lambda sim, rng, syms: _rest_then_drop(
        sim, "rest_error", ret_code=10006, ret_msg="Too many visits!", count=2),
    "rest_hang_on_reconnect": lambda sim, rng, syms: _rest_then_drop(sim, "rest_hang", seconds=15, count=1),
    "auth_refused_once": lambda sim, rng, syms: _auth_once(sim),
}


async def _rest_then_drop(sim: SimProcess, method: str, **kwargs: Any) -> None:
    await sim.control(method, path="/v5/position/list", **kwargs)
    await sim.control("drop", target="private", mode="reset")


async def _auth_once(sim: SimProcess) -> None:
    await sim.control("fail_auth", count=1)
    await sim.control("drop", target="private", mode="reset")


# --- what the client saw -------------------------------------------------------------------

@attrs.define(eq=False)
class Recorder:
    """Counts events and checks each position's lifecycle as it goes (constant memory per
    position: only whether it is open now)."""

    stream: HybridStream
    events: int = 0
    opens: int = 0
    closes: int = 0
    anomalies: list[str] = attrs.Factory(list)
    _open: set[tuple[str, str, int]] = attrs.Factory(set)

    async def run(self) -> None:
        try:
            while True:
                for event in await self.stream.batches():
                    self.events += 1
                    if isinstance(event, PositionClosed):
                        self.closes += 1
                        if event.key not in self._open and len(self.anomalies) < 20:
                            self.anomalies.append(f"{event.symbol}: closed while not open")
                        self._open.discard(event.key)
                    elif isinstance(event, PositionUpdate) and event.key not in self._open:
                        self.opens += 1
                        self._open.add(event.key)
        except StreamClosed:
            return


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


def pymalloc_mb() -> dict[str, float]:
    """Python's small-object allocator (its 1 MiB arenas are mapped outside the C heap):
    arenas held, and the bytes in used / free blocks inside them (``sys._debugmallocstats``)."""
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    figures = {}
    for key, pattern in (("arenas", r"# arenas allocated current\s*=\s*([\d,]+)"),
                         ("used", r"# bytes in allocated blocks\s*=\s*([\d,]+)"),
                         ("free", r"# bytes in available blocks\s*=\s*([\d,]+)")):
        found = re.search(pattern, text)
        figures[key] = int(found.group(1).replace(",", "")) if found else 0
    return {"arenas": figures["arenas"], "used": round(figures["used"] / 2**20, 2),
            "free": round(figures["free"] / 2**20, 2)}


def anon_mb() -> float | None:
    """This process's anonymous memory (heap, arenas, stacks: what can grow), from smaps_rollup."""
    try:
        with open("/proc/self/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Anonymous:"):
                    return round(int(line.split()[1]) / 1024, 2)
    except OSError:
        return None
    return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_mb() -> dict[str, float] | None:
    """glibc's view of the C heap (pymalloc's arenas and every larger block live in it):
    ``heap`` = brk heap obtained from the OS, ``in_use`` / ``free`` inside it, ``mmap`` =
    blocks mapped on their own. None where glibc's ``mallinfo2`` is missing."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {"heap": round(info.arena / 2**20, 2), "in_use": round(info.uordblks / 2**20, 2),
            "free": round(info.fordblks / 2**20, 2), "mmap": round(info.hblkhd / 2**20, 2)}


# --- where the memory goes (--tracemalloc N) -------------------------------------------------

@attrs.define(eq=False)
class Diagnostics:
    """tracemalloc snapshots and gc object counts by type at each sample, diffed end − first.
    Costs memory and time itself (its RSS is not the stream's): a diagnostic, not the figure."""

    top: int = 12
    snapshots: dict[str, tracemalloc.Snapshot] = attrs.Factory(dict)
    types: dict[str, Counter[str]] = attrs.Factory(dict)

    def take(self, label: str) -> None:
        self.snapshots[label] = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")])
        self.types[label] = Counter(type(o).__qualname__ for o in gc.get_objects())

    def report(self) -> dict[str, Any]:
        first, end = self.snapshots["first"], self.snapshots["end"]
        lines = end.compare_to(first, "lineno")
        growth = [{"site": f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
                   "kib": round(s.size_diff / 1024, 1), "blocks": s.count_diff}
                  for s in sorted(lines, key=lambda s: s.size_diff, reverse=True)[:self.top]]
        packages: dict[str, dict[str, int]] = {}
        for label, snapshot in (("first", first), ("end", end)):
            for stat in snapshot.statistics("filename"):
                packages.setdefault(_package(stat.traceback[0].filename), {"first": 0, "end": 0})[label] += stat.size
        by_package = {name: {"first_kib": round(v["first"] / 1024, 1), "end_kib": round(v["end"] / 1024, 1),
                             "growth_kib": round((v["end"] - v["first"]) / 1024, 1)}
                      for name, v in sorted(packages.items(), key=lambda kv: kv[1]["end"] - kv[1]["first"],
                                            reverse=True)}
        diff = self.types["end"].copy()
        diff.subtract(self.types["first"])
        return {"traced_kib": {label: round(sum(s.size for s in snap.statistics("filename")) / 1024, 1)
                               for label, snap in self.snapshots.items()},
                "top_growth_sites": growth, "by_package": by_package,
                "object_types_growth": dict(diff.most_common(self.top)),
                "object_types_shrink": dict(sorted(((k, v) for k, v in diff.items() if v < 0),
                                                   key=lambda kv: kv[1])[:self.top])}


def _package(filename: str) -> str:
    """hybrid_actors.<module>, the script, or the top-level name of a library / the stdlib."""
    path = pathlib.Path(filename)
    parts = path.parts
    if "hybrid_actors" in parts:
        return "hybrid_actors." + ".".join(parts[parts.index("hybrid_actors") + 1:]).removesuffix(".py")
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    if path.parent.name == "scripts":
        return "scripts." + path.stem
    return "stdlib." + path.stem


def _short(filename: str) -> str:
    parts = pathlib.Path(filename).parts
    for root in ("hybrid_actors", "site-packages", "scripts"):
        if root in parts:
            return "/".join(parts[parts.index(root) + (root == "site-packages"):])
    return "/".join(parts[-2:])


# --- the run ---------------------------------------------------------------------------------

@attrs.define
class Options:
    minutes: float
    sample_at: float
    symbols: int
    max_open: int
    rate: float
    churn_interval: float
    fault_interval: float
    converge_timeout: float
    seed: int
    sample_open: int = 20
    trace_frames: int = 0
    trace_every: float = 60.0
    faults: tuple[str, ...] = tuple(FAULTS)
    keep_hybrid: bool = False


@attrs.define(eq=False)
class Soak:
    opts: Options
    sim: SimProcess
    stream: HybridStream
    recorder: Recorder
    symbols: list[str]
    rng: random.Random
    faults: Counter[str] = attrs.Factory(Counter)
    churn: Counter[str] = attrs.Factory(Counter)
    mismatches: list[str] = attrs.Factory(list)
    samples: dict[str, dict[str, Any]] = attrs.Factory(dict)
    #: the positions the churn has open (symbol → size); the churn and the sampler write it, never at once
    open_now: dict[str, Decimal] = attrs.Factory(dict)
    diagnostics: Diagnostics | None = None
    #: [minute, RSS MB, open positions] every ``trace_every`` seconds, taken without pausing anything
    rss_trace: list[list[float]] = attrs.Factory(list)
    _calm: trio.Event = attrs.Factory(trio.Event)  # set while churn and faults pause
    _resume: trio.Event = attrs.Factory(trio.Event)
    #: held by the churn and the faults while they act, and by the sampler while it measures
    _acting: trio.Lock = attrs.Factory(trio.Lock)

    async def run_churn(self) -> None:
        rng = random.Random(self.rng.random())
        while True:
            await self._gate()
            await trio.sleep(rng.uniform(0.5, 1.5) * self.opts.churn_interval)
            await self._gate()
            async with self._acting:
                if not self._calm.is_set():
                    await self._churn_once(rng)

    async def _churn_once(self, rng: random.Random) -> None:
        open_now = self.open_now
        roll = rng.random()
        if open_now and (roll < 0.4 or len(open_now) >= self.opts.max_open):
            await self._close(rng.choice(sorted(open_now)))
        elif open_now and roll < 0.55:
            symbol = rng.choice(sorted(open_now))
            open_now[symbol] += 1
            await self.sim.control("modify_position", symbol=symbol, size=str(open_now[symbol]))
            self.churn["resize"] += 1
        else:
            await self._open(rng)

    async def _open(self, rng: random.Random) -> None:
        candidates = [s for s in self.symbols if s not in self.open_now]
        if candidates:
            symbol = rng.choice(candidates)
            await self.sim.control("open_position", symbol=symbol, side=rng.choice(["Buy", "Sell"]), size="1")
            self.open_now[symbol] = Decimal(1)
            self.churn["open"] += 1

    async def _close(self, symbol: str) -> None:
        await self.sim.control("close_position", symbol=symbol)
        del self.open_now[symbol]
        self.churn["close"] += 1

    async def run_faults(self) -> None:
        rng = random.Random(self.rng.random())
        names = sorted(self.opts.faults)
        while True:
            await self._gate()
            await trio.sleep(rng.expovariate(1 / self.opts.fault_interval))
            await self._gate()
            async with self._acting:
                if self._calm.is_set():
                    continue
                name = rng.choice(names)
                try:
                    await FAULTS[name](self.sim, rng, self.symbols)
                except RuntimeError as exc:  # e.g. a symbol without an instrument: the driver's bug, reported
                    log.warning("fault %s could not be armed: %s", name, exc)
                    continue
                self.faults[name] += 1

    async def run_rss_trace(self) -> None:
        while True:
            await trio.sleep(self.opts.trace_every)
            self.rss_trace.append([round((trio.current_time() - self.t0) / 60, 2), round(rss_bytes() / 2**20, 2),
                                   len(self.open_now)])

    async def _gate(self) -> None:
        while self._calm.is_set():
            await self._resume.wait()

    async def sample(self, label: str) -> None:
        """Pause churn and faults, bring the open positions to ``sample_open`` (the same
        count at every sample: like is compared with like), disarm every fault, wait for
        convergence (positions equal, subscriptions equal to the open symbols), then measure."""
        self._resume = trio.Event()
        self._calm.set()
        async with self._acting:  # an action in flight finishes first
            rng = random.Random(self.rng.random())
            while len(self.open_now) > self.opts.sample_open:
                await self._close(rng.choice(sorted(self.open_now)))
            while len(self.open_now) < self.opts.sample_open:
                await self._open(rng)
            await self.sim.control("clear_faults")
            await self.sim.control("resume_pongs")
            started = trio.current_time()
            problems: list[str] = []
            with trio.move_on_after(self.opts.converge_timeout):
                while True:
                    problems = await self.differences()
                    if not problems:
                        break
                    await trio.sleep(0.5)
            converge_s = trio.current_time() - started
            self.mismatches.extend(f"{label}: {p}" for p in problems)
            gc.collect()
            names = task_names()
            hub = self.stream.hub
            subs = hub.subscriptions[CATEGORY]
            self.samples[label] = {
                "at_minutes": round((trio.current_time() - self.t0) / 60, 2),
                "tasks": sum(names.values()), "task_names": names, "rss_mb": round(rss_bytes() / 2**20, 2),
                "converge_s": round(converge_s, 2), "open_positions": len(self.stream.positions()),
                "subscribed_symbols": len(subs.confirmed), "activity_symbols": len(hub.activity[CATEGORY]),
                "combiner_marks": len(hub.combiner.marks), "events": self.recorder.events,
                "python_blocks": sys.getallocatedblocks(), "anon_mb": anon_mb(),
                "pymalloc_mb": pymalloc_mb(), "malloc_mb": malloc_mb(),
            }
            if self.diagnostics is not None:
                self.diagnostics.take(label)
        self._calm = trio.Event()
        self._resume.set()

    async def differences(self) -> list[str]:
        hub = self.stream.hub
        problems = [f"{name} disconnected" for name, stats in hub.health.links.items() if not stats.connected]
        client = {p.key: (p.side, p.size) for p in self.stream.positions()}
        problems += position_mismatches(await sim_positions(self.sim), client)
        subs = hub.subscriptions[CATEGORY]
        wanted = {key[1] for key in client}
        # a symbol the exchange refused is reported and retried every unknown_symbol_retry (5 min)
        if (subs.confirmed | set(subs.failed)) != wanted or subs.inflight:
            problems.append(f"subscriptions: {len(subs.confirmed)} confirmed, {len(subs.inflight)} in flight, "
                            f"{len(wanted)} open symbols")
        return problems

    t0: float = 0.0


async def soak(opts: Options) -> dict[str, Any]:
    async with simulator_process(opts.symbols + 20, opts.rate, opts.seed, extra_args=("--log-level", "ERROR")) as sim:
        credentials = Credentials(sim.info["api_key"], sim.info["api_secret"])
        endpoints = Endpoints.local(sim.ws_url, sim.rest_url)
        config = StreamConfig(credentials=credentials, endpoints=endpoints)
        if opts.keep_hybrid:  # the subscription-failure rollback off: the hybrid path feeds the consumer all along
            config = attrs.evolve(config, rollout=attrs.evolve(config.rollout, rollback_sub_failures=None))
        rng = random.Random(opts.seed)
        symbols = (await sim.symbols(CATEGORY))[:opts.symbols]
        async with open_hybrid_stream(config, rng=random.Random(rng.random())) as stream:
            recorder = Recorder(stream)
            run = Soak(opts, sim, stream, recorder, symbols, rng)
            if opts.trace_frames:
                run.diagnostics = Diagnostics()
            run.t0 = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(recorder.run)
                nursery.start_soon(run.run_churn)
                nursery.start_soon(run.run_faults)
                nursery.start_soon(run.run_rss_trace)
                end = run.t0 + opts.minutes * 60
                first = run.t0 + min(opts.sample_at, opts.minutes) * 60
                await trio.sleep_until(first)
                await run.sample("first")
                await trio.sleep_until(max(end, trio.current_time()))
                await run.sample("end")
                nursery.cancel_scope.cancel()
            health = stream.hub.health
            rollout = stream.health().rollout
            result = build_result(run, health)
            result["rollout"] = {key: rollout.get(key) for key in ("active", "rollbacks", "returns",
                                                                   "last_rollback_reason")}
    return result


def build_result(run: Soak, health: Any) -> dict[str, Any]:
    first, end = run.samples["first"], run.samples["end"]
    mismatches = [*run.mismatches, *(f"lifecycle: {a}" for a in run.recorder.anomalies)]
    return {
        "minutes": run.opts.minutes, "seed": run.opts.seed, "symbols": run.opts.symbols,
        "events": run.recorder.events, "opens_seen": run.recorder.opens, "closes_seen": run.recorder.closes,
        "churn": dict(sorted(run.churn.items())), "faults": dict(sorted(run.faults.items())),
        "faults_total": sum(run.faults.values()),
        "restarts": {name: stats.restarts for name, stats in sorted(health.actors.items())},
        "crashes": {name: stats.crashes for name, stats in sorted(health.actors.items())},
        "mismatches": len(mismatches), "mismatch_details": mismatches[:20],
        "sample_at_minutes": first["at_minutes"], "end_at_minutes": end["at_minutes"],
        "tasks": {"first": first["tasks"], "end": end["tasks"]},
        # the task names whose count differs between the samples: a leak shows as one that grows
        "tasks_changed": {name: [first["task_names"].get(name, 0), end["task_names"].get(name, 0)]
                          for name in sorted({*first["task_names"], *end["task_names"]})
                          if first["task_names"].get(name, 0) != end["task_names"].get(name, 0)},
        "rss_mb": {"first": first["rss_mb"], "end": end["rss_mb"]},
        "rss_growth_pct": round((end["rss_mb"] - first["rss_mb"]) / first["rss_mb"] * 100, 2),
        "converge_s": {"first": first["converge_s"], "end": end["converge_s"]},
        "open_positions": {"first": first["open_positions"], "end": end["open_positions"]},
        "subscribed_symbols": {"first": first["subscribed_symbols"], "end": end["subscribed_symbols"]},
        "samples": run.samples, "rss_trace": run.rss_trace,
        **({"tracemalloc": run.diagnostics.report()} if run.diagnostics is not None else {}),
    }


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="how long to soak (real minutes)")
    parser.add_argument("--sample-at", type=float, default=5.0,
                        help="minute of the first task/RSS sample (default 5; growth is measured from it)")
    parser.add_argument("--symbols", type=int, default=200, help="linear symbols the churn uses (default 200)")
    parser.add_argument("--max-open", type=int, default=40, help="open positions at most (default 40)")
    parser.add_argument("--rate", type=float, default=2.0, help="ticker pushes per second per subscribed symbol")
    parser.add_argument("--churn-interval", type=float, default=0.5, help="mean seconds between churn actions")
    parser.add_argument("--fault-interval", type=float, default=20.0, help="mean seconds between faults")
    parser.add_argument("--converge-timeout", type=float, default=120.0,
                        help="seconds a sample waits for the client to agree with the simulator")
    parser.add_argument("--sample-open", type=int, default=20,
                        help="open positions the driver brings the churn to before each sample (default 20), "
                             "so the samples compare like with like")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="trace allocations (FRAMES frames deep) and report the growth sites and object "
                             "types between the samples; inflates RSS itself (default 0: off)")
    parser.add_argument("--trace-every", type=float, default=60.0,
                        help="seconds between the RSS readings of rss_trace (taken without pausing; default 60)")
    parser.add_argument("--faults", default=",".join(sorted(FAULTS)),
                        help="comma-separated faults to draw from (default: all of FAULTS)")
    parser.add_argument("--keep-hybrid", action="store_true",
                        help="turn off the rollback on subscription failures (the faults' refused subscribes and "
                             "acks lost on half-open sockets pass its 10 an hour within minutes, after which the "
                             "REST poller feeds the consumer), so the whole run measures the hybrid path")
    parser.add_argument("--seed", type=int, default=8, help="seed of churn, faults, jitter and simulator")
    parser.add_argument("--log-level", default="ERROR", help="logging level on stderr (default ERROR)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.minutes <= 0 or args.sample_at <= 0:
        parser.error("--minutes and --sample-at must be > 0")
    if not 0 <= args.sample_open <= min(args.max_open, args.symbols):
        parser.error("--sample-open must be between 0 and --max-open (and --symbols)")
    faults = tuple(name for name in args.faults.split(",") if name)
    if unknown := sorted(set(faults) - set(FAULTS)):
        parser.error(f"unknown faults {unknown}; known: {', '.join(sorted(FAULTS))}")
    if not faults:
        parser.error("--faults names no fault")
    return Options(args.minutes, args.sample_at, args.symbols, args.max_open, args.rate, args.churn_interval,
                   args.fault_interval, args.converge_timeout, args.seed, args.sample_open, args.tracemalloc,
                   args.trace_every, faults, args.keep_hybrid)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.trace_frames:
        tracemalloc.start(opts.trace_frames)
    started = time.monotonic()
    result = trio.run(soak, opts)
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))
    return 0 if result["mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
