"""A short run of scripts/soak.py as a user runs it (a subprocess printing one JSON object):
churn and random faults from the matrix, the first task/RSS sample scaled down to seconds.
The figures that matter (RSS growth, task count over 30 minutes) come from running the
script itself; here only their presence, the like-with-like sampling (the same open
positions at both samples) and the one hard rule: no client/simulator mismatch."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.performance

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "soak.py"


def test_a_short_soak_prints_one_json_object_with_no_mismatch():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--minutes", "0.2", "--sample-at", "0.08",
                           "--fault-interval", "1.2", "--churn-interval", "0.3", "--seed", "3",
                           "--sample-open", "6", "--trace-every", "3"],
                          capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    result = json.loads(lines[0])
    assert result["mismatches"] == 0 and result["mismatch_details"] == []
    assert result["events"] > 0 and result["churn"]["open"] > 0
    assert result["faults_total"] > 0 and set(result["faults"]) <= set(_fault_names())
    assert set(result["restarts"]) >= {"private", "public:linear", "combiner"}
    assert sum(result["restarts"].values()) > 0  # the faults did reach the stream
    for key in ("tasks", "rss_mb"):
        assert set(result[key]) == {"first", "end"} and all(v > 0 for v in result[key].values())
    # the task count is the sum of the counts by name, and any change is named
    for label in ("first", "end"):
        names = result["samples"][label]["task_names"]
        assert sum(names.values()) == result["tasks"][label] and "<init>" in names
    changed = sum(end - first for first, end in result["tasks_changed"].values())
    assert changed == result["tasks"]["end"] - result["tasks"]["first"]
    assert isinstance(result["rss_growth_pct"], (int, float))
    assert 0 < result["sample_at_minutes"] < result["end_at_minutes"]
    # like with like: both samples at the same open positions, ticker subscriptions equal to them
    assert result["open_positions"] == result["subscribed_symbols"] == {"first": 6, "end": 6}
    assert all(sample["malloc_mb"] is None or sample["malloc_mb"]["heap"] > 0 for sample in result["samples"].values())
    assert result["rss_trace"] and all(rss > 0 for _minute, rss, _open in result["rss_trace"])


def _fault_names() -> list[str]:
    from script_loading import load_script

    return list(load_script("soak").FAULTS)
