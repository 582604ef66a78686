"""A run whose driver died (kill -9) does not stay RUNNING once a later command looks at the
store, and failed or killed runs keep the uploads committed before the end."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import psutil
import pytest

from fedsim.runtime.callbacks import Callback


def _dead_process_tags() -> dict[str, str]:
    """Driver tags of a process that has exited (as a killed driver's would read)."""
    import socket

    from fedsim.tracking import HOST_TAG, PID_TAG, PROCESS_START_TAG

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(proc.pid), PROCESS_START_TAG: repr(started)}


@pytest.mark.timeout(120)
def test_a_dead_drivers_run_is_closed_with_its_upload_log(tmp_path):
    import mlflow

    from fedsim.runtime.checkpoint import ServerCheckpoint
    from fedsim.tracking import close_dead_runs, driver_tags

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("dead")
    dead = client.create_run(experiment, tags=_dead_process_tags())
    alive = client.create_run(experiment, tags=driver_tags())  # this very process: still going
    foreign = client.create_run(experiment, tags={**_dead_process_tags(), "fedsim.driver_host": "elsewhere"})
    untagged = client.create_run(experiment)
    # the dead run's parameter server had checkpointed two uploads
    ckpt = ServerCheckpoint(tmp_path / "runs" / dead.info.run_id)
    ckpt.create()
    offset = 0
    for rnd in (1, 2):
        offset = ckpt.append_record({"client_id": 0, "round": rnd, "phase": "train", "info": {"losses": {}}}, offset)
    ckpt.write_meta(
        {
            "commits": 2,
            "start": 0.0,
            "log_bytes": offset,
            "versions": [2],
            "seqs": [2],
            "entry_files": [None],
            "state_files": [None],
            "files": [],
        }
    )

    assert close_dead_runs(uri, str(tmp_path / "runs")) == [dead.info.run_id]
    run = client.get_run(dead.info.run_id)
    assert run.info.status == "KILLED" and "was gone" in run.data.tags["fedsim.ended_by"]
    artifact = client.download_artifacts(dead.info.run_id, "upload_log.parquet", str(tmp_path))
    assert list(pd.read_parquet(artifact)["round"]) == [1, 2]
    for other in (alive, foreign, untagged):
        assert client.get_run(other.info.run_id).info.status == "RUNNING"
    assert close_dead_runs(uri, str(tmp_path / "runs")) == []  # seen once, closed once


class _Crash(Callback):
    def on_upload(self, record, progress) -> None:
        if progress.uploads == 3:
            raise RuntimeError("injected failure after 3 uploads")


@pytest.mark.timeout(600)
def test_a_failed_run_keeps_its_upload_log(ray_session, small_config, tmp_path):
    import mlflow

    from fedsim.runner import run_experiment

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = small_config(f"tracking.tracking_uri={uri}", "tracking.enabled=true", "tracking.experiment=fails")
    with pytest.raises(RuntimeError, match="injected failure"):
        run_experiment(cfg, callbacks=[_Crash()])
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fails").experiment_id])
    assert run.info.status == "FAILED" and "injected failure" in run.data.tags["fedsim.error"]
    log = pd.read_parquet(client.download_artifacts(run.info.run_id, "upload_log.parquet", str(tmp_path)))
    assert list(log["phase"]) == ["pretrain", "train", "train", "train"]  # the third was committed


@pytest.mark.timeout(600)
def test_a_diverged_model_ends_the_run_failed_with_one_line(ray_session, small_config, tmp_path):
    """A learning rate far too large overflows the weights: the evaluation refuses the NaN
    embeddings with a TrainingDiverged naming the client and the fix (not k-means' traceback),
    and the MLflow run ends FAILED."""
    import mlflow

    from fedsim.errors import TrainingDiverged
    from fedsim.runner import run_experiment

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = small_config(
        f"tracking.tracking_uri={uri}", "tracking.enabled=true", "tracking.experiment=diverges", "afmcc.lr=1e30"
    )
    with pytest.raises(TrainingDiverged, match=r"training diverged: client \d+'s embeddings hold NaN or inf") as info:
        run_experiment(cfg)
    assert "afmcc.lr" in str(info.value) and "\n" not in str(info.value)
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("diverges").experiment_id])
    assert run.info.status == "FAILED" and "TrainingDiverged" in run.data.tags["fedsim.error"]
