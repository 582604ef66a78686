"""Records: a sweep's trials read back from MLflow into SweepRecords, the form in which the
sweeps reach the reproduction report.

:func:`read_sweeps` reads every sweep in an MLflow store (experiments named
``sweep/<method>/<dataset>/<grid>``, logged by fedsim/sweeps/tune_runner.py) into one
:class:`SweepRecord` per grid and dataset: the summary runs of the latest setting, one row per grid
point with the latest FINISHED trial's final scores, in grid order, and where and on what code the
sweep ran. Grid points a grid borrows (``GridSpec.borrow``) are filled from another grid's runs
where the resolved configs agree. The reproduction report (fedsim/report.py) turns the records
into tables and plots with fedsim/sweeps/results.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from fedsim.config import build_config
from fedsim.errors import ConfigError
from fedsim.sweeps.archive import original_id
from fedsim.sweeps.grid import GRID_DIR, GridSpec, load_grid, override_strings
from fedsim.sweeps.results import score_keys
from fedsim.sweeps.tune_runner import sweep_base
from fedsim.tracking import config_params


@dataclass
class SweepRecord:
    """One sweep as stored in MLflow: its summary run and the finished trials' scores."""

    spec: GridSpec
    dataset: str
    parent_ids: list[str]  # the summary runs whose trials fill the table
    status: str
    frame: pd.DataFrame  # one row per FINISHED trial: grid axes, final scores, wall_time_s, mlflow_run_id
    planned: int
    unmatched: int  # finished runs whose grid point is no longer in the grid file
    wall_time_s: float | None  # the summary run's start to end (FINISHED sweeps only)
    trial_wall_time_s: float
    machine: str
    code: str  # the trials' git commits (fedsim.git_commit), "not recorded" for older runs
    commands: list[str]  # what regenerates it (several when parts of the grid ran separately)
    started: str
    borrowed: list[str] = dataclasses.field(default_factory=list)  # what borrow_rows took or refused


def _grid_point(run: Any, spec: GridSpec, by_name: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    tag = run.data.tags.get("fedsim.grid_point")
    if tag:
        point = json.loads(tag)
        return point if point in spec.trials else None
    # Runs logged before the grid point was tagged: the sweep names each run k=v-k=v in grid order.
    return by_name.get(run.data.tags.get("mlflow.runName", run.info.run_name))


def _command(spec: GridSpec, dataset: str, parent: Any, client: Any) -> str:
    tag = parent.data.tags.get("fedsim.command")
    if tag:
        return tag
    extra: list[str] = []
    try:  # older sweeps: the user's overrides are what grid.json holds beyond the grid's own
        overrides = json.loads(Path(client.download_artifacts(parent.info.run_id, "grid.json")).read_text())[
            "overrides"
        ]
        known = {
            f"dataset={dataset}",
            *override_strings({**spec.fixed, **spec.datasets.get(dataset, {})}),
        }
        extra = [o for o in overrides if o not in known]
    except Exception:  # noqa: BLE001 - no grid.json: assume no extra overrides
        pass
    suffix = f' EXTRA="{" ".join(extra)}"' if extra else ""
    return f"make sweep DATASET={dataset} METHOD={spec.method} GRID={spec.name}{suffix}"


def _history(client: Any, run_id: str) -> str:
    points = sorted(client.get_metric_history(run_id, "acc"), key=lambda m: (m.timestamp, m.step))
    return json.dumps([{"sim_time": float(m.step), "acc": float(m.value)} for m in points])


def _setting(command: str) -> str:
    """A sweep's setting: its command without the ONLY part (parts of one grid run separately
    with the same overrides fill one table)."""
    return re.sub(r' ONLY="[^"]*"', "", command)


def _in_grid_order(spec: GridSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trial rows in grid order (the order the grid file lists its axes' values), not finishing order."""
    order = {json.dumps(t, sort_keys=True): i for i, t in enumerate(spec.trials)}
    return sorted(rows, key=lambda r: order[json.dumps({k: r[k] for k in spec.grid}, sort_keys=True)])


def read_sweep(client: Any, experiment: Any, spec: GridSpec, dataset: str) -> SweepRecord | None:
    """The grid's table data: the latest summary run with finished trials, together with the
    other summary runs of the same setting (e.g. ``ONLY=client_ratio=1:1`` and then ``2:1``);
    per grid point the latest FINISHED trial counts. Summary runs of another setting (other
    EXTRA overrides) are left out: the latest setting wins."""
    runs = client.search_runs([experiment.experiment_id], max_results=50000)
    parents = sorted(
        (r for r in runs if "mlflow.parentRunId" not in r.data.tags), key=lambda r: r.info.start_time, reverse=True
    )
    if not parents:
        return None
    children: dict[str, list[Any]] = {}
    for r in runs:
        if r.data.tags.get("mlflow.parentRunId") and r.info.status == "FINISHED":
            children.setdefault(r.data.tags["mlflow.parentRunId"], []).append(r)
    commands = {p.info.run_id: _command(spec, dataset, p, client) for p in parents}
    lead = next((p for p in parents if children.get(p.info.run_id)), parents[0])
    group = [p for p in parents if _setting(commands[p.info.run_id]) == _setting(commands[lead.info.run_id])]
    by_name = {"-".join(f"{k}={v}" for k, v in t.items()): t for t in spec.trials}
    needs_history = bool(spec.time_to_reach) or "mode" in spec.grid
    members = sorted(
        (c for p in group for c in children.get(p.info.run_id, [])), key=lambda r: r.info.start_time, reverse=True
    )
    rows, unmatched, seen = [], 0, set()
    for run in members:  # latest first: a rerun grid point replaces its earlier run
        point = _grid_point(run, spec, by_name)
        key = json.dumps(point, sort_keys=True)
        if point is None or key in seen:
            unmatched += point is None
            continue
        seen.add(key)
        finals = {k.removeprefix("final_"): v for k, v in run.data.metrics.items() if k.startswith("final_")}
        row = {
            **point,
            **{k: finals[k] for k in score_keys(finals, spec.method)},
            "wall_time_s": finals.get("wall_time", float("nan")),
            "sim_time": finals.get("sim_time", float("nan")),
            "mlflow_run_id": run.info.run_id,
        }
        if needs_history:
            row["history"] = _history(client, run.info.run_id)
        rows.append(row)
    frame = pd.DataFrame(_in_grid_order(spec, rows))
    # the summary runs whose trials are in the table: a sweep whose every point was rerun is out
    in_table = set(frame.get("mlflow_run_id", []))
    filling = {r.data.tags["mlflow.parentRunId"] for r in members if r.info.run_id in in_table}
    used = [p for p in group if p.info.run_id in filling] or [lead]
    finished = all(p.info.status == "FINISHED" and p.info.end_time for p in used)
    wall = sum((p.info.end_time - p.info.start_time) / 1000 for p in used) if finished else None
    commits = sorted(
        {r.data.tags.get("fedsim.git_commit", "not recorded") for r in members if r.info.run_id in in_table}
    )
    machines = list(
        dict.fromkeys(
            p.data.tags.get("fedsim.machine", "not recorded (sweep run before fedsim tagged the machine)") for p in used
        )
    )
    return SweepRecord(
        spec=spec,
        dataset=dataset,
        parent_ids=[original_id(p) for p in used],
        status="FINISHED" if finished else next(p.info.status for p in used if p.info.status != "FINISHED"),
        frame=frame,
        planned=len(spec.trials),
        unmatched=unmatched,
        wall_time_s=wall,
        trial_wall_time_s=float(frame["wall_time_s"].sum()) if not frame.empty else 0.0,
        machine="; ".join(machines),
        code=", ".join(c if c == "not recorded" else c[:10] + c[40:] for c in commits) or "—",
        commands=list(dict.fromkeys(commands[p.info.run_id] for p in reversed(used))),
        started=datetime.fromtimestamp(min(p.info.start_time for p in used) / 1000, timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
    )


def read_sweeps(tracking_uri: str) -> dict[tuple[str, str, str], SweepRecord]:
    """Every sweep in the store whose grid file still exists, keyed (method, dataset, grid)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    out: dict[tuple[str, str, str], SweepRecord] = {}
    for exp in client.search_experiments():
        parts = exp.name.split("/")
        if len(parts) != 4 or parts[0] != "sweep":
            continue
        _, method, dataset, grid = parts
        if dataset.startswith("synthetic") or not (GRID_DIR / method / f"{grid}.yaml").is_file():
            continue
        spec = load_grid(method, grid)
        if spec.report.skip:
            continue
        record = read_sweep(client, exp, spec, dataset)
        if record is not None:
            out[(method, dataset, grid)] = record
    for record in out.values():
        borrow_rows(client, record, out)
    return out


# Params that say where and how a run was placed and recorded (Ray resources, actor layout,
# MLflow names, the data directory), not what it computed. runtime.torch_threads is not among
# them: the thread count changes the order of float reductions.
PLACEMENT_PARAMS = ("tracking.", "runtime.", "data_dir")
RESULT_RUNTIME_PARAMS = {"runtime.torch_threads"}


def _extra_of(command: str) -> list[str]:
    found = re.search(r' EXTRA="([^"]*)"', command)
    return found.group(1).split() if found else []


def config_differences(
    expected: dict[str, str], actual: dict[str, str], defaults: dict[str, str]
) -> tuple[list[str], list[str]]:
    """(keys whose values differ, keys the run predates) between the params a run of ``expected``
    would log and a logged run's ``actual`` params, placement keys aside. A key the run predates
    (fedsim added it later) counts as equal when ``expected`` holds its default: config switches
    are added with the earlier behaviour as their default."""
    differ, predates = [], []
    for key, want in expected.items():
        if key.startswith(PLACEMENT_PARAMS) and key not in RESULT_RUNTIME_PARAMS:
            continue
        if key not in actual:
            predates.append(key)
            if want != defaults.get(key):
                differ.append(f"{key}: {want} here, absent there")
        elif actual[key] != want:
            differ.append(f"{key}: {want} here, {actual[key]} there")
    return differ, predates


def borrow_rows(client: Any, record: SweepRecord, sweeps: dict[tuple[str, str, str], SweepRecord]) -> None:
    """Fill the grid points ``record`` has not run from another grid's runs (``GridSpec.borrow``):
    the other grid's FINISHED run of the same remaining axes (the seed) counts here when its
    logged params equal the config this grid would resolve for the point (same EXTRA), placement
    keys aside. What was taken, and what was refused and why, goes into ``record.borrowed``."""
    spec, dataset = record.spec, record.dataset
    if not spec.borrow:
        return
    have = set()
    if not record.frame.empty:
        have = {json.dumps({k: r[k] for k in spec.grid}, sort_keys=True) for r in record.frame.to_dict("records")}
    base, overrides = sweep_base(spec, dataset, _extra_of(record.commands[-1]) if record.commands else [])
    defaults = config_params(build_config({"method": spec.method, "dataset": dataset}))
    taken: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    rows: list[dict[str, Any]] = []
    for point in spec.trials:
        source = next(
            (g for axis, values in spec.borrow.items() for v, g in values.items() if str(point.get(axis)) == v), None
        )
        if source is None or json.dumps(point, sort_keys=True) in have:
            continue
        label = " ".join(f"{k}={v}" for k, v in point.items())
        other = sweeps.get((spec.method, dataset, source))
        wanted = (
            {k: point[k] for k in other.spec.grid} if other is not None and set(other.spec.grid) <= set(point) else None
        )
        match = (
            []
            if other is None or other.frame.empty or wanted is None
            else [r for r in other.frame.to_dict("records") if all(r.get(k) == v for k, v in wanted.items())]
        )
        if not match:
            record.borrowed.append(f"{label}: no finished run of {spec.method}/{source} to take")
            continue
        run = client.get_run(match[0]["mlflow_run_id"])
        try:
            expected = config_params(build_config(base, overrides + spec.trial_overrides(point)))
        except ConfigError as exc:  # the grid or config file changed since: never guess
            record.borrowed.append(f"{label}: not taken, its config no longer resolves ({exc})")
            continue
        differ, predates = config_differences(expected, dict(run.data.params), defaults)
        if differ:
            record.borrowed.append(
                f"{label}: not taken from {spec.method}/{source}, whose run differs on " + "; ".join(differ)
            )
            continue
        row = {**point, **{k: v for k, v in match[0].items() if k not in point}, "borrowed_from": source}
        if "history" in record.frame and "history" not in row:
            row["history"] = _history(client, run.info.run_id)
        rows.append(row)
        commit = run.data.tags.get("fedsim.git_commit", "not recorded")
        taken.setdefault((source, tuple(predates)), []).append(
            f"{label} (run `{original_id(run)}`, code {commit if commit == 'not recorded' else commit[:10] + commit[40:]})"
        )
    if not rows:
        return
    for (source, predates), labels in taken.items():
        record.borrowed.append(
            f"{', '.join(labels)}: taken from {spec.method}/{source}"
            + (f"; the run(s) predate {', '.join(predates)}, at the default here" if predates else "")
        )
    record.frame = pd.DataFrame(_in_grid_order(spec, record.frame.to_dict("records") + rows))
