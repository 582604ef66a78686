"""``fedsim datasets inspect`` and ``fedsim datasets``: what a data file holds, and which data files
the search folders hold. Imports neither torch nor Ray, so it answers in about a second."""

from __future__ import annotations

from pathlib import Path
import numpy as np

from fedsim.data import datasets, userdata
from fedsim.errors import DataError


def _size(path: Path) -> str:
    total = float(
        sum(p.stat().st_size for p in path.iterdir() if p.is_file()) if path.is_dir() else path.stat().st_size
    )
    for unit in ("B", "KB", "MB", "GB"):
        if total < 1024 or unit == "GB":
            return f"{total:.0f} {unit}" if unit == "B" else f"{total:.1f} {unit}"
        total /= 1024
    raise AssertionError("unreachable")


def _number(value: float) -> str:
    return f"{value:.4g}" if np.isfinite(value) else str(value)


def inspect_dataset(
    source: str, data_dir: str | None = None, preprocessing: str | None = None, n_clusters: int | None = None
) -> tuple[list[str], list[str]]:
    """(report lines, problems) for a file, a folder or a registry name. A problem is a reason
    fedsim would refuse the data; an unreadable file raises DataError."""
    spec = None if datasets.is_user_dataset(source) else datasets.get_spec(source)
    if spec is None and not datasets.is_user_dataset(source):
        raise datasets._unknown(source)
    if spec is not None and spec.synthetic_params is not None:
        return [
            f"{source}: synthetic, generated from the seed: views {list(spec.view_dims)}, {spec.n_samples} samples, "
            f"{spec.n_clusters} classes; preprocessing {preprocessing or spec.preprocessing}"
        ], []
    if spec is not None:
        path = datasets._locate(spec, data_dir)
        if spec.loader is datasets.load_mat_views:
            found = userdata.scan(path)
        else:
            assert spec.loader is not None
            try:
                views, labels = spec.loader(path)
            except datasets._BadFileError as err:
                raise DataError(f"{path}: {err}") from err
            found = userdata.scan_arrays(path, views, np.asarray(labels), f"registry loader of {spec.name!r}")
    else:
        path = userdata.resolve_path(source, datasets.search_paths(data_dir))
        found = userdata.scan(path)
    lines = [f"{found.path}", f"  format: {found.format}, {_size(found.path)}; layout: {found.layout}"]
    lines.append(f"  samples: {found.n_samples}")
    problems: list[str] = []
    stats = []
    lines.append(f"  views ({len(found.views)}):")
    for index, plan in enumerate(found.views):
        try:
            view = found.load_view(index)
        except DataError as err:
            problems.append(str(err))
            continue
        s = userdata.view_stats(view)
        stats.append(s)
        stored = " (stored transposed)" if plan.transpose else " (flattened)" if plan.flatten else ""
        lines.append(
            f"    {index}  {plan.entry.name:14s} {s.shape[0]} x {s.shape[1]}{stored}  {s.dtype}"
            f"{' sparse' if s.sparse else ''}  range [{_number(s.low)}, {_number(s.high)}]  "
            f"zeros {100 * s.zeros:.1f}%  NaN {s.nan}  inf {s.inf}  constant columns {s.constant_columns}"
        )
        if s.nan or s.inf:
            problems.append(f"view {plan.entry.name} holds {s.nan} NaN and {s.inf} inf values; impute or drop them")
        if s.shape[1] == 0:
            problems.append(f"view {plan.entry.name} has no features")
    k = None
    if found.labels is None:
        lines.append("  labels: none (clustering without labels: label-free metrics only; set n_clusters)")
    else:
        try:
            classes, codes = userdata.label_codes(found.labels, f"labels {found.label_name}")
        except DataError as err:
            problems.append(str(err))
        else:
            counts = np.bincount(codes, minlength=classes.size)
            shown = ", ".join(f"{c}: {n}" for c, n in zip(classes[:20].tolist(), counts[:20].tolist(), strict=True))
            more = f", ... ({classes.size - 20} more)" if classes.size > 20 else ""
            lines.append(f"  labels {found.label_name}: {classes.size} classes, counts {{{shown}{more}}}")
            if not np.array_equal(classes, np.arange(classes.size)):
                lines.append(f"    recoded to 0..{classes.size - 1} in sorted order")
            k = int(classes.size)
    try:
        _, k = datasets._user_labels(found, n_clusters)
    except DataError as err:
        problems.append(str(err).removeprefix(f"{found.path}: "))
    default = spec.preprocessing if spec is not None else userdata.DEFAULT_USER_PREPROCESSING
    chosen = preprocessing or default
    origin = "as given" if preprocessing else f"the {'registry entry' if spec is not None else 'user-file'} default"
    lines.append(
        f"  preprocessing: {chosen} ({origin}; config key preprocessing: {' | '.join(datasets.PREPROCESSING)})"
    )
    hint = userdata.suggest_preprocessing(stats)
    if hint and chosen == "none":
        lines.append(f"    hint: {hint}")
    for note in found.notes:
        lines.append(f"  note: {note}")
    if spec is not None:
        matches = list(found.view_dims) == list(spec.view_dims) and found.n_samples == spec.n_samples
        lines.append(f"  registry entry {spec.name!r}: {spec.expectation()}: {'matches' if matches else 'DIFFERS'}")
        if not matches:
            problems.append(
                f"{found.path} is not the registry's {spec.name} ({spec.expectation()}); "
                f"{datasets._as_user_file_hint(found.path)}"
            )
    else:
        clusters = f"n_clusters: {k}" if k is not None else "n_clusters: <set it>"
        lines.append(f"  use it: dataset: {found.path}   ({clusters})")
    lines.append(
        "  fedsim accepts this data" if not problems else f"  fedsim would refuse this data ({len(problems)}):"
    )
    lines += [f"    - {problem}" for problem in problems]
    return lines, problems


def describe_search(data_dir: str | None) -> list[str]:
    """``fedsim datasets``: the search order, each registry entry and where its file was found, and
    the other data files (usable as ``dataset: <path>``) in the search folders."""
    folders = datasets.search_paths(data_dir)
    lines = ["search order: " + ", ".join(f"{p}{'' if p.is_dir() else ' (missing)'}" for p in folders)]
    claimed: set[Path] = set()
    for name, spec in datasets.registry().items():
        plugin = "" if name in datasets.DATASETS else " (plug-in)"
        head = f"  {name + plugin:24s} {spec.n_samples:6d} samples, {spec.n_clusters:3d} classes, views {list(spec.view_dims)}"
        if spec.synthetic_params is not None:
            lines.append(f"{head}: generated")
            continue
        try:
            path = datasets._locate(spec, data_dir)
        except DataError:
            lines.append(f"{head}: not found ({', '.join(spec.filenames)})")
            continue
        claimed.add(path.resolve())
        lines.append(f"{head}: {path}")
    for name, why in datasets._plugin_specs().items():
        if isinstance(why, str):
            lines.append(f"  {name + ' (plug-in)':24s} unusable: {why}")
    others = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
            if entry.resolve() in claimed:
                continue
            if entry.is_file() and entry.suffix.lower() in userdata.SUFFIXES:
                others.append(f"  {entry}  ({_size(entry)})")
            elif entry.is_dir() and any(p.suffix.lower() in userdata.TABLE_SUFFIXES for p in entry.iterdir()):
                tables = [p for p in entry.iterdir() if p.suffix.lower() in userdata.TABLE_SUFFIXES]
                others.append(f"  {entry}/  (folder of {len(tables)} .csv/.parquet files)")
    if others:
        lines.append(
            "other data files (your own data: dataset: <path>; check one with `fedsim datasets inspect <path>`):"
        )
        lines += others
    else:
        lines.append("no other data files (.mat, .npz, .h5, folders of .csv/.parquet) in the search folders")
    return lines
