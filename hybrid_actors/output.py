"""CLI output: JSON lines (one event per line, one write per batch) and a live table.

JSON lines go straight to the stdout file descriptor, one ``write`` per batch: never
seconds late behind a block buffer when piped, and never blocking the actors: on a pipe
the write is asynchronous (a reader that falls behind makes price updates conflate in
the stream's queue while the sockets keep being served). rich draws the table: it
handles terminal width, colour and in-place refresh, and falls back to plain text when
stdout is not a terminal.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

import orjson
import trio
from rich import box
from rich.console import Console
from rich.table import Table

from .notices import StreamEvent
from .state import PositionUpdate

if TYPE_CHECKING:
    from .supervisor import HybridStream

__all__ = ["JsonlWriter", "open_stdout", "position_table", "TableView", "consume"]

TABLE_REFRESH = 0.5
#: how long the JSON lines output may take to write the stream's last events after it failed
FLUSH_TIMEOUT = 2.0


class ByteSink(Protocol):
    async def send_all(self, data: bytes) -> None: ...


class _BlockingFile:
    """A regular file never makes a write wait for a reader (and cannot be polled)."""

    def __init__(self, fd: int):
        self._fd = fd

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]


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
    stream = trio.lowlevel.FdStream(fd)  # sets O_NONBLOCK on the shared open file
    try:
        yield stream
    finally:
        with suppress(OSError):
            os.set_blocking(sys.stdout.fileno(), True)  # leave stdout as we found it
        await stream.aclose()


class JsonlWriter:
    """Writes each batch of events (position events and ``stream.*`` notices) as JSON
    lines with one write."""

    def __init__(self, sink: ByteSink):
        self._sink = sink
        self.lines = 0

    async def write_batch(self, events: Sequence[StreamEvent]) -> None:
        if not events:
            return
        dumps = orjson.dumps
        payload = b"".join(dumps(event.to_json()) + b"\n" for event in events)
        try:
            await self._sink.send_all(payload)
        except trio.BrokenResourceError as exc:
            raise BrokenPipeError("the reader of our output went away") from exc
        self.lines += len(events)


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
                    with trio.move_on_after(FLUSH_TIMEOUT, shield=True):
                        await writer.write_batch([*last, *stream.unread()])
    with TableView() as view:
        while True:
            with trio.move_on_after(TABLE_REFRESH):
                while True:
                    await stream.batches()  # drain; the table shows current state
            health = stream.health()
            view.show(position_table(stream.positions(), footer=f"stream {health.status}; "
                                     f"{health.events['emitted']} events"))


def _fmt(value: Decimal | None, places: int | None = None) -> str:
    if value is None:
        return "-"
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places)).normalize()
    return format(value, "f")


def position_table(views: Iterable[PositionUpdate], *, now_ms: int | None = None, title: str = "positions",
                   footer: str = "") -> Table:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    table = Table(title=title, caption=footer or None, box=box.SIMPLE_HEAVY, expand=False)
    for column, justify in (("symbol", "left"), ("cat", "left"), ("idx", "right"), ("side", "left"),
                            ("size", "right"), ("entry", "right"), ("mark", "right"), ("uPnL", "right"),
                            ("price age", "right"), ("src", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for view in sorted(views, key=lambda v: (v.category, v.symbol, v.position_idx)):
        pnl = view.unrealized_pnl
        style = "green" if pnl is not None and pnl > 0 else "red" if pnl is not None and pnl < 0 else ""
        age_ms = max(0, now_ms - view.received_ts)
        table.add_row(view.symbol, view.category, str(view.position_idx), view.side, _fmt(view.size),
                      _fmt(view.entry_price), _fmt(view.mark_price), f"[{style}]{_fmt(pnl, 8)}[/]" if style
                      else _fmt(pnl, 8), f"{age_ms / 1000:.1f}s", view.source)
    return table


class TableView:
    """Redraws the position table: in place on a terminal, a fresh table per refresh otherwise."""

    def __init__(self, console: Console | None = None):
        if console is None:
            console = Console()
            if not console.is_terminal:  # piped: no width to detect; do not truncate columns
                console = Console(width=160)
        self.console = console
        self._live = None

    def __enter__(self) -> TableView:
        if self.console.is_terminal:
            from rich.live import Live

            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def show(self, table: Table) -> None:
        if self._live is not None:
            self._live.update(table, refresh=True)
        else:
            self.console.print(table)
            self.console.file.flush()
