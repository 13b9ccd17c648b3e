"""Issue 4 CLI: `python -m hybrid_actors run|demo|simulator` as processes, on loopback."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import termios
from collections.abc import Callable
from decimal import Decimal
from functools import partial

import pytest
import trio

from procs import PYTHON, LineReader, cli_env, run_cli, simulator, start_cli

pytestmark = pytest.mark.system

CONTRACT = {"event", "symbol", "category", "side", "size", "entry_price", "mark_price", "unrealized_pnl",
            "position_idx", "source", "exchange_ts", "received_ts", "leverage", "liq_price", "take_profit",
            "stop_loss", "trailing_stop", "cum_realised_pnl", "created_time", "updated_time", "mark_age_ms"}


NOTICE = {"event", "state", "reason", "sockets", "ts"}


def check_contract(line: bytes) -> dict:
    """A position event line, or a ``stream.state`` line."""
    event = json.loads(line)
    if event["event"] == "stream.state":
        assert set(event) == NOTICE
        assert event["state"] in ("starting", "live", "degraded", "recovered", "failed")
        assert isinstance(event["reason"], str) and isinstance(event["ts"], int)
        assert all(isinstance(up, bool) for up in event["sockets"].values())
        return event
    assert set(event) == CONTRACT
    assert event["event"] in ("position.update", "position.closed")
    assert event["source"] in ("ticker", "position", "rest")
    for field in ("size", "entry_price", "mark_price", "unrealized_pnl", "leverage", "cum_realised_pnl"):
        assert isinstance(event[field], str), (field, event)
        Decimal(event[field])
        assert "e" not in event[field].lower()
    for field in ("liq_price", "take_profit", "stop_loss", "trailing_stop"):
        assert event[field] is None or (isinstance(event[field], str) and "e" not in event[field].lower())
    assert isinstance(event["created_time"], int) and isinstance(event["updated_time"], int)
    assert isinstance(event["mark_age_ms"], int) and event["mark_age_ms"] >= 0
    assert isinstance(event["position_idx"], int) and isinstance(event["received_ts"], int)
    return event


async def test_help_and_version():
    result = await run_cli("--help")
    assert result.returncode == 0 and b"run" in result.stdout and b"demo" in result.stdout
    result = await run_cli("run", "--help")
    assert result.returncode == 0 and b"--stream-url" in result.stdout and b"BYBIT_API_KEY" in result.stdout
    result = await run_cli("--version")
    assert result.returncode == 0 and b"hybrid_actors" in result.stdout


async def test_run_prints_one_contract_event_per_line_live_through_a_pipe():
    async with simulator("--positions", "4", "--rate", "10", "--seed", "3") as sim:
        async with trio.open_nursery() as nursery:
            proc = await start_cli(nursery, "run", "--stream-url", sim["ws_url"], "--rest-url", sim["rest_url"],
                                   "--output", "jsonl", "--seconds", "6", "--log-level", "WARNING",
                                   env=cli_env(sim["api_key"], sim["api_secret"]), stderr=subprocess.DEVNULL)
            reader = LineReader(proc.stdout)
            with trio.fail_after(20):
                first = await reader.readline()
                # a line arrived while the process is still running: flushed per batch, not at exit
                assert proc.returncode is None
            with trio.fail_after(30):
                lines = [first, *await reader.lines()]
                await proc.wait()
        assert proc.returncode == 0
        events = [check_contract(line) for line in lines if line]
        assert [e["state"] for e in events if e["event"] == "stream.state"] == ["starting", "live"]
        events = [e for e in events if e["event"] != "stream.state"]
        assert len(events) >= 4
        assert {e["source"] for e in events} >= {"rest", "ticker"}


async def test_rejected_credentials_exit_3_with_advice_and_no_secret():
    async with simulator("--positions", "0", "--rate", "0") as sim:
        secret = "S3CRET-not-the-right-one-ZZZ"
        result = await run_cli("run", "--stream-url", sim["ws_url"], "--rest-url", sim["rest_url"],
                               env=cli_env(sim["api_key"], secret))
    assert result.returncode == 3
    err = result.stderr.decode()
    assert "auth rejected" in err and "Params Error" in err and "clock" in err
    assert secret not in err and secret not in result.stdout.decode()
    assert result.stdout == b""


async def test_missing_keys_and_bad_flags_exit_2_with_a_clear_message():
    result = await run_cli("run", env=cli_env(None, None))
    assert result.returncode == 2 and b"BYBIT_API_KEY" in result.stderr
    result = await run_cli("run", "--stream-url", "http://127.0.0.1:1", env=cli_env("k", "s"))
    assert result.returncode == 2 and b"--stream-url" in result.stderr
    for url in ("ws://127.0.0.1:1/?", "ws://127.0.0.1:1/#"):  # empty query/fragment: not a base URL either
        result = await run_cli("run", "--stream-url", url, "--start-timeout", "2", env=cli_env("k", "s"))
        assert result.returncode == 2 and b"--stream-url" in result.stderr and b"query or fragment" in result.stderr
    result = await run_cli("run", "--heartbeat-interval", "-5", env=cli_env("k", "s"))
    assert result.returncode == 2 and b"heartbeat-interval" in result.stderr
    # a positive but tiny interval: not a run that dies on "no pong within 0.0001s"
    result = await run_cli("run", "--heartbeat-interval", "0.0001", "--stream-url", "ws://127.0.0.1:1",
                           "--rest-url", "http://127.0.0.1:1", "--start-timeout", "2", env=cli_env("k", "s"))
    assert result.returncode == 2 and b"--heartbeat-interval must be at least 1 second" in result.stderr
    result = await run_cli("run", "--category", "spot", env=cli_env("k", "s"))
    assert result.returncode == 2
    result = await run_cli("run", "--read-coalesce-ms", "51", env=cli_env("k", "s"))
    assert result.returncode == 2 and b"--read-coalesce-ms must be between 0 (off) and 50" in result.stderr
    result = await run_cli("run", "--testnet", "--demo", env=cli_env("k", "s"))
    assert result.returncode == 2


async def test_demo_runs_without_keys_or_network_and_stops_by_itself():
    result = await run_cli("demo", "--seconds", "3", "--output", "jsonl", "--log-level", "WARNING",
                           env=cli_env(None, None))
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    events = [check_contract(line) for line in result.stdout.splitlines()]
    assert events and any(e.get("source") == "ticker" for e in events)


async def test_demo_table_output_shows_the_positions():
    result = await run_cli("demo", "--seconds", "2", "--output", "table", "--log-level", "WARNING",
                           env=cli_env(None, None))
    assert result.returncode == 0
    out = result.stdout.decode()
    for column in ("symbol", "side", "size", "entry", "mark", "uPnL", "mark age"):
        assert column in out
    assert "USDT" in out
    # the dashboard's renderer: sockets, subscriptions and latency above the positions
    for section in ("sockets", "public:linear", "subscriptions vs positions", "latency, ms", "exchange → event"):
        assert section in out


async def test_jsonl_to_a_regular_file(tmp_path):
    target = tmp_path / "events.jsonl"
    with target.open("wb") as out, trio.fail_after(60):
        result = await trio.run_process([PYTHON, "-m", "hybrid_actors", "demo", "--seconds", "2", "--output",
                                         "jsonl", "--log-level", "WARNING"], stdout=out, capture_stderr=True,
                                        check=False, env=cli_env(None, None))
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    events = [check_contract(line) for line in target.read_bytes().splitlines()]
    assert events


async def test_a_reader_that_goes_away_ends_the_run_quietly():
    async with trio.open_nursery() as nursery:
        proc = await start_cli(nursery, "demo", "--seconds", "20", "--output", "jsonl", "--log-level", "ERROR",
                               env=cli_env(None, None))
        reader = LineReader(proc.stdout)
        with trio.fail_after(30):
            assert await reader.readline()
            await proc.stdout.aclose()  # like `| head -1`
            await proc.wait()
    assert proc.returncode == 0


@pytest.mark.parametrize("command", [
    ("demo", "--seconds", "20", "--output", "table"),
    # no stream behind the port: the dashboard draws its "retrying" line every refresh
    ("dashboard", "--url", "http://127.0.0.1:{port}", "--refresh", "0.2"),
], ids=["demo-table", "dashboard"])
async def test_a_reader_that_goes_away_from_the_table_ends_the_run_quietly_too(command):
    """`--output table | head -1` exits 0 like jsonl (rich alone would exit 1)."""
    args = [arg.format(port=free_port()) for arg in command]
    async with trio.open_nursery() as nursery:
        proc = await start_cli(nursery, *args, "--log-level", "ERROR", env=cli_env(None, None))
        reader = LineReader(proc.stdout)
        with trio.fail_after(30):
            assert await reader.readline()
            await proc.stdout.aclose()  # like `| head -1`
            await proc.wait()
            err = await proc.stderr.receive_some(1 << 16)
    assert proc.returncode == 0, err.decode()[-2000:]


async def sim_control(sim: dict, method: str, **kwargs) -> None:
    import httpx

    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{sim['rest_url']}/control/{method}", json=kwargs)
    assert answer.status_code == 200, answer.text


async def test_revoked_keys_mid_run_print_failed_as_the_last_line_and_exit_3():
    async with simulator("--positions", "1", "--rate", "0", "--seed", "3") as sim:
        async with trio.open_nursery() as nursery:
            proc = await start_cli(nursery, "run", "--stream-url", sim["ws_url"], "--rest-url", sim["rest_url"],
                                   "--output", "jsonl", "--log-level", "WARNING",
                                   env=cli_env(sim["api_key"], sim["api_secret"]))
            reader = LineReader(proc.stdout)
            lines = []
            with trio.fail_after(30):
                while (line := await reader.readline()) is not None:
                    lines.append(check_contract(line))
                    if lines[-1].get("state") == "live":
                        await sim_control(sim, "fail_auth", count=None)
                        await sim_control(sim, "drop_private")
                await proc.wait()
    assert proc.returncode == 3
    states = [e["state"] for e in lines if e["event"] == "stream.state"]
    assert states == ["starting", "live", "degraded", "failed"]
    assert lines[-1]["event"] == "stream.state" and lines[-1]["reason"].startswith("AuthRejected: ")
    assert sim["api_secret"] not in lines[-1]["reason"]


# --- every exit code, and the flags around them ---------------------------------------------------------

def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_never_connected_exits_4_with_the_reason_within_the_start_timeout():
    port = free_port()
    result = await run_cli("run", "--stream-url", f"ws://127.0.0.1:{port}", "--rest-url", f"http://127.0.0.1:{port}",
                           "--start-timeout", "1.5", "--seconds", "0.5", "--log-level", "critical",
                           env=cli_env("key", "secret"), timeout=30)
    err = result.stderr.decode()
    assert result.returncode == 4, err
    assert "never connected" in err and "did not start within 1.5s" in err
    assert f"127.0.0.1:{port}" in err and "Error" in err  # what failed, not just that it did
    assert "secret" not in err and result.stdout == b""


async def test_seconds_count_from_start_up_not_from_launch():
    """The exchange refuses the first handshakes, so start-up takes a while: --seconds 0.5 must
    still show a live stream (old behaviour: the clock ran out during start-up, exit 0, no output)."""
    async with simulator("--positions", "2", "--rate", "5", "--seed", "3") as sim:
        await sim_control(sim, "reject_connections", count=4, status=503)
        result = await run_cli("run", "--stream-url", sim["ws_url"], "--rest-url", sim["rest_url"], "--output",
                               "jsonl", "--seconds", "0.5", "--log-level", "ERROR",
                               env=cli_env(sim["api_key"], sim["api_secret"]), timeout=60)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    lines = [check_contract(line) for line in result.stdout.splitlines()]
    # actors start independently (issue 8): the stream starts with the private snapshot, and a
    # public socket still refused at that moment makes it "degraded" until it connects
    states = [e["state"] for e in lines if e["event"] == "stream.state"]
    assert states[0] == "starting" and states[1] in ("live", "degraded"), states
    assert any(e["event"] == "position.update" for e in lines)


async def test_ctrl_c_exits_130():
    async with trio.open_nursery() as nursery:
        proc = await start_cli(nursery, "demo", "--output", "jsonl", "--log-level", "error", env=cli_env(None, None))
        reader = LineReader(proc.stdout)
        with trio.fail_after(30):
            assert await reader.readline()  # running
            proc.send_signal(signal.SIGINT)
            await reader.lines()
            await proc.wait()
    assert proc.returncode == 130


async def test_sigterm_exits_143_after_the_last_whole_line():
    # docker stop / systemd / kill: the run ends like --seconds (its last batch written whole,
    # stdout left as found), not killed mid-write
    async with trio.open_nursery() as nursery:
        proc = await start_cli(nursery, "demo", "--output", "jsonl", "--log-level", "error", "--symbols", "200",
                               "--positions", "150", "--rate", "20", env=cli_env(None, None))
        reader = LineReader(proc.stdout)
        with trio.fail_after(30):
            assert await reader.readline()  # running
            await trio.sleep(1)  # a busy stream: a batch is likely being written
            proc.send_signal(signal.SIGTERM)
            lines = await reader.lines()
            await proc.wait()
            errors = await proc.stderr.receive_some(65536)  # type: ignore[union-attr]
    assert proc.returncode == 143
    assert b"terminated (SIGTERM)" in errors
    assert lines
    for line in lines:  # a line cut in half would not parse
        check_contract(line)


def _demo_into_an_unread_pipe(seconds: str) -> tuple[int, bytes]:
    """The demo, busy, writing into a pipe nobody reads until it has exited: the pipe is full
    when --seconds ends it. Its exit code and everything it wrote."""
    import os

    read_end, write_end = os.pipe()
    proc = subprocess.Popen([PYTHON, "-m", "hybrid_actors", "demo", "--symbols", "200", "--positions", "150",
                             "--rate", "20", "--seconds", seconds, "--output", "jsonl", "--log-level", "critical"],
                            stdout=write_end, stderr=subprocess.DEVNULL, env=cli_env(None, None))
    os.close(write_end)
    try:
        code = proc.wait(timeout=60)
        data = b""
        while chunk := os.read(read_end, 1 << 16):
            data += chunk
    finally:
        os.close(read_end)
        proc.kill()
    return code, data


async def test_a_run_ending_while_its_reader_lags_leaves_only_whole_lines():
    # the last batch's write was under way (the pipe full) when --seconds ended the run: it
    # used to be cut in half, leaving a fragment a line-by-line consumer cannot parse
    code, data = await trio.to_thread.run_sync(_demo_into_an_unread_pipe, "2")
    assert code == 0
    assert len(data) >= 65536 // 2  # the pipe did fill up
    assert data.endswith(b"\n")
    for line in data.splitlines():
        check_contract(line)


SHARED_STDERR = ("import os, sys, trio\n"
                 "from hybrid_actors.output import open_stdout\n"
                 "async def main():\n"
                 "    async with open_stdout() as sink:\n"
                 "        await sink.send_all(b'{}\\n')\n"
                 "        sys.exit(0 if os.get_blocking(2) else 5)\n"
                 "trio.run(main)\n")


async def test_the_output_leaves_a_stderr_sharing_stdouts_pipe_blocking():
    # `2>&1 | consumer`, or a terminal: stdout and stderr share one open file. Setting
    # O_NONBLOCK on it made log lines vanish (EAGAIN) whenever the reader lagged.
    import os

    read_end, write_end = os.pipe()
    try:
        with trio.fail_after(30):
            done = await trio.run_process([PYTHON, "-c", SHARED_STDERR], stdout=write_end, stderr=write_end,
                                          check=False, env=cli_env(None, None))
    finally:
        os.close(write_end)
        os.close(read_end)
    assert done.returncode == 0


async def test_a_closed_stdout_is_a_usage_error():
    import os

    with trio.fail_after(30):
        done = await trio.run_process([PYTHON, "-m", "hybrid_actors", "demo", "--seconds", "1"],
                                      preexec_fn=lambda: os.close(1), capture_stderr=True, check=False,
                                      env=cli_env(None, None))
    assert done.returncode == 2 and b"stdout is closed" in done.stderr


CRASHING_PUBLIC_ACTOR = ("import sys\n"
                         "from hybrid_actors.actors import public_ws\n"
                         "async def crash(self, *, task_status=None):\n"
                         "    raise ValueError('a bug in the public actor')\n"
                         "public_ws.PublicStreamActor.run = crash\n"
                         "from hybrid_actors.__main__ import main\n")


async def demo_with_a_crashing_public_actor(*flags: str) -> subprocess.CompletedProcess[bytes]:
    """``demo --output jsonl`` plus ``flags`` in a process whose public actor crashes at every start."""
    argv = ["demo", "--output", "jsonl", "--log-level", "critical", *flags]
    with trio.fail_after(60):
        return await trio.run_process([PYTHON, "-c", CRASHING_PUBLIC_ACTOR + f"sys.exit(main({argv!r}))\n"],
                                      capture_stdout=True, capture_stderr=True, check=False, env=cli_env(None, None))


async def test_a_crash_loop_exits_1_and_names_it():
    # with the crash-loop rollback off (production's default rolls back to REST: next test)
    result = await demo_with_a_crashing_public_actor("--no-rollback-on-crash-loop")
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "stopped: actor 'public:linear' crashed" in err and "ValueError: a bug in the public actor" in err


async def test_a_crash_loop_in_production_rolls_back_to_rest_and_keeps_running():
    result = await demo_with_a_crashing_public_actor("--seconds", "12")
    err = result.stderr.decode()
    assert result.returncode == 0, err
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    rollbacks = [line for line in lines if line["event"] == "stream.rollback"]
    assert len(rollbacks) == 1 and "public:linear" in rollbacks[0]["reason"], rollbacks
    after = lines[lines.index(rollbacks[0]) + 1:]
    assert any(line["event"] == "position.update" and line["source"] == "rest" for line in after), after[-5:]


async def test_flags_log_level_any_case_deprecated_demo_and_usage_of_the_subcommand():
    # --log-level in any case, everywhere, with help
    for command in ("run", "demo", "simulator", "dashboard"):
        help_text = (await run_cli(command, "--help")).stdout.decode()
        assert "--log-level LEVEL" in help_text and "any case" in help_text, command
    result = await run_cli("demo", "--seconds", "0.5", "--output", "jsonl", "--log-level", "debug",
                           env=cli_env(None, None))
    assert result.returncode == 0 and b"DEBUG" in result.stderr
    # help texts are plain text, no reST markup
    for args in ((), ("run",), ("demo",), ("simulator",), ("dashboard",)):
        text = (await run_cli(*args, "--help")).stdout.decode()
        assert "``" not in text and ":class:" not in text, args
    # an error of a subcommand shows that subcommand's usage
    result = await run_cli("demo", "--rate", "-1")
    assert result.returncode == 2 and b"usage: python -m hybrid_actors demo" in result.stderr
    result = await run_cli("run", "--stream-url", "http://127.0.0.1:1", env=cli_env("k", "s"))
    assert result.returncode == 2 and b"usage: python -m hybrid_actors run" in result.stderr
    assert b"--stream-url" in result.stderr
    # run --demo still works (as --demo-trading), with a deprecation warning; both at once is bad usage
    result = await run_cli("run", "--demo", "--stream-url", "ws://127.0.0.1:1", env=cli_env(None, None))
    assert result.returncode == 2 and b"'run --demo' is deprecated; use 'run --demo-trading'" in result.stderr
    result = await run_cli("run", "--testnet", "--demo-trading", env=cli_env("k", "s"))
    assert result.returncode == 2 and b"not allowed with argument" in result.stderr


async def test_demo_positions_open_in_the_categories_followed_and_a_repeated_category_counts_once():
    for categories, count in ((["linear", "linear"], 4), (["inverse"], 3)):
        flags = [arg for category in categories for arg in ("--category", category)]
        result = await run_cli("demo", "--positions", str(count), *flags, "--seconds", "0.5", "--output", "jsonl",
                               "--log-level", "WARNING", env=cli_env(None, None))
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        lines = [check_contract(line) for line in result.stdout.splitlines()]
        live = next(i for i, e in enumerate(lines) if e.get("state") == "live")
        assert set(lines[live]["sockets"]) == {"private", f"public:{categories[0]}"}
        snapshot = [e for e in lines[:live] if e["event"] == "position.update"]
        assert len({e["symbol"] for e in snapshot}) == count
        assert {e["category"] for e in snapshot} == {categories[0]}
        assert f"streaming {count} open position(s)".encode() in result.stderr


# --- the live table on a terminal, with logs on the same terminal ------------------------------------------

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S+: .*")
CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")


def terminal_screen(output: str) -> list[str]:
    """What a terminal shows (scrollback included) after ``output``: the subset of VT100 rich's
    live display uses (cursor up/down/column, erase line, colours ignored), no line wrapping
    (the pty is wider than any line here)."""
    rows: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(output):
        char = output[i]
        if char == "\x1b":
            match = CSI.match(output, i)
            if match is None:  # not a CSI sequence rich writes: skip the escape byte
                i += 1
                continue
            params, final = match.groups()
            count = int(params) if params.isdigit() else 1
            if final == "A":
                row = max(0, row - count)
            elif final == "B":
                row += count
            elif final == "G":
                col = count - 1
            elif final == "K":
                line = rows[row] if row < len(rows) else []
                if params == "2":
                    line.clear()
                elif params in ("", "0"):
                    del line[col:]
            i = match.end()
            continue
        if char == "\r":
            col = 0
        elif char == "\n":
            row += 1
        elif char >= " ":
            while len(rows) <= row:
                rows.append([])
            line = rows[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = char
            col += 1
        i += 1
        while len(rows) <= row:
            rows.append([])
    return ["".join(line).rstrip() for line in rows]


async def read_pty(master: int, until: Callable[[bytes], bool]) -> bytes:
    """Bytes from a pty's master end until ``until(all so far)`` or the other end closes."""
    data = b""
    while not until(data):
        await trio.lowlevel.wait_readable(master)
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: every process holding the terminal has exited
            break
        if not chunk:
            break
        data += chunk
    return data


async def test_the_live_table_on_a_terminal_prints_log_lines_above_it_whole():
    # stdout and stderr on one terminal: log lines written straight to stderr while rich redrew
    # the table in place landed inside it and were erased by the next redraw (or left a stale
    # copy of the table's top behind); they now go through the table's console, above it
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 100, 220, 0, 0))
    env = {k: v for k, v in cli_env(None, None).items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    try:
        async with simulator("--positions", "2", "--rate", "5", "--seed", "3") as sim:
            env.update(cli_env(sim["api_key"], sim["api_secret"]))
            for size in ("COLUMNS", "LINES"):  # the terminal's own size (pytest-xdist's workers set both)
                env.pop(size, None)
            async with trio.open_nursery() as nursery:
                proc = await nursery.start(partial(
                    trio.run_process, [PYTHON, "-m", "hybrid_actors", "run", "--stream-url", sim["ws_url"],
                                       "--rest-url", sim["rest_url"], "--output", "table", "--seconds", "4",
                                       "--log-level", "INFO"],
                    stdin=slave, stdout=slave, stderr=slave, check=False, env=env))
                os.close(slave)
                slave = -1
                with trio.fail_after(30):
                    data = await read_pty(master, lambda seen: b"mark age" in seen)  # the table is up
                    await sim_control(sim, "drop_private")  # logs while it is shown: lost, reconnecting, back
                    data += await read_pty(master, lambda seen: False)
                    await proc.wait()
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    assert proc.returncode == 0
    text = data.decode(errors="replace")
    table_start = text.index("mark age")
    logged = [line for line in LOG_LINE.findall(CSI.sub("", text[table_start:]).replace("\r", ""))]
    assert any("private" in line for line in logged), logged  # the drop was logged while the table was up
    screen = terminal_screen(text)
    for line in logged:
        assert line.rstrip() in screen, f"log line not on screen whole: {line!r}"
    headers = [row for row in screen if row.startswith("hybrid_actors  ")]
    assert len(headers) == 1, headers  # one table, redrawn in place: no stale copies of it
    assert any("BTCUSDT" in row or "USDT" in row for row in screen[screen.index(headers[0]):])


# --- the "failed" line reaches a reader that lags ------------------------------------------------------------

async def test_a_reader_lagging_when_the_stream_fails_still_gets_the_failed_line_last():
    # the pipe full and its reader seconds behind when the credentials are revoked: the
    # "failed" line used to be given up on after 2 s, so a consumer parsing stdout never saw
    # why the stream ended (only stderr and the exit code said it)
    read_end, write_end = os.pipe()
    try:
        async with simulator("--positions", "100", "--symbols", "120", "--rate", "20", "--seed", "3") as sim:
            async with trio.open_nursery() as nursery:
                proc = await start_cli(nursery, "run", "--stream-url", sim["ws_url"], "--rest-url", sim["rest_url"],
                                       "--output", "jsonl", "--log-level", "INFO", stdout=write_end,
                                       env=cli_env(sim["api_key"], sim["api_secret"]))
                os.close(write_end)
                write_end = -1
                errors = LineReader(proc.stderr)
                with trio.fail_after(30):
                    while b"stream live" not in (await errors.readline() or b"stream live"):
                        pass
                    await trio.sleep(0.5)  # nobody reads: the pipe fills up
                    await sim_control(sim, "fail_auth", count=None)
                    await sim_control(sim, "drop_private")
                    while b"stream failed" not in (await errors.readline() or b"stream failed"):
                        pass
                    await trio.sleep(3)  # the reader is 3 s behind when the stream has failed
                    data = b""
                    while True:
                        await trio.lowlevel.wait_readable(read_end)
                        if not (chunk := os.read(read_end, 1 << 16)):
                            break
                        data += chunk
                    await proc.wait()
                    rest = b"".join(await errors.lines())
    finally:
        os.close(read_end)
        if write_end != -1:
            os.close(write_end)
    assert proc.returncode == 3, rest.decode()[-2000:]
    assert len(data) >= 65536 // 2  # the pipe did fill up
    lines = [check_contract(line) for line in data.splitlines()]
    assert data.endswith(b"\n")
    assert lines[-1]["event"] == "stream.state" and lines[-1]["state"] == "failed", lines[-3:]
    assert lines[-1]["reason"].startswith("AuthRejected: ")
