"""Results: summaries over seeds, tables and plots of a grid's trials.

Shared by the sweep (fedsim/sweeps/tune_runner.py logs them with the sweep's summary run) and the
reproduction report (fedsim/report.py rebuilds them from the trial runs in MLflow, which
fedsim/sweeps/records.py reads): both start from a frame with one row per finished trial (the
grid's axes and the trial's final scores) and turn it into the grid's table, mean +- std over the
seeds in percent with the paper's value beside, and into PNG plots.
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from fedsim.sweeps.grid import GridSpec, LinePlot

if TYPE_CHECKING:
    from fedsim.methods.base import Learner

# Final scores a trial reports: clustering (acc/nmi/ari/purity), classification (accuracy/macro_f1/
# uar), selected_by_<criterion>/<metric> (the restart each model-selection criterion keeps;
# runner.selected_by), and the metrics the method declares (``Learner.metric_names``).
SCORE_KEYS = ("acc", "nmi", "ari", "purity", "accuracy", "macro_f1", "uar", "selected_by_*")


def score_keys(s: dict[str, Any], method: str) -> list[str]:
    """The keys of ``s`` (a trial's summary or final metrics) that are numeric final scores."""
    from fedsim.methods import get_method

    learner = cast("type[Learner]", get_method(method))
    patterns = (*SCORE_KEYS, *learner.metric_names)
    return [
        k
        for k in s
        if any(fnmatch.fnmatchcase(k, p) for p in patterns)
        and isinstance(s[k], (int, float))
        and not isinstance(s[k], bool)
    ]


def summarise_grid(spec: GridSpec, dataset: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The grid's table on ``dataset``: mean +- std over the non-table axes (seeds), in percent,
    with the paper's value beside: ``{m}_paper`` / ``{m}_paper_std`` hold the paper's mean and
    std (NaN where not printed)."""
    keys = spec.table.keys
    if frame.empty:
        return pd.DataFrame()
    frame = expand_derived_rows(spec, frame)
    groups = frame.groupby(keys, sort=False) if keys else [((), frame)]
    paper = spec.paper.get(dataset, {})  # none for synthetic stand-ins: not the paper's data
    rows = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(keys, key))
        row["n"] = len(g)
        cell = paper.get("|".join(str(k) for k in key) if key else "all", {})
        for m in spec.table.metrics:
            row[f"{m}_mean"] = 100 * g[m].mean()
            row[f"{m}_std"] = 100 * g[m].std(ddof=0)
            value = cell.get(m)
            row[f"{m}_paper"] = value[0] if isinstance(value, list) else value
            row[f"{m}_paper_std"] = value[1] if isinstance(value, list) else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows)
    if spec.time_to_reach:
        table = _add_time_to_reach(spec, frame, table)
    return table


def expand_derived_rows(spec: GridSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """One copy of the trials per derived row value (``GridSpec.derived_rows``), its metrics
    taken from the value's prefix: ``acc`` <- ``<prefix>/acc``. Trials without the prefixed
    metrics (logged before the runner recorded them) count in no derived row."""
    for axis, values in spec.derived_rows.items():
        parts = []
        for value, prefix in values.items():
            cols = {f"{prefix}/{m}": m for m in spec.table.metrics if f"{prefix}/{m}" in frame}
            if len(cols) < len(spec.table.metrics):
                continue
            part = frame.drop(columns=spec.table.metrics, errors="ignore").rename(columns=cols)
            part = part[part[spec.table.metrics].notna().all(axis=1)]
            parts.append(part.assign(**{axis: value}))
        frame = pd.concat(parts, ignore_index=True) if parts else frame.iloc[0:0].assign(**{axis: []})
    return frame


def _add_time_to_reach(spec: GridSpec, frame: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Table 3d: the simulated time each run needed to reach the final ACC of the reference (sync)
    run of the same seed and row, averaged over seeds per row of the table (NaN where a run never
    reached it; "not reached" where none did). ``target_acc``: the reference runs' mean ACC."""
    assert spec.time_to_reach is not None  # summarise_grid calls this for such grids only
    ref_key, ref_value = spec.time_to_reach.axis_value
    col = spec.table.columns
    if "seed" not in frame.columns:
        frame = frame.assign(seed=0)
    times, targets = [], []
    for _, row in table.iterrows():
        same = frame
        for k in spec.table.rows:
            same = same[same[k] == row[k]]
        ref = same[same[ref_key] == ref_value]
        ref_acc = {seed: float(acc) for seed, acc in zip(ref["seed"], ref["acc"])}
        targets.append(100 * float(ref["acc"].mean()) if len(ref) else float("nan"))
        mine = same[same[col] == row[col]] if col else same
        reach = []
        for seed, hist in zip(mine["seed"], mine["history"]):
            if seed not in ref_acc:
                continue
            points = [h["sim_time"] for h in json.loads(hist) if h["acc"] >= ref_acc[seed] - 1e-12]
            reach.append(min(points) if points else float("nan"))
        times.append(float(np.nanmean(reach)) if reach and not all(np.isnan(reach)) else float("nan"))
    table["target_acc"] = targets
    table["sim_time_to_target"] = times
    return table


def summary_markdown(spec: GridSpec, dataset: str, table: pd.DataFrame) -> str:
    """The sweep's own table (its summary run's summary.md, printed by ``fedsim sweep``): ours
    and the paper's values side by side, as logged, under a line naming what it reproduces."""
    keys = spec.table.keys
    header = (
        [*keys, "n"]
        + [f"{m.upper()} ours" for m in spec.table.metrics]
        + [f"{m.upper()} paper" for m in spec.table.metrics]
    )
    extra = [c for c in ("target_acc", "sim_time_to_target") if c in table]
    header += extra
    lines = [
        f"**{spec.reproduces}** — dataset `{dataset}`; mean ± std over seeds, percent",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for _, r in table.iterrows():
        cells = [str(r[k]) for k in keys] + [str(int(r["n"]))]
        cells += [f"{r[f'{m}_mean']:.1f} ± {r[f'{m}_std']:.1f}" for m in spec.table.metrics]
        cells += [
            "—"
            if r[f"{m}_paper"] is None or (isinstance(r[f"{m}_paper"], float) and math.isnan(r[f"{m}_paper"]))
            else f"{r[f'{m}_paper']}"
            for m in spec.table.metrics
        ]
        cells += [f"{r[c]:.4g}" for c in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _line_plot(plt: Any, plot: LinePlot, metrics: list[str], frame: pd.DataFrame, d: Path) -> None:
    """Every metric of the table against ``plot.x``, one line per ``plot.lines`` value, one panel
    per ``plot.panels`` value; mean +- std over the seeds (e.g. FedRecon: accuracy vs missing
    rate, one line per method, one panel per Dirichlet alpha)."""
    x, lines, panels = plot.x, plot.lines, plot.panels
    panel_values = list(dict.fromkeys(frame[panels])) if panels else [None]
    for metric in metrics:
        fig, axes = plt.subplots(1, len(panel_values), figsize=(4.5 * len(panel_values), 3.6), squeeze=False)
        for ax, pv in zip(axes[0], panel_values):
            sub = frame[frame[panels] == pv] if panels else frame
            for lv in list(dict.fromkeys(sub[lines])) if lines else [None]:
                part = sub[sub[lines] == lv] if lines else sub
                stats = part.groupby(x)[metric].agg(["mean", "std"]).sort_index()
                ax.errorbar(
                    stats.index,
                    100 * stats["mean"],
                    yerr=100 * stats["std"].fillna(0),
                    marker="o",
                    capsize=3,
                    label=str(lv) if lines else metric,
                )
            ax.set_xlabel(x)
            ax.set_ylabel(f"{metric} (%)")
            if panels:
                ax.set_title(f"{panels}={pv}")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(d / f"{metric}_vs_{x}.png", dpi=120)
        plt.close(fig)


def write_plots(spec: GridSpec, frame: pd.DataFrame, d: Path, prefix: str = "") -> list[Path]:
    """The grid's plots as PNGs in ``d`` (file names start with ``prefix``): a heatmap of the first
    metric for 2-D grids, the grid's line plot (``table.plot``), and ACC against simulated time for
    grids with a ``mode`` axis (``frame`` then needs a ``history`` column). Returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = set(d.iterdir())
    axes = [k for k in spec.grid if k != "seed" and len(spec.grid[k]) > 1]
    if len(axes) == 2 and not frame.empty:
        a, b = axes
        metric = spec.table.metrics[0]
        pivot = frame.groupby([a, b])[metric].mean().unstack(b) * 100
        fig, ax = plt.subplots(figsize=(5, 4))
        im = ax.imshow(pivot.values, cmap="viridis")
        ax.set_xticks(range(len(pivot.columns)), [str(c) for c in pivot.columns])
        ax.set_yticks(range(len(pivot.index)), [str(i) for i in pivot.index])
        ax.set_xlabel(b)
        ax.set_ylabel(a)
        fig.colorbar(im, label=f"{metric} (%)")
        fig.tight_layout()
        fig.savefig(d / f"heatmap_{metric}.png", dpi=120)
        plt.close(fig)
    if spec.table.plot and not frame.empty:
        _line_plot(plt, spec.table.plot, spec.table.metrics, frame, d)
    if "mode" in frame and "acc" in frame and not frame.empty:
        fig, ax = plt.subplots(figsize=(6, 4))
        for _, r in frame.iterrows():
            hist = json.loads(r["history"])
            label = ", ".join(f"{k}={r[k]}" for k in spec.grid if k != "seed")
            ax.plot([h["sim_time"] for h in hist], [100 * h["acc"] for h in hist], marker=".", label=label)
        ax.set_xlabel("simulated time (work units)")
        ax.set_ylabel("ACC (%)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(d / "acc_vs_sim_time.png", dpi=120)
        plt.close(fig)
    made = sorted(set(d.iterdir()) - before)
    if prefix:
        made = [p.rename(p.with_name(prefix + p.name)) for p in made]
    return made


# ---------------------------------------------------------------------------------------------
# The report's tables and plots


def _fmt(x: Any, digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def gap_rows(spec: GridSpec, table: pd.DataFrame) -> list[tuple[str, str, float, float]]:
    """(row label, metric, ours - paper, paper std) where ours falls short of the paper by more
    than the paper's reported std (0 where the paper prints no std)."""
    keys = spec.table.keys
    out = []
    for _, r in table.iterrows():
        for m in spec.table.metrics:
            paper = r.get(f"{m}_paper")
            if paper is None or (isinstance(paper, float) and math.isnan(paper)):
                continue
            std = r.get(f"{m}_paper_std")
            std = 0.0 if std is None or math.isnan(std) else float(std)
            diff = float(r[f"{m}_mean"]) - float(paper)
            if -diff > std:
                out.append((" / ".join(str(r[k]) for k in keys) or "all", m.upper(), diff, std))
    return out


def ablation_ordering(spec: GridSpec, dataset: str, table: pd.DataFrame) -> str | None:
    """For an ablation grid (one row axis of named variants): the variants ranked by the first
    metric, ours against the paper's ranking on this dataset, or on the paper's own datasets when
    it has none here."""
    if len(spec.table.rows) != 1 or spec.table.columns or spec.table.rows[0] not in spec.variants or len(table) < 2:
        return None  # one variant run so far ranks nothing
    axis, metric = spec.table.rows[0], spec.table.metrics[0]

    def rank(values: dict[str, float]) -> str:
        return " > ".join(k for k, _ in sorted(values.items(), key=lambda kv: -kv[1]))

    def paper_values(cells: dict[str, Any]) -> dict[str, float]:
        out = {}
        for row, cell in cells.items():
            v = cell.get(metric) if isinstance(cell, dict) else None
            if v is not None:
                out[row] = float(v[0] if isinstance(v, list) else v)
        return out

    ours = rank(dict(zip(table[axis].astype(str), table[f"{metric}_mean"])))
    text = f"{metric.upper()} ordering of the {axis} variants, ours: {ours}"
    here = paper_values(spec.paper.get(dataset, {}))
    if len(here) == len(table) and len(set(here.values())) > 1:
        paper = rank(here)
        return text + f"; paper: {paper} ({'the same' if paper == ours else 'different'})."
    elsewhere = {d: rank(paper_values(c)) for d, c in spec.paper.items() if len(set(paper_values(c).values())) > 1}
    if elsewhere:
        text += "; the paper's, on its own datasets: " + "; ".join(f"{d}: {r}" for d, r in elsewhere.items())
    return text + "."


def table_markdown(spec: GridSpec, table: pd.DataFrame) -> str:
    keys = spec.table.keys
    has_paper = any(table[f"{m}_paper"].notna().any() for m in spec.table.metrics)
    header = [*keys, "n"]
    for m in spec.table.metrics:
        header += [f"{m.upper()} ours"] + ([f"{m.upper()} paper", "Δ"] if has_paper else [])
    extra = [c for c in ("target_acc", "sim_time_to_target") if c in table]
    header += extra
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        cells = [str(r[k]) for k in keys] + [str(int(r["n"]))]
        for m in spec.table.metrics:
            cells.append(f"{_fmt(r[f'{m}_mean'])} ± {_fmt(r[f'{m}_std'])}")
            if has_paper:
                paper, std = r[f"{m}_paper"], r[f"{m}_paper_std"]
                paper = float("nan") if paper is None else float(paper)
                cells.append("—" if math.isnan(paper) else _fmt(paper) + ("" if math.isnan(std) else f" ± {_fmt(std)}"))
                diff = float(r[f"{m}_mean"]) - paper
                short = not math.isnan(diff) and -diff > (0.0 if math.isnan(std) else std)
                cells.append("—" if math.isnan(diff) else f"{diff:+.1f}{' ⚠' if short else ''}")
        cells += ["not reached" if c == "sim_time_to_target" and math.isnan(r[c]) else f"{r[c]:.4g}" for c in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paper_plot(spec: GridSpec, table: pd.DataFrame, path: Path) -> Path | None:
    """Grouped bars: ours (mean +- std) against the paper's value, per table row and metric."""
    if not any(table[f"{m}_paper"].notna().any() for m in spec.table.metrics):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = spec.table.keys
    labels = [" / ".join(str(r[k]) for k in keys) or "all" for _, r in table.iterrows()]
    fig, axes = plt.subplots(
        1, len(spec.table.metrics), figsize=(3.2 * len(spec.table.metrics) + 1, 3.4), squeeze=False
    )
    x = np.arange(len(labels))
    for ax, m in zip(axes[0], spec.table.metrics):
        ours = table[f"{m}_mean"].to_numpy(float)
        paper = pd.to_numeric(table[f"{m}_paper"], errors="coerce").to_numpy(float)
        ax.bar(x - 0.2, ours, 0.4, yerr=table[f"{m}_std"].to_numpy(float), capsize=3, label="fedsim")
        ax.bar(
            x + 0.2, paper, 0.4, yerr=np.nan_to_num(table[f"{m}_paper_std"].to_numpy(float)), capsize=3, label="paper"
        )
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(f"{m.upper()} (%)")
        ax.set_ylim(0, 100)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(spec.reproduces, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
