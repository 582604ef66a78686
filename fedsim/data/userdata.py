"""A researcher's own multi-view data: ``dataset: /path/to/file.mat`` (or ``.npz``, ``.h5``/``.hdf5``, or
a folder of per-view ``.csv``/``.parquet`` files plus a labels file), read with no code edit.

Reading happens in two steps. :func:`scan` reads only what says how the data is laid out: variable
names, shapes and dtypes (MATLAB headers, HDF5 metadata, ``.npy`` headers inside the ``.npz``,
CSV header lines and row counts, Parquet footers) and the labels, which are small. It picks the
views and the labels by the layouts fedsim knows (a cell ``X``, ``X1..Xn``, ``data``/``truth``,
``fea``/``gt``, MATLAB v7.3 references, sparse views; otherwise every 2-D numeric variable is a
view), finds the sample count and decides each view's orientation. So a malformed file is
refused in well under a second, whatever its size, before Ray or torch are imported
(:func:`fedsim.data.datasets.check_data`). :meth:`Scan.load` then reads the views themselves.

Labels are optional: without them fedsim clusters into ``n_clusters`` clusters and reports only
label-free metrics. No torch, no Ray and (outside CSV/Parquet folders) no pandas is imported here:
``fedsim datasets inspect`` runs on this module alone.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import scipy.sparse

from fedsim.errors import DataError, shorten, shorten_path

SUFFIXES = (".mat", ".npz", ".h5", ".hdf5")
TABLE_SUFFIXES = (".csv", ".parquet")
SUPPORTED = (
    "a .mat (MATLAB v5 or v7.3), .npz or .h5/.hdf5 file, or a folder of per-view .csv/.parquet files "
    "with an optional labels.csv/labels.parquet"
)
USER_PREPROCESSING = ("none", "minmax", "standard")
DEFAULT_USER_PREPROCESSING = "none"
# Matched case-insensitively against variable names (and file stems in a folder).
LABEL_NAMES = ("y", "labels", "label", "truth", "gt", "gnd", "target", "targets", "class", "classes")
VIEW_CELL_NAMES = ("x", "data", "fea", "views")
LAYOUTS = (
    "a cell X, data or fea of views; X1..Xn (or view1..viewN); otherwise every 2-D numeric variable; labels "
    f"(optional) named {'/'.join(name.upper() if len(name) < 3 else name for name in LABEL_NAMES)}"
)
LAYOUTS_SHORT = "a cell X/data/fea of views, X1..Xn, else every 2-D numeric array; labels (optional) Y, labels, gt, ..."
_NUMBERED = re.compile(r"^(x|view|v)_?(\d+)$", re.IGNORECASE)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MATLAB_CLASSES = {
    "double": "float64",
    "single": "float32",
    "int8": "int8",
    "uint8": "uint8",
    "int16": "int16",
    "uint16": "uint16",
    "int32": "int32",
    "uint32": "uint32",
    "int64": "int64",
    "uint64": "uint64",
    "logical": "bool",
    "sparse": "float64",
}


def looks_like_path(dataset: str) -> bool:
    """Whether a ``dataset`` value names a file or folder rather than a registry entry."""
    text = dataset.strip()
    return (
        "/" in text or os.sep in text or text.startswith(("~", ".")) or text.lower().endswith(SUFFIXES + TABLE_SUFFIXES)
    )


def resolve_path(dataset: str, folders: list[Path]) -> Path:
    """The file or folder ``dataset`` names: absolute, or relative to the working directory, then
    to each data folder (``--data-dir``, ``$FEDSIM_DATA_DIR``, ...)."""
    given = Path(dataset.strip()).expanduser()
    candidates = [given] if given.is_absolute() else [Path.cwd() / given, *(folder / given for folder in folders)]
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    shown = shorten_path(dataset)
    if given.is_absolute():
        raise DataError(f"dataset '{shown}': no such file or folder; give {SUPPORTED}")
    looked = ", ".join(shorten_path(c, 50) for c in candidates[:3]) + (" ..." if len(candidates) > 3 else "")
    raise DataError(f"dataset '{shown}': no such file or folder (looked at {looked}); give {SUPPORTED}")


# --------------------------------------------------------------------------------------------
# Entries: one array of the file, described before it is read
# --------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One stored array: its name, shape and dtype as stored (MATLAB order for MATLAB files), and
    how to read it. ``kind`` is ``dense``, ``sparse`` or ``text``/``other`` (never a view)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str
    read: Callable[[], Any] = field(repr=False)
    exact: bool = True  # the shape is the stored one (a CSV's row count is a line count: not exact)

    @property
    def numeric(self) -> bool:
        return self.kind in ("dense", "sparse") and np.dtype(self.dtype).kind in "biuf"


def _eager(name: str, value: Any) -> Entry:
    if scipy.sparse.issparse(value):
        return Entry(name, tuple(int(n) for n in value.shape), str(value.dtype), "sparse", lambda: value)
    array = np.asarray(value)
    kind = "dense" if array.dtype.kind in "biufc" else "text" if array.dtype.kind in "US" else "other"
    return Entry(name, tuple(int(n) for n in array.shape), str(array.dtype), kind, lambda: array)


def _is_hdf5(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(520)
    return head[:8] == _HDF5_SIGNATURE or head[512:520] == _HDF5_SIGNATURE


def _mat_v5_entries(path: Path) -> dict[str, Entry | list[Entry]]:
    """A MATLAB v5 file from its headers (scipy's whosmat); a cell is read (its elements' shapes are
    not in the header) and becomes a list of entries."""
    cut = _mat_v5_truncation(path)
    if cut is not None:
        raise DataError(f"{shorten_path(path)}: the MATLAB file is truncated ({cut}); copy or save it again")
    try:
        described = scipy.io.whosmat(path)
    except Exception as err:  # scipy fails in many ways on a file that is not MATLAB
        raise DataError(f"{shorten_path(path)}: not a readable MATLAB file ({_reason(err)})") from err
    out: dict[str, Entry | list[Entry]] = {}
    for name, shape, mclass in described:
        if mclass == "cell":
            try:
                cell = scipy.io.loadmat(path, variable_names=[name])[name]
            except Exception as err:
                raise DataError(
                    f"{shorten_path(path)}: cannot read the cell {name!r} ({type(err).__name__}: {err})"
                ) from err
            out[name] = [_eager(f"{name}[{i}]", element) for i, element in enumerate(cell.flat)]
            continue
        dtype = _MATLAB_CLASSES.get(mclass)
        kind = "sparse" if mclass == "sparse" else "dense" if dtype else "text" if mclass == "char" else "other"

        def read(name: str = name) -> Any:
            return scipy.io.loadmat(path, variable_names=[name])[name]

        out[name] = Entry(name, tuple(int(n) for n in shape), dtype or mclass, kind, read)
    return out


def _hdf5_entries(path: Path, matlab: bool) -> dict[str, Entry | list[Entry]]:
    """An HDF5 file from its metadata. MATLAB v7.3 files (``matlab``) store arrays with reversed
    axes, cells as object references and sparse matrices as data/ir/jc groups; plain HDF5 files
    (h5py, pandas) are taken as stored, with a ``views`` group of per-view datasets and CSR groups
    (data/indices/indptr and a shape attribute) understood as well."""
    import h5py

    def entry(handle: Any, name: str, node: Any) -> Entry | list[Entry] | None:
        if isinstance(node, h5py.Group):
            return _hdf5_group(handle, name, node, matlab)
        mclass = node.attrs.get("MATLAB_class", b"")
        mclass = mclass.decode() if isinstance(mclass, bytes) else str(mclass)
        if node.dtype == h5py.ref_dtype:
            members = [entry(handle, f"{name}[{i}]", handle[ref]) for i, ref in enumerate(node[()].flat)]
            return [m for m in members if isinstance(m, Entry)]
        shape = tuple(int(n) for n in (node.shape[::-1] if matlab else node.shape))
        if mclass == "char" or node.dtype.kind in "USO":
            kind = "text"
        elif node.dtype.kind in "biuf" and not node.attrs.get("MATLAB_empty", 0):
            kind = "dense"
        else:
            kind = "other"

        def read(node_name: str = node.name) -> Any:
            with h5py.File(path, "r") as again:
                value = again[node_name][()]
            return np.asarray(value).T if matlab else np.asarray(value)

        return Entry(name, shape, str(node.dtype), kind, read)

    try:
        with h5py.File(path, "r") as handle:
            out: dict[str, Entry | list[Entry]] = {}
            for name in handle:
                if name.startswith("#"):
                    continue
                described = entry(handle, name, handle[name])
                if described is not None:
                    out[name] = described
            return out
    except DataError:
        raise
    except Exception as err:  # any failure inside h5py means an unusable file
        raise DataError(
            f"{shorten_path(path)}: not a readable HDF5 file ({_reason(err)}); the file is damaged or truncated: write it again"
        ) from err


def _hdf5_group(handle: Any, name: str, group: Any, matlab: bool) -> Entry | list[Entry] | None:
    import h5py

    if matlab and "MATLAB_sparse" in group.attrs:
        n_rows, n_cols = int(group.attrs["MATLAB_sparse"]), int(group["jc"].shape[0]) - 1
        path, group_name = handle.filename, group.name

        def read_matlab_sparse() -> Any:
            with h5py.File(path, "r") as again:
                node = again[group_name]
                data = node["data"][()] if "data" in node else np.zeros(0)
                rows = node["ir"][()] if "ir" in node else np.zeros(0, dtype=np.int64)
                return scipy.sparse.csc_matrix((data, rows, node["jc"][()]), shape=(n_rows, n_cols))

        return Entry(name, (n_rows, n_cols), "float64", "sparse", read_matlab_sparse)
    if {"data", "indices", "indptr"} <= set(group) and "shape" in group.attrs:
        shape = tuple(int(n) for n in group.attrs["shape"])
        path, group_name = handle.filename, group.name
        csc = str(group.attrs.get("encoding-type", "csr")).startswith("csc")

        def read_csr() -> Any:
            with h5py.File(path, "r") as again:
                node = again[group_name]
                parts = (node["data"][()], node["indices"][()], node["indptr"][()])
            return (scipy.sparse.csc_matrix if csc else scipy.sparse.csr_matrix)(parts, shape=shape)

        return Entry(name, shape, str(group["data"].dtype), "sparse", read_csr)
    if not matlab and name.lower() in VIEW_CELL_NAMES:
        members = []
        for key in sorted(group, key=_natural):
            node = group[key]
            if isinstance(node, h5py.Dataset) and node.dtype.kind in "biuf":
                members.append(_hdf5_entries_single(handle.filename, f"{name}/{key}", node))
        return members
    return None  # a struct or any other group: no layout uses one


def _hdf5_entries_single(path: str, name: str, node: Any) -> Entry:
    import h5py

    def read(node_name: str = node.name) -> Any:
        with h5py.File(path, "r") as again:
            return np.asarray(again[node_name][()])

    return Entry(name, tuple(int(n) for n in node.shape), str(node.dtype), "dense", read)


def _npz_entries(path: Path) -> dict[str, Entry | list[Entry]]:
    """A ``.npz`` from the ``.npy`` headers inside it (no array is read). A file written by
    ``scipy.sparse.save_npz`` is one sparse view."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(".npy")]
            headers = {}
            for member in names:
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    headers[member[:-4]] = read_header(handle)
                    stored, (shape, _, dtype) = archive.getinfo(member).file_size, headers[member[:-4]]
                    wanted = handle.tell() + (
                        0 if dtype.hasobject else int(np.prod(shape, dtype=object)) * dtype.itemsize
                    )
                if stored < wanted:
                    raise DataError(
                        f"{shorten_path(path)}: array {member[:-4]!r} is truncated ({stored:,} of the {wanted:,} bytes its header "
                        "promises); the file is damaged: write it again"
                    )
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{shorten_path(path)}: not a readable .npz file ({_reason(err)})") from err
    if {"format", "shape", "data", "indices", "indptr"} <= set(headers):
        matrix = scipy.sparse.load_npz(path)
        return {"X": _eager("X", matrix)}
    out: dict[str, Entry | list[Entry]] = {}
    for key, (shape, _fortran, dtype) in headers.items():
        if dtype.hasobject:
            raise DataError(
                f"{shorten_path(path)}: array {key!r} holds Python objects (saved with pickling), which fedsim does not "
                "load; save each view as its own numeric array: np.savez(path, X1=view1, X2=view2, Y=labels)"
            )

        def read(key: str = key) -> Any:
            with np.load(path, allow_pickle=False) as archive:
                return archive[key]

        kind = "dense" if dtype.kind in "biufc" else "text" if dtype.kind in "US" else "other"
        out[key] = Entry(key, tuple(int(n) for n in shape), str(dtype), kind, read)
    return out


def _reason(err: BaseException) -> str:
    """An exception as ``Type: message`` for an error line, at most ~100 characters."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:80] + '...' if len(text) > 80 else text}"


def _mat_v5_truncation(path: Path) -> str | None:
    """Whether a MATLAB v5 file ends before its last variable does: scipy's ``whosmat`` lists
    the variables it can find and stops quietly at a cut one, so a truncated file would look
    like a file with fewer variables (no labels, a view missing). Walks the top-level element
    tags (8 bytes each, with the element's length), reading nothing else."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        header = handle.read(128)
        if len(header) < 128 or header[126:128] not in (b"IM", b"MI"):
            return None  # not v5 (v4, or damaged): scipy's own error says more
        order = "<" if header[126:128] == b"IM" else ">"
        position = 128
        while position + 8 <= size:
            handle.seek(position)
            tag = handle.read(8)
            mdtype, nbytes = np.frombuffer(tag, dtype=f"{order}u4")
            if mdtype >> 16:  # a small data element: its data sits inside the tag
                position += 8
                continue
            end = position + 8 + int(nbytes)
            if mdtype != 15:  # miCOMPRESSED elements are not padded to 8 bytes
                end += -int(nbytes) % 8
            if end > size:
                return f"its variable at byte {position:,} needs {end:,} bytes but the file has {size:,}"
            position = end
    return None


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


# --------------------------------------------------------------------------------------------
# Folders of CSV / Parquet tables
# --------------------------------------------------------------------------------------------


def _csv_has_header(path: Path) -> bool:
    """A first line with a non-numeric field is a header, and so is ``0,1,...,m-1`` with m >= 2
    columns: the column names pandas writes for an unnamed frame (``to_csv(index=False)``), which
    would otherwise become a row of data. (A one-column file starting with ``0`` is a labels file
    whose first label is 0, not a header.)"""
    with path.open("r", newline="") as handle:
        first = handle.readline()
    fields = [text.strip() for text in first.strip().split(",")]
    if len(fields) >= 2 and fields == [str(i) for i in range(len(fields))]:
        return True
    for field_text in fields:
        try:
            float(field_text)
        except ValueError:
            return True
    return False


def _csv_shape(path: Path) -> tuple[int, int, bool, bool]:
    """(rows, columns, has header, has pandas' unnamed index column) of a CSV, reading its lines only."""
    header = _csv_has_header(path)
    with path.open("r", newline="") as handle:
        first = handle.readline().rstrip("\r\n")
    fields = first.split(",")
    index_column = header and fields[0].strip() in ("", "Unnamed: 0")
    with path.open("rb") as handle:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
        handle.seek(max(handle.tell() - 1, 0))
        if handle.read(1) not in (b"\n", b""):
            lines += 1  # a last line without a newline
    return lines - int(header), len(fields) - int(index_column), header, index_column


def _read_table(path: Path) -> Any:
    import pandas as pd

    if path.suffix.lower() == ".parquet":
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, header=0 if _csv_has_header(path) else None)
        if len(frame.columns) and (
            str(frame.columns[0]).strip() == "" or str(frame.columns[0]).startswith("Unnamed: 0")
        ):
            frame = frame.iloc[:, 1:]
    return frame


def _table_entry(path: Path) -> Entry:
    name = path.name
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.read_metadata(path)
        except Exception as err:
            raise DataError(f"{shorten_path(path)}: not a readable Parquet file ({type(err).__name__}: {err})") from err
        shape: tuple[int, ...] = (int(meta.num_rows), int(meta.num_columns))
    else:
        rows, columns, _, _ = _csv_shape(path)
        shape = (rows, columns)

    def read() -> Any:
        frame = _read_table(path)
        bad = [str(c) for c, dtype in frame.dtypes.items() if dtype.kind not in "biuf"]
        if bad:
            raise DataError(
                f"{shorten_path(path)}: column(s) {bad[:5]} are not numeric; a view file holds numbers only (no id or "
                "label column; labels go in their own labels.csv)"
            )
        return frame.to_numpy()

    return Entry(name, shape, "float64", "dense", read, exact=path.suffix.lower() == ".parquet")


def _folder_entries(folder: Path) -> tuple[dict[str, Entry | list[Entry]], Path | None]:
    tables = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES),
        key=lambda p: _natural(p.name),
    )
    if not tables:
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise DataError(
            f"{folder}: a data folder holds one .csv or .parquet file per view (found {found}); give {SUPPORTED}"
        )
    label_file = next((p for p in tables if p.stem.lower() in LABEL_NAMES), None)
    views = [_table_entry(p) for p in tables if p is not label_file]
    out: dict[str, Entry | list[Entry]] = {"views": views}
    if label_file is not None:

        def read_labels() -> Any:
            frame = _read_table(label_file)
            if frame.shape[1] != 1:
                raise DataError(f"{label_file}: a labels file holds one column (got {frame.shape[1]})")
            values = frame.iloc[:, 0].to_numpy()
            if values.dtype == object:  # names (or a column pandas could not type)
                missing = frame.iloc[:, 0].isna().to_numpy()
                values = np.where(missing, "", values.astype(str))
            return values

        labels = read_labels()
        out[label_file.stem] = _eager(label_file.name, labels)
    return out, label_file


# --------------------------------------------------------------------------------------------
# Scan: the layout, the labels, the orientation
# --------------------------------------------------------------------------------------------


@dataclass
class ViewPlan:
    """A view: its entry, and how it becomes (samples x features)."""

    entry: Entry
    transpose: bool = False
    flatten: bool = False

    @property
    def dims(self) -> int:
        shape = self.entry.shape
        if len(shape) == 1:
            return 1
        sample_axis = -1 if self.transpose else 0
        return int(np.prod(shape)) // int(shape[sample_axis])


@dataclass
class Scan:
    """What a data file holds, read from its metadata and labels; :meth:`load` reads the views."""

    path: Path
    format: str
    layout: str
    views: list[ViewPlan]
    n_samples: int
    labels: np.ndarray | None  # as stored, flattened (codes are made by ``label_codes``)
    label_name: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def view_dims(self) -> tuple[int, ...]:
        return tuple(plan.dims for plan in self.views)

    def load_view(self, index: int) -> Any:
        """View ``index`` as (samples x features), sparse views kept sparse."""
        plan = self.views[index]
        try:
            value = plan.entry.read()
        except DataError:
            raise
        except Exception as err:  # the header was readable, the data is not: a damaged file
            raise DataError(
                f"{shorten_path(self.path)}: view {plan.entry.name} cannot be read ({_reason(err)}); the file is damaged or "
                "truncated: write it again"
            ) from err
        if not scipy.sparse.issparse(value):
            value = np.asarray(value)
            if value.dtype.kind not in "biuf":
                raise DataError(
                    f"{shorten_path(self.path)}: view {plan.entry.name} is not numeric (dtype {value.dtype})"
                )
        if plan.entry.exact and tuple(value.shape) != plan.entry.shape:
            raise DataError(
                f"{shorten_path(self.path)}: view {plan.entry.name} read as shape {tuple(value.shape)}, not the "
                f"{plan.entry.shape} its header gave"
            )
        if value.ndim == 1:
            value = value.reshape(-1, 1)
        elif plan.transpose:
            value = value.T if value.ndim == 2 else np.moveaxis(value, -1, 0)
        if plan.flatten:
            value = value.reshape(value.shape[0], -1)
        if value.shape[0] != self.n_samples:
            raise DataError(
                f"{shorten_path(self.path)}: view {plan.entry.name} has {value.shape[0]} rows, not {self.n_samples}"
            )
        return value


def scan(path: Path) -> Scan:
    """Describe ``path`` (see the module docstring); a :class:`DataError` names what is wrong."""
    label_file: Path | None = None
    if path.is_dir():
        entries, label_file = _folder_entries(path)
        fmt = "folder of " + "/".join(sorted({e.name.rsplit(".", 1)[-1] for e in entries["views"]}))  # type: ignore[union-attr]
    else:
        suffix = path.suffix.lower()
        if suffix in TABLE_SUFFIXES:
            raise DataError(
                f"{shorten_path(path)}: a {suffix} file holds one view; put each view's file in one folder (with labels{suffix} "
                "if there are labels) and give the folder"
            )
        if suffix not in SUFFIXES:
            raise DataError(f"{shorten_path(path)}: unknown file type {suffix or '(none)'}; give {SUPPORTED}")
        if not path.is_file() or path.stat().st_size == 0:
            raise DataError(f"{shorten_path(path)}: empty or not a regular file; give {SUPPORTED}")
        if suffix == ".npz":
            entries, fmt = _npz_entries(path), "NumPy .npz"
        elif _is_hdf5(path):
            matlab = suffix == ".mat" or _hdf5_is_matlab(path)
            entries = _hdf5_entries(path, matlab)
            fmt = "MATLAB v7.3 (HDF5)" if matlab else "HDF5"
        elif suffix == ".mat":
            entries, fmt = _mat_v5_entries(path), "MATLAB v5"
        else:
            raise DataError(f"{shorten_path(path)}: not an HDF5 file (no HDF5 signature); give {SUPPORTED}")
    views, label_entry, layout, notes = _pick_layout(path, entries)
    if path.is_dir():
        layout = f"view files {views[0].name}..{views[-1].name}" if len(views) > 1 else f"view file {views[0].name}"
    labels = None
    if label_entry is not None:
        labels = _read_labels(path, label_entry)
        layout += f" + labels {label_entry.name}"
    else:
        layout += " (no labels)"
    n_samples, plans, more = _orient(path, views, labels)
    if label_file is None and path.is_dir():
        notes.append(f"no labels file ({'/'.join(LABEL_NAMES[:3])}.csv or .parquet): clustering without labels")
    return Scan(
        path, fmt, layout, plans, n_samples, labels, None if label_entry is None else label_entry.name, notes + more
    )


def scan_arrays(path: Path, views: list[Any], labels: np.ndarray | None, fmt: str) -> Scan:
    """A :class:`Scan` of arrays already read (a registry entry's own loader)."""
    entries = [_eager(f"view {i}", view) for i, view in enumerate(views)]
    label_entry = None if labels is None else _eager("labels", labels)
    n_samples, plans, notes = _orient(path, entries, None if labels is None else labels.ravel())
    layout = f"{len(plans)} views" + ("" if labels is None else " + labels")
    return Scan(
        path,
        fmt,
        layout,
        plans,
        n_samples,
        None if labels is None else labels.ravel(),
        None if label_entry is None else "labels",
        notes,
    )


def _hdf5_is_matlab(path: Path) -> bool:
    with path.open("rb") as handle:
        if handle.read(19) == b"MATLAB 7.3 MAT-file":
            return True
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return any("MATLAB_class" in handle[name].attrs for name in handle)
    except Exception as err:  # any failure inside h5py means an unusable file (truncated, damaged)
        raise DataError(
            f"{shorten_path(path)}: not a readable HDF5 file ({_reason(err)}); the file is damaged or truncated: write it again"
        ) from err


def _pick_layout(
    path: Path, entries: dict[str, Entry | list[Entry]]
) -> tuple[list[Entry], Entry | None, str, list[str]]:
    lower = {name.lower(): name for name in entries}
    notes: list[str] = []
    label_entry = None
    for candidate in LABEL_NAMES:
        entry = entries.get(lower.get(candidate, ""))
        if isinstance(entry, Entry) and entry.kind in ("dense", "text") and len(entry.shape) <= 2:
            label_entry = entry
            break
    used = {label_entry.name.lower()} if label_entry is not None else set()
    numbered: dict[str, list[tuple[int, Entry]]] = {}
    for name, entry in entries.items():
        match = _NUMBERED.match(name)
        if match and isinstance(entry, Entry) and entry.numeric:
            numbered.setdefault(match.group(1).lower(), []).append((int(match.group(2)), entry))
    cells = [entries[lower[c]] for c in VIEW_CELL_NAMES if isinstance(entries.get(lower.get(c, "")), list)]
    cell: list[Entry] | None = cells[0] if cells and isinstance(cells[0], list) else None
    views: list[Entry]
    if numbered:
        _, members = max(numbered.items(), key=lambda item: len(item[1]))
        views = [entry for _, entry in sorted(members, key=lambda item: item[0])]
        layout = (
            f"{len(views)} numbered views {views[0].name}..{views[-1].name}"
            if len(views) > 1
            else f"view {views[0].name}"
        )
    elif cell is not None:
        texts = [e for e in cell if not e.numeric]
        views = [e for e in cell if e.numeric]
        if texts:
            notes.append(f"skipped {len(texts)} non-numeric cell element(s): {', '.join(e.name for e in texts[:3])}")
        cell_name = views[0].name.split("[")[0] if views else "?"
        layout = f"a cell {cell_name} of {len(views)} views"
    else:
        views = [
            e
            for name, e in entries.items()
            if isinstance(e, Entry) and name.lower() not in used and e.numeric and len(e.shape) >= 2
        ]
        views += [e for value in entries.values() if isinstance(value, list) for e in value if e.numeric]
        layout = f"{len(views)} view(s) taken from every 2-D numeric array"
    if not views:
        described = ", ".join(
            f"{name} {value.shape} {value.dtype}" if isinstance(value, Entry) else f"{name} (cell of {len(value)})"
            for name, value in entries.items()
        )
        raise DataError(
            f"{shorten_path(path)}: no views found (it holds {shorten(described or 'nothing', 60)}); layouts read: "
            f"{LAYOUTS_SHORT}"
        )
    chosen = {id(e) for e in views} | ({id(label_entry)} if label_entry is not None else set())
    ignored = [name for name, value in entries.items() if isinstance(value, Entry) and id(value) not in chosen]
    if ignored:
        notes.append(f"not used: {', '.join(ignored[:6])}{' ...' if len(ignored) > 6 else ''}")
    return views, label_entry, layout, notes


def _read_labels(path: Path, entry: Entry) -> np.ndarray:
    labels = np.asarray(entry.read())
    if labels.ndim == 2 and min(labels.shape) > 1:
        # one-hot rows (N x K, or K x N as MATLAB code often stores them)
        onehot = labels if labels.shape[0] >= labels.shape[1] else labels.T
        if np.isin(onehot, (0, 1)).all() and (onehot.sum(axis=1) == 1).all():
            return onehot.argmax(axis=1)
        raise DataError(
            f"{shorten_path(path)}: labels {entry.name} have shape {labels.shape}; give one label per sample (a vector), or one-hot rows"
        )
    return labels.ravel()


def _orient(path: Path, views: list[Entry], labels: np.ndarray | None) -> tuple[int, list[ViewPlan], list[str]]:
    """The sample count and how each view becomes (samples x features)."""
    shapes = [e.shape for e in views]
    notes = []
    if labels is not None:
        n_samples = int(labels.size)
    else:
        common = set.intersection(*({s[0], s[-1]} for s in shapes))
        if not common:
            raise DataError(
                f"{shorten_path(path)}: the views disagree on the number of samples (shapes {shapes}); every view needs one "
                "row (or column) per sample"
            )
        if len({s[0] for s in shapes}) == 1 and shapes[0][0] in common:
            n_samples = shapes[0][0]
        elif len({s[-1] for s in shapes}) == 1 and shapes[0][-1] in common:
            n_samples = shapes[0][-1]
        else:
            n_samples = max(common)
        notes.append(f"no labels: {n_samples} samples, the size every view shares")
    plans = []
    for entry in views:
        shape = entry.shape
        if shape[0] == n_samples:
            plan = ViewPlan(entry, flatten=len(shape) > 2)
            if len(shape) == 2 and shape[1] == n_samples:
                notes.append(f"view {entry.name} is square ({shape}): rows taken as samples")
        elif shape[-1] == n_samples and len(shape) >= 2:
            plan = ViewPlan(entry, transpose=True, flatten=len(shape) > 2)
            notes.append(f"view {entry.name} is stored features x samples {shape}: transposed")
        else:
            where = f"the {n_samples} labels in {path.name}" if labels is not None else f"{n_samples} samples"
            raise DataError(f"{shorten_path(path)}: view {entry.name} has shape {shape}; no axis matches {where}")
        if plan.flatten:
            notes.append(f"view {entry.name} has {len(shape)} axes {shape}: flattened per sample")
        plans.append(plan)
    return n_samples, plans, notes


# --------------------------------------------------------------------------------------------
# Labels, values, preprocessing
# --------------------------------------------------------------------------------------------


def label_codes(labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(classes as stored, codes 0..K-1 int64); raises DataError for missing or non-integer labels."""
    if labels.dtype.kind in "US" or labels.dtype == object:
        values = labels.astype(str)
        missing = int(np.isin(np.char.strip(values), ("", "nan", "NaN", "None")).sum())
        if missing:
            raise DataError(f"{where}: {missing} labels are missing; give every sample a label, or remove the labels")
        classes, codes = np.unique(values, return_inverse=True)
        return classes, codes.astype(np.int64).ravel()
    if labels.dtype.kind not in "biuf":
        raise DataError(f"{where}: labels of dtype {labels.dtype} are neither numbers nor names")
    if labels.dtype.kind == "f":
        missing = int((~np.isfinite(labels)).sum())
        if missing:
            raise DataError(
                f"{where}: {missing} labels are NaN or inf; give every sample a label, or remove the labels"
            )
        if np.any(labels != np.round(labels)):
            raise DataError(f"{where}: labels are not whole numbers (e.g. {labels[labels != np.round(labels)][0]})")
    classes, codes = np.unique(labels, return_inverse=True)
    return classes, codes.astype(np.int64).ravel()


@dataclass
class ViewStats:
    shape: tuple[int, int]
    dtype: str
    sparse: bool
    low: float
    high: float
    zeros: float  # share of zero entries
    nan: int
    inf: int
    constant_columns: int


def view_stats(view: Any) -> ViewStats:
    if scipy.sparse.issparse(view):
        data = view.data
        stored = np.asarray(data, dtype=np.float64) if data.dtype.kind in "biuf" else data
        finite = stored[np.isfinite(stored)]
        size = view.shape[0] * view.shape[1]
        implicit = size > view.nnz
        low = min([finite.min()] if finite.size else [], default=np.inf)
        high = max([finite.max()] if finite.size else [], default=-np.inf)
        if implicit:
            low, high = min(low, 0.0), max(high, 0.0)
        zeros = 1.0 - np.count_nonzero(stored) / size if size else 0.0
        csc = view.tocsc()
        col_max = csc.max(axis=0).toarray().ravel()
        col_min = csc.min(axis=0).toarray().ravel()
        return ViewStats(
            tuple(view.shape),
            str(view.dtype),
            True,
            float(low),
            float(high),
            float(zeros),
            int(np.isnan(stored).sum()),
            int(np.isinf(stored).sum()),
            int((col_max == col_min).sum()),
        )
    array = np.asarray(view)
    as_float = array.astype(np.float64, copy=False) if array.dtype.kind in "biuf" else array
    finite_mask = np.isfinite(as_float)
    finite = as_float[finite_mask]
    with np.errstate(invalid="ignore"):
        constant = int((np.nanmax(as_float, axis=0) == np.nanmin(as_float, axis=0)).sum()) if array.size else 0
    return ViewStats(
        tuple(array.shape), str(array.dtype), False,
        float(finite.min()) if finite.size else float("nan"), float(finite.max()) if finite.size else float("nan"),
        float((array == 0).mean()) if array.size else 0.0,
        int(np.isnan(as_float).sum()), int(np.isinf(as_float).sum()), constant,
    )  # fmt: skip


def suggest_preprocessing(stats: list[ViewStats]) -> str | None:
    """A hint when the views' scales differ widely or lie far from [0, 1] (None when they do not)."""
    spans = [max(abs(s.low), abs(s.high)) for s in stats if np.isfinite(s.low) and np.isfinite(s.high)]
    if not spans:
        return None
    if max(spans) > 10 or (min(spans) > 0 and max(spans) / min(spans) > 100):
        return "the views' value ranges differ widely or exceed [0, 1]: consider preprocessing: minmax (or standard)"
    return None
