"""Processes for CLI tests: the simulator CLI and our CLI, with line reading under deadlines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio

PYTHON = sys.executable


@attrs.define(eq=False)
class LineReader:
    stream: trio.abc.ReceiveStream
    _buffer: bytes = b""

    async def readline(self) -> bytes | None:
        while b"\n" not in self._buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                rest, self._buffer = self._buffer, b""
                return rest or None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    async def lines(self) -> list[bytes]:
        """Every line until the stream ends."""
        lines = []
        while (line := await self.readline()) is not None:
            lines.append(line)
        return lines


async def start_cli(nursery: trio.Nursery, *args: str, env: dict[str, str] | None,
                    stdout: int = subprocess.PIPE, stderr: int = subprocess.PIPE) -> trio.Process:
    """``python -m hybrid_actors <args>`` as a task of ``nursery`` (its pipes open); the process."""
    return await nursery.start(partial(trio.run_process, [PYTHON, "-m", "hybrid_actors", *args], stdout=stdout,
                                       stderr=stderr, check=False, env=env))


async def interrupt(proc: trio.Process) -> None:
    """Ctrl-C, up to 10 s for the process to end, then kill it."""
    proc.send_signal(signal.SIGINT)
    with trio.move_on_after(10):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()


@asynccontextmanager
async def simulator(*args: str) -> AsyncIterator[dict[str, Any]]:
    """``python -m hybrid_actors simulator --json``; yields its announced URLs and keys."""
    async with trio.open_nursery() as nursery:
        proc = await start_cli(nursery, "simulator", "--json", "--port", "0", "--rest-port", "0", *args, env=None,
                               stderr=subprocess.DEVNULL)
        reader = LineReader(proc.stdout)
        with trio.fail_after(20):
            line = await reader.readline()
        assert line, "the simulator printed nothing"
        try:
            yield json.loads(line)
        finally:
            await interrupt(proc)


def cli_env(key: str | None, secret: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYBIT_")}
    if key is not None:
        env["BYBIT_API_KEY"] = key
    if secret is not None:
        env["BYBIT_API_SECRET"] = secret
    return env


async def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    with trio.fail_after(timeout):
        return await trio.run_process([PYTHON, "-m", "hybrid_actors", *args], capture_stdout=True,
                                      capture_stderr=True, check=False, env=env)
