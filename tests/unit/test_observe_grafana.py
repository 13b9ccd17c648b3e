"""docs/grafana/hybrid_actors.json: importable JSON whose every query names metrics we export,
and which shows every family we export."""

from __future__ import annotations

import json
import pathlib
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hybrid_actors.latency import LatencyHistogram
from hybrid_actors.metrics import FAMILIES, StreamSample, make_registry, render

pytestmark = pytest.mark.unit

DASHBOARD = pathlib.Path(__file__).resolve().parents[2] / "docs" / "grafana" / "hybrid_actors.json"
METRIC = re.compile(r"\b((?:hybrid|process)_[a-z_]+)\b")


def exported_sample_names() -> set[str]:
    """Every sample name a scrape can show (counters with _total, histograms' _bucket/_sum/_count,
    the process collector's), read from a real exposition of a populated sample."""
    hist = LatencyHistogram()
    hist.observe(0.01, now=0.0)
    health = {"connections": {"private": {"connected": True, "connects": 2, "rtt_ms": 5.0}},
              "events": {"by_event": {"position.update": {"ticker": 3}}, "last_event_ms": 1_700_000_000_000},
              "subscriptions": {"linear": {"confirmed": 1}},
              "open_positions": [{"category": "linear"}],
              "rollout": {"mode": "parallel", "divergence_max_ratio": "0.02", "divergences": 1, "rollbacks": 0},
              "alerts": [{"name": "latency_high"}]}
    sample = StreamSample(health, hist.exported(), hist.exported(), ("latency_high",))
    text = render(make_registry(lambda: sample)).decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", ()))
    return out


def test_the_dashboard_is_importable_json_with_unique_panels_on_a_grid():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert all(t["expr"] and t["refId"] for t in panel["targets"])
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job"} <= variables


def test_every_query_names_only_metrics_we_export_and_every_family_is_shown():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_sample_names()
    used: set[str] = set()
    for panel in panels(dashboard):
        for target in panel.get("targets", ()):
            names = set(METRIC.findall(target["expr"]))
            assert names, (panel["title"], target["expr"])
            assert names <= exported, (panel["title"], sorted(names - exported))
            used |= names
    for family, kind in FAMILIES:
        shown = {family + "_total"} if kind == "counter" else \
            {family + "_bucket"} if kind == "histogram" else {family}
        assert shown & used, f"no panel shows {family}"
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total"} <= used


def test_rollout_figures_in_any_json_form_become_numbers():
    hist = LatencyHistogram()
    for ratio in ("0.0215", 0.0215):
        sample = StreamSample({"rollout": {"divergence_max_ratio": ratio, "divergences": 3, "rollbacks": "2"}},
                              hist.exported(), hist.exported())
        fams = {f.name: f for f in text_string_to_metric_families(render(make_registry(lambda: sample,
                                                                                        process=False)).decode())}
        assert fams["hybrid_divergence_max_ratio"].samples[0].value == 0.0215
        assert fams["hybrid_divergences"].samples[0].value == 3 and fams["hybrid_rollbacks"].samples[0].value == 2
        assert "process_resident_memory_bytes" not in fams
