"""kill -9 of the driver, then ``--resume RUN_ID``: the run continues from its checkpoint, in the
same MLflow run, and a virtual run ends exactly as the uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.runner import run_experiment

DRIVER = """
import json, os, signal, sys
from fedsim.config import build_config
from fedsim.runner import run_experiment
from fedsim.runtime.callbacks import Callback

class KillMyself(Callback):  # kill -9 of the driver, at a known upload
    def on_upload(self, record, progress):
        if progress.uploads == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

run_experiment(build_config(json.loads(sys.argv[1]), []), callbacks=[KillMyself()])
"""

COLUMNS = ["client_id", "round", "phase", "versions_read", "version_written", "sim_start", "sim_end", "staleness"]


@pytest.mark.timeout(900)
def test_resumed_virtual_run_equals_the_uninterrupted_one(ray_session, small_config, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = (
        "speed_profile=eo:3:1",
        "rounds=4",
        "eval_every=2",
        "runtime.clients_per_actor=2",
        f"runtime.checkpoint_dir={tmp_path}/runs",
        f"tracking.tracking_uri={uri}",
        "tracking.enabled=true",
        "tracking.experiment=resume",
    )
    cfg = small_config(*overrides)
    clean = run_experiment(small_config(*overrides, "tracking.enabled=false"))
    # the driver runs in its own process, on this test's Ray, and is killed after 7 uploads
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    raw = cfg.to_dict()
    killed = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(raw), "7"], env=env, timeout=600, capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert run.info.status == "RUNNING"  # nobody has looked yet
    assert (tmp_path / "runs" / run.info.run_id / "driver.pkl").is_file()

    resumed = run_experiment(cfg, resume=run.info.run_id)
    assert resumed.summary["mlflow_run_id"] == run.info.run_id
    for key in ("acc", "nmi", "ari", "purity", "simulated_time"):
        assert resumed.summary[key] == clean.summary[key], key
    a, b = clean.federation.upload_log, resumed.federation.upload_log
    assert a[COLUMNS].astype(str).equals(b[COLUMNS].astype(str))
    assert [i["losses"] for i in a["info"]] == [i["losses"] for i in b["info"]]
    assert clean.federation.assignments.equals(resumed.federation.assignments)
    after = client.get_run(run.info.run_id)
    assert after.info.status == "FINISHED" and "fedsim.resumed" in after.data.tags
    assert "was gone" in after.data.tags["fedsim.ended_by"]  # the resuming command saw the dead driver
    assert not (tmp_path / "runs" / run.info.run_id).exists()


def test_resume_refuses_what_it_cannot_continue(small_config, tmp_path):
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match="virtual-mode"):
        run_experiment(small_config("mode=async"), resume="abc")
    with pytest.raises(ConfigError, match="no checkpoint of run"):
        run_experiment(small_config(f"runtime.checkpoint_dir={tmp_path}"), resume="abc")
    from fedsim.runtime.resume import save_config

    save_config(tmp_path / "abc", {"seed": 5})
    with pytest.raises(ConfigError, match="another config"):
        run_experiment(small_config(f"runtime.checkpoint_dir={tmp_path}"), resume="abc")


def test_a_bad_checkpoint_dir_is_refused_before_ray_starts(small_config, tmp_path):
    from fedsim.errors import ConfigError
    from fedsim.runner import validate

    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file", tmp_path / "file" / "below"):
        with pytest.raises(ConfigError, match="runtime.checkpoint_dir"):
            validate(small_config(f"runtime.checkpoint_dir={bad}"))
    validate(small_config(f"runtime.checkpoint_dir={tmp_path}/new/folder"))  # made when the run starts


def test_a_driver_checkpoint_from_before_entry_commits_reads_them_as_never_written(tmp_path):
    """driver.pkl files written before InFlight recorded ``entry_commits`` still load and resume."""
    from fedsim.runtime.resume import DriverState, InFlight, load_driver_state, save_driver_state

    old = InFlight(1, 3, "train", 0.0, 1.0, [2, 2, 1], 5, [4, 3, 0])
    del old.__dict__["entry_commits"]  # as the older class pickled it
    save_driver_state(tmp_path, DriverState(5, 5, [2, 2, 1], 1.0, [], {}, [old]))
    (loaded,) = load_driver_state(tmp_path).inflight
    assert loaded.commits_read() == [-1, -1, -1]
    assert InFlight(1, 3, "train", 0.0, 1.0, [2, 2, 1], 5, [4, 3, 0]).commits_read() == [4, 3, 0]
