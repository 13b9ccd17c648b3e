"""A tiny run of scripts/bench_tls.py: the script keeps working and prints every figure.
Timings are never asserted; the figures come from running the script itself."""

from __future__ import annotations

import pytest
import trio

from script_loading import load_script as load_scripts_module

pytestmark = pytest.mark.performance


def load_script():  # type: ignore[no-untyped-def]
    return load_scripts_module("bench_tls")


def test_bench_tls_prints_every_client_and_trio_sslstream_reads_one_frame_a_call():
    bench = load_script()
    figures = trio.run(bench.run, bench.parse_args(["--symbols", "20", "--seconds", "0.6", "--warmup", "0.3"]))
    clients = figures["clients"]
    assert len(clients) == 4
    for name, row in clients.items():
        assert row["frames"] > 0 and row["frames_per_cpu_s"] > 0, name
    # one TLS record per call: the reason tls.py exists
    assert clients["lean transport, trio.SSLStream (before tls.py), no coalescing"]["frames_per_batch"] == 1.0
    assert clients["trio-websocket (private socket's transport)"]["frames_per_batch"] == 1.0
