#!/usr/bin/env python
"""Profile the CLI (``python -m hybrid_actors run --output jsonl``) under cProfile against the
simulator at ``--positions`` open positions x ``--rate`` Hz; print ONE JSON object.

The simulator runs in its own process (``python -m hybrid_actors simulator --json``, not
profiled); the CLI runs in a child process under ``cProfile`` for ``--seconds`` with its
JSON lines going to /dev/null (the output path is still formatted and written). The result:
the top ``--top`` functions by own time (``tottime``) and by cumulative time, with call
counts and the share of the profiled run, plus the CLI's CPU seconds and events written.

Usage: python scripts/profile_cli.py [--positions 500] [--rate 10] [--seconds 20] [--top 25]
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from typing import Any


def start_simulator(positions: int, rate: float, seed: int) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    process = subprocess.Popen([sys.executable, "-m", "hybrid_actors", "simulator", "--json",
                                "--symbols", str(positions), "--positions", str(positions),
                                "--rate", str(rate), "--seed", str(seed)], stdout=subprocess.PIPE)
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


def top_entries(stats: pstats.Stats, key: str, count: int, total: float) -> list[dict[str, Any]]:
    rows = []
    for (filename, line, name), (calls, primitive, own, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{os.path.relpath(filename) if filename.startswith('/') else filename}:{line}({name})",
                     "calls": primitive, "tottime_s": round(own, 3), "cumtime_s": round(cumulative, 3),
                     "tottime_share": round(own / total, 3) if total else None})
    rows.sort(key=lambda row: row[key], reverse=True)
    return rows[:count]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", type=int, default=500)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    simulator, info = start_simulator(args.positions, args.rate, args.seed)
    try:
        with tempfile.TemporaryDirectory() as folder:
            profile = os.path.join(folder, "cli.prof")
            environment = {**os.environ, "BYBIT_API_KEY": str(info["api_key"]),
                           "BYBIT_API_SECRET": str(info["api_secret"])}
            started = time.perf_counter()
            with open(os.devnull, "wb") as sink:
                cli = subprocess.run([sys.executable, "-m", "cProfile", "-o", profile, "-m", "hybrid_actors", "run",
                                      "--stream-url", str(info["ws_url"]), "--rest-url", str(info["rest_url"]),
                                      "--output", "jsonl", "--seconds", str(args.seconds)],
                                     env=environment, stdout=sink, check=False)
            wall = time.perf_counter() - started
            children = os.times()
            stats = pstats.Stats(profile)
            total = stats.total_tt  # type: ignore[attr-defined]
            result = {
                "config": vars(args),
                "cli_exit_code": cli.returncode,
                "cli_wall_s": round(wall, 2),
                "cli_cpu_s": round(children.children_user + children.children_system, 2),
                "profiled_s": round(total, 3),
                "top_by_tottime": top_entries(stats, "tottime_s", args.top, total),
                "top_by_cumtime": top_entries(stats, "cumtime_s", args.top, total),
            }
    finally:
        simulator.send_signal(2)
        try:
            simulator.wait(5)
        except subprocess.TimeoutExpired:
            simulator.kill()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
