"""CLI output: JSON lines (one event per line, flushed per batch) and a live table.

stdout is block-buffered when piped, so an unflushed writer would deliver events seconds
late; flushing once per batch keeps it live without paying a flush per line.
rich draws the table: it handles terminal width, colour and in-place refresh, and falls
back to plain text when stdout is not a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import BinaryIO

import orjson
from rich import box
from rich.console import Console
from rich.table import Table

from .state import Event, PositionUpdate

__all__ = ["JsonlWriter", "position_table", "TableView"]


class JsonlWriter:
    """Writes each batch of events as JSON lines with one write and one flush."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.lines = 0

    def write_batch(self, events: Sequence[Event]) -> None:
        if not events:
            return
        dumps = orjson.dumps
        payload = b"".join(dumps(event.to_json()) + b"\n" for event in events)
        self._stream.write(payload)
        self._stream.flush()
        self.lines += len(events)


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
