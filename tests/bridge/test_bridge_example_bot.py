"""scripts/example_bot.py runs by itself under both hosts: the trailing stop activates, trails,
fires, and the bot exits 0. Both hosts run at once, as two processes."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.system

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "example_bot.py"


def test_the_example_bot_sees_its_trailing_stop_fire_under_both_hosts():
    runs = {host: subprocess.Popen([sys.executable, str(SCRIPT), "--host", host, "--seconds", "2.5",
                                    "--step-interval", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
            for host in ("asyncio", "trio-asyncio")}
    outputs = {}
    try:
        for host, process in runs.items():
            out, err = process.communicate(timeout=60)
            outputs[host] = (process.returncode, out, err)
    finally:
        for process in runs.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for host, (code, out, err) in outputs.items():
        assert code == 0, f"{host}: exit {code}\n{out}\n{err}"
        assert f"stream started on the {'guest' if host == 'asyncio' else 'trio-asyncio'} host" in out
        for line in ("TRAILING STOP ACTIVATED ETHUSDT", "trailing stop ETHUSDT: best", "TRAILING STOP HIT ETHUSDT",
                     "position closed ETHUSDT", "trailing stop activated 1x, fired 1x"):
            assert line in out, f"{host}: no {line!r} in\n{out}"
        assert "Traceback" not in err, err
