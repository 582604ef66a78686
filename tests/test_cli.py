"""The command line: bad input gives one clear line and exit 2, never a traceback or a RUNNING
MLflow run; a good config runs end to end and writes the result JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import SMALL_SYNTHETIC

ROOT = Path(__file__).resolve().parents[1]


def _fedsim(args, tmp_path, timeout=300, env_extra=None):
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "FEDSIM_DATA_DIR": str(tmp_path / "nodata"),
    }
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def _no_running_mlflow_runs(tmp_path):
    db = tmp_path / "mlflow.db"
    if not db.exists():
        return True
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    return all(r.info.status != "RUNNING" for r in runs)


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


BAD_INPUTS = {
    "missing config": (["run", "nope.yaml"], "config file 'nope.yaml' not found"),
    "unknown method": (["run", "CFG", "--set", "method=kmeansplusplus"], "unknown method 'kmeansplusplus'"),
    "bad override": (["run", "CFG", "--set", "rounds"], "bad override 'rounds'"),
    "unknown key": (["run", "CFG", "--set", "afmcc.alpah=0.1"], "unknown config key 'afmcc.alpah'"),
    "bad value": (["run", "CFG", "--set", "mode=turbo"], "config key 'mode'"),
    "impossible ratio": (["run", "CFG", "--set", "client_ratio=1:1:1", "--set", "num_clients=2"], "client_ratio"),
    "M clients need 3 views": (
        [
            "run",
            "CFG",
            "--set",
            "dataset=bdgp",
            "--set",
            "client_ratio=1:1:1",
            "--set",
            "synthetic=null",
            "--data-dir",
            str(ROOT.parent / "shared" / "data"),
        ],
        "M",
    ),
    "missing data file": (["run", "CFG", "--set", "dataset=nuswide", "--set", "synthetic=null"], "nuswide"),
    "bad speed profile": (["run", "CFG", "--set", "speed_profile=fast"], "speed_profile"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_exit_2(tmp_path, case):
    args, needle = BAD_INPUTS[case]
    cfg = _write(tmp_path, "cfg.yaml", SMALL_SYNTHETIC)
    proc = _fedsim([cfg if a == "CFG" else a for a in args], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and lines[0].startswith("fedsim: error:")
    assert needle in lines[0]
    assert _no_running_mlflow_runs(tmp_path)


def test_malformed_data_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "bdgp.mat").write_bytes(b"this is not a MATLAB file" * 10)
    cfg = _write(tmp_path, "cfg.yaml", {**SMALL_SYNTHETIC, "dataset": "bdgp", "synthetic": None, "client_ratio": "1:1"})
    proc = _fedsim(["run", cfg, "--data-dir", str(data)], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bdgp" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert _no_running_mlflow_runs(tmp_path)


def test_cli_run_writes_result_json(tmp_path):
    cfg = _write(
        tmp_path,
        "cfg.yaml",
        {
            **SMALL_SYNTHETIC,
            "tracking": {"enabled": True, "progress": True},
            "runtime": {"include_dashboard": False, "num_cpus": 2},
        },
    )
    out = tmp_path / "result.json"
    proc = _fedsim(["run", cfg, "--result-json", str(out)], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in (
        "acc",
        "nmi",
        "ari",
        "purity",
        "mode",
        "seed",
        "rounds",
        "simulated_time",
        "wall_time",
        "mlflow_run_id",
    ):
        assert key in result
    assert result["rounds"] == {"0": 3, "1": 3, "2": 3, "3": 3}
    assert "ACC" in proc.stdout and "mlflow ui" in proc.stdout
    assert "uploads" in proc.stderr  # the progress line
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"


def test_overrides_never_leak_into_the_base_mapping():
    """Sweeps build every trial from one base mapping: an override of a nested key must not
    change it (it did with a shallow copy, so a Table 3b 'full' trial ran with every ablation)."""
    from fedsim.config import build_config

    base = {"method": "afmcc", "afmcc": {"alpha": 0.01}, "stop": {"rule": "rounds"}}
    build_config(base, ["afmcc.use_contrastive=false", "stop.rule=group"])
    assert base == {"method": "afmcc", "afmcc": {"alpha": 0.01}, "stop": {"rule": "rounds"}}
    assert build_config(base).method_params["use_contrastive"] is True
