"""The dashboard renders a known health report: every section's rows, and 200 positions
sorted and cut to fit (rich console capture)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from rich.console import Console

from hybrid_actors.dashboard import EventRate, render_dashboard, sparkline

pytestmark = pytest.mark.unit


def position(symbol: str, pnl: str, *, age: float = 0.2, category: str = "linear", side: str = "Buy",
             mark: str = "100.5") -> dict[str, Any]:
    return {"symbol": symbol, "category": category, "position_idx": 0, "side": side, "size": "2",
            "entry_price": "100", "mark_price": mark, "unrealized_pnl": pnl, "mark_age_s": age, "source": "ticker"}


def known_state(positions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rows = positions if positions is not None else [
        position("BTCUSDT", "512.5", mark="61025"), position("ETHUSDT", "-42.125", side="Sell", age=7.5),
        position("BTCUSD", "0.00012", category="inverse")]
    return {
        "status": "degraded", "positions": len(rows), "problems": ["public:inverse is disconnected"],
        "stream_state": {"state": "degraded", "reason": "public:inverse disconnected"},
        "connections": {
            "private": {"connected": True, "connects": 1, "rtt_ms": 12.25, "last_frame_age_s": 1.5, "frames": 40,
                        "down_s": None},
            "public:linear": {"connected": True, "connects": 3, "rtt_ms": 8.0, "last_frame_age_s": 0.1,
                              "frames": 123456, "down_s": None},
            "public:inverse": {"connected": False, "connects": 1, "rtt_ms": None, "last_frame_age_s": 45.0,
                               "frames": 99, "down_s": 45.0}},
        "subscriptions": {"linear": {"desired": 2, "confirmed": 2, "pending": 0, "failed": {}},
                          "inverse": {"desired": 1, "confirmed": 0, "pending": 1, "failed": {"XYZUSD": "handler not found"}}},
        "events": {"emitted": 98765},
        "latency": {"window_s": 60.0,
                    "exchange_to_event_ms": {"count": 500, "p50": 41.5, "p95": 87.25, "p99": 140.0},
                    "frame_to_event_ms": {"count": 500, "p50": 0.4, "p95": 1.9, "p99": 3.5},
                    "history": {"slot_s": 5.0, "exchange_to_event_p99_ms": [None, 100.0, 140.0, 70.0],
                                "frame_to_event_p99_ms": [None, 1.0, 3.5, 2.0]}},
        "alerts": [{"name": "disconnected:public:inverse", "level": "warning", "message":
                    "public:inverse disconnected for 45s", "value": 45.0, "threshold": 30.0, "firing_for_s": 15.0}],
        "rollout": {"mode": "parallel", "active": "rest", "cutover_percent": 100, "comparisons": 1200,
                    "divergences": 3, "divergence_max_ratio": "0.0215", "rollbacks": 0, "last_rollback_reason": None},
        "open_positions": rows,
    }


def capture(health: dict[str, Any], **options: Any) -> list[str]:
    console = Console(record=True, width=200, color_system=None)
    console.print(render_dashboard(health, **options))
    return console.export_text().splitlines()


def line_with(lines: list[str], *needles: str) -> str:
    found = [line for line in lines if all(n in line for n in needles)]
    assert found, f"no line with {needles}:\n" + "\n".join(lines)
    return found[0]


def test_a_known_state_shows_every_section_with_its_rows():
    lines = capture(known_state(), events_per_s=1234.5)
    header = lines[0]
    for text in ("DEGRADED", "state degraded", "mode parallel (consumer on rest)", "events/s 1,234.5",
                 "events 98,765", "positions 3", "alerts 1"):
        assert text in header, (text, header)
    assert "public:inverse disconnected for 45s" in line_with(lines, "warning", "disconnected:public:inverse", "15.0s")
    assert line_with(lines, "private", "up", "12.2", "1.5s").split()[-2:] == ["0", "40"]
    assert line_with(lines, "public:linear", "up").split()[-2:] == ["2", "123,456"]  # reconnects = connects - 1
    line_with(lines, "public:inverse", "down 45.0s")
    [linear] = [line.split() for line in lines if line.split()[:1] == ["linear"]]
    assert linear == ["linear", "2", "2", "2", "0", "-"]
    [inverse] = [line.split() for line in lines if line.split()[:1] == ["inverse"]]
    assert inverse == ["inverse", "1", "1", "0", "1", "XYZUSD"]
    exchange = line_with(lines, "exchange → event")
    assert exchange.split()[3:7] == ["41.5", "87.2", "140.0", "500"] and "▆█▅" in exchange
    assert line_with(lines, "frame → event").split()[3:6] == ["0.4", "1.9", "3.5"]
    assert line_with(lines, "parallel", "rest", "100%", "1200").split()[4:6] == ["3", "2.150%"]
    btc = line_with(lines, "BTCUSDT")
    assert btc.split() == ["BTCUSDT", "linear", "0", "Buy", "2", "100", "61025", "512.5", "0.2s", "ticker"]
    assert line_with(lines, "ETHUSDT").split()[7:9] == ["-42.125", "7.5s"]
    assert line_with(lines, "BTCUSD ").split()[1] == "inverse"
    assert "3 position(s), largest |uPnL| first; total uPnL 470.37512; 1 mark(s) older than 3s" in \
        line_with(lines, "position(s)")
    assert "public:inverse is disconnected" in line_with(lines, "problems:")


def test_200_positions_are_sorted_and_cut_to_fit():
    rows = [position(f"S{i:03d}USDT", str(Decimal(i) * (-1 if i % 2 else 1)), age=float(i) / 10) for i in range(200)]
    lines = capture(known_state(rows), max_rows=20)
    shown = [line.split()[0] for line in lines if line.strip().startswith("S") and "USDT" in line.split()[0]]
    assert shown == [f"S{i:03d}USDT" for i in range(199, 179, -1)]  # |uPnL| 199, 198, ... 180
    text = " ".join(" ".join(line.split()) for line in lines)  # the caption may wrap
    assert "showing 20 of 200 positions (largest |uPnL| first); 180 more; total uPnL -100; 169 mark(s) older " \
           "than 3s" in text
    assert len(lines) < 80  # readable: the table did not grow to 200 rows

    by_age = capture(known_state(rows), max_rows=5, sort="age")
    assert [line.split()[0] for line in by_age if line.strip().startswith("S") and "USDT" in line][:5] == \
        ["S199USDT", "S198USDT", "S197USDT", "S196USDT", "S195USDT"]
    assert "stalest mark first" in line_with(by_age, "showing 5 of 200")
    by_symbol = capture(known_state(rows), max_rows=3, sort="symbol")
    assert [line.split()[0] for line in by_symbol if line.strip().startswith("S") and "USDT" in line][:3] == \
        ["S000USDT", "S001USDT", "S002USDT"]


def test_an_empty_stream_renders_without_sections_it_does_not_have():
    lines = capture({"status": "ok", "positions": 0, "connections": {}, "subscriptions": {}, "events": {},
                     "open_positions": []})
    assert "OK" in lines[0] and "mode production" in lines[0] and "events/s -" in lines[0]
    assert not any("firing alerts" in line or "rollout" in line for line in lines)
    assert "0 position(s)" in line_with(lines, "position(s)")


def test_sparkline_scales_to_the_largest_and_leaves_gaps():
    assert sparkline([None, 0, 50, 100]) == " ▁▅█"
    assert sparkline([0, 0]) == "▁▁" and sparkline([None]) == " " and sparkline([]) == ""
    assert sparkline([1000, 0, 50, 100, 25], width=4) == "▁▅█▃"  # scaled to what is shown


def test_event_rate_is_per_second_between_two_looks():
    rate = EventRate()
    assert rate.update(100, now=10.0) is None
    assert rate.update(350, now=12.0) == 125.0
    assert rate.update(350, now=13.0) == 0.0


def test_a_closed_reader_is_a_broken_pipe_not_rich_s_exit_1(monkeypatch):
    """rich's Console turns EPIPE into SystemExit(1); the CLI's exit 0 for a reader that went
    away (``--output table | head -1``) needs the BrokenPipeError itself."""
    import os

    from rich.text import Text

    from hybrid_actors.dashboard import TableView

    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as closed:
        monkeypatch.setattr("sys.stdout", closed)
        view = TableView()
        with pytest.raises(BrokenPipeError):
            view.show(Text("x" * 100_000))
        view.show(Text("more"))  # quiet from then on: nothing more to write
        monkeypatch.undo()
        try:
            closed.close()
        except BrokenPipeError:
            pass
