"""Importing the pure layers must not load the runtime (checked in a fresh interpreter)."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def test_pure_layers_load_no_io_library():
    code = ("import sys, hybrid_actors.protocol, hybrid_actors.state, hybrid_actors.config, "
            "hybrid_actors.messages, hybrid_actors.health\n"
            "loaded = sorted(m for m in ('trio', 'trio_websocket', 'httpx', 'asyncio', 'anyio') if m in sys.modules)\n"
            "print(','.join(loaded))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_runtime_api_is_still_one_import_away():
    import hybrid_actors

    assert callable(hybrid_actors.open_hybrid_stream)
    with pytest.raises(AttributeError):
        hybrid_actors.no_such_name  # noqa: B018
