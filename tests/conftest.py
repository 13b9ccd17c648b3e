"""Shared fixtures. Time is a fixture: no test sleeps on the real clock."""

from __future__ import annotations

import pathlib

import pytest
import trio.testing

#: verbatim copies of ../shared/bybit-vectors (sources inside each file; see vectors/README.md)
VECTORS = pathlib.Path(__file__).resolve().parent / "vectors"
SHARED_VECTORS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "bybit-vectors"


def load_vector(name: str) -> dict:
    import json

    return json.loads((VECTORS / name).read_text())


@pytest.fixture
def loopback_clock() -> trio.testing.MockClock:
    """Virtual time for tests that do real I/O on 127.0.0.1.

    The clock jumps ahead only after every task has been blocked for 0.1 s of real
    time, so loopback I/O in flight is never mistaken for idleness (threshold 0 can
    jump mid-I/O). Sync on purpose: clock fixtures must be sync (pytest-trio #157).
    """
    return trio.testing.MockClock(autojump_threshold=0.1)
