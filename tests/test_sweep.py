"""Sweeps on Ray Tune: a 4-trial grid on synthetic data, its driver killed mid-sweep, resumed;
checked through MLflow's API: 4 trial runs (none rerun) and a finished summary run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsim.errors import ConfigError
from fedsim.config import build_config
from fedsim.sweeps.grid import load_grid
from fedsim.sweeps.tune_runner import out_of_memory_error, plan_sweep, sweep_base

ROOT = Path(__file__).resolve().parents[1]


def test_every_grid_file_builds_its_trials():
    for path in sorted((ROOT / "tune" / "grids").glob("*/*.yaml")):
        spec = load_grid(path.parent.name, path.stem)
        assert spec.trials and spec.reproduces
        plan = plan_sweep(spec.method, "synthetic-bdgp", spec.name, [], trial_cpus=2)
        assert plan.actors_per_trial >= 1
        for axis, sources in spec.borrow.items():  # a borrowed point names a grid whose axes it has
            assert set(sources) <= {str(v) for v in spec.grid[axis]}, (path, axis)
            for grid in sources.values():
                assert set(load_grid(spec.method, grid).grid) <= set(spec.grid) - {axis}, (path, grid)


def test_every_grids_per_dataset_overrides_build_a_valid_config():
    """A grid's ``datasets:`` entry (e.g. afmcc/transfer's scene15 MinMax) is only read when that
    dataset is swept: a misspelt key or value must fail here, not hours into a sweep."""
    checked = 0
    for path in sorted((ROOT / "tune" / "grids").glob("*/*.yaml")):
        spec = load_grid(path.parent.name, path.stem)
        for dataset in spec.datasets:
            base, overrides = sweep_base(spec, dataset)
            cfg = build_config(base, [*overrides, *spec.trial_overrides(spec.trials[0])])
            assert cfg.dataset == dataset, (path, dataset)
            checked += 1
    transfer = load_grid("afmcc", "transfer")
    cfg = build_config(*sweep_base(transfer, "scene15"))
    assert cfg.preprocessing == "minmax"
    assert build_config(*sweep_base(transfer, "cub")).preprocessing is None  # the registry's own
    assert checked >= 3


def test_a_sweep_ended_by_rays_memory_monitor_is_one_clear_error():
    """Tune re-raises a trial actor killed for memory as a RuntimeError caused by Ray's
    OutOfMemoryError (seen 2026-12-07, three sweeps side by side on 23.5 GiB): that must become one
    line that names the fix, not a traceback; other failures keep theirs."""
    from ray.exceptions import OutOfMemoryError

    killed = OutOfMemoryError(
        "3 worker(s) were killed due to the node running low on memory.\n"
        "Memory on the node (IP: 127.0.0.1) was 22.32GB used / 23.59GB limit (0.946157)\n- objects errored: 0"
    )
    try:
        try:
            raise killed
        except OutOfMemoryError as inner:
            raise RuntimeError(f"Caught unexpected exception: {inner}") from inner
    except RuntimeError as outer:
        error = out_of_memory_error(outer)
    assert error is not None
    message = str(error)
    assert "\n" not in message and "22.32GB used / 23.59GB limit" in message
    assert "--max-concurrent 1" in message and "finished trials are kept" in message
    assert out_of_memory_error(RuntimeError("a trial raised ValueError")) is None


def test_default_trial_cpus_follow_the_client_count(monkeypatch):
    """Without --trial-cpus a trial reserves one torch thread's CPU per client, capped at the
    machine: centralised trials on a 2-core machine run two at a time, a 12-client one alone."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert plan_sweep("cmmc", "synthetic-bdgp", "table1", []).trial_cpus == 1.0
    assert plan_sweep("afmcc", "synthetic-bdgp", "table2", []).trial_cpus == 2.0
    assert plan_sweep("cmmc", "synthetic-bdgp", "table1", ["runtime.torch_threads=2"]).trial_cpus == 2.0
    assert plan_sweep("cmmc", "synthetic-bdgp", "table1", [], trial_cpus=0.5).trial_cpus == 0.5


def test_table2_has_15_trials_and_paper_values():
    spec = load_grid("afmcc", "table2")
    assert len(spec.trials) == 15
    assert spec.paper["bdgp"]["1:1"]["acc"] == [93.9, 0.2]


def test_unknown_grid_and_missing_dataset_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no grid 'table9'"):
        load_grid("afmcc", "table9")
    monkeypatch.setenv("FEDSIM_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="nuswide.*X1..X5|nuswide"):
        plan_sweep("afmcc", "nuswide", "table2", [f"data_dir={tmp_path}"], trial_cpus=2)


def _kill_session(sid: int) -> None:
    """SIGKILL every process of the sweep driver's session (the driver, its raylet, workers).
    Never `ray stop`: that would kill every Ray on the machine, other runs' included."""
    import psutil

    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                proc.kill()
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _sweep_cmd(storage):
    return [
        sys.executable,
        "-m",
        "fedsim",
        "sweep",
        "--dataset",
        "synthetic",
        "--grid",
        "smoke",
        "--storage",
        str(storage),
        "--trial-cpus",
        "1",
    ]  # two trials at a time on 2 CPUs


def _child_runs(uri):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("sweep/afmcc/synthetic/smoke")
    if exp is None:
        return [], None
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return children, (parents[0] if parents else None)


@pytest.mark.timeout(1500)  # its own deadlines: 400 s for a first trial, 500 s for the resumed sweep
def test_sweep_runs_tracks_and_resumes_after_driver_kill(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    storage = tmp_path / "sweeps"
    import mlflow

    mlflow.MlflowClient(tracking_uri=uri).search_experiments()  # create the store's schema once, up front
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        _sweep_cmd(storage), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.time() + 400
    finished_before: list = []
    while time.time() < deadline and first.poll() is None:  # a sweep that died fails at once
        children, _ = _child_runs(uri)
        finished_before = [r for r in children if r.info.status == "FINISHED"]
        if finished_before:
            break
        time.sleep(2)
    if not finished_before:  # the last look, in case it ended between two
        finished_before = [r for r in _child_runs(uri)[0] if r.info.status == "FINISHED"]
    assert finished_before, "no trial finished before the deadline:\n" + (tmp_path / "first.log").read_text()[-4000:]
    _kill_session(first.pid)  # kill the driver and the local Ray it started, nothing else
    first.wait(timeout=60)

    second = subprocess.run(_sweep_cmd(storage), cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "(resumed)" in second.stdout

    children, parent = _child_runs(uri)
    finished = [r for r in children if r.info.status == "FINISHED"]
    params = sorted((r.data.params["client_ratio"], r.data.params["seed"]) for r in finished)
    assert params == sorted([("2:1", "0"), ("2:1", "1"), ("1:1", "0"), ("1:1", "1")])  # 4 trials, none twice
    assert {r.info.run_id for r in finished_before} <= {r.info.run_id for r in finished}  # not rerun
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)  # nothing left RUNNING
    assert parent is not None and parent.info.status == "FINISHED"
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.md", "summary.parquet", "trials.parquet"} <= artifacts
    table = Path(client.download_artifacts(parent.info.run_id, "summary.md", str(tmp_path))).read_text()
    assert "| 2:1 | 2 |" in table and "| 1:1 | 2 |" in table
    assert json.loads(json.dumps(parent.data.metrics))  # the per-cell means are logged as metrics
    # What the reproduction report reads back: the grid point, the rerun command, the machine.
    assert parent.data.tags["fedsim.command"] == "make sweep DATASET=synthetic METHOD=afmcc GRID=smoke"
    assert "CPUs" in parent.data.tags["fedsim.machine"]
    from fedsim.sweeps.records import read_sweep

    record = read_sweep(
        client, client.get_experiment_by_name("sweep/afmcc/synthetic/smoke"), load_grid("afmcc", "smoke"), "synthetic"
    )
    assert record.status == "FINISHED" and record.unmatched == 0
    assert sorted(zip(record.frame["client_ratio"], record.frame["seed"])) == sorted(
        [("2:1", 0), ("2:1", 1), ("1:1", 0), ("1:1", 1)]
    )
    by_run = {r.info.run_id: r.data.metrics["final_acc"] for r in finished}
    assert all(by_run[rid] == acc for rid, acc in zip(record.frame["mlflow_run_id"], record.frame["acc"]))


def test_trials_with_fewer_clients_fit_the_placement_bundles():
    """A grid mixing 12-client and 1-client trials (the federated grids' centralised row): the
    placement group has a bundle per actor of the largest trial; the 1-client trial's actor asks
    for one bundle's share, and the clients_per_actor grouping gives each actor one bundle."""
    from fedsim.runtime.cluster import plan_placement
    from fedsim.sweeps.tune_runner import trial_actor_resources

    plan = plan_sweep("msdib", "synthetic-bdgp", "federated", [], trial_cpus=2)
    assert plan.actors_per_trial == 2 and plan.clients_per_actor == 6
    bundle = (2 - 0.02) / plan.actors_per_trial
    ctx = {"actor_cpus": 2 - 0.02, "actor_gpus": 0.0, "actors_per_trial": 2, "clients_per_actor": 6}
    from fedsim.config import build_config

    for overrides in ([], ["num_clients=1", "client_ratio=1:0"]):
        cfg = build_config(plan.base, plan.overrides + overrides)
        cpus, _ = trial_actor_resources(ctx, cfg.num_clients)
        placed = plan_placement(
            build_config(
                plan.base, plan.overrides + overrides + [f"runtime.num_cpus={cpus}", "runtime.clients_per_actor=6"]
            ),
            1000,
            1000,
        )
        assert len(placed.groups) <= plan.actors_per_trial and placed.num_cpus <= bundle + 1e-9


def test_trial_reports_carry_method_extra_metrics():
    """A grid may tabulate a method's extra metrics (FedRecon's coherence); they must reach the
    trial's report, or summarise_grid() fails on the missing column."""
    from fedsim.sweeps.tune_runner import _final_report

    summary = {
        "accuracy": 0.9,
        "uar": 0.8,
        "coherence": 0.7,
        "coherence_real": 0.95,
        "cross_mse": 0.04,
        "simulated_time": 1.0,
        "wall_time": 2.0,
        "uploads": 3,
        "mlflow_run_id": None,
        "history": [],
        "seed": 0,
    }
    report = _final_report(summary, {"seed": 0}, "fedrecon")
    assert {"accuracy", "uar", "coherence", "coherence_real", "cross_mse"} <= set(report)
    assert "seed" not in report and "acc" not in report
    # only the metrics the method declares (Learner.metric_names): FedAvg declares none
    assert not {"coherence", "coherence_real", "cross_mse"} & set(_final_report(summary, {"seed": 0}, "fedavg"))


def test_time_to_reach_compares_each_run_with_its_own_seeds_reference():
    """Table 3d: each asynchronous run is timed to its own seed's synchronous final ACC."""
    import pandas as pd

    from fedsim.sweeps.results import _add_time_to_reach

    spec = load_grid("afmcc", "table3d")

    def hist(*points):
        return json.dumps([{"sim_time": t, "acc": a} for t, a in points])

    frame = pd.DataFrame(
        [
            # seed 0: sync ends at 0.90; async passes 0.90 at t=5
            {"speed_profile": "eo:2:1", "mode": "sync", "seed": 0, "acc": 0.90, "history": hist((4, 0.8), (8, 0.9))},
            {"speed_profile": "eo:2:1", "mode": "virtual", "seed": 0, "acc": 0.92, "history": hist((5, 0.91))},
            # seed 1: sync ends at 0.80; async passes 0.80 at t=3 (it would never reach seed 0's 0.90)
            {"speed_profile": "eo:2:1", "mode": "sync", "seed": 1, "acc": 0.80, "history": hist((7, 0.8))},
            {"speed_profile": "eo:2:1", "mode": "virtual", "seed": 1, "acc": 0.85, "history": hist((3, 0.85))},
        ]
    )
    table = pd.DataFrame([{"speed_profile": "eo:2:1", "mode": "sync"}, {"speed_profile": "eo:2:1", "mode": "virtual"}])
    out = _add_time_to_reach(spec, frame, table)
    assert list(out["sim_time_to_target"]) == [7.5, 4.0]  # sync: (8 + 7) / 2; async: (5 + 3) / 2
    assert list(out["target_acc"]) == pytest.approx([85.0, 85.0])
