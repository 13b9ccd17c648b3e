#!/usr/bin/env python
"""Profile the CLI (``python -m hybrid_actors run --output jsonl``) against the simulator at
``--positions`` open linear positions x ``--rate`` Hz; print ONE JSON object.

The simulator runs in its own process (``python -m hybrid_actors simulator --json``, not
profiled); ``--positions`` positions are opened on its first linear symbols through its
``/control/open_position`` endpoint, so the CLI streams that many linear tickers. The CLI
runs in a child process for ``--seconds`` with its JSON lines going to /dev/null (the
output path is still formatted and written), under ``--profiler``:

- ``py-spy`` (default when installed; the ``bench`` extra): sampling, attached once the CLI
  is up (start-up and imports are left out), so the profile is not skewed by the
  profiler's own per-call cost. ``top_by_own`` is the share of CPU samples
  whose innermost Python frame is the function, ``top_by_inclusive`` the share in which it
  is on the stack (idle samples, the event loop waiting in ``epoll``, are left out).
- ``cprofile``: deterministic, with call counts; ``top_by_tottime`` / ``top_by_cumtime``
  (its per-call overhead inflates small, often-called functions).

Either way the result also carries the CPU seconds of the child processes (the CLI, and
py-spy itself when it samples).

Usage: python scripts/profile_cli.py [--positions 500] [--rate 10] [--seconds 20] [--top 25]
                                     [--profiler {py-spy,cprofile}]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx


def start_simulator(positions: int, rate: float, seed: int) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """The simulator with ``positions`` linear positions open (one per symbol, from the start)."""
    process = subprocess.Popen([sys.executable, "-m", "hybrid_actors", "simulator", "--json",
                                "--symbols", str(positions), "--positions", "0",
                                "--rate", str(rate), "--seed", str(seed)], stdout=subprocess.PIPE)
    assert process.stdout is not None
    info = json.loads(process.stdout.readline())
    with httpx.Client(base_url=info["rest_url"], timeout=30.0) as http:
        listed = http.get("/v5/market/tickers", params={"category": "linear"}).json()["result"]["list"]
        for item in listed[:positions]:
            response = http.post("/control/open_position",
                                 content=json.dumps({"symbol": item["symbol"], "side": "Buy", "size": "1"}))
            response.raise_for_status()
    return process, info


def cprofile_top(profile: str, count: int) -> dict[str, Any]:
    stats = pstats.Stats(profile)
    total = stats.total_tt  # type: ignore[attr-defined]

    def top(key: str) -> list[dict[str, Any]]:
        rows = []
        for (filename, line, name), (_calls, primitive, own, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            where = os.path.relpath(filename) if filename.startswith("/") else filename
            rows.append({"function": f"{where}:{line}({name})", "calls": primitive, "tottime_s": round(own, 3),
                         "cumtime_s": round(cumulative, 3), "tottime_share": round(own / total, 3) if total else None})
        rows.sort(key=lambda row: row[key], reverse=True)
        return rows[:count]

    return {"profiled_s": round(total, 3), "top_by_tottime": top("tottime_s"), "top_by_cumtime": top("cumtime_s")}


#: seconds the CLI runs before py-spy attaches (imports, connect, subscribe)
STARTUP_S = 4.0
#: innermost frames that mean "waiting", not working: left out of the shares
IDLE_FRAMES = ("(select.epoll.poll)", "poll (select", "get_events (trio/_core/_io_epoll.py")


def _frame_name(frame: str) -> str:
    """py-spy's ``function (path/to/file.py:line)`` without the line, paths from the package."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "hybrid_actors/", "lib/python3"):
        if marker in where:
            where = where[where.index(marker) + (0 if marker == "hybrid_actors/" else len(marker)):]
            break
    return f"{name} ({where})"


def pyspy_top(raw: str, count: int) -> dict[str, Any]:
    """Shares of CPU samples from py-spy's collapsed stacks (``frame;frame;... count`` lines)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    busy = idle = 0
    with open(raw, encoding="utf-8") as lines:
        for line in lines:
            stack, _, number = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            samples = int(number)
            frames = stack.split(";")
            if any(marker in frames[-1] for marker in IDLE_FRAMES):
                idle += samples
                continue
            busy += samples
            own[_frame_name(frames[-1])] += samples
            for name in {_frame_name(frame) for frame in frames}:
                inclusive[name] += samples

    def top(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [{"function": name, "samples": n, "share": round(n / busy, 3) if busy else None}
                for name, n in counter.most_common(count)]

    return {"busy_samples": busy, "idle_samples": idle, "top_by_own": top(own), "top_by_inclusive": top(inclusive)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", type=int, default=500)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profiler", choices=("py-spy", "cprofile"),
                        default="py-spy" if shutil.which("py-spy") else "cprofile")
    args = parser.parse_args()
    simulator, info = start_simulator(args.positions, args.rate, args.seed)
    try:
        with tempfile.TemporaryDirectory() as folder:
            output = os.path.join(folder, "cli.prof")
            environment = {**os.environ, "BYBIT_API_KEY": str(info["api_key"]),
                           "BYBIT_API_SECRET": str(info["api_secret"])}
            cli = [sys.executable, "-m", "hybrid_actors", "run", "--stream-url", str(info["ws_url"]),
                   "--rest-url", str(info["rest_url"]), "--output", "jsonl"]
            started = time.perf_counter()
            with open(os.devnull, "wb") as sink:
                if args.profiler == "py-spy":  # attach after start-up, so imports are not in the profile
                    child = subprocess.Popen([*cli, "--seconds", str(args.seconds + STARTUP_S + 2)], env=environment,
                                             stdout=sink, stderr=subprocess.DEVNULL)
                    time.sleep(STARTUP_S)
                    subprocess.run(["py-spy", "record", "--pid", str(child.pid), "--format", "raw", "--rate", "200",
                                    "--duration", str(round(args.seconds)), "--output", output],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
                    exit_code = child.wait()
                else:
                    exit_code = subprocess.run([sys.executable, "-m", "cProfile", "-o", output, *cli[1:],
                                                "--seconds", str(args.seconds)],
                                               env=environment, stdout=sink, stderr=subprocess.DEVNULL,
                                               check=False).returncode
            wall = time.perf_counter() - started
            children = os.times()
            top = pyspy_top(output, args.top) if args.profiler == "py-spy" else cprofile_top(output, args.top)
            result = {
                "config": vars(args),
                "cli_exit_code": exit_code,
                "cli_wall_s": round(wall, 2),
                "cli_cpu_s": round(children.children_user + children.children_system, 2),
                "loadavg": [round(x, 2) for x in os.getloadavg()],
                **top,
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
