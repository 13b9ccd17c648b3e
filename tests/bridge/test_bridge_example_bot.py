"""scripts/example_bot.py runs by itself under both hosts: the trailing stop activates, trails,
fires, and the bot exits 0; the aged-position monitor ages positions from the exchange's
``created_time`` (they were opened before the bot started); the bot sees ``stream.state``.
Both hosts run at once, as two processes."""

from __future__ import annotations

import pathlib
import sys

import pytest

from bridge_support import run_children

pytestmark = pytest.mark.system

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "example_bot.py"


def test_the_example_bot_sees_its_trailing_stop_fire_under_both_hosts():
    # positions opened 3 s before the bot, limit 3 s, the bot runs 2.5 s: the first events flag
    # them by the exchange's created_time; the bot's own clock (from 0) never could
    outputs = run_children({host: [sys.executable, str(SCRIPT), "--host", host, "--seconds", "2.5", "--step-interval",
                                   "0.1", "--head-start", "3", "--max-age", "3"]
                            for host in ("asyncio", "trio-asyncio")}, timeout=60)
    for host, (code, out, err) in outputs.items():
        assert code == 0, f"{host}: exit {code}\n{out}\n{err}"
        assert f"stream started on the {'guest' if host == 'asyncio' else 'trio-asyncio'} host" in out
        for line in ("TRAILING STOP ACTIVATED ETHUSDT", "trailing stop ETHUSDT: best", "TRAILING STOP HIT ETHUSDT",
                     "position closed ETHUSDT", "trailing stop activated 1x, fired 1x",
                     "AGED POSITION BTCUSDT: open", "stream live: every socket is up"):
            assert line in out, f"{host}: no {line!r} in\n{out}"
        assert "Traceback" not in err, err
