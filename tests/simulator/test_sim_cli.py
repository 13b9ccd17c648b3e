"""``simulator`` CLI: prints where it serves and the test credentials, serves, exits 0 on Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import trio

from hybrid_actors.testing.cli import main
from sim_support import connect, recv, send

pytestmark = pytest.mark.system


async def _read_lines(stream: trio.abc.ReceiveStream, count: int) -> list[str]:
    buffer = b""
    while buffer.count(b"\n") < count:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        buffer += chunk
    return buffer.decode().splitlines()


@pytest.mark.parametrize("as_json", [True, False])
async def test_cli_serves_until_interrupted(as_json):
    argv = [sys.executable, "-m", "hybrid_actors.testing.simulator", "--symbols", "5", "--positions", "2",
            "--seed", "4", "--rate", "0", *(["--json"] if as_json else [])]
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert process.stdout is not None
            if as_json:
                info = json.loads((await _read_lines(process.stdout, 1))[0])
            else:
                lines = await _read_lines(process.stdout, 8)
                info = dict(line.split(": ", 1) for line in lines if ": " in line)
                assert lines[-1] == "serving; Ctrl-C to stop"
            assert info["api_key"] == "test_key" and info["api_secret"] == "test_secret"
            assert info["ws_url"].startswith("ws://127.0.0.1:") and info["rest_url"].startswith("http://127.0.0.1:")
            async with connect(f"{info['ws_url']}/v5/public/linear") as ws:
                await send(ws, {"op": "ping", "req_id": "cli"})
                assert (await recv(ws))["req_id"] == "cli"
                process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


def test_bad_arguments_exit_with_2(capsys):
    assert main(["simulator", "--symbols", "-1"]) == 2
    assert "symbols" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["--no-such-flag"])
    assert usage.value.code == 2
