#!/usr/bin/env python
"""Which of the stream's tasks hold its one thread, and for how long; print ONE JSON object.

Every actor shares one trio thread with the busy public reader: a task step (the code a
task runs between two checkpoints) that takes a millisecond delays every ticker frame that
arrives meanwhile by up to that. This benchmark runs the stream with every actor against
the simulator in a subprocess (``bench_stream``'s: ``--symbols`` positions, ``--rate``
tickers a second each), and watches ``--seconds`` of it through trio's public
:class:`trio.abc.Instrument` hooks (``before_task_step`` / ``after_task_step``):

    steps_over_1ms        how many task steps took longer than 1 ms of wall time
    longest_steps         the ``--top`` longest: wall ms, this thread's CPU ms in it, task name
                          (wall far above CPU: the thread did not run, e.g. its vCPU was not
                          scheduled; CPU ~ wall: that task's own work)
    by_task               per task: steps, CPU ms in total, longest step ms (the top ``--top``
                          by CPU)

Usage: python scripts/bench_steps.py [--symbols 500] [--rate 10] [--seconds 20] [--top 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from typing import Any

import attrs
import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_stream, also when loaded by path
import bench_stream as bench  # noqa: E402

#: a step longer than this (wall time) is counted in ``steps_over_1ms``
LONG_STEP_NS = 1_000_000


@attrs.define(eq=False)
class StepWatch(trio.abc.Instrument):
    """Wall and thread CPU time of every task step while ``on``."""

    on: bool = False
    _wall: int = 0
    _cpu: int = 0
    steps: dict[str, int] = attrs.Factory(lambda: defaultdict(int))
    cpu_ns: dict[str, int] = attrs.Factory(lambda: defaultdict(int))
    longest_ns: dict[str, int] = attrs.Factory(lambda: defaultdict(int))
    #: (wall ns, cpu ns, task name) of every step over LONG_STEP_NS
    long: list[tuple[int, int, str]] = attrs.Factory(list)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._wall = time.perf_counter_ns()
        self._cpu = time.thread_time_ns()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if not self.on:
            return
        wall = time.perf_counter_ns() - self._wall
        cpu = time.thread_time_ns() - self._cpu
        name = task.name
        self.steps[name] += 1
        self.cpu_ns[name] += cpu
        if wall > self.longest_ns[name]:
            self.longest_ns[name] = wall
        if wall > LONG_STEP_NS:
            self.long.append((wall, cpu, name))

    def figures(self, top: int) -> dict[str, Any]:
        by_cpu = sorted(self.cpu_ns, key=self.cpu_ns.__getitem__, reverse=True)[:top]
        return {
            "steps": sum(self.steps.values()),
            "steps_over_1ms": len(self.long),
            "longest_steps": [{"wall_ms": round(wall / 1e6, 3), "cpu_ms": round(cpu / 1e6, 3), "task": name}
                              for wall, cpu, name in sorted(self.long, reverse=True)[:top]],
            "by_task": [{"task": name, "steps": self.steps[name], "cpu_ms": round(self.cpu_ns[name] / 1e6, 1),
                         "longest_step_ms": round(self.longest_ns[name] / 1e6, 3)} for name in by_cpu],
        }


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    watch = StepWatch()
    trio.lowlevel.add_instrument(watch)
    # bench_stream's stream with its consumer, once every ticker is confirmed
    async with bench.stream_on_positions(opts) as stream:
        link = stream.hub.health.link(bench.PUBLIC_LINK)  # a counter (health() is a step of its own)
        frames0 = link.frames
        watch.on = True
        await trio.sleep(opts.seconds)
        watch.on = False
        frames = link.frames - frames0
    return {"symbols": opts.symbols, "rate": opts.rate, "seconds": opts.seconds, "public_frames": frames,
            **watch.figures(opts.top)}


def main() -> int:
    parser = bench.stream_bench_parser(__doc__, seconds=20.0)
    parser.add_argument("--top", type=int, default=10)
    opts = parser.parse_args()
    print(json.dumps(trio.run(run, opts)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
