"""Bad input (issue 26, item 4): every input below is refused in the driver, before Ray starts
and before an MLflow run opens, with one line ``fedsim: error: ...`` of at most 300 characters
naming the problem and the fix, exit status 2, no traceback, within seconds.

The CLI runs in-process (``fedsim.cli.main``); ``ray.init`` and ``ensure_ray`` are replaced by
a function that raises, so an input that got as far as starting Ray fails its test. Every run
points MLflow at a store in ``tmp_path`` and checks that the store was never created (no run of
any state). Two inputs also go through a subprocess, for the exit status and stderr as a user
sees them. Data-file cases write small .mat / HDF5 / .npz / CSV files into ``tmp_path`` under a
registry dataset's file name and point ``--data-dir`` at them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import yaml

import fedsim.methods.afmcc  # noqa: F401 - imported here so no case's time includes torch's import
import fedsim.runner
from fedsim.cli import main
from tests.conftest import SMALL_SYNTHETIC

ROOT = Path(__file__).resolve().parents[1]
MAX_LINE = 300
# The one exception: a data file found nowhere is named with every folder searched, where to get
# it and what it must hold (tests/test_data.py asks for all of it), ~600 characters with
# pytest's long tmp paths.
LONGER_LINES = {"missing data file": 700}
MAX_SECONDS = 10.0  # in-process; generous for a 2-core machine running other work


class RayStarted(BaseException):
    """Raised by the patched ray.init: a bad input got as far as starting Ray."""


# ---------------------------------------------------------------------------------------------
# Files the cases write


def _base(tp: Path) -> dict:
    return {
        **SMALL_SYNTHETIC,
        "tracking": {"enabled": True, "progress": False, "tracking_uri": f"sqlite:///{tp}/mlflow.db"},
    }


def _cfg(tp: Path, text: str | bytes | None = None, name: str = "cfg.yaml", **changes) -> str:
    path = tp / name
    if text is None:  # the base config with ``changes``; a change to ... removes the key
        data = {key: value for key, value in {**_base(tp), **changes}.items() if value is not ...}
        path.write_text(yaml.safe_dump(data))
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def _real(tp: Path, dataset: str, **changes) -> str:
    """A config for registry dataset ``dataset`` (data from --data-dir)."""
    return _cfg(tp, None, dataset=dataset, synthetic=None, client_ratio="1:1", **changes)


def _data(tp: Path) -> Path:
    folder = tp / "data"
    folder.mkdir(exist_ok=True)
    return folder


SCENE15 = {"dims": (20, 59, 40), "n": 4485, "k": 15}


def _scene15(tp: Path, mutate=None, keys=("X", "Y")) -> str:
    """A scene15.mat in the registry's layout (a cell X of 3 views, labels Y), after ``mutate``
    changes the views or labels."""
    rng = np.random.default_rng(0)
    views = [rng.random((SCENE15["n"], d)) for d in SCENE15["dims"]]
    labels = (np.arange(SCENE15["n"]) % SCENE15["k"] + 1).astype(float)
    if mutate is not None:
        views, labels = mutate(views, labels)
    cell = np.empty((1, len(views)), dtype=object)
    for i, view in enumerate(views):
        cell[0, i] = view
    folder = _data(tp)
    scipy.io.savemat(folder / "scene15.mat", {keys[0]: cell, keys[1]: np.asarray(labels).reshape(-1, 1)})
    return str(folder)


def _nan_in_view(views, labels):
    views[1][7, 3] = np.nan
    return views, labels


def _inf_in_view(views, labels):
    views[2][100, 0] = -np.inf
    return views, labels


def _nan_label(views, labels):
    labels[5] = np.nan
    return views, labels


def _fractional_label(views, labels):
    labels[5] = 1.5
    return views, labels


def _fourteen_classes(views, labels):
    return views, np.where(labels == 15, 14, labels)


def _wrong_width(views, labels):
    views[0] = views[0][:, :19]
    return views, labels


def _two_views(views, labels):
    return views[:2], labels


def _few_labels(views, labels):
    return views, labels[:-10]


def _text_view(views, labels):
    views[0] = np.array(["a"] * SCENE15["n"]).reshape(-1, 1)
    return views, labels


def _truncated_scene15(tp: Path) -> str:
    folder = _scene15(tp)
    path = folder + "/scene15.mat"
    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw[: len(raw) // 2])
    return folder


def _bdgp_wrong_shapes(tp: Path) -> str:
    folder = _data(tp)
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = np.zeros((10, 30)), np.zeros((10, 7))
    scipy.io.savemat(folder / "bdgp.mat", {"data": cell, "truth": np.arange(30).reshape(-1, 1)})
    return str(folder)


def _bytes_file(tp: Path, name: str, content: bytes) -> str:
    folder = _data(tp)
    (folder / name).write_bytes(content)
    return str(folder)


def _bdgp3_hdf5(tp: Path, truncate: bool = False, keys: tuple[str, ...] = ("X1", "X2", "X3", "Y")) -> str:
    """bdgp_3view_sift.mat is a MATLAB v7.3 (HDF5) file; a small one with the wrong content
    (h5py stores MATLAB's arrays with their axes reversed: each view is 40 samples x 8)."""
    folder = _data(tp)
    path = folder / "bdgp_3view_sift.mat"
    with h5py.File(path, "w") as handle:
        for key in keys[:-1]:
            handle.create_dataset(key, data=np.zeros((8, 40)))
        handle.create_dataset(keys[-1], data=np.arange(40).reshape(1, 40) % 5)
    if truncate:
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 3])
    return str(folder)


def _npz_as_mat(tp: Path) -> str:
    folder = _data(tp)
    np.savez(folder / "scene15.npz", X=np.zeros((5, 5)), Y=np.zeros(5))
    (folder / "scene15.npz").rename(folder / "scene15.mat")
    return str(folder)


def _folder_as_mat(tp: Path) -> str:
    folder = _data(tp)
    (folder / "scene15.mat").mkdir()
    return str(folder)


def _bad_uci_csv(tp: Path) -> str:
    folder = _data(tp) / "UCImultifeature"
    folder.mkdir()
    for view in ("fac", "fou", "kar", "mor", "pix", "zer"):
        (folder / f"mfeat-{view}.csv").write_text("0,1,2\n1.0,oops,3\n")
    return str(folder.parent)


ALIAS_BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{x}: &{x} [{', '.join(['*' + p] * 9)}]\n" for p, x in zip("abcdefgh", "bcdefghi")
)


# -- a researcher's own files (``dataset: PATH``, issue 27): written here, never committed


def _user(tp: Path, path: str | Path, **changes) -> str:
    """A config whose dataset is the user's file ``path``."""
    return _cfg(tp, None, dataset=str(path), synthetic=None, client_ratio="1:1", num_clients=3, **changes)


def _views(n: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((n, 5)), rng.random((n, 7))]


USER_LABELS = np.arange(60) % 3


def _npz(tp: Path, mutate=None, **arrays) -> Path:
    """A labelled two-view .npz (X1, X2, Y) after ``mutate`` changes its arrays, or ``arrays``."""
    if not arrays:
        first, second = _views()
        arrays = {"X1": first, "X2": second, "Y": USER_LABELS.astype(float)}
        if mutate is not None:
            mutate(arrays)
    path = tp / "mine.npz"
    np.savez(path, **arrays)
    return path


def _set_item(key, index, value):
    def mutate(arrays):
        arrays[key][index] = value

    return mutate


def _cut(path: Path, keep: float | int) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: keep if isinstance(keep, int) else int(len(raw) * keep)])
    return path


def _npz_raw(tp: Path, members: dict[str, bytes]) -> Path:
    """An .npz written member by member: a .npy header and whatever bytes follow it."""
    import zipfile

    path = tp / "mine.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(f"{name}.npy", content)
    return path


def _npy(array: np.ndarray | None = None, shape: tuple[int, ...] | None = None, keep: float = 1.0) -> bytes:
    import io

    buffer = io.BytesIO()
    if shape is not None:  # a header alone, promising ``shape``
        np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": shape})
        buffer.write(b"\0" * 64)
    else:
        np.save(buffer, array)
    raw = buffer.getvalue()
    return raw[: int(len(raw) * keep)] if keep < 1 else raw


def _user_mat(tp: Path, nan: bool = False) -> Path:
    first, second = _views()
    if nan:
        first[0, 0] = np.nan
    path = tp / "mine.mat"
    scipy.io.savemat(path, {"X1": first, "X2": second, "Y": USER_LABELS.reshape(-1, 1)})
    return path


def _user_h5(tp: Path, inf: bool = False) -> Path:
    first, second = _views()
    path = tp / "mine.h5"
    with h5py.File(path, "w") as handle:
        handle["X1"], handle["X2"], handle["Y"] = first, second * np.inf if inf else second, USER_LABELS
    return path


def _user_csv(tp: Path) -> Path:
    folder = tp / "mine"
    folder.mkdir()
    for i, view in enumerate(_views()):
        if i == 0:
            view[2, 1] = np.nan
        np.savetxt(folder / f"view{i + 1}.csv", view, delimiter=",")
    np.savetxt(folder / "labels.csv", USER_LABELS, fmt="%d")
    return folder


def _refusing_port() -> int:
    """A port on 127.0.0.1 where nothing listens now (connections are refused)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


ALIAS_MILLION = "a: &a [" + ", ".join(["0"] * 1000) + "]\nseed: [" + ", ".join(["*a"] * 1000) + "]\n"


# ---------------------------------------------------------------------------------------------
# The cases: name -> tp -> (argv, what the line must contain). "CFG" is the base config.


def _set(*pairs: str) -> list[str]:
    return [a for pair in pairs for a in ("--set", pair)]


CASES = {
    # -- the config file
    "missing config": lambda tp: (["run", str(tp / "nope.yaml")], "not found"),
    "config is a folder": lambda tp: (["run", str(tp)], "is a folder"),
    "binary config file": lambda tp: (["run", _cfg(tp, bytes(range(256)) * 8)], "not UTF-8 text"),
    "NUL byte in config": lambda tp: (["run", _cfg(tp, b"method: afmcc\x00\n")], "not UTF-8 text"),
    "empty config file": lambda tp: (["run", _cfg(tp, "")], "is empty"),
    "comments-only config": lambda tp: (["run", _cfg(tp, "# nothing here\n")], "is empty"),
    "YAML syntax error": lambda tp: (["run", _cfg(tp, "method: [afmcc\nseed: 1\n")], "not valid YAML"),
    "undefined alias": lambda tp: (["run", _cfg(tp, "seed: *nope\n")], "not valid YAML"),
    "unhashable key": lambda tp: (["run", _cfg(tp, "{[1]: 2}\n")], "not valid YAML"),
    "top-level list": lambda tp: (["run", _cfg(tp, "- method\n- afmcc\n")], "YAML mapping"),
    "top-level scalar": lambda tp: (["run", _cfg(tp, "afmcc\n")], "YAML mapping"),
    "integer top-level key": lambda tp: (["run", _cfg(tp, "1: 2\n")], "config key '1'"),
    "duplicate key (method: cmmc, rounds=1)": lambda tp: (
        ["run", _cfg(tp, "method: afmcc\nrounds: 1\nmethod: cmmc\n")],
        "key 'method' appears twice",
    ),
    "duplicate nested key": lambda tp: (
        ["run", _cfg(tp, "runtime:\n  num_cpus: 1\n  num_cpus: 2\n")],
        "key 'num_cpus' appears twice",
    ),
    "alias bomb": lambda tp: (["run", _cfg(tp, ALIAS_BOMB)], "remove the aliases"),
    "recursive alias": lambda tp: (["run", _cfg(tp, "synthetic: &a {x: *a}\n")], "refers to the mapping"),
    "!!python/object tag": lambda tp: (
        ["run", _cfg(tp, "seed: !!python/object/apply:os.system [echo hi]\n")],
        "python tags",
    ),
    "!!python/name tag in --set": lambda tp: (["run", _cfg(tp), *_set("seed=!!python/name:os.system")], "python tags"),
    "unknown YAML tag": lambda tp: (["run", _cfg(tp, "seed: !env SEED\n")], "unknown YAML tag '!env'"),
    "nesting 200 deep": lambda tp: (["run", _cfg(tp, "synthetic: " + "[" * 200 + "]" * 200 + "\n")], "nests deeper"),
    "2 MB config file": lambda tp: (["run", _cfg(tp, "seed: [" + "0," * 10**6 + "0]\n")], "a config is a few KB"),
    "30k-element value (message truncated)": lambda tp: (
        ["run", _cfg(tp, "seed: [" + "0, " * 30_000 + "0]\n")],
        "(30,001 items)",
    ),
    # -- --set overrides
    "override without =": lambda tp: (["run", _cfg(tp), *_set("rounds")], "bad override 'rounds'"),
    "override key not dotted": lambda tp: (["run", _cfg(tp), *_set("1abc=3")], "not a dotted key"),
    "override inside a value": lambda tp: (["run", _cfg(tp), *_set("seed.x=1")], "not a section"),
    "unknown key": lambda tp: (["run", _cfg(tp), *_set("afmcc.alpah=0.1")], "unknown config key 'afmcc.alpah'"),
    "unknown method": lambda tp: (["run", _cfg(tp), *_set("method=kmeansplusplus")], "unknown method"),
    "method is a list": lambda tp: (["run", _cfg(tp), *_set("method=[1, 2]")], "method name"),
    "method section is a number": lambda tp: (["run", _cfg(tp), *_set("afmcc=3")], "must be a section"),
    "2 MB override": lambda tp: (["run", _cfg(tp), *_set("seed=[" + "0," * 10**6 + "0]")], "characters long"),
    # -- values
    "mode=turbo": lambda tp: (["run", _cfg(tp), *_set("mode=turbo")], "config key 'mode'"),
    "seed=-1": lambda tp: (["run", _cfg(tp), *_set("seed=-1")], "config key 'seed'"),
    "seed=2^64": lambda tp: (["run", _cfg(tp), *_set(f"seed={2**64}")], "config key 'seed'"),
    "data_seed=-3": lambda tp: (["run", _cfg(tp), *_set("data_seed=-3")], "config key 'data_seed'"),
    "rounds=0": lambda tp: (["run", _cfg(tp), *_set("rounds=0")], "config key 'rounds'"),
    "num_clients=0": lambda tp: (["run", _cfg(tp), *_set("num_clients=0")], "config key 'num_clients'"),
    "client_ratio=fast": lambda tp: (["run", _cfg(tp), *_set("client_ratio=fast")], "not a ratio"),
    "impossible client ratio": lambda tp: (
        ["run", _cfg(tp), *_set("client_ratio=1:1:1", "num_clients=2")],
        "client_ratio",
    ),
    "afmcc.lr=.inf": lambda tp: (["run", _cfg(tp), *_set("afmcc.lr=.inf")], "'afmcc.lr': must be a finite number"),
    "afmcc.lr=inf (a string)": lambda tp: (["run", _cfg(tp), *_set("afmcc.lr=inf")], "must be a finite number"),
    "afmcc.lr=.nan": lambda tp: (["run", _cfg(tp), *_set("afmcc.lr=.nan")], "config key 'afmcc.lr'"),
    "afmcc.alpha=.inf": lambda tp: (["run", _cfg(tp), *_set("afmcc.alpha=.inf")], "must be a finite number"),
    "round_timeout_s=.inf": lambda tp: (["run", _cfg(tp), *_set("runtime.round_timeout_s=.inf")], "finite number"),
    "round_timeout_s=1e300": lambda tp: (
        ["run", _cfg(tp), *_set("runtime.round_timeout_s=1e300")],
        "runtime.round_timeout_s",
    ),
    "start_timeout_s=.nan": lambda tp: (["run", _cfg(tp), *_set("runtime.start_timeout_s=.nan")], "finite number"),
    "privacy.epsilon=.inf": lambda tp: (
        ["run", _cfg(tp), *_set("privacy.enabled=true", "privacy.epsilon=.inf")],
        "finite number",
    ),
    "dirichlet_alpha=.inf": lambda tp: (["run", _cfg(tp), *_set("dirichlet_alpha=.inf")], "finite number"),
    "sim_time_budget=.inf": lambda tp: (
        ["run", _cfg(tp), *_set("stop.rule=sim_time", "stop.sim_time_budget=.inf")],
        "finite number",
    ),
    "synthetic.noise=.inf": lambda tp: (
        ["run", _cfg(tp), *_set("synthetic.noise=.inf")],
        "'synthetic.noise': must be a finite number",
    ),
    "synthetic.view_dims=[0]": lambda tp: (["run", _cfg(tp), *_set("synthetic.view_dims=[0, 5]")], "view_dims"),
    "dashboard_port=70000": lambda tp: (["run", _cfg(tp), *_set("runtime.dashboard_port=70000")], "65535"),
    "dashboard_port=0": lambda tp: (["run", _cfg(tp), *_set("runtime.dashboard_port=0")], "runtime.dashboard_port"),
    "afmcc.hidden=[0]": lambda tp: (["run", _cfg(tp), *_set("afmcc.hidden=[0]")], "layer widths must be >= 1"),
    "afmcc.hidden=[32, -5]": lambda tp: (["run", _cfg(tp), *_set("afmcc.hidden=[32, -5]")], "layer widths"),
    "cmmc with rounds=1 (stage check)": lambda tp: (
        ["run", _cfg(tp, None, method="cmmc", rounds=1, afmcc=..., client_ratio="1:1")],
        "set rounds=240",
    ),
    "fmcsc with M clients": lambda tp: (
        ["run", _cfg(tp, None, method="fmcsc", afmcc=...)],
        "fmcsc supports clients with all 3 views or one view",
    ),
    "pretrain.client=99": lambda tp: (["run", _cfg(tp), *_set("pretrain.client=99")], "pretrain.client=99"),
    "fault.kill_client=99": lambda tp: (["run", _cfg(tp), *_set("fault.kill_client=99")], "fault.kill_client"),
    "sim_time rule without budget": lambda tp: (["run", _cfg(tp), *_set("stop.rule=sim_time")], "sim_time_budget"),
    "classification with afmcc": lambda tp: (["run", _cfg(tp), *_set("task=classification")], "supervised"),
    "selection loss afmcc lacks": lambda tp: (
        ["run", _cfg(tp), *_set("model_selection.runs=2")],
        "model_selection.criterion",
    ),
    "samples_per_client=1": lambda tp: (["run", _cfg(tp), *_set("samples_per_client=1")], "samples_per_client"),
    "missing_rate=1": lambda tp: (["run", _cfg(tp), *_set("missing_rate=1")], "missing_rate"),
    "privacy.delta=1": lambda tp: (["run", _cfg(tp), *_set("privacy.delta=1")], "privacy.delta"),
    "more clients than samples": lambda tp: (["run", _cfg(tp), *_set("num_clients=500", "client_ratio=1:1")], "client"),
    # -- speed profiles
    "speed lognormal:1000": lambda tp: (["run", _cfg(tp), *_set("speed_profile=lognormal:1000")], "SIGMA <= 3"),
    "speed lognormal:nan": lambda tp: (["run", _cfg(tp), *_set("speed_profile=lognormal:nan")], "finite"),
    "speed lognormal:-1": lambda tp: (["run", _cfg(tp), *_set("speed_profile=lognormal:-1")], "SIGMA"),
    "speed eo:inf:1": lambda tp: (["run", _cfg(tp), *_set("speed_profile=eo:inf:1")], "finite"),
    "speed eo:1e-300:1": lambda tp: (["run", _cfg(tp), *_set("speed_profile=eo:1e-300:1")], "between 1e-06 and"),
    "speed list with a 0": lambda tp: (["run", _cfg(tp), *_set("speed_profile=list:1,0,1,1")], "between"),
    "speed list too short": lambda tp: (["run", _cfg(tp), *_set("speed_profile=list:1,2")], "one per client"),
    "speed uniform_random:2:1": lambda tp: (["run", _cfg(tp), *_set("speed_profile=uniform_random:2:1")], "LO <= HI"),
    "speed fast": lambda tp: (["run", _cfg(tp), *_set("speed_profile=fast")], "unknown speed_profile"),
    "speed 2000-character list": lambda tp: (
        ["run", _cfg(tp), *_set("speed_profile=list:" + "1," * 1000)],
        "one per client",
    ),
    # -- tracking
    "100k-character run_name": lambda tp: (
        ["run", _cfg(tp), *_set("tracking.run_name=" + "x" * 100_000)],
        "tracking.run_name",
    ),
    "1000-character experiment": lambda tp: (
        ["run", _cfg(tp), *_set("tracking.experiment=" + "e" * 1000)],
        "tracking.experiment",
    ),
    "6000-character tag": lambda tp: (["run", _cfg(tp), *_set("tracking.tags.note=" + "t" * 6000)], "tracking.tags"),
    "tracking_uri folder missing": lambda tp: (
        ["run", _cfg(tp), *_set(f"tracking.tracking_uri=sqlite:///{tp}/no/such/folder/mlflow.db")],
        "does not exist",
    ),
    "tracking_uri at the filesystem root": lambda tp: (
        ["run", _cfg(tp), *_set("tracking.tracking_uri=sqlite:////fedsim-issue26-nowhere/mlflow.db")],
        "does not exist",
    ),
    "tracking_uri names a folder": lambda tp: (
        ["run", _cfg(tp), *_set(f"tracking.tracking_uri=sqlite:///{tp}")],
        "names a folder",
    ),
    "file store is a file": lambda tp: (
        ["run", _cfg(tp), *_set(f"tracking.tracking_uri=file://{_cfg(tp)}")],
        "names a file",
    ),
    "$MLFLOW_TRACKING_URI folder missing": lambda tp: (
        ["run", _cfg(tp), *_set("tracking.tracking_uri=null")],
        "$MLFLOW_TRACKING_URI",
    ),
    # -- paths
    "data_dir is a file": lambda tp: (["run", _cfg(tp), "--data-dir", _cfg(tp)], "is a file, not a folder"),
    "data_dir missing": lambda tp: (["run", _cfg(tp), "--data-dir", str(tp / "nodir")], "does not exist"),
    "--result-json is a folder": lambda tp: (["run", _cfg(tp), "--result-json", str(tp)], "is a folder"),
    "--result-json folder missing": lambda tp: (
        ["run", _cfg(tp), "--result-json", str(tp / "no" / "r.json")],
        "does not exist",
    ),
    "--result-json inside a file": lambda tp: (
        ["run", _cfg(tp), "--result-json", _cfg(tp) + "/r.json"],
        "not a folder",
    ),
    "--result-json unwritable": lambda tp: (
        ["run", _cfg(tp), "--result-json", "/proc/fedsim-result.json"],
        "cannot be written",
    ),
    # -- datasets and data files
    "unknown dataset": lambda tp: (["run", _cfg(tp), *_set("dataset=imagenet")], "unknown dataset"),
    "synthetic parameters on a real dataset": lambda tp: (["run", _cfg(tp), *_set("dataset=bdgp")], "not synthetic"),
    "missing data file": lambda tp: (["run", _real(tp, "nuswide"), "--data-dir", str(_data(tp))], "file not found"),
    "data file of garbage": lambda tp: (
        ["run", _real(tp, "bdgp"), "--data-dir", _bytes_file(tp, "bdgp.mat", b"not a MATLAB file" * 20)],
        "not a readable MATLAB file",
    ),
    "empty data file": lambda tp: (
        ["run", _real(tp, "bdgp"), "--data-dir", _bytes_file(tp, "bdgp.mat", b"")],
        "cannot use",
    ),
    "truncated .mat": lambda tp: (["run", _real(tp, "scene15"), "--data-dir", _truncated_scene15(tp)], "scene15"),
    ".mat without the expected keys": lambda tp: (
        ["run", _real(tp, "scene15"), "--data-dir", _scene15(tp, keys=("A", "B"))],
        "found keys",
    ),
    ".mat with wrong shapes (bdgp)": lambda tp: (
        ["run", _real(tp, "bdgp"), "--data-dir", _bdgp_wrong_shapes(tp)],
        "views of shapes",
    ),
    ".mat view of the wrong width": lambda tp: (
        ["run", _real(tp, "scene15"), "--data-dir", _scene15(tp, _wrong_width)],
        "views of shapes",
    ),
    ".mat with 2 of 3 views": lambda tp: (
        ["run", _real(tp, "scene15"), "--data-dir", _scene15(tp, _two_views)],
        "2 views",
    ),
    ".mat with too few labels": lambda tp: (
        ["run", _real(tp, "scene15"), "--data-dir", _scene15(tp, _few_labels)],
        "labels",
    ),
    ".mat with NaN in a view": lambda tp: (
        ["run", _real(tp, "scene15"), "--data-dir", _scene15(tp, _nan_in_view)],
        "NaN or inf",
    ),
    ".mat with -inf in a view": lambda tp: (
        ["run", _real(tp, "scene15"), "--data-dir", _scene15(tp, _inf_in_view)],
        "NaN or inf",
    ),
    ".mat with a NaN label": lambda tp: (
        ["run", _real(tp, "scene15"), "--data-dir", _scene15(tp, _nan_label)],
        "not all integers",
    ),
    ".mat with a fractional label": lambda tp: (
        ["run", _real(tp, "scene15"), "--data-dir", _scene15(tp, _fractional_label)],
        "not all integers",
    ),
    ".mat with 14 of 15 classes": lambda tp: (
        ["run", _real(tp, "scene15"), "--data-dir", _scene15(tp, _fourteen_classes)],
        "14 classes",
    ),
    ".mat with a text view": lambda tp: (
        ["run", _real(tp, "scene15"), "--data-dir", _scene15(tp, _text_view)],
        "not a numeric array",
    ),
    "truncated HDF5 (v7.3) file": lambda tp: (
        ["run", _real(tp, "bdgp3"), "--data-dir", _bdgp3_hdf5(tp, truncate=True)],
        "bdgp3",
    ),
    "HDF5 file without the expected keys": lambda tp: (
        ["run", _real(tp, "bdgp3"), "--data-dir", _bdgp3_hdf5(tp, keys=("A", "B"))],
        "found keys",
    ),
    "HDF5 file with wrong shapes": lambda tp: (
        ["run", _real(tp, "bdgp3"), "--data-dir", _bdgp3_hdf5(tp)],
        "holds views of shapes [(40, 8), (40, 8), (40, 8)]",
    ),
    ".npz saved as .mat": lambda tp: (["run", _real(tp, "scene15"), "--data-dir", _npz_as_mat(tp)], "scene15"),
    "folder named scene15.mat": lambda tp: (["run", _real(tp, "scene15"), "--data-dir", _folder_as_mat(tp)], "scene15"),
    "malformed UCI CSV": lambda tp: (["run", _real(tp, "handwritten"), "--data-dir", _bad_uci_csv(tp)], "cannot"),
    # -- a user's own data file (dataset: PATH): malformed, truncated, NaN/inf-filled
    "user .npz with a NaN in a view": lambda tp: (
        ["run", _user(tp, _npz(tp, _set_item("X1", (3, 2), np.nan)))],
        "view X1 holds 1 NaN or inf",
    ),
    "user .npz view filled with inf": lambda tp: (
        ["run", _user(tp, _npz(tp, lambda a: a["X2"].fill(np.inf)))],
        "view X2 holds 420 NaN or inf",
    ),
    "user .npz with a NaN label": lambda tp: (
        ["run", _user(tp, _npz(tp, _set_item("Y", 4, np.nan)))],
        "labels are NaN or inf",
    ),
    "user .npz with an inf label": lambda tp: (
        ["run", _user(tp, _npz(tp, _set_item("Y", 9, -np.inf)))],
        "labels are NaN or inf",
    ),
    "truncated user .npz": lambda tp: (["run", _user(tp, _cut(_npz(tp), 0.5))], "not a readable .npz file"),
    "user .npz member cut short": lambda tp: (
        [
            "run",
            _user(
                tp, _npz_raw(tp, {"X1": _npy(_views()[0]), "X2": _npy(_views()[1], keep=0.5), "Y": _npy(USER_LABELS)})
            ),
        ],
        "array 'X2' is truncated",
    ),
    "user .npz header promising 10^12 rows": lambda tp: (
        ["run", _user(tp, _npz_raw(tp, {"X1": _npy(shape=(10**12, 5)), "X2": _npy(shape=(10**12, 5))}), n_clusters=3)],
        "is truncated",
    ),
    "user .npz of pickled objects": lambda tp: (
        ["run", _user(tp, _npz(tp, X=np.array([np.zeros(3), "a"], dtype=object), Y=USER_LABELS))],
        "holds Python objects",
    ),
    "user .npz views of different lengths": lambda tp: (
        ["run", _user(tp, _npz(tp, X1=_views()[0], X2=_views()[1][:50], Y=USER_LABELS))],
        "no axis matches",
    ),
    "user .npz with no arrays": lambda tp: (["run", _user(tp, _npz(tp, **{"_": np.zeros(0)}))], "no views found"),
    "empty user .npz file": lambda tp: (
        ["run", _user(tp, _bytes_file(tp, "mine.npz", b"") + "/mine.npz")],
        "empty or not a regular file",
    ),
    "user .npz of garbage": lambda tp: (
        ["run", _user(tp, _bytes_file(tp, "mine.npz", b"PK garbage" * 50) + "/mine.npz")],
        "not a readable .npz file",
    ),
    "truncated user .mat (v5)": lambda tp: (["run", _user(tp, _cut(_user_mat(tp), 0.6))], "truncated"),
    "user .mat cut inside its header": lambda tp: (
        ["run", _user(tp, _cut(_user_mat(tp), 300), n_clusters=3)],
        "truncated",
    ),
    "user .mat with a NaN": lambda tp: (["run", _user(tp, _user_mat(tp, nan=True))], "view X1 holds 1 NaN or inf"),
    "truncated user .h5": lambda tp: (["run", _user(tp, _cut(_user_h5(tp), 0.5))], "not a readable HDF5 file"),
    "user .h5 view filled with inf": lambda tp: (["run", _user(tp, _user_h5(tp, inf=True))], "NaN or inf"),
    "user CSV folder with a NaN cell": lambda tp: (["run", _user(tp, _user_csv(tp))], "view1.csv holds 1 NaN"),
    "user file of unknown type": lambda tp: (
        ["run", _user(tp, _bytes_file(tp, "mine.txt", b"1 2\n") + "/mine.txt")],
        "unknown file type .txt",
    ),
    "user file not found": lambda tp: (["run", _user(tp, tp / "nowhere.npz")], "no such file or folder"),
    "unlabelled user file without n_clusters": lambda tp: (
        ["run", _user(tp, _npz(tp, X1=_views()[0], X2=_views()[1]))],
        "set n_clusters",
    ),
    "n_clusters above the sample count": lambda tp: (
        ["run", _user(tp, _npz(tp), n_clusters=1000)],
        "1000 clusters asked of 60 samples",
    ),
    # -- sizes, counts and what the run would reach
    "10^6-element value by aliases": lambda tp: (["run", _cfg(tp, ALIAS_MILLION)], "remove the aliases"),
    "300k-entry speed list": lambda tp: (
        ["run", _cfg(tp), *_set("speed_profile=list:" + "1," * 300_000)],
        "at most 10000 characters",
    ),
    "rounds=10^23": lambda tp: (["run", _cfg(tp), *_set(f"rounds={10**23}")], "config key 'rounds'"),
    "kmeans_n_init=10^9": lambda tp: (["run", _cfg(tp), *_set("kmeans_n_init=1000000000")], "kmeans_n_init"),
    "runtime.torch_threads=100000": lambda tp: (
        ["run", _cfg(tp), *_set("runtime.torch_threads=100000")],
        "runtime.torch_threads",
    ),
    "model_selection.runs=10^6": lambda tp: (
        ["run", _cfg(tp), *_set("model_selection.runs=1000000", "model_selection.criterion=acc")],
        "model_selection.runs",
    ),
    "privacy.clip_norm=1e308": lambda tp: (
        ["run", _cfg(tp), *_set("privacy.enabled=true", "privacy.clip_norm=1e308")],
        "privacy.clip_norm",
    ),
    "privacy.epsilon=1e-300 (Opacus warns)": lambda tp: (
        ["run", _cfg(tp), *_set("privacy.enabled=true", "privacy.epsilon=1e-300")],
        "out of reach",
    ),
    "afmcc.hidden=[10^8] (beyond memory)": lambda tp: (
        ["run", _cfg(tp), *_set("afmcc.hidden=[100000000]")],
        "lower the afmcc.* widths",
    ),
    "synthetic.n_samples=10^9": lambda tp: (["run", _cfg(tp), *_set("synthetic.n_samples=1000000000")], "GiB"),
    "synthetic.noise=1e308": lambda tp: (["run", _cfg(tp), *_set("synthetic.noise=1e308")], "at most 1e6"),
    # -- where the run would connect
    "runtime.ray_address garbage": lambda tp: (
        ["run", _cfg(tp), *_set("runtime.ray_address=not an address")],
        "not a Ray address",
    ),
    "runtime.ray_address port 99999": lambda tp: (
        ["run", _cfg(tp), *_set("runtime.ray_address=10.0.0.1:99999")],
        "port 99999",
    ),
    "runtime.ray_address without port": lambda tp: (
        ["run", _cfg(tp), *_set("runtime.ray_address=10.0.0.1")],
        "no port",
    ),
    "tracking_uri of an unknown scheme": lambda tp: (
        ["run", _cfg(tp), *_set("tracking.tracking_uri=foo://bar")],
        "no store for scheme 'foo'",
    ),
    "tracking_uri server refusing": lambda tp: (
        ["run", _cfg(tp), *_set(f"tracking.tracking_uri=http://127.0.0.1:{_refusing_port()}")],
        "no MLflow server answers",
    ),
    "tracking_uri http without a host": lambda tp: (
        ["run", _cfg(tp), *_set("tracking.tracking_uri=http://")],
        "names no server",
    ),
    "--resume with a 10k-character id": lambda tp: (["run", _cfg(tp), "--resume", "x" * 10_000], "not a run id"),
    "--resume with a path": lambda tp: (["run", _cfg(tp), "--resume", "../../etc"], "not a run id"),
}


@pytest.fixture
def no_ray(tmp_path, monkeypatch):
    """Ray and MLflow must not start: the bad input is refused in the driver before both."""
    import ray

    def refuse(*args, **kwargs):
        raise RayStarted("Ray was started: the bad input was not refused in the driver")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(fedsim.runner, "ensure_ray", refuse)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env/missing/mlflow.db")
    monkeypatch.setenv("FEDSIM_DATA_DIR", str(tmp_path / "nodata"))
    return tmp_path


def _no_mlflow_store(tp: Path) -> bool:
    return not (tp / "mlflow.db").exists() and not (tp / "mlruns").exists() and not (tp / "env").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_before_ray(no_ray, capsys, case):
    if case == "--result-json unwritable" and os.access("/proc", os.W_OK) and _can_create("/proc/fedsim-result.json"):
        pytest.skip("/proc takes files here")
    argv, needle = CASES[case](no_ray)
    capsys.readouterr()
    started = time.perf_counter()
    code = main(argv)
    took = time.perf_counter() - started
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("fedsim: error: "), err[:2000]
    assert len(lines[0]) <= LONGER_LINES.get(case, MAX_LINE), f"{len(lines[0])} characters: {lines[0]}"
    assert needle in lines[0], lines[0]
    assert out == ""
    assert took < MAX_SECONDS, f"{took:.1f} s"
    assert _no_mlflow_store(no_ray)
    assert not Path("/fedsim-issue26-nowhere").exists()


def _can_create(path: str) -> bool:
    try:
        with open(path, "x"):
            pass
    except OSError:
        return False
    os.unlink(path)
    return True


def test_there_are_at_least_60_bad_inputs():
    assert len(CASES) >= 60


@pytest.mark.parametrize("dataset, folder", [("scene15", lambda tp: _scene15(tp)), ("synthetic", None)])
def test_good_input_reaches_ray(no_ray, capsys, dataset, folder):
    """The control: the base config and an untouched data file pass every driver check and get
    as far as starting Ray, so the cases above fail for what they change."""
    argv = ["run", _cfg(no_ray) if folder is None else _real(no_ray, dataset)]
    if folder is not None:
        argv += ["--data-dir", folder(no_ray)]
    with pytest.raises(RayStarted):
        main([*argv, "--result-json", str(no_ray / "result.json")])
    assert not (no_ray / "result.json").exists()  # the writability probe leaves nothing behind


@pytest.mark.parametrize("case, needle", [("binary config file", "not UTF-8 text"), ("alias bomb", "aliases")])
def test_bad_input_from_the_shell(tmp_path, case, needle):
    """As a user sees it: exit status 2, one line on stderr, no traceback, quickly."""
    argv, _ = CASES[case](tmp_path)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "FEDSIM_DATA_DIR": str(tmp_path / "nodata"),
        "PYTHONPATH": str(ROOT),
    }
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsim: error: ") and needle in lines[0], proc.stderr[:2000]
    assert len(lines[0]) <= MAX_LINE
    assert time.perf_counter() - started < 60
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_ray_address_in_the_environment(no_ray, capsys, monkeypatch):
    """$RAY_ADDRESS (runtime.ray_address unset) is checked in the driver too."""
    monkeypatch.setenv("RAY_ADDRESS", "http://[bad")
    code = main(["run", _cfg(no_ray)])
    (line,) = capsys.readouterr().err.splitlines()
    assert code == 2 and "$RAY_ADDRESS 'http://[bad': not a Ray address" in line and len(line) <= MAX_LINE
    assert _no_mlflow_store(no_ray)
