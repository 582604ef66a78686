"""The reproduction report is rebuilt from MLflow alone: a store written here by hand (as a sweep
writes it) must come back as the grid's table, with the paper's values, the gap flags, the
rerun command and the datasets we cannot run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from fedsim.report import write_report

ROOT = Path(__file__).resolve().parents[1]


def _sweep(client, name, parent_tags, trials, grid_json=None):
    """A summary run and FINISHED child runs, as fedsim.sweep logs them."""
    exp = client.create_experiment(name)
    parent = client.create_run(exp, run_name="summary", tags=parent_tags)
    if grid_json is not None:
        client.log_dict(parent.info.run_id, grid_json, "grid.json")
    for run_name, point_tag, metrics in trials:
        tags = {"mlflow.parentRunId": parent.info.run_id}
        if point_tag is not None:
            tags["fedsim.grid_point"] = json.dumps(point_tag)
        child = client.create_run(exp, run_name=run_name, tags=tags)
        for k, v in metrics.items():
            client.log_metric(child.info.run_id, f"final_{k}", v)
        client.log_metric(child.info.run_id, "final_wall_time", 100.0)
        client.set_terminated(child.info.run_id, "FINISHED")
    return parent


@pytest.mark.timeout(120)
def test_report_rebuilds_tables_from_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    # Table 2 on BDGP, 2 of its 15 trials (one named the old way, one tagged), still RUNNING; the
    # user passed an extra override, known only from grid.json.
    _sweep(client, "sweep/afmcc/bdgp/table2", {"fedsim.sweep": "table2"}, [
        ("client_ratio=2:1-seed=0", None, {"acc": 0.70, "nmi": 0.50, "ari": 0.40}),
        ("whatever", {"client_ratio": "2:1", "seed": 1}, {"acc": 0.90, "nmi": 0.60, "ari": 0.50}),
        ("client_ratio=9:9-seed=0", None, {"acc": 0.1, "nmi": 0.1, "ari": 0.1}),  # not in the grid file
    ], grid_json={"grid": {}, "overrides": ["dataset=bdgp", "rounds=3"]})
    # A finished CMMC Table 1 sweep within the paper's numbers except NMI.
    parent = _sweep(client, "sweep/cmmc/bdgp/table1",
                    {"fedsim.command": "make sweep DATASET=bdgp METHOD=cmmc GRID=table1", "fedsim.machine": "test box"},
                    [(f"seed={s}", {"seed": s}, {"acc": 0.99, "nmi": 0.95, "purity": 0.99}) for s in (0, 1, 2)])
    client.set_terminated(parent.info.run_id, "FINISHED")
    out = tmp_path / "reports"
    (out / "findings").mkdir(parents=True)
    (out / "findings" / "cmmc_table1.md").write_text("Checked Eq. 9 against the code.")

    text = write_report(uri, out).read_text()

    t2 = text[text.index("### afmcc/table2"):text.index("### afmcc/table3b")]
    assert "**bdgp** (partial: 2 of 15 trials finished, summary run RUNNING)" in t2
    assert 'make sweep DATASET=bdgp METHOD=afmcc GRID=table2 EXTRA="rounds=3"' in t2
    assert "1 finished run(s) match no point" in t2
    # mean +- population std of 70 and 90 = 80 +- 10, paper 95.7 +- 0.4, 15.7 points short
    assert "| 2:1 | 2 | 80.0 ± 10.0 | 95.7 ± 0.4 | -15.7 ⚠ | 55.0 ± 5.0 | 87.2 ± 2.4 | -32.2 ⚠ |" in t2
    assert "**mnist_usps**" in t2  # a paper dataset without runs is listed, runnable or not
    assert "`nuswide`: file not found here" in t2  # held by nobody here: listed as unavailable
    assert "no investigation of these gaps is recorded yet" in t2

    c1 = text[text.index("### cmmc/table1"):text.index("### cmmc/table3")]
    assert "**bdgp** (complete)" in c1 and "machine: test box" in c1
    assert "| 3 | 99.0 ± 0.0 | 98.9 | +0.1 | 95.0 ± 0.0 | 96.6 | -1.6 ⚠ |" in c1
    assert "Checked Eq. 9 against the code." in c1
    assert "`caltech5v`" in c1  # not held: listed, not dropped
    assert (out / "cmmc_bdgp_table1_vs_paper.png").stat().st_size > 1000
    assert "afmcc/smoke" not in text  # the test grid is not a paper table


def test_report_without_a_store_is_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedsim", "report", "--tracking-uri", f"sqlite:///{tmp_path}/none.db",
                           "--out", str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("fedsim: error: no MLflow store at") and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()
