"""The reproduction report: the papers' tables beside ours, rebuilt from MLflow alone.

``make report`` (``fedsim report``) reads every sweep in the MLflow store (experiments named
``sweep/<method>/<dataset>/<grid>``, see fedsim/sweeps/tune_runner.py), rebuilds each grid's
table from the trial runs' final metrics (never from re-typed numbers), and writes
``reports/REPRODUCTION.md`` with PNG plots beside it. This module composes the document; the
sweeps are read by fedsim/sweeps/records.py, and the tables and plots are fedsim/sweeps/results.py's,
the ones a sweep logs. For each grid file in tune/grids and each dataset the grid names
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

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from fedsim.sweeps.archive import export_sweeps, import_archive, read_archive
from fedsim.sweeps.grid import GRID_DIR, ROOT, GridSpec, grid_names, load_grid
from fedsim.sweeps.records import SweepRecord, read_sweeps
from fedsim.sweeps.results import (
    ablation_ordering,
    gap_rows,
    paper_plot,
    summarise_grid,
    table_markdown,
    write_plots,
)

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
    """``make report``: export the store's sweeps into the archive (fedsim/sweeps/archive.py),
    import the whole archive into a fresh temporary MLflow store and write the report from that store.
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
