"""Live metrics: scrape Ray's Prometheus endpoint while a federation runs and check that every
panel of dashboards/*.json queries a metric that was really exported."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {
    "ray_fedsim_rounds_completed_total",
    "ray_fedsim_eval_metric",
    "ray_fedsim_simulated_time",
    "ray_fedsim_staleness_bucket",
    "ray_fedsim_aggregation_weight",
    "ray_fedsim_upload_bytes_total",
}


def _panel_metrics(dashboard: dict) -> set[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard.get("templating", {}).get("list", []) if "definition" in v]
    return {m for e in exprs for m in re.findall(r"\bray_fedsim_[a-zA-Z0-9_]+", e)}


def test_metrics_are_exported_and_dashboards_query_only_those():
    proc = subprocess.run(
        [sys.executable, "-m", "tests.metrics_probe", "8"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert EXPECTED <= seen, EXPECTED - seen
    dashboards = sorted((ROOT / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        queried = _panel_metrics(json.loads(path.read_text()))
        assert queried, path
        assert queried <= seen, f"{path.name} queries metrics never exported: {queried - seen}"
