"""The fault matrix: ``pytest -m failover``. ``rig`` opens the harness of ``rig.py`` on
virtual time: ``async with rig(heartbeat_interval=5.0) as r: ...``.

A row must ask for ``loopback_clock`` itself too: pytest-trio runs a test on the clock
only when the clock is one of the test function's own arguments."""

from __future__ import annotations

import functools

import pytest

from rig import open_rig


@pytest.fixture
def rig(loopback_clock):  # type: ignore[no-untyped-def]
    return functools.partial(open_rig, loopback_clock)
