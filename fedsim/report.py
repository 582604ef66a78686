"""The reproduction report: the papers' tables beside ours, rebuilt from MLflow alone.

``make report`` (``fedsim report``) reads every sweep in the MLflow store (experiments named
``sweep/<method>/<dataset>/<grid>``, see fedsim/sweeps/tune_runner.py), rebuilds each grid's
table from the trial runs' final metrics (never from re-typed numbers), and writes
``reports/REPRODUCTION.md`` with PNG plots beside it. This module reads the sweeps and composes
the document; the tables and plots are fedsim/sweeps/results.py's, the ones a sweep logs. For each grid file in tune/grids and each dataset the grid names
(paper values, ``report.datasets``) or that has runs, it writes one of:

- the table: ours (mean +- std over seeds, percent), the paper's value, the difference, the
  number of finished trials against the planned ones, the command that regenerates it, the
  sweep's wall time and the machine it ran on; rows that fall short of the paper by more than
  the paper's reported std are marked, and the grid's findings file
  (``reports/findings/<method>_<grid>.md``, hand-written: what was checked) follows the table;
- "not run yet" with the command to run it;
- "not available here" with the reason (file missing, or no public copy exists): datasets the
  papers use that we cannot obtain are listed, never silently dropped.

Only the latest summary run of an experiment counts (a sweep rerun with ``--fresh`` replaces
the earlier one); a summary run still RUNNING (a sweep in progress or interrupted) contributes
its finished trials, and the report says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from fedsim.archive import export_sweeps, import_archive, original_id, read_archive
from fedsim.config import build_config
from fedsim.errors import ConfigError
from fedsim.sweeps.grid import GRID_DIR, ROOT, GridSpec, grid_names, load_grid, override_strings
from fedsim.sweeps.results import (
    ablation_ordering,
    gap_rows,
    paper_plot,
    score_keys,
    summarise_grid,
    table_markdown,
    write_plots,
)
from fedsim.sweeps.tune_runner import sweep_base
from fedsim.tracking import config_params

# The order of the report's method sections: tune/grids/report.yaml ``sections``; grid folders
# it does not list follow, alphabetically.
SECTIONS_FILE = GRID_DIR / "report.yaml"
FINDINGS_DIR = "findings"


def report_sections() -> list[str]:
    """Method grid folders in the report's order (SECTIONS_FILE first, then the rest by name)."""
    from fedsim.config import load_yaml

    listed = list(load_yaml(SECTIONS_FILE).get("sections", [])) if SECTIONS_FILE.is_file() else []
    methods = [m for m in listed if (GRID_DIR / m).is_dir()]
    return methods + sorted(p.name for p in GRID_DIR.iterdir() if p.is_dir() and p.name not in methods)


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


# ---------------------------------------------------------------------------------------------
# Reading MLflow


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


# ---------------------------------------------------------------------------------------------
# The report


def _grid_order(name: str) -> tuple[int, str]:
    """Paper tables first, then figures, then other grids (e.g. gap investigations)."""
    return (0 if name.startswith("table") else 1 if name.startswith("fig") else 2, name)


def _datasets_for(spec: GridSpec, sweeps: dict[tuple[str, str, str], SweepRecord]) -> list[str]:
    names = [*spec.report.datasets, *spec.paper, *spec.datasets]
    names += [d for (m, d, g) in sweeps if m == spec.method and g == spec.name]
    return [d for d in dict.fromkeys(names) if not d.startswith("synthetic")]


def _section(
    spec: GridSpec,
    sweeps: dict[tuple[str, str, str], SweepRecord],
    out_dir: Path,
    data_dir: str | None,
    tables_dir: Path | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    from fedsim.data.datasets import dataset_availability

    lines = [f"### {spec.method}/{spec.name}: {spec.reproduces}", ""]
    status: list[dict[str, Any]] = []
    unavailable: list[str] = []
    findings = out_dir / FINDINGS_DIR / f"{spec.method}_{spec.name}.md"
    any_gap = False
    for dataset in _datasets_for(spec, sweeps):
        record = sweeps.get((spec.method, dataset, spec.name))
        command = f"make sweep DATASET={dataset} METHOD={spec.method} GRID={spec.name}"
        if record is None or record.frame.empty:
            why = dataset_availability(dataset, data_dir)
            if why is not None:
                unavailable.append(f"`{dataset}`: {why}")
                status.append({"grid": f"{spec.method}/{spec.name}", "dataset": dataset, "state": "not available"})
            else:
                lines += [f"**{dataset}**: not run yet. Run: `{command}`", ""]
                status.append({"grid": f"{spec.method}/{spec.name}", "dataset": dataset, "state": "not run"})
            continue
        table = summarise_grid(spec, dataset, record.frame)
        if tables_dir is not None:
            table.to_csv(tables_dir / f"{spec.method}_{dataset}_{spec.name}.csv", index=False)
        n = len(record.frame)
        state = (
            "complete"
            if n >= record.planned and record.status == "FINISHED"
            else (f"partial: {n} of {record.planned} trials finished, summary run {record.status}")
        )
        wall = f"{record.wall_time_s:.0f} s" if record.wall_time_s is not None else "— (sweep not finished)"
        lines += [
            f"**{dataset}** ({state}). Regenerate: " + ", then ".join(f"`{c}`" for c in record.commands),
            "",
            f"Sweep started {record.started}; wall time {wall}; sum of trial wall times "
            f"{record.trial_wall_time_s:.0f} s; machine: {record.machine}; code: {record.code}; MLflow summary run(s) "
            + ", ".join(f"`{i}`" for i in record.parent_ids)
            + (
                f"; {record.unmatched} finished run(s) match no point of the current grid file and are left out"
                if record.unmatched
                else ""
            )
            + ".",
            "",
        ]
        if record.borrowed:
            lines += [
                "Grid points that are another grid's trials (the grid file's `borrow`; taken only where the "
                "resolved configs agree key by key, placement and tracking keys aside, and not part of the wall "
                "times above): " + "; ".join(record.borrowed) + ".",
                "",
            ]
        lines += [table_markdown(spec, table)]
        ordering = ablation_ordering(spec, dataset, table)
        if ordering:
            lines += [ordering, ""]
        gaps = gap_rows(spec, table)
        cells = sum(int(table[f"{m}_paper"].notna().sum()) for m in spec.table.metrics)
        if gaps:
            any_gap = True
            worst = min(gaps, key=lambda g: g[2])
            lines += [
                f"⚠ {len(gaps)} of {cells} cells with a paper value fall short by more than the paper's std; "
                f"the largest gap: {worst[0]} {worst[1]} {worst[2]:+.1f} points.",
                "",
            ]
        prefix = f"{spec.method}_{dataset}_{spec.name}_"
        plots = [p for p in [paper_plot(spec, table, out_dir / f"{prefix}vs_paper.png")] if p is not None]
        plots += write_plots(spec, record.frame, out_dir, prefix=prefix)
        lines += [f"![{p.stem}]({p.name})" for p in plots]
        lines.append("")
        status.append(
            {
                "grid": f"{spec.method}/{spec.name}",
                "dataset": dataset,
                "state": state,
                "gaps": f"{len(gaps)} of {cells}" if cells else "no paper value",
                "trials": f"{n}/{record.planned}",
            }
        )
    if unavailable or spec.report.not_held:
        lines.append(
            "Not available here, so not run: "
            + "; ".join(unavailable + [f"`{k}`: {v}" for k, v in spec.report.not_held.items()])
            + "."
        )
        lines.append("")
    if findings.is_file():
        lines += ["**Findings** (reports/findings/" + findings.name + "):", "", findings.read_text().strip(), ""]
    elif any_gap:
        lines += [
            f"**Findings**: no investigation of these gaps is recorded yet (reports/findings/{findings.name}).",
            "",
        ]
    return lines, status


def build_report(
    tracking_uri: str | None,
    out_dir: str | Path = "reports",
    data_dir: str | None = None,
    archive_dir: str | Path | None = None,
    log_to: str | None = None,
) -> tuple[Path, int, int]:
    """``make report``: export the store's sweeps into the archive (fedsim/archive.py), import the
    whole archive into a fresh temporary MLflow store and write the report from that store.
    ``tracking_uri`` None: no local store, the archive alone. ``log_to``: an MLflow store that
    gets the report as a run of experiment ``fedsim-report`` (REPRODUCTION.md, the plots and every
    table as CSV): a grid run in several partial sweeps has its combined table there, where each
    sweep's summary run holds only its part. Returns (report, runs exported, runs in the archive)."""
    import tempfile

    archive = Path(archive_dir) if archive_dir is not None else Path(out_dir) / "runs"
    exported = export_sweeps(tracking_uri, archive) if tracking_uri is not None else 0
    records = read_archive(archive) if archive.is_dir() else []
    with tempfile.TemporaryDirectory(prefix="fedsim-report-") as tmp:
        uri = f"sqlite:///{tmp}/archive.db"
        import_archive(records, uri, artifact_root=f"{tmp}/artifacts")
        try:
            shown = os.path.relpath(archive.resolve(), ROOT)
        except ValueError:
            shown = str(archive)
        source = (
            f"the sweep archive `{shown}/` ({len(records)} MLflow runs, exported from the stores the sweeps "
            "ran in and imported into a fresh MLflow store for this report)"
        )
        tables = Path(tmp) / "tables"
        tables.mkdir()
        path = write_report(uri, out_dir, data_dir, source=source, tables_dir=tables)
        if log_to is not None:
            log_report_run(log_to, path, tables, n_runs=len(records))
    return path, exported, len(records)


REPORT_EXPERIMENT = "fedsim-report"


def log_report_run(tracking_uri: str, report: Path, tables: Path, n_runs: int) -> str:
    """Record one report as an MLflow run: REPRODUCTION.md, its plots (plots/) and tables (tables/)."""
    import mlflow

    from fedsim.tracking import code_version

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(REPORT_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(REPORT_EXPERIMENT)
    run = client.create_run(
        experiment_id,
        run_name="reproduction-report",
        tags={"fedsim.kind": "report", "fedsim.code_version": code_version()},
    )
    try:
        client.log_param(run.info.run_id, "archived_runs", n_runs)
        client.log_artifact(run.info.run_id, str(report))
        for plot in sorted(report.parent.glob("*.png")):
            client.log_artifact(run.info.run_id, str(plot), artifact_path="plots")
        for table in sorted(tables.glob("*.csv")):
            client.log_artifact(run.info.run_id, str(table), artifact_path="tables")
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


def write_report(
    tracking_uri: str,
    out_dir: str | Path = "reports",
    data_dir: str | None = None,
    source: str | None = None,
    tables_dir: str | Path | None = None,
) -> Path:
    """Write ``out_dir``/REPRODUCTION.md and its plots from the MLflow store; returns the file.
    ``source`` says in the header where the store's runs came from (default: the store's URI);
    ``tables_dir``, if given, receives each section's table as CSV."""
    tables = Path(tables_dir) if tables_dir is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # plots of sweeps no longer in the store must not linger
        old.unlink()
    sweeps = read_sweeps(tracking_uri)
    methods = report_sections()
    body: list[str] = []
    status: list[dict[str, Any]] = []
    for method in methods:
        body += [f"## {method.upper()}", ""]
        for grid in sorted(grid_names(method), key=_grid_order):
            spec = load_grid(method, grid)
            if spec.report.skip:
                continue
            lines, st = _section(spec, sweeps, out, data_dir, tables)
            body += lines
            status += st
    counts = pd.Series([s["state"].split(":")[0] for s in status]).value_counts().to_dict() if status else {}
    shown_uri = (
        tracking_uri
        if not tracking_uri.startswith("sqlite:///" + str(ROOT))
        else "sqlite:///" + os.path.relpath(tracking_uri.removeprefix("sqlite:///"), ROOT)
    )
    source = source or f"the MLflow store `{shown_uri}`"
    head = [
        "# fedsim reproduction report",
        "",
        f"Generated by `make report` (fedsim/report.py) from {source} on "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Every number in the tables comes from the "
        "trial runs' final metrics there; do not edit this file, rerun `make report`. The findings paragraphs "
        "are hand-written, in reports/findings/.",
        "",
        "Columns: ours = mean ± std over the grid's seeds (population std), in percent; paper = the paper's value "
        "(± its std where printed); Δ = ours − paper in points, ⚠ where we fall short by more than the paper's std "
        "(any shortfall where it prints none). n = finished trials per row.",
        "",
        f"Grid × dataset cells: {', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}.",
        "",
    ]
    ran = [x for x in status if "trials" in x]
    if ran:
        head += ["| grid | dataset | state | trials | cells short of the paper by > its std |", "|---|---|---|---|---|"]
        head += [
            f"| {x['grid']} | {x['dataset']} | {x['state'].split(':')[0]} | {x['trials']} | {x['gaps']} |" for x in ran
        ]
        head.append("")
    protocol = out / FINDINGS_DIR / "protocol.md"
    if protocol.is_file():
        head += ["## Run protocol", "", protocol.read_text().strip(), ""]
    path = out / "REPRODUCTION.md"
    path.write_text("\n".join(head + body).rstrip() + "\n")
    return path
