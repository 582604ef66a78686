"""The sweep archive: the MLflow record behind the reproduction report, kept in the repository.

An MLflow store (``sqlite:///mlflow.db`` by default) lives on one machine and is not committed, so
the sweeps a report was built from would be lost with the machine, and ``make report`` on a fresh
clone would have nothing to read. The archive keeps them: ``reports/runs/<experiment>.jsonl``, one
line per MLflow run of a ``sweep/<method>/<dataset>/<grid>`` experiment, with the run's info
(id, name, status, start and end times), params, tags and full metric histories (step, timestamp,
value). It is plain text, so a diff shows which runs a commit adds.

``make report`` (:func:`fedsim.report.build_report`) first exports the local store's sweeps into
the archive (a run already archived is replaced by the store's copy, which is newer or the same),
then imports the whole archive into a fresh temporary MLflow store and builds the report from that
store alone. Numbers therefore always travel MLflow -> archive -> MLflow; nothing is re-typed.
``fedsim archive import`` loads the archive into any store, e.g. to browse the archived sweeps
in the MLflow UI. Of the artifacts only a summary run's ``grid.json`` (the sweep's overrides) is
kept; upload logs, assignments and plots are not: the report does not read them, and it redraws
the plots.

Imported runs get new run ids; each keeps its original id in the tag ``fedsim.archived_run_id``
(parent/child links are rewritten to the new ids), and the report prints the original ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

ARCHIVE_TAG = "fedsim.archived_run_id"
SWEEP_PREFIX = "sweep/"
_BATCH = 900  # MLflow's log_batch takes at most 1000 metrics, 100 params and 100 tags per call


def _file_for(experiment: str, archive_dir: Path) -> Path:
    return archive_dir / (experiment.removeprefix(SWEEP_PREFIX).replace("/", "__") + ".jsonl")


def original_id(run: Any) -> str:
    """The run's id in the store where it was logged (an imported run's archived id)."""
    return run.data.tags.get(ARCHIVE_TAG, run.info.run_id)


def _run_record(client: Any, experiment: str, run: Any, originals: dict[str, str]) -> dict[str, Any]:
    metrics: dict[str, list[list[float]]] = {}
    for key in sorted(run.data.metrics):
        history = client.get_metric_history(run.info.run_id, key)
        metrics[key] = [
            [int(m.step), int(m.timestamp), float(m.value)]
            for m in sorted(history, key=lambda m: (m.timestamp, m.step))
        ]
    tags = {k: v for k, v in sorted(run.data.tags.items()) if k != ARCHIVE_TAG}
    if "mlflow.parentRunId" in tags:  # a run imported from the archive points at its parent's new id
        tags["mlflow.parentRunId"] = originals.get(tags["mlflow.parentRunId"], tags["mlflow.parentRunId"])
    record = {
        "experiment": experiment,
        "run_id": original_id(run),
        "run_name": run.info.run_name,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "params": dict(sorted(run.data.params.items())),
        "tags": tags,
        "metrics": metrics,
    }
    if "mlflow.parentRunId" not in tags:  # a sweep's summary run: its grid.json names the overrides
        try:
            import mlflow

            record["grid_json"] = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/grid.json")
        except Exception:  # noqa: BLE001 - no grid.json (older or foreign runs): nothing to keep
            pass
    return record


def read_archive(archive: str | Path) -> list[dict[str, Any]]:
    """Every archived run record of a folder (file by file in name order) or of one file."""
    archive = Path(archive)
    records: list[dict[str, Any]] = []
    for path in [archive] if archive.is_file() else sorted(archive.glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{path}:{number}: not a JSON run record ({err.msg}); "
                        "restore the file from git (git checkout -- reports/runs)"
                    ) from err
    return records


def export_sweeps(tracking_uri: str, archive_dir: str | Path) -> int:
    """Write the store's sweep runs into the archive; returns how many runs were written.

    Trial runs still RUNNING (a sweep in progress) are left out until they end, so an
    interrupted trial never becomes part of the committed record. A summary run is archived even
    while RUNNING (the report then says the sweep is partial); a later export replaces it."""
    import mlflow

    out = Path(archive_dir)
    out.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    written = 0
    for exp in client.search_experiments():
        if not exp.name.startswith(SWEEP_PREFIX):
            continue
        fresh = {}
        runs = client.search_runs([exp.experiment_id], max_results=50000)
        originals = {run.info.run_id: original_id(run) for run in runs}
        for run in runs:
            if run.info.status == "RUNNING" and "mlflow.parentRunId" in run.data.tags:
                continue
            record = _run_record(client, exp.name, run, originals)
            fresh[record["run_id"]] = record
        if not fresh:
            continue
        path = _file_for(exp.name, out)
        kept = {r["run_id"]: r for r in (read_archive(path) if path.is_file() else [])}
        kept.update(fresh)
        lines = [
            json.dumps(r, separators=(",", ":"))
            for r in sorted(kept.values(), key=lambda r: (r["start_time"], r["run_id"]))
        ]
        path.write_text("\n".join(lines) + "\n")
        written += len(fresh)
    return written


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def import_archive(records: list[dict[str, Any]], tracking_uri: str, artifact_root: str | None = None) -> int:
    """Log the archived runs into the store at ``tracking_uri``; returns how many were imported.
    Experiments created here keep their artifacts under ``artifact_root`` (default: the store's
    own default, which for a sqlite store is ./mlruns of the working directory).

    A run whose original id is already in the target experiment (as its run id or its
    ``fedsim.archived_run_id``) is skipped, so importing twice adds nothing. Parents are created
    before their children so that ``mlflow.parentRunId`` can point at the new ids."""
    import mlflow
    from mlflow.entities import Metric, Param

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    new_id: dict[str, str] = {}  # original run id -> its id in the target store
    scanned: set[str] = set()  # experiments whose existing runs are already in new_id
    imported = 0
    # Parents (no parent tag) first; within each group, the archive's time order.
    ordered = sorted(records, key=lambda r: ("mlflow.parentRunId" in r["tags"], r["start_time"]))
    for record in ordered:
        name = record["experiment"]
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            location = None if artifact_root is None else Path(artifact_root, name.replace("/", "__")).as_uri()
            exp_id = client.create_experiment(name, artifact_location=location)
        if name not in scanned:
            scanned.add(name)
            new_id.update(
                {original_id(run): run.info.run_id for run in client.search_runs([exp_id], max_results=50000)}
            )
        if record["run_id"] in new_id:
            continue
        tags = dict(record["tags"])
        parent = tags.get("mlflow.parentRunId")
        if parent is not None:
            tags["mlflow.parentRunId"] = new_id.get(parent, parent)
        tags[ARCHIVE_TAG] = record["run_id"]
        run = client.create_run(exp_id, start_time=record["start_time"], tags=tags, run_name=record["run_name"])
        run_id = run.info.run_id
        metrics = [
            Metric(key, value, timestamp, step)
            for key, points in record["metrics"].items()
            for step, timestamp, value in points
        ]
        params = [Param(k, v) for k, v in record["params"].items()]
        for chunk in _chunks(metrics, _BATCH):
            client.log_batch(run_id, metrics=chunk)
        for chunk in _chunks(params, 100):
            client.log_batch(run_id, params=chunk)
        if "grid_json" in record:
            client.log_dict(run_id, record["grid_json"], "grid.json")
        if record["status"] != "RUNNING":  # a new run is RUNNING; ending it would stamp an end time
            client.set_terminated(run_id, record["status"], end_time=record["end_time"])
        new_id[record["run_id"]] = run_id
        imported += 1
    return imported
