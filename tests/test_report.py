"""The reproduction report is rebuilt from MLflow alone: a store written here by hand (as a sweep
writes it) must come back as the grid's table, with the paper's values, the gap flags, the
rerun command and the datasets we cannot run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Param

from fedsim.report import write_report

ROOT = Path(__file__).resolve().parents[1]


def _sweep(client, name, parent_tags, trials, grid_json=None):
    """A summary run and FINISHED child runs, as the Tune runner logs them."""
    found = client.get_experiment_by_name(name)
    exp = found.experiment_id if found is not None else client.create_experiment(name)
    parent = client.create_run(exp, run_name="summary", tags=parent_tags)
    if grid_json is not None:
        client.log_dict(parent.info.run_id, grid_json, "grid.json")
    for run_name, point_tag, metrics, *params in trials:
        tags = {"mlflow.parentRunId": parent.info.run_id}
        if point_tag is not None:
            tags["fedsim.grid_point"] = json.dumps(point_tag)
        child = client.create_run(exp, run_name=run_name, tags=tags)
        if params:
            client.log_batch(child.info.run_id, params=[Param(k, v) for k, v in params[0].items()])
        for k, v in metrics.items():
            client.log_metric(child.info.run_id, f"final_{k}", v)
        client.log_metric(child.info.run_id, "final_wall_time", 100.0)
        client.set_terminated(child.info.run_id, "FINISHED")
    return parent


MNIST_USPS_SWEEP = "make sweep DATASET=mnist_usps METHOD=afmcc GRID=table2"


def _populate(uri):
    """A store with three sweeps as the Tune runner logs them (see the assertions below)."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    # Table 2 on BDGP, 2 of its 15 trials (one named the old way, one tagged), still RUNNING; the
    # user passed an extra override, known only from grid.json.
    _sweep(
        client,
        "sweep/afmcc/bdgp/table2",
        {"fedsim.sweep": "table2"},
        [
            ("client_ratio=2:1-seed=0", None, {"acc": 0.70, "nmi": 0.50, "ari": 0.40}),
            ("whatever", {"client_ratio": "2:1", "seed": 1}, {"acc": 0.90, "nmi": 0.60, "ari": 0.50}),
            ("client_ratio=9:9-seed=0", None, {"acc": 0.1, "nmi": 0.1, "ari": 0.1}),  # not in the grid file
        ],
        grid_json={"grid": {}, "overrides": ["dataset=bdgp", "rounds=3"]},
    )
    # A finished CMMC Table 1 sweep within the paper's numbers except NMI.
    parent = _sweep(
        client,
        "sweep/cmmc/bdgp/table1",
        {"fedsim.command": "make sweep DATASET=bdgp METHOD=cmmc GRID=table1", "fedsim.machine": "test box"},
        [(f"seed={s}", {"seed": s}, {"acc": 0.99, "nmi": 0.95, "purity": 0.99}) for s in (0, 1, 2)],
    )
    client.set_terminated(parent.info.run_id, "FINISHED")
    # MNIST-USPS: Table 2's rows run separately (ONLY=...) fill one table; an older sweep with
    # other overrides (EXTRA) is a different setting and is left out.
    cmd = MNIST_USPS_SWEEP
    for command, (ratio, acc) in [
        (cmd + ' EXTRA="rounds=1"', ("1:1", 0.1)),
        (cmd + ' ONLY="client_ratio=1:1"', ("1:1", 0.96)),
        (cmd + ' ONLY="client_ratio=1:2"', ("1:2", 0.94)),
    ]:
        parent = _sweep(
            client,
            "sweep/afmcc/mnist_usps/table2",
            {"fedsim.command": command},
            [(f"client_ratio={ratio}-seed=0", None, {"acc": acc, "nmi": acc, "ari": acc})],
        )
        client.set_terminated(parent.info.run_id, "FINISHED")
        time.sleep(0.01)  # distinct start times: "latest" is well defined


def _reports_dir(path):
    (path / "findings").mkdir(parents=True)
    (path / "findings" / "cmmc_table1.md").write_text("Checked Eq. 9 against the code.")
    return path


def test_report_rebuilds_tables_from_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _populate(uri)
    out = _reports_dir(tmp_path / "reports")

    text = write_report(uri, out).read_text()

    t2 = text[text.index("### afmcc/table2") : text.index("### afmcc/table3b")]
    assert "**bdgp** (partial: 2 of 15 trials finished, summary run RUNNING)" in t2
    assert 'make sweep DATASET=bdgp METHOD=afmcc GRID=table2 EXTRA="rounds=3"' in t2
    assert "1 finished run(s) match no point" in t2
    # mean +- population std of 70 and 90 = 80 +- 10, paper 95.7 +- 0.4, 15.7 points short
    assert "| 2:1 | 2 | 80.0 ± 10.0 | 95.7 ± 0.4 | -15.7 ⚠ | 55.0 ± 5.0 | 87.2 ± 2.4 | -32.2 ⚠ |" in t2
    mu, cmd = t2[t2.index("**mnist_usps**") :], MNIST_USPS_SWEEP
    assert mu.startswith("**mnist_usps** (partial: 2 of 15 trials finished, summary run FINISHED)")
    assert f'`{cmd} ONLY="client_ratio=1:1"`, then `{cmd} ONLY="client_ratio=1:2"`' in mu
    assert "| 1:1 | 1 | 96.0 ± 0.0 |" in mu and "| 1:2 | 1 | 94.0 ± 0.0 |" in mu and "rounds=1" not in mu
    assert "`nuswide`: file not found here" in t2  # held by nobody here: listed as unavailable
    assert "no investigation of these gaps is recorded yet" in t2

    c1 = text[text.index("### cmmc/table1") : text.index("### cmmc/table3")]
    assert "**bdgp** (complete)" in c1 and "machine: test box" in c1
    assert "| 3 | 99.0 ± 0.0 | 98.9 | +0.1 | 95.0 ± 0.0 | 96.6 | -1.6 ⚠ |" in c1
    assert "Checked Eq. 9 against the code." in c1
    assert "`caltech5v`" in c1  # not held: listed, not dropped
    assert (out / "cmmc_bdgp_table1_vs_paper.png").stat().st_size > 1000
    assert "afmcc/smoke" not in text  # the test grid is not a paper table


def test_a_sweep_rerun_in_full_replaces_the_earlier_one(tmp_path):
    """A grid rerun at every point (say after its config changed) is the record: the report names
    only the summary run whose trials fill the table, with its own start and wall time."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    command = {"fedsim.command": "make sweep DATASET=bdgp METHOD=cmmc GRID=table1"}
    ids = []
    for acc in (0.50, 0.99):
        parent = _sweep(
            client,
            "sweep/cmmc/bdgp/table1",
            command,
            [(f"seed={s}", {"seed": s}, {"acc": acc, "nmi": acc, "purity": acc}) for s in (0, 1, 2)],
        )
        client.set_terminated(parent.info.run_id, "FINISHED")
        ids.append(parent.info.run_id)
        time.sleep(0.01)
    text = write_report(uri, _reports_dir(tmp_path / "reports")).read_text()
    c1 = text[text.index("### cmmc/table1") : text.index("### cmmc/table3")]
    assert "| 3 | 99.0 ± 0.0 |" in c1
    assert f"`{ids[1]}`" in c1 and ids[0] not in c1


def test_derived_rows_come_from_the_same_trials(tmp_path):
    """MSDIB Table 1's two selections are rows read off one trial per seed (selected_by_<c>/...):
    each row's mean is over the seeds of its own prefixed metrics."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    trials = [
        (
            f"seed={s}",
            {"seed": s},
            {
                "acc": a,
                "nmi": a,
                "selected_by_loss/acc": a,
                "selected_by_loss/nmi": a,
                "selected_by_acc/acc": b,
                "selected_by_acc/nmi": b / 2,
            },
        )
        for s, (a, b) in enumerate([(0.30, 0.50), (0.40, 0.70)])
    ]
    parent = _sweep(
        client, "sweep/msdib/cub/table1", {"fedsim.command": "make sweep DATASET=cub METHOD=msdib GRID=table1"}, trials
    )
    client.set_terminated(parent.info.run_id, "FINISHED")
    text = write_report(uri, _reports_dir(tmp_path / "reports")).read_text()
    m1 = text[text.index("### msdib/table1") :]
    m1 = m1[m1.index("**cub**") :]
    assert m1.startswith("**cub** (partial: 2 of 3 trials finished")
    assert "| label_free | 2 | 35.0 ± 5.0 | 35.0 ± 5.0 |" in m1
    assert "| paper_acc_uses_labels | 2 | 60.0 ± 10.0 | 30.0 ± 5.0 |" in m1


def _body(text):
    return text[text.index("## AFMCC") :]


def test_archive_carries_the_report_to_a_machine_without_the_store(tmp_path):
    """make report exports the store's sweeps to reports/runs; a clone without the store rebuilds
    the same tables from the archive alone, and re-exporting or re-importing changes nothing."""
    from fedsim.sweeps.archive import export_sweeps, import_archive, read_archive
    from fedsim.report import build_report

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _populate(uri)
    direct = write_report(uri, _reports_dir(tmp_path / "direct")).read_text()
    archive = tmp_path / "runs"

    path, exported, archived = build_report(uri, _reports_dir(tmp_path / "first"), archive_dir=archive)
    assert exported == archived == 14  # 5 summary runs + 9 FINISHED trials
    assert sorted(p.name for p in archive.iterdir()) == [
        "afmcc__bdgp__table2.jsonl",
        "afmcc__mnist_usps__table2.jsonl",
        "cmmc__bdgp__table1.jsonl",
    ]
    assert _body(path.read_text()) == _body(direct)  # the EXTRA from grid.json and the run ids survive
    assert "from the sweep archive" in path.read_text()

    # A fresh clone: no store, only the committed archive.
    alone, exported, archived = build_report(None, _reports_dir(tmp_path / "clone"), archive_dir=archive)
    assert exported == 0 and archived == 14
    assert _body(alone.read_text()) == _body(direct)

    # Importing twice adds nothing; exporting the imported store gives the same archive back.
    before = {p.name: p.read_text() for p in archive.iterdir()}
    copy_uri = f"sqlite:///{tmp_path}/copy.db"
    assert import_archive(read_archive(archive), copy_uri) == 14
    assert import_archive(read_archive(archive), copy_uri) == 0
    export_sweeps(copy_uri, archive)
    assert {p.name: p.read_text() for p in archive.iterdir()} == before
    record = next(r for r in read_archive(archive / "cmmc__bdgp__table1.jsonl") if r["run_name"] == "seed=0")
    assert record["metrics"]["final_acc"][0][2] == 0.99 and record["status"] == "FINISHED"


def test_a_damaged_archive_is_one_clear_line(tmp_path):
    runs = tmp_path / "reports" / "runs"
    runs.mkdir(parents=True)
    (runs / "afmcc__bdgp__table2.jsonl").write_text('{"run_id": "x"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "report", "--out", str(tmp_path / "reports")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("fedsim: error: ") and "afmcc__bdgp__table2.jsonl:1" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "reports" / "REPRODUCTION.md").exists()


def test_ablation_ordering_against_the_paper():
    import pandas as pd

    from fedsim.sweeps.results import ablation_ordering
    from fedsim.sweeps.grid import load_grid

    table = pd.DataFrame({"ablation": ["full", "no_A", "no_B", "no_C"], "acc_mean": [75.0, 55.0, 70.0, 74.0]})
    text = ablation_ordering(load_grid("afmcc", "table3b"), "bdgp", table)
    assert text == (
        "ACC ordering of the ablation variants, ours: full > no_C > no_B > no_A; "
        "paper: full > no_B > no_C > no_A (different)."
    )
    gib = ablation_ordering(
        load_grid("gib", "table2"), "cub", table.assign(ablation=["full", "ddc_only", "ddc_balls", "ddc_samples"])
    )
    assert "ours: full > ddc_samples > ddc_balls > ddc_only; the paper's, on its own datasets: caltech_2v: " in gib
    assert ablation_ordering(load_grid("afmcc", "table2"), "bdgp", table) is None  # not an ablation grid
    assert ablation_ordering(load_grid("afmcc", "table3b"), "bdgp", table.head(1)) is None  # one variant run


def test_a_borrowed_row_needs_the_same_resolved_config(tmp_path):
    """CMMC Table 3's row (4) is Table 1's trial (the grid's ``borrow``): where Table 3 has not run
    it, the report takes Table 1's run of the same seed, but only a run whose logged params equal
    the resolved config. Ray placement does not count; a key the run predates counts only at its
    default; any other difference keeps the run out, and the report says which key."""
    from fedsim.config import build_config
    from fedsim.sweeps.grid import load_grid
    from fedsim.sweeps.tune_runner import sweep_base
    from fedsim.tracking import config_params

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    base, overrides = sweep_base(load_grid("cmmc", "table1"), "bdgp")
    logged = [config_params(build_config(base, overrides + [f"seed={s}"])) for s in (0, 1, 2)]
    logged[0]["runtime.num_cpus"] = "0.64"  # placed differently: still the same computation
    del logged[1]["cmmc.ablated_stages"]  # run before the switch existed; its default is "idle"
    logged[2]["cmmc.lr"] = "0.001"  # another config: never borrowed
    t1 = _sweep(
        client,
        "sweep/cmmc/bdgp/table1",
        {"fedsim.command": "make sweep DATASET=bdgp METHOD=cmmc GRID=table1"},
        [
            (f"seed={s}", {"seed": s}, {"acc": a, "nmi": a, "purity": a}, logged[s])
            for s, a in enumerate([0.98, 0.99, 0.10])
        ],
    )
    client.set_terminated(t1.info.run_id, "FINISHED")
    t3 = _sweep(
        client,
        "sweep/cmmc/bdgp/table3",
        {"fedsim.command": "make sweep DATASET=bdgp METHOD=cmmc GRID=table3"},
        [
            (f"ablation={a}-seed={s}", {"ablation": a, "seed": s}, {"acc": 0.5, "nmi": 0.5, "purity": 0.5})
            for a in ("lc", "lc_fc", "lc_fc_r")
            for s in (0, 1, 2)
        ],
    )
    client.set_terminated(t3.info.run_id, "FINISHED")

    text = write_report(uri, _reports_dir(tmp_path / "reports")).read_text()
    c3 = text[text.index("### cmmc/table3:") : text.index("### cmmc/table3_contrastive")]
    assert "**bdgp** (partial: 11 of 12 trials finished" in c3
    assert "| full | 2 | 98.5 ± 0.5 | 98.9 | -0.4 ⚠ |" in c3  # seeds 0 and 1 only
    assert "| lc | 3 | 50.0 ± 0.0 |" in c3
    assert re.search(
        r"ablation=full seed=0 \(run `\w+`, code [^)]+\): taken from cmmc/table1; ablation=full seed=1 "
        r"\(run `\w+`, code [^)]+\): taken from cmmc/table1; the run\(s\) predate cmmc.ablated_stages, "
        r"at the default here",
        c3,
    ), c3
    assert (
        "ablation=full seed=2: not taken from cmmc/table1, whose run differs on cmmc.lr: 0.0003 here, 0.001 there" in c3
    )


def test_only_runs_part_of_a_grid_with_its_own_state():
    from fedsim.errors import ConfigError
    from fedsim.sweeps.grid import load_grid, restrict_grid
    from fedsim.sweeps.tune_runner import plan_sweep

    spec = restrict_grid(load_grid("afmcc", "table2"), ["client_ratio=1:1,1:2", "seed=0"])
    assert spec.trials == [{"client_ratio": "1:1", "seed": 0}, {"client_ratio": "1:2", "seed": 0}]
    with pytest.raises(ConfigError, match="axis 'client_ratio' of grid 'table2' has values"):
        restrict_grid(load_grid("afmcc", "table2"), ["client_ratio=3:1"])
    with pytest.raises(ConfigError, match="expected axis=value"):
        restrict_grid(load_grid("afmcc", "table2"), ["ratio=1:1"])
    plan = plan_sweep("afmcc", "synthetic-bdgp", "table2", [], trial_cpus=2, only=["client_ratio=1:1"])
    assert len(plan.spec.trials) == 5 and plan.storage.name == "afmcc_synthetic-bdgp_table2__client_ratio-1-1"
    assert plan.command.endswith('GRID=table2 ONLY="client_ratio=1:1"')


def test_report_without_a_store_is_one_clear_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            "report",
            "--tracking-uri",
            f"sqlite:///{tmp_path}/none.db",
            "--out",
            str(tmp_path / "r"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("fedsim: error: no MLflow store at") and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_the_report_is_an_mlflow_run_with_its_tables_and_plots(tmp_path):
    """A grid run in partial sweeps has its combined table only in the report: make report logs
    REPRODUCTION.md, the plots and every section's table (CSV) as one MLflow run."""
    import mlflow
    import pandas as pd

    from fedsim.report import REPORT_EXPERIMENT, build_report

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _populate(uri)
    log_uri = f"sqlite:///{tmp_path}/log.db"
    out = _reports_dir(tmp_path / "reports")
    path, _, _ = build_report(uri, out, archive_dir=tmp_path / "runs", log_to=log_uri)
    client = mlflow.MlflowClient(tracking_uri=log_uri)
    runs = client.search_runs([client.get_experiment_by_name(REPORT_EXPERIMENT).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"REPRODUCTION.md", "plots", "tables"} <= names
    tables = {a.path for a in client.list_artifacts(run_id, "tables")}
    assert "tables/afmcc_bdgp_table2.csv" in tables
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="tables/afmcc_bdgp_table2.csv", tracking_uri=log_uri, dst_path=str(tmp_path / "dl")
    )
    table = pd.read_csv(local)
    assert set(table["client_ratio"]) <= {"2:1", "1:1", "1:2"} and "acc_mean" in table.columns
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {f"plots/{p.name}" for p in out.glob("*.png")} and plots
    # the report's own experiment is never exported into the sweep archive
    assert not any("report" in p.name for p in (tmp_path / "runs").iterdir())
