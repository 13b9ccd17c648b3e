"""CLI output: JSON lines (one event per line, one write per batch) and a live table.

JSON lines go straight to the stdout file descriptor, one ``write`` per batch: never
seconds late behind a block buffer when piped, and never blocking the actors: on a pipe
the write is asynchronous (a reader that falls behind makes price updates conflate in
the stream's queue while the sockets keep being served). The table is the dashboard's
(``dashboard.py``: sockets, subscriptions, latency, alerts, positions) drawn from this
process's ``stream.health()``; rich handles terminal width, colour and in-place refresh,
and falls back to plain text when stdout is not a terminal.
"""

from __future__ import annotations

import os
import select
import stat
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Protocol

import orjson
import trio

from .dashboard import EventRate, TableView, default_rows, position_table, render_dashboard
from .notices import StreamEvent

if TYPE_CHECKING:
    from .supervisor import HybridStream

__all__ = ["JsonlWriter", "open_stdout", "position_table", "TableView", "consume"]

TABLE_REFRESH = 0.5
#: how long a line already under way may take to finish when the run is cancelled
FLUSH_TIMEOUT = 2.0
#: how long the JSON lines output waits for a lagging reader to take the stream's last events
#: (the ``failed`` line that says why it ended included) after an error ended it
FAILED_FLUSH_TIMEOUT = 10.0
#: bytes a pipe takes in one write all or nothing (POSIX: at least 512; 4,096 on Linux)
PIPE_BUF = select.PIPE_BUF


class ByteSink(Protocol):
    #: what a cancelled ``send_all`` left unwritten: whole lines, the rest of its data
    unsent: bytes
    #: a line was left unfinished: nothing more is written
    cut: bool

    async def send_all(self, data: bytes) -> None: ...


class _BlockingFile:
    """A regular file never makes a write wait for a reader (and cannot be polled)."""

    unsent = b""
    cut = False

    def __init__(self, fd: int):
        self._fd = fd

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]


class _PollingSink:
    """A pipe, terminal or socket written without blocking the actors: ``os.write`` on a
    non-blocking descriptor, waiting for room when the reader lags.

    The output must never end in half a JSON line, however the run ends (``--seconds``,
    Ctrl-C, SIGTERM, a failure) while a slow reader keeps the pipe full. A batch (whole
    lines) is written in chunks of whole lines of at most ``PIPE_BUF`` bytes, which a pipe
    takes all or nothing: a cancel between chunks leaves whole lines. A chunk the
    descriptor took in part (a terminal, a socket, a line longer than ``PIPE_BUF``) is
    finished even when cancelled, shielded, within ``FLUSH_TIMEOUT``; if even that runs out
    nothing more is written (``cut``): a later line glued to a fragment would be worse.
    The whole lines a cancel left unwritten are kept in ``unsent``."""

    def __init__(self, fd: int):
        self._fd = fd
        self.cut = False
        self.unsent = b""
        self._left = memoryview(b"")  # what the chunk being written still has to put out

    async def send_all(self, data: bytes) -> None:
        if self.cut:
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        start, size, whole = 0, len(data), memoryview(data)
        while start < size:
            if size - start <= PIPE_BUF:
                end = size
            else:
                end = data.rfind(b"\n", start, start + PIPE_BUF) + 1
                if end <= start:  # one line longer than PIPE_BUF: up to its end, not atomic
                    end = data.find(b"\n", start) + 1 or size
            self._left = whole[start:end]
            try:
                await self._drain()
            except trio.Cancelled:
                rest = start
                if self._left and len(self._left) != end - start:  # part of a line is out: finish it
                    with trio.move_on_after(FLUSH_TIMEOUT, shield=True):
                        await self._drain()
                    self.cut = bool(self._left)
                    rest = end
                elif not self._left:
                    rest = end
                self.unsent = b"" if self.cut else data[rest:]
                raise
            start = end
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _drain(self) -> None:
        fd = self._fd
        while self._left:
            try:
                written = os.write(fd, self._left)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise trio.BrokenResourceError("the reader of our output went away") from exc
            self._left = self._left[written:]


@asynccontextmanager
async def open_stdout() -> AsyncIterator[ByteSink]:
    """stdout as a byte sink: asynchronous on a pipe, socket or terminal; plain writes on a
    regular file. A reader that went away surfaces as ``BrokenPipeError``."""
    sys.stdout.flush()
    fd = os.dup(sys.stdout.fileno())
    if stat.S_ISREG(os.fstat(fd).st_mode):
        try:
            yield _BlockingFile(fd)
        finally:
            os.close(fd)
        return
    # A private open file description of the same pipe or terminal: O_NONBLOCK set on it
    # leaves stderr alone when it shares stdout's (`2>&1 | consumer`, a terminal), where
    # log lines would otherwise be lost to EAGAIN whenever the reader lags. A socket cannot
    # be reopened: its shared description is made non-blocking, and restored after.
    shared = False
    try:
        private = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        private, shared = fd, True
        os.set_blocking(fd, False)
    else:
        os.close(fd)
    try:
        yield _PollingSink(private)
    finally:
        if shared:
            with suppress(OSError):
                os.set_blocking(private, True)  # leave stdout as we found it
        os.close(private)


class JsonlWriter:
    """Writes each batch of events (position events and ``stream.*`` notices) as JSON
    lines with one write."""

    def __init__(self, sink: ByteSink):
        self._sink = sink
        self.lines = 0

    async def write_batch(self, events: Sequence[StreamEvent]) -> None:
        if not events:
            return
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        payload = b"".join([dumps(event.to_json(), option=newline) for event in events])
        try:
            await self._sink.send_all(payload)
        except trio.BrokenResourceError as exc:
            raise BrokenPipeError("the reader of our output went away") from exc
        self.lines += len(events)

    async def write_last(self, events: Sequence[StreamEvent], timeout: float = FAILED_FLUSH_TIMEOUT) -> None:
        """After an error ended the stream: what the cancelled write left, then ``events`` (its
        last ones, the ``failed`` line last), waiting up to ``timeout`` seconds for a reader
        that lags, even while cancelled. If the reader is gone or takes none of it in time,
        stderr says what was not written (the exit code and the error follow anyway)."""
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        payload = self._sink.unsent + b"".join([dumps(event.to_json(), option=newline) for event in events])
        self._sink.unsent = b""
        if not payload:
            return
        why = ""
        with trio.move_on_after(timeout, shield=True) as waited:
            try:
                await self._sink.send_all(payload)
            except trio.BrokenResourceError:
                why = "the reader of stdout went away"
        if waited.cancelled_caught or self._sink.cut:
            why = f"the reader of stdout did not take them within {timeout:g}s"
        if why:
            print(f"hybrid_actors: {why}: the stream's last lines (the 'failed' line that says why it ended "
                  f"included) were not written to stdout", file=sys.stderr, flush=True)
        else:
            self.lines += payload.count(b"\n")


async def consume(stream: HybridStream, output: str) -> None:
    """Write the stream's events to stdout until it ends (or the caller's deadline)."""
    if output == "jsonl":
        async with open_stdout() as sink:
            writer = JsonlWriter(sink)
            last: list[StreamEvent] = []
            try:
                while True:
                    batch = await stream.batches()
                    if stream.ended:  # an error ended the stream: we are about to be cancelled
                        last = batch
                        break
                    await writer.write_batch(batch)
            finally:
                if stream.ended:  # print its last events, the "failed" line that says why included
                    await writer.write_last([*last, *stream.unread()])
        # only an error that ended the stream gets here: it is about to cancel us (and then
        # comes out of open_hybrid_stream); wait for that instead of drawing a table
        with trio.move_on_after(FLUSH_TIMEOUT):
            await trio.sleep_forever()
        return
    rate = EventRate()
    rows = default_rows()
    with TableView() as view:  # the dashboard's renderer, fed by this process's stream
        while True:
            with trio.move_on_after(TABLE_REFRESH):
                while True:
                    await stream.batches()  # drain; the table shows current state
            health = stream.health().as_dict()
            per_s = rate.update(health["events"].get("emitted", 0), trio.current_time())
            # rich needs ~1-2 ms per table row: draw in a worker thread (the report is a private
            # copy) so the actors keep running meanwhile instead of stalling for the whole render
            await trio.to_thread.run_sync(view.show, render_dashboard(health, events_per_s=per_s, max_rows=rows))
