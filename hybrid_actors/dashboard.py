"""The terminal dashboard: one renderer for ``python -m hybrid_actors dashboard --url …``
(a running stream's ``/health``, polled) and ``run --output table`` (the stream in this
process). Both hand :func:`render_dashboard` the same health dict (``HealthReport.as_dict()``
or its JSON), so they show the same thing:

header (status, mode and active source, stream state, events/s, positions, alerts),
firing alerts, sockets (up/down, RTT, last frame), subscriptions against positions per
category, both latencies (p50/p95/p99 and a p99 sparkline over the last minutes), the
rollout (divergence, rollbacks), and the positions with live mark, PnL and mark age.

Readable at hundreds of positions: they are sorted (largest |uPnL| first by default, or
stalest mark, or symbol) and cut to ``max_rows``; the caption says how many are hidden and
sums up all of them (total uPnL, stale marks).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import trio
from rich import box
from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.table import Table
from rich.text import Text

from .http_endpoint import HttpFetchError, fetch_json

if TYPE_CHECKING:
    from rich.live import Live

__all__ = ["render_dashboard", "position_table", "sparkline", "EventRate", "TableView", "PipeConsole", "run_dashboard", "SORTS",
           "STALE_MARK_S"]

log = logging.getLogger(__name__)

SortKey = Literal["pnl", "age", "symbol"]
SORTS: Final[tuple[str, ...]] = ("pnl", "age", "symbol")
SORT_LABEL: Final = {"pnl": "largest |uPnL| first", "age": "stalest mark first", "symbol": "by symbol"}
#: a mark older than this is shown in yellow and counted as stale
STALE_MARK_S: Final = 3.0
BARS: Final = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | int | None], width: int | None = None) -> str:
    """One character per value, scaled from 0 to the largest (a gap for None)."""
    shown = list(values)[-width:] if width else list(values)
    top = max((v for v in shown if v is not None), default=None)
    if not top:
        return "".join(" " if v is None else BARS[0] for v in shown)
    out = []
    for value in shown:
        if value is None:
            out.append(" ")
        else:
            out.append(BARS[min(len(BARS) - 1, int(value / top * (len(BARS) - 1) + 0.5))])
    return "".join(out)


@attrs.define
class EventRate:
    """Events per second between two looks at ``events.emitted``."""

    _last: tuple[float, int] | None = None
    rate: float | None = None

    def update(self, emitted: int, now: float) -> float | None:
        if self._last is not None and now > self._last[0]:
            self.rate = max(0, emitted - self._last[1]) / (now - self._last[0])
        self._last = (now, emitted)
        return self.rate


def _dec(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _num(value: Decimal | None, places: int | None = None) -> str:
    if value is None:
        return "-"
    if places is not None and value.is_finite():
        value = value.quantize(Decimal(1).scaleb(-places)).normalize()
    return format(value, "f")


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _age(seconds: Any) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render_dashboard(health: Mapping[str, Any], *, events_per_s: float | None = None, max_rows: int = 25,
                     sort: SortKey = "pnl", title: str = "hybrid_actors", source: str | None = None) -> Group:
    """The whole dashboard for one health report."""
    parts: list[RenderableType] = [_header(health, events_per_s, title, source)]
    alerts = health.get("alerts") or ()
    if alerts:
        parts.append(_alerts(alerts))
    parts.append(_sockets(health.get("connections") or {}))
    parts.append(_subscriptions(health))
    parts.append(_latency(health.get("latency") or {}))
    rollout = health.get("rollout") or {}
    if rollout:
        parts.append(_rollout(rollout))
    parts.append(position_table(health.get("open_positions") or (), max_rows=max_rows, sort=sort))
    problems = health.get("problems") or ()
    if problems:
        parts.append(Text("problems: " + "; ".join(problems[:5]) + (f" (+{len(problems) - 5})" if len(problems) > 5
                                                                       else ""), style="yellow"))
    return Group(*parts)


def _header(health: Mapping[str, Any], events_per_s: float | None, title: str, source: str | None) -> Text:
    status = health.get("status", "?")
    colour = {"ok": "green", "degraded": "yellow", "down": "red"}.get(status, "white")
    rollout = health.get("rollout") or {}
    state = (health.get("stream_state") or {}).get("state")
    events = health.get("events") or {}
    text = Text()
    text.append(f"{title}  ", style="bold")
    text.append(f"{status.upper()}", style=f"bold {colour}")
    if state:
        text.append(f"  state {state}")
    text.append(f"  mode {rollout.get('mode', 'production')}")
    if rollout.get("active"):
        text.append(f" (consumer on {rollout['active']})")
    text.append(f"  events/s {'-' if events_per_s is None else f'{events_per_s:,.1f}'}")
    text.append(f"  events {events.get('emitted', 0):,}")
    text.append(f"  positions {health.get('positions', 0)}")
    alerts = health.get("alerts") or ()
    critical = sum(1 for a in alerts if a.get("level") == "critical")
    text.append(f"  alerts {len(alerts)}", style="bold red" if critical else "yellow" if alerts else "")
    if source:
        text.append(f"  [{source}]", style="dim")
    return text


def _table(title: str, *columns: tuple[str, JustifyMethod]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE, expand=False, pad_edge=False)
    for name, justify in columns:
        table.add_column(name, justify=justify)
    return table


def _alerts(alerts: Sequence[Mapping[str, Any]]) -> Table:
    table = _table("firing alerts", ("level", "left"), ("alert", "left"), ("for", "right"), ("message", "left"))
    for alert in alerts:
        style = "bold red" if alert.get("level") == "critical" else "yellow"
        table.add_row(Text(str(alert.get("level")), style=style), str(alert.get("name")),
                      _age(alert.get("firing_for_s")), str(alert.get("message")))
    return table


def _sockets(connections: Mapping[str, Mapping[str, Any]]) -> Table:
    table = _table("sockets", ("socket", "left"), ("state", "left"), ("rtt ms", "right"), ("last frame", "right"),
                   ("reconnects", "right"), ("frames", "right"))
    for name, conn in sorted(connections.items()):
        if conn.get("connected"):
            state = Text("up", style="green")
        else:
            down = conn.get("down_s")
            state = Text("down" + (f" {_age(down)}" if down is not None else ""), style="bold red")
        table.add_row(name, state, _ms(conn.get("rtt_ms")), _age(conn.get("last_frame_age_s")),
                      str(max(0, (conn.get("connects") or 0) - 1)), f"{conn.get('frames', 0):,}")
    return table


def _subscriptions(health: Mapping[str, Any]) -> Table:
    table = _table("subscriptions vs positions", ("category", "left"), ("positions", "right"),
                   ("desired", "right"), ("confirmed", "right"), ("pending", "right"), ("failed", "left"))
    per_category: dict[str, int] = {}
    for row in health.get("open_positions") or ():
        per_category[row.get("category", "?")] = per_category.get(row.get("category", "?"), 0) + 1
    subscriptions = health.get("subscriptions") or {}
    for category in sorted({*subscriptions, *per_category}):
        subs = subscriptions.get(category, {})
        desired, confirmed = subs.get("desired", 0), subs.get("confirmed", 0)
        failed = subs.get("failed") or {}
        style = "" if confirmed == desired else "yellow"
        table.add_row(category, str(per_category.get(category, 0)), str(desired), Text(str(confirmed), style=style),
                      str(subs.get("pending", 0)),
                      Text(", ".join(sorted(failed))[:60] or "-", style="red" if failed else ""))
    return table


def _latency(latency: Mapping[str, Any]) -> Table:
    history = latency.get("history") or {}
    slot = history.get("slot_s")
    window = latency.get("window_s")
    span = f"p99 per {slot:g}s" if slot else "p99"
    table = _table(f"latency, ms (last {window:g}s)" if window else "latency, ms", ("path", "left"),
                   ("p50", "right"), ("p95", "right"), ("p99", "right"), ("count", "right"), (span, "left"))
    for key, label in (("exchange_to_event", "exchange → event"), ("frame_to_event", "frame → event")):
        figures = latency.get(f"{key}_ms") or {}
        table.add_row(label, _ms(figures.get("p50")), _ms(figures.get("p95")), _ms(figures.get("p99")),
                      f"{figures.get('count', 0):,}", Text(sparkline(history.get(f"{key}_p99_ms") or (), 30),
                                                           style="cyan"))
    return table


def _rollout(rollout: Mapping[str, Any]) -> Table:
    table = _table("rollout", ("mode", "left"), ("active", "left"), ("cutover", "right"), ("comparisons", "right"),
                   ("divergences", "right"), ("max divergence", "right"), ("rollbacks", "right"),
                   ("last rollback", "left"))
    ratio = _dec(rollout.get("divergence_max_ratio"))
    cutover = rollout.get("cutover_percent")
    table.add_row(str(rollout.get("mode", "-")), str(rollout.get("active", "-")),
                  "-" if cutover is None else f"{cutover}%", str(rollout.get("comparisons", 0)),
                  Text(str(rollout.get("divergences", 0)), style="red" if rollout.get("divergences") else ""),
                  "-" if ratio is None else f"{ratio * 100:.3f}%",
                  Text(str(rollout.get("rollbacks", 0)), style="red" if rollout.get("rollbacks") else ""),
                  str(rollout.get("last_rollback_reason") or "-"))
    return table


def _sorted(rows: Sequence[Mapping[str, Any]], sort: SortKey) -> list[Mapping[str, Any]]:
    def by_symbol(row: Mapping[str, Any]) -> tuple[str, str, int]:
        return (str(row.get("symbol")), str(row.get("category")), int(row.get("position_idx") or 0))

    ordered = sorted(rows, key=by_symbol)
    if sort == "pnl":
        ordered.sort(key=lambda r: abs(_dec(r.get("unrealized_pnl")) or Decimal(0)), reverse=True)
    elif sort == "age":
        ordered.sort(key=lambda r: r.get("mark_age_s") or 0, reverse=True)
    return ordered


def position_table(rows: Sequence[Mapping[str, Any]], *, max_rows: int = 25, sort: SortKey = "pnl") -> Table:
    """Positions (``health['open_positions']`` rows): sorted, cut to ``max_rows``, summed up."""
    ordered = _sorted(rows, sort)
    shown = ordered[:max(0, max_rows)]
    total = sum((_dec(r.get("unrealized_pnl")) or Decimal(0) for r in rows), Decimal(0))
    stale = sum(1 for r in rows if (r.get("mark_age_s") or 0) > STALE_MARK_S)
    caption = f"{len(rows)} position(s), {SORT_LABEL[sort]}"
    if len(shown) < len(rows):
        caption = f"showing {len(shown)} of {len(rows)} positions ({SORT_LABEL[sort]}); {len(rows) - len(shown)} more"
    caption += f"; total uPnL {_num(total, 8)}"
    if stale:
        caption += f"; {stale} mark(s) older than {STALE_MARK_S:g}s"
    table = _table("positions", ("symbol", "left"), ("cat", "left"), ("idx", "right"), ("side", "left"),
                   ("size", "right"), ("entry", "right"), ("mark", "right"), ("uPnL", "right"),
                   ("mark age", "right"), ("src", "left"))
    table.caption = caption
    table.caption_justify = "left"
    for row in shown:
        pnl = _dec(row.get("unrealized_pnl"))
        pnl_style = "green" if pnl is not None and pnl > 0 else "red" if pnl is not None and pnl < 0 else ""
        age = row.get("mark_age_s")
        age_style = "yellow" if age is not None and age > STALE_MARK_S else ""
        table.add_row(str(row.get("symbol")), str(row.get("category")), str(row.get("position_idx", 0)),
                      str(row.get("side")), _num(_dec(row.get("size"))), _num(_dec(row.get("entry_price"))),
                      _num(_dec(row.get("mark_price"))), Text(_num(pnl, 8), style=pnl_style),
                      Text(_age(age), style=age_style), str(row.get("source", "")))
    return table


class PipeConsole(Console):
    """A rich console that lets a closed reader surface as :class:`BrokenPipeError`.

    rich's default :meth:`Console.on_broken_pipe` raises ``SystemExit(1)``, so ``--output
    table | head -1`` would end with exit 1; the CLI treats a reader that went away as done
    (exit 0) when it sees ``BrokenPipeError``, as with ``--output jsonl``."""

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more is written (e.g. by Live on exit)
        raise BrokenPipeError(errno.EPIPE, "the reader of the output went away")


class TableView:
    """Redraws the dashboard: in place on a terminal, a fresh copy per refresh otherwise.

    While it redraws in place, log records that would go to the same terminal (stderr on the
    terminal the table is on) are printed through its console instead, above the table: a
    line written straight to the terminal landed inside the table and the next redraw, which
    moves up over as many lines as the table had, erased it (or left a stale copy of the
    table's top behind). Redirected stderr (``2>log``) keeps its plain handler."""

    def __init__(self, console: Console | None = None):
        if console is None:
            console = PipeConsole()
            if not console.is_terminal:  # piped: no width to detect; do not truncate columns
                console = PipeConsole(width=160)
        self.console = console
        self._live: Live | None = None
        #: one drawing at a time: the table is drawn in a worker thread, logs come from any
        self._drawing = threading.RLock()
        self._moved: list[tuple[logging.Logger, logging.Handler, logging.Handler]] = []

    def __enter__(self) -> TableView:
        if self.console.is_terminal:
            from rich.live import Live

            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.__enter__()
            self._log_above()
        return self

    def __exit__(self, *exc: object) -> None:
        for logger, plain, above in reversed(self._moved):
            logger.removeHandler(above)
            logger.addHandler(plain)
        self._moved.clear()
        if self._live is not None:
            with self._drawing:
                self._live.__exit__(None, None, None)
            self._live = None

    def _log_above(self) -> None:
        """Swap the root logger's handlers that write to this terminal for one printing
        through the console (same level and format)."""
        root = logging.getLogger()
        for handler in list(root.handlers):
            if type(handler) is logging.StreamHandler and _same_terminal(handler.stream, self.console.file):
                above = _ConsoleLogHandler(self.console, self._drawing)
                above.setLevel(handler.level)
                above.setFormatter(handler.formatter)
                root.removeHandler(handler)
                root.addHandler(above)
                self._moved.append((root, handler, above))

    def show(self, renderable: RenderableType) -> None:
        if self._live is not None:
            with self._drawing:
                self._live.update(renderable, refresh=True)
        else:
            self.console.print(renderable)
            self.console.file.flush()


def _same_terminal(stream: Any, other: Any) -> bool:
    """Both streams write to one terminal (the same tty device)."""
    try:
        fd, other_fd = stream.fileno(), other.fileno()
        if not (os.isatty(fd) and os.isatty(other_fd)):
            return False
        mine, theirs = os.fstat(fd), os.fstat(other_fd)
    except (AttributeError, OSError, ValueError):  # no descriptor (a StringIO, a closed stream)
        return False
    return (mine.st_rdev, mine.st_dev, mine.st_ino) == (theirs.st_rdev, theirs.st_dev, theirs.st_ino)


class _ConsoleLogHandler(logging.Handler):
    """Prints each record, formatted as the handler it replaces did, through a rich console
    with a live display: rich puts it above the display and redraws the display below.
    One unwrapped line per record (the terminal wraps it), not rich's markup or highlighting."""

    def __init__(self, console: Console, drawing: threading.RLock):
        super().__init__()
        self._console = console
        self._drawing = drawing

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = Text(self.format(record))
            with self._drawing:
                self._console.print(line, soft_wrap=True, highlight=False, markup=False, emoji=False)
        except Exception:  # noqa: BLE001 - logging's contract: report, never raise
            self.handleError(record)


# --- the `dashboard` command ------------------------------------------------------------

async def run_dashboard(url: str, *, refresh: float = 1.0, max_rows: int = 25, sort: SortKey = "pnl",
                        once: bool = False, console: Console | None = None,
                        clock: Callable[[], float] = time.monotonic) -> None:
    """Poll ``url``/health and redraw until cancelled (``once``: print one frame and return;
    an unreachable stream is then an :class:`~hybrid_actors.http_endpoint.HttpFetchError`)."""
    health_url = url.rstrip("/") + "/health"
    rate = EventRate()
    with TableView(console) as view:
        while True:
            try:
                health = await fetch_json(health_url, timeout=max(2.0, refresh * 2))
            except HttpFetchError as exc:
                if once:
                    raise
                view.show(Text(f"{exc}; retrying every {refresh:g}s", style="bold red"))
            else:
                per_s = rate.update((health.get("events") or {}).get("emitted", 0), clock())
                view.show(render_dashboard(health, events_per_s=per_s, max_rows=max_rows, sort=sort,
                                           source=url))
                if once:
                    return
            await trio.sleep(refresh)


def default_rows(console: Console | None = None) -> int:
    """As many position rows as fit a terminal under the other sections (at least 10)."""
    console = console or Console(file=sys.stdout)
    if not console.is_terminal:
        return 50
    return max(10, console.size.height - 30)
